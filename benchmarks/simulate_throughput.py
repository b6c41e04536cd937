"""Quadruples per second of a teacher's deterministic ODE (docs/design.md section 6): 30 DDIM steps, CFG, 4 views +
the input frame, through the real `MultiViewTeacher.simulate` (conditioning, sampler loop, decoding).

    python benchmarks/simulate_throughput.py --teacher tiny --device cuda
    python benchmarks/simulate_throughput.py --teacher imagedream --device cuda --dtype bf16 --batches 8,32 [--compile]

`imagedream` writes a randomly initialised checkpoint of the published sizes (SD-2.1 UNet with ImageDream's
image-prompt adapter, SD VAE, OpenCLIP ViT-H towers, a toy tokenizer) to a temporary folder and loads it
through `dd3g.teachers.load_teacher`, so the timed path is the one real weights take. `--compile`
wraps the UNet in torch.compile (default mode; `--compile max-autotune-no-cudagraphs` tunes kernels for minutes).
Goal for the ImageDream-size UNet on an H100: >= 8 quadruples/s.

`--channels-last` puts the UNet's and the VAE's convolution weights in NHWC (cuDNN's native layout, no transposes
around each conv; the outputs are the same) and `--cudnn-benchmark` lets cuDNN time its convolution algorithms
once per shape: the "after" rows of issue 16, beside the plain eager and compiled rows. `--sdpa-backend cudnn` tries
cuDNN's fused attention first for every attention, before torch's default choice (flash attention on an H100/H200),
which still runs where cuDNN has no kernel (the VAE's attention).

`--count-flops` counts the floating-point operations of one quadruple's ODE (torch.utils.flop_counter, one
sample run on the device: the UNet steps with CFG, conditioning and decoding) and reports each row's achieved
TFLOP/s, to tell a slow implementation from a goal beyond what the hardware can do. Each row also splits its time into
the sampler's steps (`step_ms`: one CFG-batched UNet call and its DDIM update) and what runs once per batch
(`outside_steps_ms`: conditioning and decoding), from the full run and a 2-step run.

`--profile-steps K` (CUDA) then runs one K-step ODE of the last batch under torch.profiler and says where the GPU's
time goes: the kernels' time by kind (convolution, matmul, attention, torch.compile's fused kernels, ...) and the
top kernels, in the JSON's last row and on stdout.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


from dd3g.evaluation.timing import SDPA_BACKENDS, attention_backend, inductor_options, profile_kernels
from dd3g.models.image_tokenizer import EfficientNetLite0Tokenizer
from dd3g.models.fused_projections import fuse_qkv_projections
from dd3g.models.mv_unet import MultiViewUNet
from dd3g.teachers.tiny import TinyMVDMPipeline, TinyTeacher, training_scheduler

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_teacher(name: str, device: torch.device, dtype: torch.dtype, workdir: Path):
    if name == "tiny":
        pipe = TinyMVDMPipeline(MultiViewUNet.preset("tiny").eval(), EfficientNetLite0Tokenizer.from_imagenet(), training_scheduler())
        return TinyTeacher(pipe.to(device, dtype))
    if name in ("imagedream", "imagedream-tiny"):
        from dd3g.teachers import load_teacher
        from dd3g.testing.imagedream_fixture import write_tiny_imagedream

        folder = workdir / "imagedream-random"
        if not (folder / "model_index.json").is_file():  # a kept --workdir serves several runs (GBs at full size)
            write_tiny_imagedream(folder, full_size=name == "imagedream")
        return load_teacher(folder, device=device, dtype=dtype)
    raise SystemExit(f"unknown teacher {name!r}")


def to_channels_last(teacher) -> None:
    """The teacher's convolution weights in NHWC (4-D tensors only; the rest keep their layout)."""
    for name in ("unet", "vae"):
        module = getattr(teacher, name, None)
        if module is not None:
            module.to(memory_format=torch.channels_last)


def ode_inputs(batch: int) -> tuple:
    """The timed ODE's inputs: random RGBA images [B, 4, 256, 256] (the same every call) and one seed per image."""
    return torch.rand(batch, 4, 256, 256, generator=torch.Generator().manual_seed(0)), list(range(batch))


def measure(teacher, batch: int, steps: int, guidance: float, repeats: int, device: torch.device) -> dict:
    images, seeds = ode_inputs(batch)
    teacher.simulate(images, seeds, num_steps=2, guidance_scale=guidance)  # warm-up (and compilation)
    if device.type == "cuda":
        torch.cuda.synchronize()

    def best_seconds(num_steps: int) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            teacher.simulate(images, seeds, num_steps=num_steps, guidance_scale=guidance)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return min(times)

    best, short = best_seconds(steps), best_seconds(2)
    # seconds = outside + steps * step: the sampler steps (CFG-batched UNet call + DDIM update) apart from what runs
    # once (conditioning: CLIP + VAE encoder; decoding: VAE decoder), from the full and a 2-step run.
    step = (best - short) / (steps - 2) if steps > 2 else float("nan")
    return {"batch": batch, "steps": steps, "guidance_scale": guidance, "seconds": best, "quadruples_per_s": batch / best,
            "step_ms": step * 1e3, "outside_steps_ms": (short - 2 * step) * 1e3}


def ode_flops(teacher, steps: int, guidance: float) -> int:
    """Floating-point operations of one quadruple's full ODE (one sample through the teacher's own simulate).

    Counted at 1 and 2 sampler steps and extrapolated (every step runs the same UNet work; within 1% of a direct
    count on the toy size). Count on the device you time: on a CPU torch's counter misses the fused attention
    kernel (ImageDream size: 51.5 TFLOP on a CPU, 63.3 on CUDA)."""
    from torch.utils.flop_counter import FlopCounterMode

    image = torch.rand(1, 4, 256, 256, generator=torch.Generator().manual_seed(0))
    counts = []
    for num_steps in (1, 2):
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            teacher.simulate(image, [0], num_steps=num_steps, guidance_scale=guidance)
        counts.append(counter.get_total_flops())
    return counts[0] + (steps - 1) * (counts[1] - counts[0])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="tiny", choices=["tiny", "imagedream", "imagedream-tiny"], help="imagedream-tiny: a toy-size smoke run")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--batches", default="8,32")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--guidance-scale", type=float, default=None, help="default: the teacher's (tiny 3, ImageDream 5)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                   help="torch.compile the UNet (mode: default, or e.g. max-autotune-no-cudagraphs, which tunes for minutes)")
    p.add_argument("--channels-last", action="store_true", help="convolution weights in NHWC (see the docstring)")
    p.add_argument("--cudnn-benchmark", action="store_true", help="cuDNN picks its fastest convolution algorithms per shape")
    p.add_argument("--sdpa-backend", choices=SDPA_BACKENDS, default="auto",
                   help="the attention kernel tried first (auto: torch's choice; cudnn: cuDNN's fused attention; compiled in with --compile)")
    p.add_argument("--profile-steps", type=int, default=0, metavar="K",
                   help="CUDA: profile one K-step ODE of the last batch (kernel time by kind, top kernels)")
    p.add_argument("--inductor", action="append", default=[], metavar="KEY=VALUE",
                   help="a torch._inductor.config option for --compile, e.g. coordinate_descent_tuning=True (repeatable)")
    p.add_argument("--fuse-qkv-projections", action="store_true",
                   help="the UNet's attention projections stacked into one matmul per input (dd3g.models.fused_projections)")
    p.add_argument("--count-flops", action="store_true", help="also count one quadruple's FLOPs and report TFLOP/s")
    p.add_argument("--workdir", type=Path, default=None,
                   help="keep the random checkpoint here and reuse it (default: a temporary folder, removed after)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    try:
        inductor_options(args.inductor)  # refuse an unknown option before loading anything
    except ValueError as error:
        p.error(str(error))
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    with tempfile.TemporaryDirectory() as tmp:
        teacher = build_teacher(args.teacher, device, dtype, args.workdir or Path(tmp))
        guidance = teacher.default_guidance_scale if args.guidance_scale is None else args.guidance_scale
        flops = ode_flops(teacher, args.steps, guidance) if args.count_flops else None  # eager: the counter sees every op
        if args.channels_last:
            to_channels_last(teacher)
        if args.fuse_qkv_projections:
            for network in teacher.denoisers():
                fuse_qkv_projections(network)
        if args.compile:
            teacher.compile(args.compile)
        rows = []
        for batch in (int(b) for b in args.batches.split(",")):
            with torch.inference_mode(), attention_backend(args.sdpa_backend), inductor_options(args.inductor):
                row = measure(teacher, batch, args.steps, guidance, args.repeats, device)
            row.update(teacher=args.teacher, dtype=args.dtype, compiled=args.compile or False, channels_last=args.channels_last,
                       fused_qkv_projections=args.fuse_qkv_projections, cudnn_benchmark=args.cudnn_benchmark, sdpa_backend=args.sdpa_backend, inductor=args.inductor, device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu")
            if flops is not None:
                row.update(tflop_per_quadruple=flops / 1e12, achieved_tflop_per_s=flops * row["quadruples_per_s"] / 1e12)
            rows.append(row)
            print(json.dumps(row), flush=True)
        if args.profile_steps and device.type == "cuda":
            images, seeds = ode_inputs(batch)
            with torch.inference_mode(), attention_backend(args.sdpa_backend):
                profile = profile_kernels(lambda: teacher.simulate(images, seeds, num_steps=args.profile_steps,
                                                                   guidance_scale=guidance))
            rows.append({"profile": profile, "batch": batch, "steps": args.profile_steps, "compiled": args.compile or False})
            print(json.dumps(rows[-1], indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
