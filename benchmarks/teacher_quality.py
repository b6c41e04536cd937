"""How good is a teacher? Its DDIM samples against true renders of held-out procedural objects.

    python benchmarks/teacher_quality.py --teacher hub/mvdm-tiny --objects 100 --device cuda --out runs/teacher-eval

For validation objects and objects of the held-out shape family: PSNR/SSIM (on white, full frame and masked by
the true alpha) of the copied input view (view 0 of the canonical layout is the input camera) and of the 3
imagined views; multi-view consistency: a 3DGS fitted to 3 of the teacher's views, scored on the 4th
(leave-one-out over all 4); determinism: the same (image, seed) simulated twice and in another batch position;
camera sensitivity: how much its prediction moves when its output cameras turn by 90 degrees, relative to how
much the true views differ (about 1 for a teacher that reads its cameras, about 0 for one that ignores them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dd3g.fitting import leave_one_out_psnr  # noqa: E402
from dd3g.metrics import psnr, ssim  # noqa: E402
from dd3g.preprocess import composite_on  # noqa: E402
from dd3g.rendering import render  # noqa: E402
from dd3g.teachers.base import camera_sensitivity  # noqa: E402
from dd3g.teachers.tiny import TinyTeacher  # noqa: E402
from training import synthetic  # noqa: E402
from training.common import image_grid  # noqa: E402


def scores(pred_rgba, true_rgba) -> dict:
    """Per-view PSNR/SSIM on white, full frame and masked by the true alpha.  [B, V, 4, S, S] -> lists [B, V]."""
    pred, true = composite_on(pred_rgba), composite_on(true_rgba)
    mask = true_rgba[:, :, 3:] > 0.5
    return {
        "psnr": psnr(pred, true), "ssim": ssim(pred, true),
        "psnr_masked": psnr(pred, true, mask.float()), "ssim_masked": ssim(pred, true, mask.float()),
    }


def summarise(values: torch.Tensor) -> dict:
    """[B, V] -> copied (view 0) and imagined (views 1-3) means."""
    return {"copied_view": float(values[:, 0].mean()), "imagined_views": float(values[:, 1:].mean())}


def evaluate_split(teacher, split: str, count: int, args, device, out_dir: Path) -> dict:
    size = teacher.image_size
    layout = teacher.layout
    family = "heldout" if split == "heldout" else None
    seeds = [synthetic.split_seed(split, i) for i in range(count)]
    results = {"psnr": [], "ssim": [], "psnr_masked": [], "ssim_masked": [], "consistency_psnr": []}
    for start in range(0, count, args.batch):
        chunk = seeds[start : start + args.batch]
        objects = synthetic.batch_objects(chunk, args.num_gaussians, family=family).to(device)
        elevation = torch.zeros(len(chunk))
        cams = layout.cameras(size, size, elevation_deg=elevation, include_input=True).to(device)
        truth = render(objects, cams[:, : layout.num_views], background=None).rgba()
        inputs = render(objects, layout.input_camera(args.input_size, args.input_size, elevation).to(device), background=None).rgba()[:, 0]
        results.setdefault("camera_sensitivity", []).append(camera_sensitivity(teacher, inputs, truth, elevation))
        sim = teacher.simulate(inputs, seeds=list(range(start, start + len(chunk))), num_steps=args.steps)
        views = sim.views.to(device)
        for key, value in scores(views, truth).items():
            results[key].append(value.cpu())
        # Consistency: fit to 3 of the teacher's views, score the 4th; every view left out once.
        if args.fit_steps > 0:
            cams_out = cams[:, : layout.num_views]
            results["consistency_psnr"].append(leave_one_out_psnr(views, cams_out, args.fit_steps, args.fit_gaussians).cpu())
        if start == 0:
            rows = [torch.cat([torch.nn.functional.interpolate(inputs[i : i + 1], size=(size, size), mode="bilinear", antialias=True), views[i], truth[i]]) for i in range(min(4, len(chunk)))]
            image_grid(rows, out_dir / f"grid-{split}.png")
    sensitivity = results.pop("camera_sensitivity")
    merged = {k: torch.cat(v) for k, v in results.items() if v}
    report = {k: summarise(v) for k, v in merged.items() if k != "consistency_psnr"}
    report["camera_sensitivity"] = sum(sensitivity) / len(sensitivity)
    if "consistency_psnr" in merged:
        report["consistency_psnr_leave_one_out"] = float(merged["consistency_psnr"].mean())
    report["objects"] = count
    return report


@torch.no_grad()
def determinism(teacher, device, steps: int) -> dict:
    images = torch.rand(3, 4, 64, 64, generator=torch.Generator().manual_seed(0)).to(device)
    a = teacher.simulate(images, seeds=[1, 2, 3], num_steps=steps).views
    b = teacher.simulate(images, seeds=[1, 2, 3], num_steps=steps).views
    c = teacher.simulate(images[2:], seeds=[3], num_steps=steps).views
    return {"repeat_max_abs": float((a - b).abs().max()), "batch_position_max_abs": float((a[2] - c[0]).abs().max())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="a TinyMVDMPipeline folder")
    p.add_argument("--objects", type=int, default=100, help="per split")
    p.add_argument("--splits", default="val,heldout")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--num-gaussians", type=int, default=8192)
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--fit-gaussians", type=int, default=4096)
    p.add_argument("--fit-steps", type=int, default=400, help="0 skips the consistency fit (slow on a CPU)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    teacher = TinyTeacher.from_pretrained(args.teacher, device=device)
    report = {"teacher": args.teacher, "device": str(device), "steps": args.steps, "guidance_scale": teacher.default_guidance_scale}
    report["determinism"] = determinism(teacher, device, min(args.steps, 10))
    for split in args.splits.split(","):
        report[split] = evaluate_split(teacher, split, args.objects, args, device, out_dir)
        print(split, json.dumps(report[split]), flush=True)
    (out_dir / "teacher_quality.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
