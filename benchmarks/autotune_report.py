"""What torch.compile's max-autotune would save on the student, from the autotuner's own logs: an estimate to read
before (or instead of) a latency run that the tuning did not reach.

    python benchmarks/autotune_report.py runs/s28/call1/latency-autotune.log runs/s28/call2/latency-autotune.log --scale base

While it tunes, inductor prints each matmul or convolution shape it tunes ("AUTOTUNE mm(196x1024, 1024x640)") with its
10 fastest choices and their times: its Triton kernels beside the libraries' (cuBLAS's `mm`/`addmm`/`bias_addmm`,
cuDNN's `convolution`). This script counts how often each shape occurs in one eager forward of `latency.py`'s timed
call (tokenizer + student, batch 1, counted on the CPU: the shapes are the device's) and sums, over the tuned shapes,
(library's time - the pick's time) x uses. Where the library's kernel is not among the 10 listed, it was slower than
the 10th, so (10th - pick) x uses is a lower bound. The forward's shapes that no log tuned are listed by their uses.

Not a latency: the timings are of each kernel alone, with a cold L2 cache; in the CUDA graph the kernels run back to
back, and fusing epilogues into the picked templates can add or take away time. Inductor lowers a 1x1 convolution as a
matmul, so such a convolution is also counted under the matmul shape it becomes.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: Names of the library (non-Triton) choices in inductor's autotune listings.
LIBRARY_CHOICES = frozenset({"mm", "addmm", "bias_addmm", "bmm", "convolution"})

Shape = tuple[int, ...]
ShapeKey = tuple[str, Shape, Shape]  # ("mm" | "bmm" | "conv", first operand, second operand)


@dataclass
class TunedShape:
    op: str  # as the log names it: mm, addmm, bmm, convolution
    inputs: list[Shape]  # the operands as the log lists them (addmm: bias, mat1, mat2)
    choices: list[tuple[str, float]]  # (choice, ms), fastest first, at most 10

    @property
    def key(self) -> ShapeKey:
        return shape_key(self.op, self.inputs)

    @property
    def pick_ms(self) -> float:
        return self.choices[0][1]

    @property
    def library_ms(self) -> float | None:
        """cuBLAS's or cuDNN's time, None where it is not among the listed choices (slower than all of them)."""
        return next((ms for name, ms in self.choices if name in LIBRARY_CHOICES), None)


def shape_key(op: str, inputs: list[Shape]) -> ShapeKey:
    """The same key for the log's operands and ATen's: addmm's bias is dropped, mm and addmm share one kind."""
    if op in ("mm", "addmm"):
        return ("mm", *inputs[-2:])
    if op == "bmm":
        return ("bmm", *inputs[:2])
    if op == "convolution":
        return ("conv", *inputs[:2])
    raise ValueError(f"no shape key for {op!r}")


_HEADER = re.compile(r"^AUTOTUNE (\w+)\((.*)\)\s*$")
_CHOICE = re.compile(r"^\s+(\S+) ([0-9.]+) ms ")


def parse_autotune_log(text: str) -> list[TunedShape]:
    """Every "AUTOTUNE op(AxB, ...)" block of a log with its listed choices; blocks cut off by the end of the log
    (a killed run) or with no timed choice are left out."""
    tuned, current = [], None
    for line in text.splitlines():
        if header := _HEADER.match(line):
            op, operands = header.groups()
            current = TunedShape(op, [tuple(int(d) for d in operand.strip().split("x")) for operand in operands.split(",")], [])
            tuned.append(current)
        elif current is not None and (choice := _CHOICE.match(line)):
            current.choices.append((re.sub(r"_\d+$", "", choice.group(1)) if choice.group(1).startswith("triton_")
                                    else choice.group(1), float(choice.group(2))))
        elif current is not None and line.startswith("SingleProcess AUTOTUNE"):
            current = None
    return [t for t in tuned if t.choices and t.op in ("mm", "addmm", "bmm", "convolution")]


class _MatmulConvCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts: Counter[ShapeKey] = Counter()
        self.aliases: dict[ShapeKey, ShapeKey] = {}  # a 1x1 convolution's key -> the matmul's it is lowered to

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in ("mm", "addmm", "bmm", "convolution"):
            key = shape_key(name, [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)][: 3 if name == "addmm" else 2])
            self.counts[key] += 1
            if name == "convolution":
                x, w, stride, padding, groups = args[0], args[1], args[3], args[4], args[8]
                if w.shape[2:] == (1, 1) and all(s == 1 for s in stride) and not any(padding) and groups == 1:
                    n, c, h, wd = x.shape  # a 1x1 convolution as inductor lowers it: [N*H*W, C] @ [C, C_out]
                    self.aliases[key] = ("mm", (n * h * wd, c), (c, w.shape[0]))
                    self.counts[self.aliases[key]] += 1
        return func(*args, **(kwargs or {}))


def count_matmul_conv_shapes(fn, *args) -> tuple[Counter[ShapeKey], dict[ShapeKey, ShapeKey]]:
    """How often each matmul / convolution shape runs in fn(*args), as ATen sees it; a 1x1 convolution counts under
    its own key and the matmul's it becomes (the second value maps the one to the other)."""
    counter = _MatmulConvCounter()
    with torch.no_grad(), counter:  # not inference_mode: there ATen hands the mode conv2d and linear undecomposed
        fn(*args)
    return counter.counts, counter.aliases


def estimate_savings(tuned: list[TunedShape], uses: Counter[ShapeKey], aliases: dict[ShapeKey, ShapeKey] | None = None) -> dict:
    """Per tuned shape (the last listing of a shape wins) and summed over one forward: see the module docstring. A shape
    is untuned when neither it nor what it is lowered to (`aliases`, both ways) was tuned."""
    latest = {t.key: t for t in tuned}
    aliases = aliases or {}
    lowered_as = {**aliases, **{mm: conv for conv, mm in aliases.items()}}
    rows = []
    for key, t in latest.items():
        n = uses.get(key, 0)
        library = t.library_ms
        reference = library if library is not None else t.choices[-1][1]
        rows.append({"shape": f"{key[0]}({'x'.join(map(str, key[1]))}, {'x'.join(map(str, key[2]))})", "uses": n,
                     "pick": t.choices[0][0], "pick_ms": t.pick_ms, "library_ms": library,
                     "saving_ms": (reference - t.pick_ms) * n, "library_listed": library is not None})
    rows.sort(key=lambda r: -r["saving_ms"])
    conv_uses = Counter()  # of each matmul key, the uses that are 1x1 convolutions (listed under their own key)
    for conv, mm in aliases.items():
        conv_uses[mm] += uses[conv]
    untuned = sorted(((k, n) for k, n in uses.items()
                      if k not in latest and lowered_as.get(k) not in latest and n > conv_uses[k]), key=lambda kn: -kn[1])
    return {
        "tuned_shapes": len(latest), "tuned_shapes_used": sum(r["uses"] > 0 for r in rows),
        "saving_ms": sum(r["saving_ms"] for r in rows if r["library_listed"]),
        "saving_lower_bound_more_ms": sum(r["saving_ms"] for r in rows if not r["library_listed"]),
        "shapes": rows,
        "untuned": [{"shape": f"{k[0]}({'x'.join(map(str, k[1]))}, {'x'.join(map(str, k[2]))})", "uses": n} for k, n in untuned],
    }


def student_shape_counts(scale: str, channels_last: bool = True, phase1: str = "mv-unet"):
    """The matmul / convolution shapes of latency.py's timed call at batch 1, counted in float32 on the CPU."""
    if __package__:  # imported as benchmarks.autotune_report
        from .latency import gpu_student, student_inputs
    else:  # run as a script, beside latency.py
        from latency import gpu_student, student_inputs

    cpu = torch.device("cpu")
    student, run, _ = gpu_student(scale, cpu, torch.float32, channels_last, phase1)
    return count_matmul_conv_shapes(run, *student_inputs(student, 1, cpu, torch.float32))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logs", nargs="+", type=Path, help="logs of latency.py --modes max-autotune (later logs win)")
    parser.add_argument("--scale", default="base")
    parser.add_argument("--phase1", choices=("mv-unet", "imagedream"), default="mv-unet")
    parser.add_argument("--top", type=int, default=15, help="shapes listed in each table")
    parser.add_argument("--json", type=Path, help="write the whole report here")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.logs if not p.is_file()]
    if missing:
        parser.error(f"no such log: {', '.join(missing)}")
    tuned = [t for log in args.logs for t in parse_autotune_log(log.read_text(errors="replace"))]
    if not tuned:
        parser.error("no AUTOTUNE listings in those logs: were they written by a max-autotune compile?")
    report = estimate_savings(tuned, *student_shape_counts(args.scale, phase1=args.phase1))
    report.update(logs=[str(p) for p in args.logs], scale=args.scale, phase1=args.phase1)
    print(f"{report['tuned_shapes']} shapes tuned ({report['tuned_shapes_used']} of them in the forward); the forward's "
          f"untuned shapes: {len(report['untuned'])}")
    print(f"picks vs cuBLAS/cuDNN, summed over one forward: {report['saving_ms']:.3f} ms where the library was listed, "
          f"and >= {report['saving_lower_bound_more_ms']:.3f} ms more where it was slower than the 10th choice")
    print("\n| shape | uses | pick | pick ms | library ms | saving ms / forward |\n|---|---|---|---|---|---|")
    for r in report["shapes"][: args.top]:
        library = f"{r['library_ms']:.4f}" if r["library_listed"] else "> 10th"
        print(f"| {r['shape']} | {r['uses']} | {r['pick']} | {r['pick_ms']:.4f} | {library} | {r['saving_ms']:.3f} |")
    print("\n| untuned shape | uses |\n|---|---|")
    for r in report["untuned"][: args.top]:
        print(f"| {r['shape']} | {r['uses']} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
