#!/usr/bin/env python
"""The model card's contact sheet: real photos, each seen from the front, the side and the back, for two seeds.

    python scripts/card_contact_sheet.py [--checkpoint hub/dd3g-tiny] [--out hub/dd3g-tiny/contact-sheet.png]

Photos that ship inside installed packages (so nothing is downloaded): scikit-image's coffee cup, cat (Chelsea),
astronaut and rocket, gradio's lion and cheetah. Opaque photos go through background removal like any user's.
One row per photo: the preprocessed input, then azimuth 0 / 90 / 180 at elevation 10 degrees for seed 0, then the
same for seed 1, on white. A photo whose package is missing is left out with a line on stderr.
`--spread-seeds 4` also prints the card's seed-spread figure: the mean pairwise LPIPS of the back view (azimuth 180,
elevation 10) across seeds 0-3, per photo and over all of them.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from dd3g.cameras import orbit_cameras
from dd3g.evaluation.metrics import lpips
from dd3g.pipeline import DD3GPipeline
from dd3g.preprocess import composite_on
from dd3g.rendering import render
from training.common import image_grid

ROOT = Path(__file__).resolve().parents[1]

PHOTOS = [("skimage", "data/coffee.png"), ("skimage", "data/chelsea.png"), ("skimage", "data/astronaut.png"),
          ("skimage", "data/rocket.jpg"), ("gradio", "media_assets/images/lion.jpg"), ("gradio", "media_assets/images/cheetah1.jpg")]


def photo_paths() -> list:
    paths = []
    for package, relative in PHOTOS:
        spec = importlib.util.find_spec(package)
        path = Path(spec.origin).parent / relative if spec and spec.origin else None
        if path is None or not path.is_file():
            print(f"card_contact_sheet: {package}/{relative} not found; left out", file=sys.stderr)
            continue
        paths.append(path)
    return paths


def back_view_spread(pipe: DD3GPipeline, path: Path, seeds: int, size: int) -> float:
    """Mean pairwise LPIPS of the back view (azimuth 180, elevation 10) across seeds 0..seeds-1, on white."""
    layout = pipe.view_layout
    back = orbit_cameras(torch.tensor([180.0]), torch.tensor([10.0]), size, size, layout.radius, layout.fov_deg)
    gaussians = pipe(str(path), num_samples=seeds, seeds=list(range(seeds))).gaussians  # batch [seeds]
    with torch.no_grad():
        views = render(gaussians, back, background=(1.0, 1.0, 1.0)).rgb.clamp(0, 1)[:, 0]  # [seeds, 3, s, s]
        pairs = [lpips(views[i], views[j]) for i, j in itertools.combinations(range(seeds), 2)]
    return float(torch.stack(pairs).mean())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(ROOT / "hub" / "dd3g-tiny"))
    p.add_argument("--out", default=str(ROOT / "hub" / "dd3g-tiny" / "contact-sheet.png"))
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--spread-seeds", type=int, default=0, help="also print the back view's LPIPS spread across this many seeds")
    args = p.parse_args(argv)
    if args.spread_seeds == 1 or args.spread_seeds < 0:
        p.error("--spread-seeds needs at least 2 seeds (0: no spread figure)")
    pipe = DD3GPipeline.from_pretrained(args.checkpoint)
    layout = pipe.view_layout
    cameras = orbit_cameras(torch.tensor([0.0, 90.0, 180.0]), torch.full((3,), 10.0), args.size, args.size, layout.radius, layout.fov_deg)
    rows, spreads = [], []
    for path in photo_paths():
        source = pipe.prepare_image(str(path)).rgba[None]  # [1, 4, S, S] what the student is given
        gaussians = pipe(str(path), num_samples=len(args.seeds), seeds=args.seeds).gaussians  # batch [seeds]
        with torch.no_grad():
            views = render(gaussians, cameras, background=(1.0, 1.0, 1.0)).rgb.clamp(0, 1)  # [seeds, 3, 3, s, s]
        small = composite_on(F.interpolate(source, size=(args.size, args.size), mode="bilinear", antialias=True))  # [1, 3, s, s]
        rows.append(torch.cat([small, views.flatten(0, 1).cpu()]))
        print(f"{path.name}: done", flush=True)
        if args.spread_seeds:
            spreads.append(back_view_spread(pipe, path, args.spread_seeds, args.size))
            print(f"{path.name}: back-view LPIPS across {args.spread_seeds} seeds {spreads[-1]:.3f}", flush=True)
    if spreads:
        print(f"back-view LPIPS across {args.spread_seeds} seeds, mean of {len(spreads)} photos: {sum(spreads) / len(spreads):.3f} "
              f"({min(spreads):.3f}-{max(spreads):.3f})")
    image_grid(rows, Path(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
