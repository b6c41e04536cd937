"""How good is a distilled student? Against its teacher, against the truth, its determinism and its diversity.

    python benchmarks/distill_quality.py --quadruples runs/quads-test --truth runs/truth-test \\
        --pipeline main=runs/dd3g-tiny/pipeline --pipeline no-verification=runs/abl-nv/pipeline ... --out runs/eval

docs/design.md section 6, on held-out quadruples (a corpus of `test`-split objects, never trained on, turned into
quadruples by the teacher with `simulate.py`, and into ground-truth quadruples of the same rows and seeds with
`simulate.py --ground-truth`):
* student vs teacher: the student gets the quadruple's own N, C and II; its Gaussians rendered at C are compared
  with the teacher's OI at the teacher's resolution on white: PSNR / SSIM / LPIPS, full frame and masked (union
  of the two alphas); view 0 (the input camera) and the 3 novel views apart;
* the ceiling: a 3DGS fitted per sample to 3 of the 4 OI views and scored on the 4th (leave-one-view-out), the
  best any 3D generator can agree with a teacher whose views are not exactly consistent;
* student vs ground truth at the same cameras (and the teacher vs ground truth beside it);
* determinism: the same (image, N) twice, and alone vs inside a batch (max abs difference of the Gaussians, and
  max and mean abs difference of the renders);
* diversity: back-view (azimuth 180) LPIPS between the samples of different seeds for one image, for the student
  and for the teacher's own samples on the same seeds; with the front view's PSNR against the input image.
Writes OUT/distill_quality.json and OUT/distill_quality.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F


from dd3g.devices import choose_device
from dd3g.evaluation.fitting import leave_one_out_psnr
from dd3g.evaluation.metrics import LPIPS, psnr, ssim
from dd3g.gaussians import Gaussians
from dd3g.pipeline import DD3GPipeline
from dd3g.preprocess import composite_on
from dd3g.rendering import render
from training import data as shards
from training.distill import QuadrupleBatches

BACK_VIEW = 2  # azimuth 180 in the canonical layout


def perceptual(lpips_model, a, b) -> torch.Tensor:
    """LPIPS of [N, 3, s, s] pairs; views smaller than AlexNet's 31 px minimum (toy sizes) are upsampled first."""
    if a.shape[-1] < 32:
        a, b = (F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False) for x in (a, b))
    return lpips_model(a, b).flatten()


def compare(pred_rgba, true_rgba, lpips_model) -> dict:
    """Per-view scores on white, [B, V, 4, s, s] twice -> {name: [B, V]}; masked = union of the two alphas."""
    pred, true = composite_on(pred_rgba), composite_on(true_rgba)
    mask = ((pred_rgba[:, :, 3:] > 0.5) | (true_rgba[:, :, 3:] > 0.5)).float()
    return {
        "psnr": psnr(pred, true), "psnr_masked": psnr(pred, true, mask),
        "ssim": ssim(pred, true), "ssim_masked": ssim(pred, true, mask),
        "lpips": perceptual(lpips_model, pred.flatten(0, 1), true.flatten(0, 1)).view(pred.shape[:2]),
    }


def by_view(scores: dict) -> dict:
    """{name: [N, V]} -> {name: {all, input_view, novel_views}} means."""
    return {name: {"all": float(v.mean()), "input_view": float(v[:, 0].mean()), "novel_views": float(v[:, 1:].mean())}
            for name, v in scores.items()}


def student_gaussians(pipe: DD3GPipeline, batch: dict) -> Gaussians:
    """The student's Gaussians for (II, N, elevation), as the pipeline makes them.  -> Gaussians [B, N]"""
    count = batch["noise"].shape[0]
    return pipe.generate_from_rgba(batch["image"], batch["noise"], list(range(count)), batch["elevation"])


def student_views(pipe: DD3GPipeline, batch: dict, size: int, gaussians: Optional[Gaussians] = None) -> torch.Tensor:
    """The student's Gaussians (made here unless given) rendered at the canonical cameras.  -> [B, V, 4, s, s]"""
    gaussians = student_gaussians(pipe, batch) if gaussians is None else gaussians
    cams = pipe.view_layout.cameras(size, size, elevation_deg=batch["elevation"]).to(gaussians.means.device)
    return render(gaussians.to(dtype=torch.float32), cams, background=None).rgba().float()


def merge(chunks: list) -> dict:
    return {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}


def evaluate_pipeline(pipe, teacher_data, truth_data, indices, args, lpips_model, device) -> dict:
    size = teacher_data.batch([0])["views"].shape[-1]
    vs_teacher, vs_truth = [], []
    for start in range(0, len(indices), args.batch):
        chunk = indices[start : start + args.batch]
        batch = teacher_data.batch(chunk)
        pred = student_views(pipe, batch, size)
        vs_teacher.append(compare(pred, batch["views"].to(device), lpips_model))
        if truth_data is not None:
            vs_truth.append(compare(pred, truth_data.batch(chunk)["views"].to(device), lpips_model))
    report = {"vs_teacher": by_view(merge(vs_teacher))}
    if vs_truth:
        report["vs_truth"] = by_view(merge(vs_truth))
    report["determinism"] = determinism(pipe, teacher_data, indices[: min(4, len(indices))], size)
    report["diversity"] = diversity(pipe, teacher_data, args, lpips_model, size, device)
    return report


def determinism(pipe, teacher_data, indices, size) -> dict:
    """The same inputs twice must give the same renders to the bit. The last sample of a batch made alone may differ
    by float rounding (batched kernels are not bit-identical across batch sizes): its Gaussians by ~1e-5, its
    render more at a few pixels, where such a change moves a fragment across the rasterizer's 1/255 alpha cut-off
    or swaps two splats at one depth (up to ~0.004 there, ~1e-6 in the mean). A sample that depended on its
    batch (another sample's noise or image) would move its Gaussians and the mean of its render far more."""
    batch = teacher_data.batch(indices)
    alone_batch = {k: v[-1:] for k, v in batch.items()}
    together, alone = student_gaussians(pipe, batch), student_gaussians(pipe, alone_batch)
    a, b = student_views(pipe, batch, size, together), student_views(pipe, batch, size)
    alone_views = student_views(pipe, alone_batch, size, alone)
    # The batch pads each sample's photo surfels to the batch's largest count with transparent ones, after its own.
    # Scales and rotations are left out: a surfel's follow the nearer of two neighbours (input_view._tangent), which
    # rounding can swap (the shipped stage-4 student: 0.098 in one of them, its render 2.4e-4).
    own = alone.means.shape[1]
    gaussians_diff = max(float((getattr(together, name)[-1:, :own] - getattr(alone, name)).abs().max())
                         for name in ("means", "opacities", "sh_dc"))
    position_diff = (a[-1:] - alone_views).abs()
    return {"repeat_max_abs": float((a - b).abs().max()), "batch_position_gaussians_max_abs": gaussians_diff,
            "batch_position_max_abs": float(position_diff.max()), "batch_position_mean_abs": float(position_diff.mean())}


def diversity(pipe, teacher_data, args, lpips_model, size, device) -> dict:
    """Mean pairwise back-view LPIPS across the seeds of one image, student vs teacher; front-view fidelity; and
    whether the student follows its own N: its MSE against its own seed's views vs the other seeds' views, beside
    the floor of any N-blind model (the teacher's seed-mean against each seed)."""
    seeds = args.seeds_per_image
    student_spread, teacher_spread, student_front, teacher_front = [], [], [], []
    own, other, blind_floor = [], [], []
    for image in range(args.diversity_images):
        batch = teacher_data.batch([image * seeds + j for j in range(seeds)])
        pred, taught = student_views(pipe, batch, size), batch["views"].to(device)
        for i, j in itertools.combinations(range(seeds), 2):
            student_spread.append(float(perceptual(lpips_model, composite_on(pred[i, BACK_VIEW])[None], composite_on(pred[j, BACK_VIEW])[None])))
            teacher_spread.append(float(perceptual(lpips_model, composite_on(taught[i, BACK_VIEW])[None], composite_on(taught[j, BACK_VIEW])[None])))
        source = composite_on(F.interpolate(batch["image"], size=(size, size), mode="bilinear", antialias=True)).to(device)
        student_front.append(psnr(composite_on(pred[:, 0]), source).mean().item())
        teacher_front.append(psnr(composite_on(taught[:, 0]), source).mean().item())
        pred_rgb, taught_rgb = composite_on(pred), composite_on(taught)  # [S, V, 3, s, s]
        pairwise = ((pred_rgb[:, None] - taught_rgb[None]) ** 2).flatten(2).mean(-1)  # [S student, S teacher]
        own.append(pairwise.diagonal().mean().item())
        other.append(pairwise[~torch.eye(seeds, dtype=torch.bool, device=pairwise.device)].mean().item())
        blind_floor.append(((taught_rgb - taught_rgb.mean(0, keepdim=True)) ** 2).mean().item())
    mean = lambda xs: sum(xs) / max(1, len(xs))  # noqa: E731
    return {
        "images": args.diversity_images, "seeds_per_image": seeds,
        "back_view_lpips_student": mean(student_spread), "back_view_lpips_teacher": mean(teacher_spread),
        "spread_ratio": mean(student_spread) / max(1e-8, mean(teacher_spread)),
        "front_view_psnr_vs_input_student": mean(student_front), "front_view_psnr_vs_input_teacher": mean(teacher_front),
        # N-use: own < other means the student's output follows its N; floor = what no N-blind model can go below.
        "mse_vs_own_seed": mean(own), "mse_vs_other_seeds": mean(other), "mse_floor_of_n_blind_model": mean(blind_floor),
    }


def ceiling(teacher_data, truth_data, indices, args, device) -> dict:
    """Leave-one-view-out PSNR of per-sample 3DGS fits to the teacher's views (and to the true views)."""
    from dd3g.cameras import ViewLayout

    out = {}
    for name, source in (("teacher_views", teacher_data), ("true_views", truth_data)):
        if source is None or args.fit_steps <= 0:
            continue
        scores = []
        for start in range(0, len(indices), args.batch):
            batch = source.batch(indices[start : start + args.batch])
            size = batch["views"].shape[-1]
            cams = ViewLayout().cameras(size, size, elevation_deg=batch["elevation"]).to(device)
            scores.append(leave_one_out_psnr(batch["views"].to(device), cams, args.fit_steps, args.fit_gaussians).cpu())
        out[name] = float(torch.cat(scores).mean())
    return out


def markdown(report: dict) -> str:
    lines = [f"Held-out quadruples: {report['quadruples']} ({report['device']}); ceiling (leave-one-view-out 3DGS fit to "
             f"the teacher's views): {report['ceiling'].get('teacher_views', float('nan')):.2f} dB.", "",
             "| model | vs teacher PSNR (novel / input) | masked PSNR | SSIM | LPIPS | vs truth PSNR (novel / input) | LPIPS vs truth "
             "| back-view LPIPS across seeds (student / teacher) | front vs input PSNR |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["models"].items():
        t, g, d = r["vs_teacher"], r.get("vs_truth"), r["diversity"]
        truth = f"{g['psnr']['novel_views']:.2f} / {g['psnr']['input_view']:.2f}" if g else "-"
        truth_lpips = f"{g['lpips']['all']:.3f}" if g else "-"
        lines.append(
            f"| {name} | {t['psnr']['novel_views']:.2f} / {t['psnr']['input_view']:.2f} | {t['psnr_masked']['all']:.2f} "
            f"| {t['ssim']['all']:.3f} | {t['lpips']['all']:.3f} | {truth} | {truth_lpips} "
            f"| {d['back_view_lpips_student']:.3f} / {d['back_view_lpips_teacher']:.3f} | {d['front_view_psnr_vs_input_student']:.2f} |")
    if "teacher_vs_truth" in report:
        g = report["teacher_vs_truth"]
        lines.append(f"| (the teacher itself) | - | - | - | - | {g['psnr']['novel_views']:.2f} / {g['psnr']['input_view']:.2f} "
                     f"| {g['lpips']['all']:.3f} | - | - |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quadruples", required=True, help="the teacher's held-out quadruples (simulate.py)")
    p.add_argument("--truth", default=None, help="ground-truth quadruples of the same corpus and seeds (simulate.py --ground-truth)")
    p.add_argument("--pipeline", action="append", required=True, metavar="NAME=DIR", help="a DD3GPipeline folder; repeat to compare")
    p.add_argument("--count", type=int, default=128, help="quadruples scored (>= 100 for the docs/design.md figure)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--diversity-images", type=int, default=16)
    p.add_argument("--fit-steps", type=int, default=300, help="ceiling fits; 0 skips them")
    p.add_argument("--fit-gaussians", type=int, default=4096)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1... (default: cuda if available)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    device = torch.device(choose_device(args.device))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipelines = {}
    for spec in args.pipeline:
        name, sep, folder = spec.partition("=")
        if not sep:
            raise SystemExit(f"--pipeline {spec!r}: expected NAME=DIR")
        pipelines[name] = DD3GPipeline.from_pretrained(folder).to(device)
    noise_shape = next(iter(pipelines.values())).student.noise_shape
    manifest = shards.read_manifest(args.quadruples) or {}
    args.seeds_per_image = int(manifest.get("seeds_per_image", 4))
    teacher_data = QuadrupleBatches(args.quadruples, noise_shape)
    truth_data = QuadrupleBatches(args.truth, noise_shape) if args.truth else None
    if truth_data is not None and len(truth_data.rows) != len(teacher_data.rows):
        raise SystemExit(f"--truth has {len(truth_data.rows)} rows, --quadruples {len(teacher_data.rows)}: not the same corpus and seeds")
    count = min(args.count, len(teacher_data.rows))
    args.diversity_images = min(args.diversity_images, len(teacher_data.rows) // args.seeds_per_image)
    indices = list(range(count))
    lpips_model = LPIPS.from_pretrained().to(device)
    report = {"quadruples": count, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "teacher_id": manifest.get("teacher_id"), "models": {}}
    with torch.no_grad():
        for name, pipe in pipelines.items():
            report["models"][name] = evaluate_pipeline(pipe, teacher_data, truth_data, indices, args, lpips_model, device)
            print(name, json.dumps(report["models"][name]["vs_teacher"]["psnr"]), flush=True)
        if truth_data is not None:
            chunks = [compare(teacher_data.batch(indices[s : s + args.batch])["views"].to(device),
                              truth_data.batch(indices[s : s + args.batch])["views"].to(device), lpips_model)
                      for s in range(0, count, args.batch)]
            report["teacher_vs_truth"] = by_view(merge(chunks))
    report["ceiling"] = ceiling(teacher_data, truth_data, indices, args, device)
    (out / "distill_quality.json").write_text(json.dumps(report, indent=1))
    (out / "distill_quality.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
