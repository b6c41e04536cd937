"""Timing shared by the benchmarks (wall clock on the CPU, CUDA events, synchronised, on a GPU) and their JSON report."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch

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
