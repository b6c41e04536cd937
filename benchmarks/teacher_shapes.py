"""UNet shapes of the teacher side by side: quality per GPU-minute of training (issue 14's shape choice).

    python benchmarks/teacher_shapes.py runs/shapes tiny tiny-wide small [--json runs/shapes/summary.json]

Reads what `scripts/device/quality_session.sh shapes` leaves in the folder for each shape: the training log
(`<shape>/log.jsonl`, one or more runs of `train_teacher.py --resume latest`), the step timed against the model alone
(`<shape>-step.json`, `benchmarks/teacher_step.py`) and the scores (`<shape>-tq/teacher_quality.json`,
`benchmarks/teacher_quality.py`). Prints one markdown row per shape: parameters, steps and seconds of training
(summed over the runs), steps/s, the step's TFLOP/s and full / model ratio, and the val and torus-family scores.
A missing piece is a dash, never a guess.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def training_time(log: Path) -> tuple[int, float]:
    """(last step, training seconds summed over runs) of a train_teacher log.jsonl. Each run's elapsed_s counts from
    that run's start, and every row carries its wall-clock time, so time - elapsed_s names the run a row belongs to."""
    step, runs = 0, {}  # run start (rounded to a second) -> its last elapsed_s
    for line in log.read_text().splitlines():
        row = json.loads(line)
        if "elapsed_s" not in row:
            continue
        runs[round(row["time"] - row["elapsed_s"])] = row["elapsed_s"]
        step = row["step"]
    return step, sum(runs.values())


def shape_row(folder: Path, shape: str) -> dict:
    """Everything measured of one shape; keys are left out where that piece is missing."""
    row: dict = {"shape": shape}
    log = folder / shape / "log.jsonl"
    if log.is_file():
        row["steps"], row["train_s"] = training_time(log)
        if row["train_s"] > 0:
            row["steps_per_s"] = row["steps"] / row["train_s"]
    step_file = folder / f"{shape}-step.json"
    if step_file.is_file():
        step = json.loads(step_file.read_text())
        row["parameters"] = step["unet_parameters"]
        row["full_step_tflop_per_s"] = step["full_step"]["tflop_per_s"]
        row["model_alone_tflop_per_s"] = step["model_alone"]["tflop_per_s"]
        row["full_over_model"] = step["full_over_model"]
    scores = folder / f"{shape}-tq" / "teacher_quality.json"
    if scores.is_file():
        report = json.loads(scores.read_text())
        for split in ("val", "heldout"):
            if split in report:
                psnr = report[split]["psnr"]
                row[split] = {"copied": psnr["copied_view"], "imagined": psnr["imagined_views"],
                              "sensitivity": report[split]["camera_sensitivity"]}
    return row


def markdown(rows: list[dict]) -> str:
    def cell(value, fmt):
        return "-" if value is None else format(value, fmt)

    lines = ["| shape | parameters | steps | training min | steps/s | full step TFLOP/s (full / model) "
             "| val copied / imagined / sensitivity | torus copied / imagined / sensitivity |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        params = cell(r.get("parameters") and r["parameters"] / 1e6, ".1f") + ("M" if "parameters" in r else "")
        minutes = cell(r.get("train_s") and r["train_s"] / 60, ".1f")
        speed = cell(r.get("full_step_tflop_per_s"), ".1f") + (f" ({r['full_over_model']:.2f})" if "full_over_model" in r else "")
        scores = ["-" if s not in r else f"{r[s]['copied']:.2f} / {r[s]['imagined']:.2f} / {r[s]['sensitivity']:.2f}"
                  for s in ("val", "heldout")]
        lines.append(f"| {r['shape']} | {params} | {r.get('steps', '-')} | {minutes} | {cell(r.get('steps_per_s'), '.2f')} "
                     f"| {speed} | {scores[0]} | {scores[1]} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path)
    p.add_argument("shapes", nargs="+")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    rows = [shape_row(args.folder, shape) for shape in args.shapes]
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print(markdown(rows))
    return rows


if __name__ == "__main__":
    main()
