"""Score DD3G on the real scans against exact mesh renders, beside trivial predictions, in the model's frame.

    python benchmarks/eval_real.py --objects ../shared/eval/real --out runs/eval-real [--checkpoint hub/dd3g-tiny]
    python benchmarks/eval_real.py --objects ../shared/eval/real --out runs/eval-real/baselines --baselines-only

For each GLB (sorted): load + normalise (dd3g.rendering.mesh_renderer: Z-up -> Y-up, bounding box centred, bounding
sphere radius 0.5) and render the input view (azimuth 0, elevation 0; the ViewLayout's radius and fov). That
RGBA is what the pipeline gets.

The model's frame. The pipeline recentres and rescales its input (dd3g.preprocess: the alpha box's longer side
becomes the pipeline's `foreground_ratio` of the side, centred), so its object lives in another frame than the
scan. The truth is moved into the frame the model was given: a similarity (scale s about the origin, then a
shift (tx, ty) in the input camera's image plane, i.e. world X/Y) chosen so that the transformed mesh's
projected box at the input camera has the centre and longer side the preprocessing gives the input's box
(solved on the mesh's vertices, so perspective is accounted for). The framed input (the pipeline's
preprocessing at this evaluation's size) and the truth's input render then share their alpha box to a pixel.
The transformed mesh is rendered at the input view, the 4 canonical views (azimuth 0/90/180/270, elevation 0)
and a turntable (azimuth k * 360/N, elevation --turntable-elevation). Renders are cached as PNGs under
OUT/cache/ (or --cache), keyed by the file's sha256, the render settings and the transform's values.

Predictions, all scored the same way (PSNR/SSIM/LPIPS on white full frame; PSNR/SSIM masked by true alpha > 0.5;
the silhouette IoU of alpha > 0.5, prediction against truth, which tells a shape that covers the object from one
that shows the background through it; the brightness bias, the mean luminance minus the truth's where both
silhouettes cover the pixel, which tells a prediction that darkens the sides it does not see):
- model: the pipeline's Gaussians for the input view's RGBA (skipped with --baselines-only);
- copy: the framed input view put at every camera;
- mirror: the copy, mirrored left-right at cameras behind the object (|azimuth| > 90);
- card: the framed input's pixels as a plane of Gaussians through the origin facing the input camera;
- revolve: the framed input's silhouette revolved about the vertical axis (radius per image row = half the
  row's alpha width), coloured from the input's pixels, rendered as a mesh.
And, as references (not predictions: no model is given the truth), the ceilings of resolution: the true views
passed through --ceilings px (area down, bilinear up to the evaluation's size), i.e. what a model that got every
view exactly right at that resolution would score; at 64 px, the teacher's and the student's frames, it bounds what
any model distilled at that size can reach.
--teacher DIR adds the teacher the model was distilled from, scored where it has views: its 4 views of one sample
(seed --seed, its own steps and guidance) from the same framed input, at its own size and bilinearly up, are the
canonical views; each prediction's mean over the 3 canonical novel views (azimuth 90/180/270) is reported beside the
teacher's ("canonical" below), which says whether what the student copies is ahead of the trivial predictions.
Novel views = every view except the input view and canonical azimuth 0 (the same camera). The summary gives
each prediction's means, the model against each trivial one, and on how many objects the model's novel-view
score beats the best trivial prediction's on that object (PSNR higher, LPIPS lower).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from dd3g.cameras import ViewLayout, orbit_cameras
from dd3g.evaluation.metrics import lpips, psnr, ssim
from dd3g.evaluation.real_scans import (BASELINES, Scan, card_render, copy_prediction, frame_input, mirror_prediction,
                                        mirrored, read_framing, to_uint8)
from dd3g.pipeline import DEFAULT_CHECKPOINT
from dd3g.rendering import render
from dd3g.preprocess import composite_on

FRAME_NOTE = ("the truth is rendered in the model's frame: scaled about the origin and shifted in the input camera's "
              "image plane so that its input view's alpha box is where the pipeline's preprocessing (recentring, "
              "foreground_ratio) puts the input's; every prediction is scored against that")
METRICS = ("psnr", "ssim", "lpips", "psnr_masked", "ssim_masked", "silhouette_iou", "brightness_bias")
LUMA = (0.299, 0.587, 0.114)  # Rec. 601 weights of R, G, B


def brightness_bias(pred_rgb: torch.Tensor, gt_rgba: torch.Tensor, pred_alpha: torch.Tensor) -> torch.Tensor:
    """pred_rgb [V, 3, H, W] on white, gt_rgba [V, 4, H, W], pred_alpha [V, 1, H, W] -> [V]: the prediction's mean
    luminance minus the truth's, in 1/255, where both cover the pixel (alpha > 0.5: a silhouette that misses the
    object shows white, which is a shape error, not a colour one); NaN where they share no pixel. Negative: darker
    than the object, e.g. a teacher that learned shaded sides from a lit world, scored against unlit albedo."""
    weights = pred_rgb.new_tensor(LUMA).view(1, 3, 1, 1)
    mask = ((gt_rgba[:, 3:4] > 0.5) & (pred_alpha > 0.5)).float()  # [V, 1, H, W]
    difference = ((pred_rgb - composite_on(gt_rgba)) * weights).sum(1, keepdim=True) * mask  # [V, 1, H, W]
    area = mask.flatten(1).sum(1)  # [V]
    return torch.where(area > 0, 255 * difference.flatten(1).sum(1) / area.clamp_min(1), torch.full_like(area, float("nan")))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objects", type=Path, required=True, help="folder of .glb scans")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                   help="the pipeline; with --baselines-only only its framing (model_index.json) is read, if present")
    p.add_argument("--baselines-only", action="store_true", help="score the trivial predictions only (no model)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cache", type=Path, default=None,
                   help="render cache (default OUT/cache); share one between runs, e.g. the baselines' and a model's")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--turntable", type=int, default=8, help="turntable views (azimuth k * 360 / N)")
    p.add_argument("--turntable-elevation", type=float, default=15.0)
    p.add_argument("--supersample", type=int, default=2)
    p.add_argument("--grid-objects", type=int, default=4)
    p.add_argument("--teacher", type=Path, default=None,
                   help="also score this teacher's own 4 views at the canonical cameras (one sample a scan; minutes on a CPU)")
    p.add_argument("--ceilings", type=int, nargs="*", default=[64, 128],
                   help="score the true views passed through these resolutions, as references (none: skip)")
    return p.parse_args(argv)


def view_specs(turntable: int, turntable_elevation: float, layout: ViewLayout):
    """[(name, azimuth, elevation)]: input, canonical layout, turntable."""
    specs = [("input", 0.0, 0.0)]
    specs += [(f"canon_{int(round(a)):03d}", float(a), 0.0) for a in layout.azimuths().tolist()]
    specs += [(f"turn_{k * 360.0 / turntable:05.1f}", k * 360.0 / turntable, turntable_elevation) for k in range(turntable)]
    return specs


def through_resolution(gt_rgba: torch.Tensor, side: int) -> tuple:
    """The truth as a perfect model at side x side px would show it: gt_rgba [V, 4, S, S] -> (RGB on white
    [V, 3, S, S], alpha [V, 1, S, S]), area-averaged down to side and bilinearly up again."""
    size = gt_rgba.shape[-2:]
    low = F.interpolate(torch.cat([composite_on(gt_rgba), gt_rgba[:, 3:]], 1), size=(side, side), mode="area")
    up = F.interpolate(low, size=size, mode="bilinear", align_corners=False).clamp(0, 1)  # [V, 4, S, S]
    return up[:, :3], up[:, 3:]


def silhouette_iou(pred_alpha: torch.Tensor, gt_alpha: torch.Tensor) -> torch.Tensor:
    """[V, 1, H, W] each -> [V]: |both| / |either| of alpha > 0.5; NaN where neither has any such pixel."""
    pred, gt = (pred_alpha > 0.5).flatten(1), (gt_alpha > 0.5).flatten(1)  # [V, H*W]
    union = (pred | gt).sum(1).float()
    return torch.where(union > 0, (pred & gt).sum(1).float() / union.clamp_min(1), torch.full_like(union, float("nan")))


def score(pred_rgb: torch.Tensor, gt_rgba: torch.Tensor, pred_alpha: torch.Tensor) -> dict:
    """pred_rgb [V, 3, H, W] on white, gt_rgba [V, 4, H, W], pred_alpha [V, 1, H, W] -> {metric: [V] list}."""
    gt_rgb = composite_on(gt_rgba)  # [V, 3, H, W]
    mask = (gt_rgba[:, 3:4] > 0.5).float()  # [V, 1, H, W]
    with torch.no_grad():
        values = dict(
            psnr=psnr(pred_rgb, gt_rgb), ssim=ssim(pred_rgb, gt_rgb), lpips=lpips(pred_rgb, gt_rgb),
            psnr_masked=psnr(pred_rgb, gt_rgb, mask), ssim_masked=ssim(pred_rgb, gt_rgb, mask),
            silhouette_iou=silhouette_iou(pred_alpha, gt_rgba[:, 3:4]), brightness_bias=brightness_bias(pred_rgb, gt_rgba, pred_alpha),
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


def scored_entry(pred_rgb: torch.Tensor, gt: torch.Tensor, names, novel, pred_alpha: torch.Tensor) -> dict:
    values = score(pred_rgb, gt, pred_alpha)
    views = {n: {m: values[m][i] for m in METRICS} for i, n in enumerate(names)}
    return {"views": views, "input": views["input"], "novel": mean_over(views, novel)}


def teacher_views(teacher, framed: torch.Tensor, seed: int, size: int) -> tuple:
    """The teacher's one sample of its 4 views from the framed input [4, S, S] -> (RGB on white [4, 3, size, size],
    alpha [4, 1, size, size]), bilinearly up from its own size."""
    with torch.no_grad():
        views = teacher.simulate(framed[None].to(teacher.device), [seed]).views[0].float().cpu()  # [4, 4, s, s]
    up = F.interpolate(views, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)  # [4, 4, S, S]
    return composite_on(up), up[:, 3:]


def canonical_means(entry: dict, canonical_novel) -> dict:
    """{prediction: mean per metric over the canonical novel views} for every scored prediction of one object."""
    return {p: mean_over(e["views"], canonical_novel) for p, e in entry.items() if isinstance(e, dict) and "views" in e}


def count_wins(objects: dict, model: str = "model", baselines=BASELINES) -> dict:
    """On how many objects the model's novel-view score beats the best trivial prediction on that object.

    objects: {name: {prediction: {"novel": {metric: value}}}} (skipped objects have no predictions).
    """
    scored = [o for o in objects.values() if model in o]
    psnr_wins = sum(o[model]["novel"]["psnr"] > max(o[b]["novel"]["psnr"] for b in baselines) for o in scored)
    lpips_wins = sum(o[model]["novel"]["lpips"] < min(o[b]["novel"]["lpips"] for b in baselines) for o in scored)
    return {"psnr": int(psnr_wins), "lpips": int(lpips_wins), "objects": len(scored)}


def comparison(summary: dict, model: str = "model", baselines=BASELINES) -> dict:
    """The model's mean against each trivial prediction's, for PSNR and LPIPS at the input and novel views."""
    return {b: {f"{group}_{metric}": {"model": summary[model][group][metric], b: summary[b][group][metric]}
                for group in ("input", "novel") for metric in ("psnr", "lpips")} for b in baselines}


def bar_chart(rows, path: Path, label: str) -> None:
    """Per-object PSNR bars (input view and novel views), drawn with PIL (matplotlib is not a dependency)."""
    width, bar_h, gap, left = 760, 12, 8, 230
    height = 40 + len(rows) * (2 * bar_h + gap) + 20
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    top = max([30.0] + [max(r["input"]["psnr"], r["novel"]["psnr"]) for r in rows])
    scale = (width - left - 60) / top
    draw.text((10, 8), f"{label}: PSNR (dB), full frame on white: input view (blue), novel views (orange)", fill="black")
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


def grid_png(blocks, path: Path) -> None:
    """Per object a block of rows (ground truth, then each prediction), each row RGB [V, 3, H, W] on white."""
    rows = [torch.cat(list(row), -1) for block in blocks for row in block]  # each [3, H, V * W]
    if not rows:
        return
    image = torch.cat(rows, -2).permute(1, 2, 0).clamp(0, 1).numpy()  # [R * H, V * W, 3]
    Image.fromarray((image * 255 + 0.5).astype(np.uint8)).save(path)


def load_pipeline(checkpoint: Path):
    if not Path(checkpoint).exists():
        raise SystemExit(f"eval_real: checkpoint {checkpoint} does not exist (no shipped dd3g-tiny yet?); pass --checkpoint PATH")
    from dd3g.pipeline import DD3GPipeline

    return DD3GPipeline.from_pretrained(str(checkpoint))


def write_markdown(results: dict, path: Path) -> None:
    predictions, summary, objects = results["predictions"], results["mean"], results["objects"]
    lines = [f"# Real scans ({results['num_scored']} scored, {results['num_skipped']} skipped)", "",
             f"Checkpoint `{results['checkpoint']}`" + (" (framing only: --baselines-only)" if "model" not in predictions else "")
             + f", seed {results['seed']}, {results['size']} px, white background, framing {results['framing']}.",
             f"Note: {results['note']}.", "", "## Means", "",
             "| prediction | PSNR in | SSIM in | LPIPS in | PSNR novel | SSIM novel | LPIPS novel | PSNR novel (masked) | "
             "silhouette IoU in / novel | brightness in / novel (/255) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in predictions:
        if name in summary:
            i, n = summary[name]["input"], summary[name]["novel"]
            lines.append(f"| {name} | {i['psnr']:.2f} | {i['ssim']:.3f} | {i['lpips']:.3f} | {n['psnr']:.2f} | "
                         f"{n['ssim']:.3f} | {n['lpips']:.3f} | {n['psnr_masked']:.2f} | "
                         f"{i['silhouette_iou']:.3f} / {n['silhouette_iou']:.3f} | "
                         f"{i['brightness_bias']:+.1f} / {n['brightness_bias']:+.1f} |")
    references = results.get("references", [])
    if references and all(r in summary for r in references):
        lines += ["", "## Ceilings of resolution (the true views through fewer pixels; references, not predictions)", "",
                  "| reference | PSNR novel | SSIM novel | LPIPS novel |", "|---|---|---|---|"]
        lines += [f"| {r} | {summary[r]['novel']['psnr']:.2f} | {summary[r]['novel']['ssim']:.3f} | "
                  f"{summary[r]['novel']['lpips']:.3f} |" for r in references]
    if "wins" in results:
        w = results["wins"]
        lines += ["", "## The model against each trivial prediction (means)", "",
                  "| trivial | PSNR in (model / it) | LPIPS in | PSNR novel | LPIPS novel |", "|---|---|---|---|---|"]
        for b, c in results["comparison"].items():
            cells = [f"{c[k]['model']:.2f} / {c[k][b]:.2f}" if "psnr" in k else f"{c[k]['model']:.3f} / {c[k][b]:.3f}"
                     for k in ("input_psnr", "input_lpips", "novel_psnr", "novel_lpips")]
            lines.append(f"| {b} | " + " | ".join(cells) + " |")
        lines += ["", f"The model beats the best trivial prediction at novel views on {w['psnr']} of {w['objects']} "
                  f"objects by PSNR and on {w['lpips']} of {w['objects']} by LPIPS."]
    if "canonical_mean" in results:
        views = ", ".join(results["canonical_novel_views"])
        lines += ["", f"## The teacher `{results['teacher']}` at its own views ({views})", "",
                  "Every prediction's mean over the canonical novel views only, where the teacher has views "
                  "(one sample a scan).", "",
                  "| prediction | PSNR | SSIM | LPIPS | silhouette IoU | brightness (/255) |", "|---|---|---|---|---|---|"]
        for name, c in results["canonical_mean"].items():
            lines.append(f"| {name} | {c['psnr']:.2f} | {c['ssim']:.3f} | {c['lpips']:.3f} | {c['silhouette_iou']:.3f} | "
                         f"{c['brightness_bias']:+.1f} |")
        w = results["teacher_wins"]
        lines += ["", f"The teacher beats the best trivial prediction there on {w['psnr']} of {w['objects']} objects by "
                  f"PSNR and on {w['lpips']} of {w['objects']} by LPIPS."]
    lines += ["", "## Per object: novel-view PSNR / LPIPS", "", "| object | " + " | ".join(predictions) + " |",
              "|---|" + "---|" * len(predictions)]
    for name, o in objects.items():
        if "skipped" in o:
            lines.append(f"| {name} | skipped: {o['skipped']} |" + " |" * (len(predictions) - 1))
            continue
        lines.append(f"| {name} | " + " | ".join(f"{o[p]['novel']['psnr']:.2f} / {o[p]['novel']['lpips']:.3f}"
                                                  for p in predictions) + " |")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> dict:
    args = parse_args(argv)
    files = sorted(p for p in Path(args.objects).iterdir() if p.suffix.lower() in (".glb", ".gltf"))
    if args.limit is not None:
        files = files[: args.limit]
    if not files:
        raise SystemExit(f"eval_real: no .glb files in {args.objects}")
    if any(not 0 < side < args.size for side in args.ceilings):
        raise SystemExit(f"eval_real: --ceilings {args.ceilings} must lie between 0 and --size {args.size} (exclusive)")
    pipe = None if args.baselines_only else load_pipeline(args.checkpoint)
    framing = read_framing(args.checkpoint, pipe)
    teacher = None
    if args.teacher is not None:
        from dd3g.teachers import TeacherLoadError, load_teacher

        try:
            teacher = load_teacher(args.teacher)
        except (OSError, TeacherLoadError) as error:
            raise SystemExit(f"eval_real: --teacher {args.teacher}: {error}") from error
    layout = pipe.view_layout if pipe is not None else ViewLayout()
    if teacher is not None and teacher.layout != layout:  # its views must be the canonical cameras scored here
        raise SystemExit(f"eval_real: --teacher {args.teacher}: its views ({teacher.layout}) are not the canonical cameras "
                         f"scored here ({layout})")
    args.out.mkdir(parents=True, exist_ok=True)
    specs = view_specs(args.turntable, args.turntable_elevation, layout)
    names = [s[0] for s in specs]
    azimuths = [s[1] for s in specs]
    cameras = orbit_cameras(torch.tensor(azimuths), torch.tensor([s[2] for s in specs]),
                            args.size, args.size, layout.radius, layout.fov_deg)  # [V]
    novel = [n for n in names if n not in ("input", "canon_000")]
    canonical = [n for n in names if n.startswith("canon_")]  # the teacher's 4 views, in its order
    canonical_novel = canonical[1:]
    predictions = ([] if pipe is None else ["model"]) + list(BASELINES)
    references = [f"truth_{side}px" for side in args.ceilings]
    objects, chart_rows, grid_blocks = {}, [], []
    for path in files:
        start = time.time()
        try:
            scan = Scan(path, args.cache if args.cache is not None else args.out / "cache", layout, framing, args.size,
                        args.supersample, args.turntable_elevation)
            input_rgba = scan.input_view()  # [4, S, S] the scan's own frame
            framed = frame_input(input_rgba, framing["foreground_ratio"])  # [4, S, S] the model's frame
            transform = scan.transform(input_rgba, framed)
            gt = scan.views(cameras, names, transform)  # [V, 4, S, S]
        except Exception as error:  # a broken or untextured file must not stop the run
            reason = f"{type(error).__name__}: {error}".splitlines()[0].replace(str(path), path.name)
            print(f"[eval_real] skipped {path.name}: {reason}", flush=True)
            objects[path.name] = {"skipped": reason}
            continue
        preds, alphas = {}, {}  # name -> [V, 3, S, S] on white, [V, 1, S, S]
        if pipe is not None:
            gaussians = pipe(to_uint8(input_rgba), seeds=[args.seed]).gaussians
            with torch.no_grad():
                out = render(gaussians, cameras, args.size, args.size, background=(1.0, 1.0, 1.0))
            preds["model"] = out.rgb.reshape(-1, len(names), 3, args.size, args.size)[0].clamp(0, 1)
            alphas["model"] = out.alpha.reshape(-1, len(names), 1, args.size, args.size)[0]
        preds["copy"], alphas["copy"] = copy_prediction(framed, len(names)), framed[3:].expand(len(names), -1, -1, -1)
        preds["mirror"], alphas["mirror"] = mirror_prediction(framed, azimuths), mirrored(framed[3:], azimuths)
        card = card_render(framed, cameras, layout.radius)
        preds["card"], alphas["card"] = card.rgb.clamp(0, 1), card.alpha
        revolve = scan.revolve_rgba(cameras, names, framed)
        preds["revolve"], alphas["revolve"] = composite_on(revolve), revolve[:, 3:]
        for side, name in zip(args.ceilings, references):
            preds[name], alphas[name] = through_resolution(gt, side)
        entry = {p: scored_entry(preds[p], gt, names, novel, alphas[p]) for p in predictions + references}
        if teacher is not None:
            rgb, alpha = teacher_views(teacher, framed, args.seed, args.size)
            values = score(rgb, gt[[names.index(n) for n in canonical]], alpha)
            entry["teacher"] = {"views": {n: {m: values[m][i] for m in METRICS} for i, n in enumerate(canonical)}}
            entry["canonical"] = canonical_means(entry, canonical_novel)
        entry["transform"] = transform
        entry["seconds"] = round(time.time() - start, 3)
        objects[path.name] = entry
        chart_rows.append({"name": path.stem, "input": entry[predictions[0]]["input"], "novel": entry[predictions[0]]["novel"]})
        if len(grid_blocks) < args.grid_objects:
            pick = [names.index(n) for n in ["input"] + [n for n in names if n.startswith("canon_")][1:]]
            grid_blocks.append([composite_on(gt[pick])] + [preds[p][pick] for p in predictions])
        print(f"[eval_real] {path.name}: novel PSNR " + " ".join(f"{p} {entry[p]['novel']['psnr']:.2f}" for p in predictions)
              + f" (scale {transform['scale']:.3f}, {entry['seconds']:.1f}s)", flush=True)
    scored = [o for o in objects.values() if "skipped" not in o]
    summary = {p: {k: {m: _nanmean([o[p][k][m] for o in scored]) for m in METRICS} for k in ("input", "novel")}
               for p in predictions + references} if scored else {}
    results = {
        "checkpoint": str(args.checkpoint), "baselines_only": bool(args.baselines_only), "seed": args.seed,
        "size": args.size, "supersample": args.supersample, "framing": framing, "predictions": predictions,
        "references": references,
        "views": [{"name": n, "azimuth": a, "elevation": e} for n, a, e in specs], "novel_views": novel,
        "radius": layout.radius, "fov_deg": layout.fov_deg, "note": FRAME_NOTE,
        "num_scored": len(scored), "num_skipped": len(objects) - len(scored), "mean": summary, "objects": objects,
    }
    if pipe is not None and scored:
        results["comparison"] = comparison(summary)
        results["wins"] = count_wins(objects)
    if teacher is not None and scored:
        results["teacher"] = str(args.teacher)
        results["canonical_novel_views"] = canonical_novel
        results["canonical_mean"] = {p: {m: _nanmean([o["canonical"][p][m] for o in scored]) for m in METRICS}
                                     for p in ["teacher"] + predictions}
        results["teacher_wins"] = count_wins({k: {p: {"novel": v} for p, v in o["canonical"].items()} for k, o in objects.items()
                                              if "canonical" in o}, model="teacher")
    (args.out / "results.json").write_text(json.dumps(_clean(results), indent=2, allow_nan=False))
    write_markdown(results, args.out / "results.md")
    if chart_rows:
        bar_chart(chart_rows, args.out / "psnr_per_object.png", predictions[0])
    grid_png(grid_blocks, args.out / "grid.png")
    print(f"[eval_real] wrote {args.out / 'results.json'} ({len(scored)} scored, {len(objects) - len(scored)} skipped)")
    return results


if __name__ == "__main__":
    main()
