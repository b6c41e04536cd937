"""Timing shared by the benchmarks (wall clock on the CPU, CUDA events, synchronised, on a GPU) and their JSON report."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch


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


def print_and_save(report: dict, path=None) -> dict:
    """Print a benchmark's report as JSON, and write it to `path` too when one is given."""
    text = json.dumps(report, indent=1)
    print(text)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    return report
