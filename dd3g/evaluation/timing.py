"""Timing shared by the benchmarks (wall clock on the CPU, CUDA events, synchronised, on a GPU) and their JSON report."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch

from ..cuda_graphs import captured_graph  # noqa: F401  (the benchmarks time it from here)

SDPA_BACKENDS = ("auto", "cudnn", "flash", "efficient", "math")


def attention_backend(name: str = "auto"):
    """A context in which torch's scaled_dot_product_attention tries `name`'s kernel first and falls back to torch's
    usual order where that kernel cannot run (e.g. cuDNN's on a head size it lacks: the ImageDream VAE's attention);
    "auto": torch's own choice. A benchmark that compiles inside it bakes that choice into the graph."""
    if name not in SDPA_BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}: expected one of {', '.join(SDPA_BACKENDS)}")
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
             "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
    first = order.pop(name)
    return sdpa_kernel([first, *order.values()], set_priority=True)


#: Kernel kinds of a CUDA profile for the kernels of the CUDA libraries, each with the name fragments that mark it, tried
#: in this order (first match wins): cuDNN's layout transposes, fused attention ("flash", cuDNN's "..._sdpa_..."), its
#: convolutions ("..._fprop_implicit_gemm..."), cuBLAS's GEMMs ("..._gemm_..." or "nvjet_...", CUDA 12.x+ on Hopper).
KERNEL_KINDS = (
    ("layout", ("nchwtonhwc", "nhwctonchw")),
    ("attention", ("flash", "fmha", "sdpa", "attention")),
    ("convolution", ("fprop", "dgrad", "wgrad", "conv")),
    ("matmul", ("gemm", "nvjet", "cutlass", "cublas", "splitk")),
)


def kernel_kind(name: str) -> str:
    """The kind of work a CUDA kernel does, from its name; "other" for the rest (ATen's elementwise, reductions, copies).

    torch.compile's kernels are named after the ops they fuse ("triton_poi_fused_convolution_silu_3" is a convolution's
    bias and activation, not the convolution), so they are told apart first: its templates ("triton_tem_...", from
    max-autotune) are matmuls or convolutions, every other "triton_..." kernel is "fused (triton)"."""
    lowered = name.lower()
    if lowered.startswith("triton_"):
        if lowered.startswith("triton_tem"):
            return "convolution" if "convolution" in lowered else "matmul"
        return "fused (triton)"
    for kind, fragments in KERNEL_KINDS:
        if any(fragment in lowered for fragment in fragments):
            return kind
    return "other"


def kernel_time_by_kind(kernels) -> dict:
    """kernels: (name, device microseconds) pairs -> {kind: {"ms", "share"}} over their summed time, largest first."""
    totals: dict = {}
    for name, microseconds in kernels:
        kind = kernel_kind(name)
        totals[kind] = totals.get(kind, 0.0) + microseconds
    whole = sum(totals.values()) or 1.0
    return {kind: {"ms": us / 1e3, "share": us / whole} for kind, us in sorted(totals.items(), key=lambda kv: -kv[1])}


def profile_kernels(fn, repeats: int = 1, top: int = 25) -> dict:
    """Run fn() `repeats` times under torch.profiler (after one untimed call) and say where the GPU's time went: wall ms,
    the summed kernel ms (below the wall when the GPU idles), the time by kernel kind, and the `top` kernels. Needs CUDA."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - start) * 1e3 / repeats  # the profiler's own overhead included
    kernels = [(e.key, e.self_device_time_total, e.count) for e in prof.key_averages()
               if e.device_type == torch.autograd.DeviceType.CUDA and e.self_device_time_total > 0]
    return kernel_report(kernels, repeats, wall_ms, top)


def kernel_report(kernels, repeats: int, wall_ms: float, top: int = 25) -> dict:
    """kernels: (name, device microseconds, launches) of each kernel name, summed over `repeats` calls -> per call:
    the kernels' summed ms, their launches, the wall's excess over the kernels spread over the launches (the host work
    and gaps one more kernel costs, roughly), the time and launches by kind, and the `top` kernels by time."""
    per_call = [(name, us / repeats, launches / repeats) for name, us, launches in kernels]
    kernel_ms = sum(us for _, us, _ in per_call) / 1e3
    launches = sum(n for _, _, n in per_call)
    by_kind = kernel_time_by_kind([(name, us) for name, us, _ in per_call])
    for name, _, n in per_call:
        entry = by_kind[kernel_kind(name)]
        entry["launches"] = entry.get("launches", 0) + n
    ranked = sorted(per_call, key=lambda k: -k[1])[:top]
    return {"wall_ms_profiled": wall_ms, "kernel_ms": kernel_ms, "kernel_launches": launches,
            "excess_us_per_launch": (wall_ms - kernel_ms) * 1e3 / launches if launches else None, "by_kind": by_kind,
            "top_kernels": [{"name": name[:120], "kind": kernel_kind(name), "ms": us / 1e3, "launches": n}
                            for name, us, n in ranked]}


def inductor_options(pairs) -> contextlib.AbstractContextManager:
    """A context that sets torch.compile's inductor options from "KEY=VALUE" strings (VALUE a Python literal, else a
    string), e.g. "coordinate_descent_tuning=True" or "freezing=True"; an unknown KEY is refused before anything runs.
    Compilation happens at a compiled function's first call, so that call must run inside the context."""
    import ast

    import torch._inductor.config as inductor_config

    options = {}
    for pair in pairs or ():
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"inductor option {pair!r}: expected KEY=VALUE")
        if not hasattr(inductor_config, key):
            raise ValueError(f"unknown inductor option {key!r} (see torch._inductor.config)")
        try:
            options[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            options[key] = text
    return inductor_config.patch(options) if options else contextlib.nullcontext()


def time_samples(fn, repeats: int, device: torch.device, warmup: int = 3) -> list[float]:
    """Milliseconds of each of `repeats` calls of fn(), after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def time_training_steps(steps: dict, warmup: int, count: int, device: torch.device, batch_size: int, flops: float) -> dict:
    """Each of `steps` ({name: fn}) timed over `count` calls after `warmup`, synchronised only at the ends: ms, steps/s,
    samples/s and TFLOP/s (`flops` a step), plus full_over_model for steps named "full_step" and "model_alone", and
    the peak memory on CUDA."""
    report = {}
    for name, step in steps.items():
        for repeats in (warmup, count):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            for _ in range(repeats):
                step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        seconds = (time.perf_counter() - start) / max(count, 1)
        report[name] = {"ms": seconds * 1e3, "steps_per_s": 1 / seconds, "samples_per_s": batch_size / seconds,
                        "tflop_per_s": flops / seconds / 1e12}
    if "full_step" in report and "model_alone" in report:
        report["full_over_model"] = report["full_step"]["ms"] / report["model_alone"]["ms"]
    if device.type == "cuda":
        report["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return report


def print_and_save(report: dict, path=None) -> dict:
    """Print a benchmark's report as JSON, and write it to `path` too when one is given."""
    text = json.dumps(report, indent=1)
    print(text)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    return report
