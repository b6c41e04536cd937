"""Score DD3G on the real scans: exact mesh renders as ground truth, per object and per view.

    python benchmarks/eval_real.py --objects ../shared/eval/real --out runs/eval-real [--checkpoint hub/dd3g-tiny]

For each GLB (sorted): load + normalise (dd3g.mesh_render: Z-up -> Y-up, bounding box centred, bounding
sphere radius 0.5), render the ground truth (cached as PNGs under OUT/cache/, keyed by the file's sha256
and the render settings) at the input view (azimuth 0, elevation 0; the ViewLayout's radius and fov),
the 4 canonical views (azimuth 0/90/180/270, elevation 0) and a turntable (azimuth k * 360/N, elevation
--turntable-elevation). The pipeline gets the input view's RGBA; its Gaussians are rendered at the same
cameras on white and scored with PSNR/SSIM/LPIPS full frame and PSNR/SSIM masked by the true alpha > 0.5.

Caveat (written into results.json): the pipeline recentres and rescales the input image, so the predicted
object's scale/position may differ from the ground truth's; renders are compared at the same cameras anyway.
Novel views = every view except the input view and canonical azimuth 0 (which is the same camera).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dd3g.cameras import Cameras, ViewLayout, orbit_cameras  # noqa: E402
from dd3g.mesh_render import composite, load_scan, render_mesh  # noqa: E402
from dd3g.metrics import lpips, psnr, ssim  # noqa: E402
from dd3g.rendering import render  # noqa: E402

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "hub" / "dd3g-tiny"
SCALE_NOTE = ("the pipeline recentres/rescales the input image before predicting, so the predicted object's "
              "scale and position can differ from the ground truth's; renders are compared at the same cameras anyway")
METRICS = ("psnr", "ssim", "lpips", "psnr_masked", "ssim_masked")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objects", type=Path, required=True, help="folder of .glb scans")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--turntable", type=int, default=8, help="turntable views (azimuth k * 360 / N)")
    p.add_argument("--turntable-elevation", type=float, default=15.0)
    p.add_argument("--supersample", type=int, default=2)
    p.add_argument("--grid-objects", type=int, default=4)
    return p.parse_args(argv)


def view_specs(turntable: int, turntable_elevation: float, layout: ViewLayout):
    """[(name, azimuth, elevation)]: input, canonical layout, turntable."""
    specs = [("input", 0.0, 0.0)]
    specs += [(f"canon_{int(round(a)):03d}", float(a), 0.0) for a in layout.azimuths().tolist()]
    specs += [(f"turn_{k * 360.0 / turntable:05.1f}", k * 360.0 / turntable, turntable_elevation) for k in range(turntable)]
    return specs


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def to_png(rgba: torch.Tensor, path: Path) -> None:
    """[4, H, W] in [0, 1] -> RGBA PNG."""
    array = (rgba.permute(1, 2, 0).clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    Image.fromarray(array, "RGBA").save(path)


def from_png(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGBA"), np.float32) / 255.0).permute(2, 0, 1)


def ground_truth(path: Path, cameras: Cameras, names, args, cache_root: Path, layout: ViewLayout) -> torch.Tensor:
    """RGBA [V, 4, H, W], rendered once and cached (8-bit PNGs: the cached and fresh runs score the same)."""
    settings = dict(size=args.size, supersample=args.supersample, radius=layout.radius, fov=layout.fov_deg,
                    views=[n for n in names], turntable_elevation=args.turntable_elevation, version=1)
    key = hashlib.sha256((file_sha256(path) + json.dumps(settings, sort_keys=True)).encode()).hexdigest()[:24]
    folder = cache_root / f"{path.stem}-{key}"
    files = [folder / f"{name}.png" for name in names]
    if not all(f.exists() for f in files):
        mesh = load_scan(path)
        rgba = render_mesh(mesh, cameras, args.size, args.size, supersample=args.supersample)
        folder.mkdir(parents=True, exist_ok=True)
        for view, f in zip(rgba, files):
            to_png(view, f)
    return torch.stack([from_png(f) for f in files])


def score(pred_rgb: torch.Tensor, gt_rgba: torch.Tensor) -> dict:
    """pred_rgb [V, 3, H, W] on white, gt_rgba [V, 4, H, W] -> {metric: [V] list}."""
    gt_rgb = composite(gt_rgba)
    mask = (gt_rgba[:, 3:4] > 0.5).float()
    with torch.no_grad():
        values = dict(
            psnr=psnr(pred_rgb, gt_rgb), ssim=ssim(pred_rgb, gt_rgb), lpips=lpips(pred_rgb, gt_rgb),
            psnr_masked=psnr(pred_rgb, gt_rgb, mask), ssim_masked=ssim(pred_rgb, gt_rgb, mask),
        )
    empty = mask.flatten(1).sum(1) == 0  # e.g. a flat object seen edge-on: masked scores are undefined
    for key in ("psnr_masked", "ssim_masked"):
        values[key] = torch.where(empty, torch.full_like(values[key], float("nan")), values[key])
    return {k: [float(x) for x in v.reshape(-1)] for k, v in values.items()}


def _clean(value):
    """NaN (undefined masked score) -> None, so results.json stays strict JSON."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _nanmean(values) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def mean_over(views: dict, names) -> dict:
    """Mean per metric over views; views with an undefined (NaN) masked score are left out of that metric."""
    return {m: _nanmean([views[n][m] for n in names]) for m in METRICS}


def bar_chart(rows, path: Path) -> None:
    """Per-object PSNR bars (input view and novel views), drawn with PIL (matplotlib is not a dependency)."""
    width, bar_h, gap, left = 760, 12, 8, 230
    height = 40 + len(rows) * (2 * bar_h + gap) + 20
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    top = max([30.0] + [max(r["input"]["psnr"], r["novel"]["psnr"]) for r in rows])
    scale = (width - left - 60) / top
    draw.text((10, 8), "PSNR (dB), full frame on white: input view (blue), novel views (orange)", fill="black")
    y = 35
    for row in rows:
        draw.text((10, y + bar_h // 2), row["name"][:34], fill="black")
        for k, (key, colour) in enumerate((("input", (60, 110, 200)), ("novel", (230, 140, 40)))):
            value = row[key]["psnr"]
            y0 = y + k * bar_h
            draw.rectangle([left, y0, left + max(1, int(value * scale)), y0 + bar_h - 2], fill=colour)
            draw.text((left + int(value * scale) + 4, y0), f"{value:.1f}", fill="black")
        y += 2 * bar_h + gap
    image.save(path)


def grid_png(entries, path: Path) -> None:
    """Per object: a ground-truth row and a prediction row (RGB on white, [V, 3, H, W] each)."""
    rows = []
    for gt_rgb, pred_rgb in entries:
        rows += [torch.cat(list(gt_rgb), -1), torch.cat(list(pred_rgb), -1)]
    if not rows:
        return
    image = torch.cat(rows, -2).permute(1, 2, 0).clamp(0, 1).numpy()
    Image.fromarray((image * 255 + 0.5).astype(np.uint8)).save(path)


def load_pipeline(checkpoint: Path):
    if not Path(checkpoint).exists():
        raise SystemExit(f"eval_real: checkpoint {checkpoint} does not exist (no shipped dd3g-tiny yet?); pass --checkpoint PATH")
    from dd3g.pipeline import DD3GPipeline

    return DD3GPipeline.from_pretrained(str(checkpoint))


def main(argv=None) -> dict:
    args = parse_args(argv)
    files = sorted(p for p in Path(args.objects).iterdir() if p.suffix.lower() in (".glb", ".gltf"))
    if args.limit is not None:
        files = files[: args.limit]
    if not files:
        raise SystemExit(f"eval_real: no .glb files in {args.objects}")
    pipe = load_pipeline(args.checkpoint)
    layout = pipe.view_layout if hasattr(pipe, "view_layout") else ViewLayout()
    args.out.mkdir(parents=True, exist_ok=True)
    specs = view_specs(args.turntable, args.turntable_elevation, layout)
    names = [s[0] for s in specs]
    cameras = orbit_cameras(torch.tensor([s[1] for s in specs]), torch.tensor([s[2] for s in specs]),
                            args.size, args.size, layout.radius, layout.fov_deg)
    novel = [n for n in names if n not in ("input", "canon_000")]
    objects, chart_rows, grid_entries = {}, [], []
    for path in files:
        start = time.time()
        try:
            gt = ground_truth(path, cameras, names, args, args.out / "cache", layout)
        except Exception as error:  # a broken or untextured file must not stop the run
            reason = f"{type(error).__name__}: {error}".splitlines()[0].replace(str(path), path.name)
            print(f"[eval_real] skipped {path.name}: {reason}", flush=True)
            objects[path.name] = {"skipped": reason}
            continue
        input_rgba = (gt[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        gaussians = pipe(input_rgba, seeds=[args.seed]).gaussians
        with torch.no_grad():
            out = render(gaussians, cameras, args.size, args.size, background=(1.0, 1.0, 1.0))
        pred_rgb = out.rgb.reshape(-1, len(names), 3, args.size, args.size)[0].clamp(0, 1)
        values = score(pred_rgb, gt)
        views = {n: {m: values[m][i] for m in METRICS} for i, n in enumerate(names)}
        entry = {"views": views, "input": views["input"], "novel": mean_over(views, novel),
                 "seconds": round(time.time() - start, 3)}
        objects[path.name] = entry
        chart_rows.append({"name": path.stem, "input": entry["input"], "novel": entry["novel"]})
        if len(grid_entries) < args.grid_objects:
            pick = [names.index(n) for n in ["input"] + [n for n in names if n.startswith("canon_")][1:]]
            grid_entries.append((composite(gt[pick]), pred_rgb[pick]))
        print(f"[eval_real] {path.name}: input PSNR {entry['input']['psnr']:.2f} novel PSNR {entry['novel']['psnr']:.2f} "
              f"({entry['seconds']:.1f}s)", flush=True)
    scored = [o for o in objects.values() if "skipped" not in o]
    summary = {}
    if scored:
        summary = {k: {m: _nanmean([o[k][m] for o in scored]) for m in METRICS} for k in ("input", "novel")}
    results = {
        "checkpoint": str(args.checkpoint), "seed": args.seed, "size": args.size, "supersample": args.supersample,
        "views": [{"name": n, "azimuth": a, "elevation": e} for n, a, e in specs], "novel_views": novel,
        "radius": layout.radius, "fov_deg": layout.fov_deg, "note": SCALE_NOTE,
        "num_scored": len(scored), "num_skipped": len(objects) - len(scored), "mean": summary, "objects": objects,
    }
    (args.out / "results.json").write_text(json.dumps(_clean(results), indent=2, allow_nan=False))
    lines = ["| object | PSNR in | SSIM in | LPIPS in | PSNR novel | SSIM novel | LPIPS novel | PSNR novel (masked) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, o in objects.items():
        if "skipped" in o:
            lines.append(f"| {name} | skipped: {o['skipped']} | | | | | | |")
            continue
        i, n = o["input"], o["novel"]
        lines.append(f"| {name} | {i['psnr']:.2f} | {i['ssim']:.3f} | {i['lpips']:.3f} | {n['psnr']:.2f} | "
                     f"{n['ssim']:.3f} | {n['lpips']:.3f} | {n['psnr_masked']:.2f} |")
    if summary:
        i, n = summary["input"], summary["novel"]
        lines.append(f"| **mean** | {i['psnr']:.2f} | {i['ssim']:.3f} | {i['lpips']:.3f} | {n['psnr']:.2f} | "
                     f"{n['ssim']:.3f} | {n['lpips']:.3f} | {n['psnr_masked']:.2f} |")
    (args.out / "results.md").write_text(
        f"# Real scans ({len(scored)} scored, {len(objects) - len(scored)} skipped)\n\n"
        f"Checkpoint `{args.checkpoint}`, seed {args.seed}, {args.size} px, white background. Note: {SCALE_NOTE}.\n\n"
        + "\n".join(lines) + "\n")
    if chart_rows:
        bar_chart(chart_rows, args.out / "psnr_per_object.png")
    grid_png(grid_entries, args.out / "grid.png")
    print(f"[eval_real] wrote {args.out / 'results.json'} ({len(scored)} scored, {len(objects) - len(scored)} skipped)")
    return results


if __name__ == "__main__":
    main()
