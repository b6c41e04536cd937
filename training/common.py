"""Pieces every training script shares: resumable checkpoints, the LR schedule, logging, image grids.

Checkpoints are accelerate states (model, optimizer, LR schedule, RNG), the EMA as safetensors, and
`trainer_state.json`, written to a temporary folder and renamed into place, so a run killed mid-save leaves the
previous checkpoint intact. Resume reads only this run's own folder, and never unpickles: accelerate loads its
files with `weights_only=True`, and the EMA is not registered with accelerate (it would pickle it).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from dd3g.preprocess import composite_on

CHECKPOINT_PATTERN = re.compile(r"^step-(\d+)$")


def checkpoint_dir(output_dir: Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    folder = checkpoint_dir(output_dir)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and (path / "trainer_state.json").is_file():  # complete checkpoints only
            found.append((int(match.group(1)), path))
    return sorted(found)


def resolve_resume(output_dir: Path, resume: Optional[str]) -> Optional[Path]:
    """`--resume latest` -> the newest complete checkpoint of this run (or None for a fresh run); a path -> itself."""
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1][1] if found else None
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise SystemExit(f"--resume {resume}: not a complete checkpoint folder (no trainer_state.json)")
    return path


def save_ema(ema, folder: Path) -> None:
    """The EMA as safetensors + JSON (accelerate would pickle it, and resume must not unpickle)."""
    from safetensors.torch import save_file

    state = ema.state_dict()
    shadow = state.pop("shadow_params")
    save_file({f"shadow.{i}": t.detach().cpu().contiguous() for i, t in enumerate(shadow)}, str(folder / "ema.safetensors"))
    (folder / "ema.json").write_text(json.dumps(state))


def load_ema(ema, folder: Path, device) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "ema.safetensors"))
    state = json.loads((folder / "ema.json").read_text())
    state["shadow_params"] = [tensors[f"shadow.{i}"] for i in range(len(tensors))]
    ema.load_state_dict(state)
    ema.to(device)


def save_checkpoint(accelerator, output_dir: Path, step: int, state: dict, keep: int = 2, ema=None) -> Path:
    """Atomically write checkpoints/step-N (all processes must call; the main process writes the json)."""
    final = checkpoint_dir(output_dir) / f"step-{step:07d}"
    staging = checkpoint_dir(output_dir) / f".tmp-step-{step:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    if accelerator.is_main_process:
        if ema is not None:
            save_ema(ema, staging)
        (staging / "trainer_state.json").write_text(json.dumps({**state, "step": step}, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        for _, old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path) -> dict:
    accelerator.load_state(str(path))
    return json.loads((Path(path) / "trainer_state.json").read_text())


def make_accelerator():
    """The Accelerator both training scripts use: bf16 on CUDA, and an LR schedule that counts optimizer steps
    (accelerate would otherwise step a prepared scheduler once per process per step)."""
    from accelerate import Accelerator

    return Accelerator(mixed_precision="bf16" if torch.cuda.is_available() else "no", step_scheduler_with_optimizer=False)


def process_layout(process_index: Optional[int] = None, num_processes: Optional[int] = None):
    """(process index, process count, device, wait_for_everyone or None) of a data-building script: given
    explicitly (independent processes, e.g. one per GPU), else from the launcher through accelerate."""
    if process_index is not None or num_processes is not None:
        k, n = process_index or 0, num_processes or 1
        device = torch.device("cuda", k % torch.cuda.device_count()) if torch.cuda.is_available() else torch.device("cpu")
        return k, n, device, None
    from accelerate import PartialState

    # Without CUDA, cpu=True lets torchrun-launched processes form a gloo group (PartialState() alone stays single).
    state = PartialState(cpu=not torch.cuda.is_available())
    return state.process_index, state.num_processes, state.device, state.wait_for_everyone


def start_run(output_dir):
    """What a training script's main() starts with: (accelerator, its device, the output folder, the JSONL log that
    only the main process writes)."""
    accelerator = make_accelerator()
    output_dir = Path(output_dir)
    return accelerator, accelerator.device, output_dir, JsonlLog(output_dir / "log.jsonl", enabled=accelerator.is_main_process)


def load_teacher_or_exit(path, device="cpu", dtype=torch.float32):
    """A teacher folder -> MultiViewTeacher (dd3g.teachers.load_teacher); a bad folder ends the run in one line."""
    from dd3g.teachers import TeacherLoadError, load_teacher

    try:
        return load_teacher(path, device=device, dtype=dtype)
    except (TeacherLoadError, FileNotFoundError, ValueError) as error:
        raise SystemExit(f"--teacher {path}: {error}") from None


def restore_checkpoint(accelerator, path: Optional[Path], ema=None) -> int:
    """Load a resolved checkpoint (if any) and return the step it was taken at (0 for a fresh run)."""
    if path is None:
        return 0
    step = int(load_checkpoint(accelerator, path)["step"])
    if ema is not None:
        load_ema(ema, Path(path), accelerator.device)
    accelerator.print(f"resumed from {path} at step {step}")
    return step


def optimization_step(accelerator, model, optimizer, lr_schedule, ema, loss, max_grad_norm: float = 1.0):
    """backward, clip, step, schedule, zero the grads, update the EMA. Returns the gradient norm (a tensor)."""
    accelerator.backward(loss)
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    lr_schedule.step()
    optimizer.zero_grad(set_to_none=True)
    ema.step(model.parameters())
    return grad_norm


def warmup_cosine(optimizer, warmup_steps: int, total_steps: int, final_fraction: float = 0.1, restart_step: int = 0):
    """Linear warm-up, then cosine decay to final_fraction of the peak LR.

    restart_step: a run continued from weights alone (fresh optimizer moments) warms up again from there.
    The scheduler's own counter starts at 0; factors are computed at restart_step + counter.
    """

    def factor(counter: int) -> float:
        step = restart_step + counter
        ramp = min(1.0, (counter + 1) / max(1, warmup_steps))
        if step < warmup_steps:
            return ramp
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return ramp * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class JsonlLog:
    """Appends one JSON object a line (losses, LR, throughput): easy to tail, plot and resume."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **record):
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps({"time": time.time(), **record}) + "\n")


def image_grid(rows: list[torch.Tensor], path: Path, background=(1.0, 1.0, 1.0)) -> Path:
    """Save rows of RGBA/RGB images ([K, C, H, W] each, values in [0, 1]) as one PNG, RGBA composited on white."""
    tiles = []
    for row in rows:
        row = row.detach().float().cpu()
        if row.shape[1] == 4:
            row = composite_on(row, background)
        tiles.append(torch.cat(list(row.clamp(0, 1)), dim=-1))  # [3, H, K*W]
    width = max(t.shape[-1] for t in tiles)
    tiles = [torch.nn.functional.pad(t, (0, width - t.shape[-1]), value=1.0) for t in tiles]
    grid = torch.cat(tiles, dim=-2)  # [3, R*H, W]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((grid.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)).save(path)
    return path


class StepProfiler:
    """torch.profiler over `steps` training steps after `warmup` steps; prints the named phases and the top
    kernels once, then does nothing. steps = 0: never profiles (phases are no-ops)."""

    def __init__(self, steps: int, device, warmup: int = 2):
        self.steps, self.device, self.warmup, self.remaining = steps, device, warmup, steps
        self.prof = None

    @property
    def done(self) -> bool:
        return self.remaining <= 0

    def phase(self, name: str):
        """A named range in the profile (a no-op when not profiling)."""
        from contextlib import nullcontext

        return nullcontext() if self.done else torch.profiler.record_function(name)

    def step(self) -> None:
        """Call after each training step."""
        from torch.profiler import ProfilerActivity, profile

        if self.done:
            return
        if self.warmup > 0:
            self.warmup -= 1
            if self.warmup == 0:
                activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
                self.prof = profile(activities=activities)
                self.prof.__enter__()
                self.start = time.time()
            return
        self.remaining -= 1
        if not self.done:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.prof.__exit__(None, None, None)
        sort = "cuda_time_total" if self.device.type == "cuda" else "cpu_time_total"
        print(self.prof.key_averages().table(sort_by=sort, row_limit=30), flush=True)
        print(f"{self.steps} profiled steps took {time.time() - self.start:.3f} s", flush=True)
