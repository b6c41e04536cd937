"""How good is a teacher? Its DDIM samples against true renders of held-out procedural objects.

    python benchmarks/teacher_quality.py --teacher hub/mvdm-tiny --objects 100 --device cuda --out runs/teacher-eval

For validation objects and objects of the held-out shape family: PSNR/SSIM (on white, full frame and masked by
the true alpha) of the copied input view (view 0 of the canonical layout is the input camera) and of the 3
imagined views; multi-view consistency: a 3DGS fitted to 3 of the teacher's views, scored on the 4th
(leave-one-out over all 4); determinism: the same (image, seed) simulated twice and in another batch position;
camera sensitivity: how much its prediction moves when its output cameras turn by 90 degrees, relative to how
much the true views differ (about 1 for a teacher that reads its cameras, about 0 for one that ignores them).

    python benchmarks/teacher_quality.py --teacher hub/mvdm-tiny --real ../shared/eval/real --colour-check --out runs/tq

--real DIR: the real scans where users meet the teacher. Each GLB is loaded and normalised and rendered unlit by
the cached mesh renderer of dd3g.evaluation.real_scans (shared with benchmarks/eval_real.py) at the input view (azimuth 0, elevation 0,
--input-size px) and at the teacher's 4 cameras at its own size; the teacher's views (its default DDIM steps,
CFG as stored) are scored against those exact renders, beside the trivial prediction "the input view, as the
teacher receives it, copied to the same 4 cameras". No recentring: the teacher gets the scan's own input view.
--colour-check: flat coloured disks and rings (RGBA, no shading); the input's mean RGB against the copied
view's (and the imagined views') mean RGB over the input's foreground, alpha-weighted, in 0-255.

Every procedural split also reports the copy baseline (`copy`: the input view copied to the 4 cameras, scored by the
same protocol) and on how many objects the teacher's imagined views beat it by PSNR; --copy-only reports that copy
alone (no sampling: seconds on a CPU), to tell whether a teacher that loses to the copy on real scans beats it on its
own procedural world, i.e. whether the domain is what limits it. --family F makes every split's objects of family F
(e.g. one cylinder, the shape of many real goods) and --lighting L lights them by L (default: one hard light, as
every earlier figure; 'unlit' as the real-scan renders).

--score-size N: the PSNR/SSIM figures are taken on the views and the truth area-reduced to N px, so a 128-px teacher
compares with a 64-px one (`--score-size 64`) where the smaller one is scored; the consistency fit and the camera
sensitivity stay at the teacher's own size.

--steps and --guidance-scale set the sampler of every figure (DDIM steps; classifier-free guidance, by default
the scale the teacher stores), e.g. to sweep it: the camera sensitivity, one unguided step, does not depend on them.

Two ceilings of the split figures (per split, beside them): --seed-mean K scores the mean of K samples of other
seeds (on white) at the imagined views, which a single sample cannot beat by much where the unseen sides are
ambiguous; --truth-consistency scores the true views by the leave-one-out protocol of the consistency figure,
the most any set of views can reach there.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


from dd3g.devices import choose_device
from dd3g.cameras import orbit_cameras
from dd3g.evaluation.colour_check import coloured_shapes, mean_colour
from dd3g.evaluation.fitting import leave_one_out_psnr
from dd3g.evaluation.metrics import psnr, ssim
from dd3g.evaluation.real_scans import IDENTITY, Scan
from dd3g.preprocess import composite_on
from dd3g.rendering import render
from dd3g.teachers.base import camera_sensitivity
from dd3g.teachers import load_teacher
from training import synthetic
from training.common import image_grid



def at_size(rgba: torch.Tensor, size) -> torch.Tensor:
    """[B, V, 4, S, S] -> [B, V, 4, size, size], area-averaged (views of a larger teacher seen at a smaller one's
    size); unchanged when size is None or not smaller."""
    if size is None or size >= rgba.shape[-1]:
        return rgba
    flat = torch.nn.functional.interpolate(rgba.flatten(0, 1), size=(size, size), mode="area")
    return flat.unflatten(0, rgba.shape[:2])


def scores(pred_rgba, true_rgba, size=None) -> dict:
    """Per-view PSNR/SSIM on white, full frame and masked by the true alpha, at `size` px (None: as given).
    [B, V, 4, S, S] -> lists [B, V]."""
    pred_rgba, true_rgba = at_size(pred_rgba, size), at_size(true_rgba, size)
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
    family = args.family or ("heldout" if split == "heldout" else None)
    seeds = [synthetic.split_seed(split, i) for i in range(count)]
    results = {"psnr": [], "ssim": [], "psnr_masked": [], "ssim_masked": [], "consistency_psnr": [],
               "imagined_psnr_mean_of_seeds": [], "truth_consistency_psnr": []}
    copy_results = {"psnr": [], "ssim": [], "psnr_masked": [], "ssim_masked": []}  # the copy baseline, same protocol
    for start in range(0, count, args.batch):
        chunk = seeds[start : start + args.batch]
        objects = synthetic.batch_objects(chunk, args.num_gaussians, family=family, lighting=args.lighting).to(device)
        elevation = torch.zeros(len(chunk))
        cams = layout.cameras(size, size, elevation_deg=elevation, include_input=True).to(device)
        truth = render(objects, cams[:, : layout.num_views], background=None).rgba()
        inputs = render(objects, layout.input_camera(args.input_size, args.input_size, elevation).to(device), background=None).rgba()[:, 0]
        for key, value in scores(copy_baseline(teacher, inputs).to(device), truth, args.score_size).items():
            copy_results[key].append(value.cpu())
        if args.copy_only:
            continue
        results.setdefault("camera_sensitivity", []).append(camera_sensitivity(teacher, inputs, truth, elevation))
        sim = teacher.simulate(inputs, seeds=list(range(start, start + len(chunk))), num_steps=args.steps,
                               guidance_scale=args.guidance_scale)
        views = sim.views.to(device)
        for key, value in scores(views, truth, args.score_size).items():
            results[key].append(value.cpu())
        # Consistency: fit to 3 of the teacher's views, score the 4th; every view left out once.
        if args.fit_steps > 0:
            cams_out = cams[:, : layout.num_views]
            results["consistency_psnr"].append(leave_one_out_psnr(views, cams_out, args.fit_steps, args.fit_gaussians).cpu())
        if args.seed_mean > 1:  # the mean of K samples, the first being the one scored above
            other_seeds = [[1_000_003 * k + start + i for i in range(len(chunk))] for k in range(1, args.seed_mean)]
            samples = [composite_on(views)] + [composite_on(teacher.simulate(inputs, seeds=seeds, num_steps=args.steps,
                                                                             guidance_scale=args.guidance_scale).views.to(device))
                                               for seeds in other_seeds]
            results["imagined_psnr_mean_of_seeds"].append(psnr(torch.stack(samples).mean(0)[:, 1:], composite_on(truth)[:, 1:]).cpu())
        if args.truth_consistency and args.fit_steps > 0:
            results["truth_consistency_psnr"].append(leave_one_out_psnr(truth, cams[:, : layout.num_views], args.fit_steps, args.fit_gaussians).cpu())
        if start == 0:
            rows = [torch.cat([torch.nn.functional.interpolate(inputs[i : i + 1], size=(size, size), mode="bilinear", antialias=True), views[i], truth[i]]) for i in range(min(4, len(chunk)))]
            image_grid(rows, out_dir / f"grid-{split}.png")
    copy = {k: torch.cat(v) for k, v in copy_results.items()}  # {metric: [count, V]}
    if args.copy_only:
        return {"copy": {k: summarise(v) for k, v in copy.items()}, "objects": count}
    sensitivity = results.pop("camera_sensitivity")
    merged = {k: torch.cat(v) for k, v in results.items() if v}
    ceilings = ("consistency_psnr", "imagined_psnr_mean_of_seeds", "truth_consistency_psnr")
    report = {k: summarise(v) for k, v in merged.items() if k not in ceilings}
    report["copy"] = {k: summarise(v) for k, v in copy.items()}
    report["imagined_ahead_of_copy_psnr"] = int((merged["psnr"][:, 1:].mean(1) > copy["psnr"][:, 1:].mean(1)).sum())
    report["camera_sensitivity"] = sum(sensitivity) / len(sensitivity)
    if "consistency_psnr" in merged:
        report["consistency_psnr_leave_one_out"] = float(merged["consistency_psnr"].mean())
    if "imagined_psnr_mean_of_seeds" in merged:
        report["imagined_psnr_mean_of_seeds"] = {"seeds": args.seed_mean, "psnr": float(merged["imagined_psnr_mean_of_seeds"].mean())}
    if "truth_consistency_psnr" in merged:
        report["truth_consistency_psnr_leave_one_out"] = float(merged["truth_consistency_psnr"].mean())
    report["objects"] = count
    return report


def copy_baseline(teacher, inputs: torch.Tensor) -> torch.Tensor:
    """The input as the teacher receives it (resized to its frames), put at each of its V cameras.
    inputs [B, 4, s, s] -> [B, V, 4, S, S]."""
    frame = teacher.decode(teacher.encode(inputs.to(teacher.device))).cpu()  # [B, 4, S, S]
    return frame[:, None].expand(-1, teacher.layout.num_views, -1, -1, -1).clone()


def real_scans(folder: Path, teacher, args, cache: Path, limit=None):
    """Input views [N, 4, s, s] and the truth at the teacher's cameras [N, V, 4, S, S] of every readable scan,
    rendered by dd3g.evaluation.real_scans (cached); names of the scans used and {name: reason} of those skipped."""
    layout, size = teacher.layout, teacher.image_size
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".glb", ".gltf"))[:limit]
    if not files:
        raise SystemExit(f"teacher_quality: no .glb files in {folder}")
    azimuths = layout.azimuths()  # [V] 0, 90, 180, 270
    cameras = orbit_cameras(azimuths, torch.zeros_like(azimuths), size, size, layout.radius, layout.fov_deg)  # [V]
    names = [f"teacher_{int(round(a)):03d}" for a in azimuths.tolist()]
    inputs, truth, used, skipped = [], [], [], {}
    for path in files:
        try:
            at_input = Scan(path, cache, layout, {}, args.input_size, args.supersample)
            at_views = Scan(path, cache, layout, {}, size, args.supersample)
            inputs.append(at_input.input_view())  # [4, s, s]
            at_views._mesh = at_input._mesh  # load the file at most once
            truth.append(at_views.views(cameras, names, IDENTITY))  # [V, 4, S, S]
        except Exception as error:  # a broken or untextured file must not stop the run
            skipped[path.name] = f"{type(error).__name__}: {error}".splitlines()[0].replace(str(path), path.name)
            continue
        used.append(path.name)
    return torch.stack(inputs), torch.stack(truth), used, skipped


def evaluate_real(teacher, folder: Path, args, device, out_dir: Path) -> dict:
    """The teacher and the copy baseline on the real scans, per object and in the mean (see the docstring)."""
    inputs, truth, names, skipped = real_scans(folder, teacher, args, Path(args.real_cache or out_dir / "cache"), args.real_limit)
    views = []
    for start in range(0, len(inputs), args.batch):
        chunk = inputs[start : start + args.batch]
        sim = teacher.simulate(chunk.to(device), seeds=list(range(start, start + len(chunk))), num_steps=args.steps,
                               guidance_scale=args.guidance_scale)
        views.append(sim.views.cpu())  # [b, V, 4, S, S]
    views = torch.cat(views)  # [N, V, 4, S, S]
    copy = copy_baseline(teacher, inputs)  # [N, V, 4, S, S]
    report = {"objects": len(names), "skipped": skipped, "input_size": args.input_size, "size": teacher.image_size}
    per_object = {name: {} for name in names}
    for label, pred in (("teacher", views), ("copy", copy)):
        values = scores(pred, truth, args.score_size)  # {metric: [N, V]}
        report[label] = {k: summarise(v) for k, v in values.items()}
        for i, name in enumerate(names):
            per_object[name][label] = {k: {"copied_view": float(values[k][i, 0]), "imagined_views": float(values[k][i, 1:].mean())}
                                       for k in ("psnr", "ssim")}
    report["per_object"] = per_object
    report["imagined_ahead_of_copy_psnr"] = sum(o["teacher"]["psnr"]["imagined_views"] > o["copy"]["psnr"]["imagined_views"]
                                                for o in per_object.values())
    rows = [torch.cat([torch.nn.functional.interpolate(inputs[i : i + 1], size=truth.shape[-2:], mode="bilinear", antialias=True),
                       views[i], truth[i]]) for i in range(min(6, len(names)))]
    image_grid(rows, out_dir / "grid-real.png")
    return report


@torch.no_grad()
def colour_check(teacher, args, device) -> dict:
    """Mean colour of flat coloured inputs against the teacher's copied and imagined views (0-255)."""
    shapes = coloured_shapes(args.input_size)
    images = torch.stack([rgba for _, rgba in shapes.values()])  # [K, 4, s, s]
    views = teacher.simulate(images.to(device), seeds=list(range(len(images))), num_steps=args.steps,
                             guidance_scale=args.guidance_scale).views.cpu()
    frames = teacher.decode(teacher.encode(images.to(device))).cpu()  # [K, 4, S, S] what the teacher sees
    report = {}
    for k, (name, (rgb, _)) in enumerate(shapes.items()):
        mask = (frames[k, 3] > 0.5).float()  # [S, S] the input's foreground at the teacher's size
        copied = mean_colour(views[k, 0], mask)
        report[name] = {"input": mean_colour(frames[k], mask), "copied_view": copied,
                        "imagined_views": [mean_colour(views[k, v], mask) for v in range(1, views.shape[1])],
                        "copied_max_abs_diff": round(max(abs(a - b) for a, b in zip(copied, mean_colour(frames[k], mask))), 1)}
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
    p.add_argument("--splits", default="val,heldout", help="procedural splits; empty for none")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="classifier-free guidance of every sample (default: the scale the teacher stores)")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--num-gaussians", type=int, default=8192)
    p.add_argument("--input-size", type=int, default=128)
    p.add_argument("--fit-gaussians", type=int, default=4096)
    p.add_argument("--fit-steps", type=int, default=400, help="0 skips the consistency fit (slow on a CPU)")
    p.add_argument("--real", type=Path, default=None, help="a folder of real scans (.glb), e.g. ../shared/eval/real")
    p.add_argument("--real-limit", type=int, default=None, help="only the first N scans (sorted)")
    p.add_argument("--real-cache", type=Path, default=None, help="mesh render cache (default OUT/cache)")
    p.add_argument("--supersample", type=int, default=2, help="mesh renders of the real scans")
    p.add_argument("--colour-check", action="store_true", help="mean colour of flat coloured disks and rings")
    p.add_argument("--seed-mean", type=int, default=1, help="K > 1: also score the mean of K seeds' samples (imagined views)")
    p.add_argument("--truth-consistency", action="store_true", help="also score the true views by the consistency protocol")
    p.add_argument("--score-size", type=int, default=None,
                   help="score the views (and the truth) area-reduced to this many px, e.g. 64 to compare a 128-px "
                        "teacher with a 64-px one (default: the teacher's own size); the consistency fit and camera sensitivity are not")
    p.add_argument("--family", default=None, choices=synthetic.FAMILIES,
                   help="make every split's objects of this family, e.g. 'cylinder' (one primitive; default: the split's own)")
    p.add_argument("--lighting", default="baked", choices=synthetic.LIGHTINGS,
                   help="the light baked into the objects (default 'baked', the protocol of every earlier figure; 'unlit' as the real scans)")
    p.add_argument("--copy-only", action="store_true",
                   help="only the copy baseline on the procedural splits (no sampling: seconds on a CPU)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1... (default: cuda if available)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.copy_only and (args.real is not None or args.colour_check):
        p.error("--copy-only scores the procedural splits' copy baseline alone: drop --real and --colour-check "
                "(the real-scan report has the copy beside the teacher already)")
    if args.guidance_scale is not None and args.guidance_scale < 0:
        p.error(f"--guidance-scale {args.guidance_scale}: expected >= 0 (0: unconditional, 1: conditional alone)")
    if args.score_size is not None and args.score_size <= 0:
        p.error(f"--score-size {args.score_size}: expected a side in px > 0")
    device = torch.device(choose_device(args.device))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    teacher = load_teacher(args.teacher, device=device)
    report = {"teacher": args.teacher, "device": str(device), "steps": args.steps,
              "guidance_scale": teacher.default_guidance_scale if args.guidance_scale is None else args.guidance_scale,
              "size": teacher.image_size, "score_size": min(args.score_size or teacher.image_size, teacher.image_size)}
    if not args.copy_only:
        report["determinism"] = determinism(teacher, device, min(args.steps, 10))
    for split in [s for s in args.splits.split(",") if s]:
        report[split] = evaluate_split(teacher, split, args.objects, args, device, out_dir)
        print(split, json.dumps(report[split]), flush=True)
    if args.real is not None:
        report["real"] = evaluate_real(teacher, args.real, args, device, out_dir)
        print("real", json.dumps({k: v for k, v in report["real"].items() if k != "per_object"}), flush=True)
    if args.colour_check:
        report["colour_check"] = colour_check(teacher, args, device)
        print("colour_check", json.dumps(report["colour_check"]), flush=True)
    (out_dir / "teacher_quality.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
