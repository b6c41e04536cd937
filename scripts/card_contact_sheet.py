#!/usr/bin/env python
"""The model card's contact sheet: real photos, each seen from the front, the side and the back, for two seeds.

    python scripts/card_contact_sheet.py [--checkpoint hub/dd3g-tiny] [--out hub/dd3g-tiny/contact-sheet.png]

Photos that ship inside installed packages (so nothing is downloaded): scikit-image's coffee cup, cat (Chelsea),
astronaut and rocket, gradio's lion and cheetah. Opaque photos go through background removal like any user's.
One row per photo: the preprocessed input, then azimuth 0 / 90 / 180 at elevation 10 degrees for seed 0, then the
same for seed 1, on white. A photo whose package is missing is left out with a line on stderr.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from dd3g.cameras import orbit_cameras
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(ROOT / "hub" / "dd3g-tiny"))
    p.add_argument("--out", default=str(ROOT / "hub" / "dd3g-tiny" / "contact-sheet.png"))
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = p.parse_args(argv)
    pipe = DD3GPipeline.from_pretrained(args.checkpoint)
    layout = pipe.view_layout
    cameras = orbit_cameras(torch.tensor([0.0, 90.0, 180.0]), torch.full((3,), 10.0), args.size, args.size, layout.radius, layout.fov_deg)
    rows = []
    for path in photo_paths():
        source = pipe.prepare_image(str(path)).rgba[None]  # [1, 4, S, S] what the student is given
        gaussians = pipe(str(path), num_samples=len(args.seeds), seeds=args.seeds).gaussians  # batch [seeds]
        with torch.no_grad():
            views = render(gaussians, cameras, background=(1.0, 1.0, 1.0)).rgb.clamp(0, 1)  # [seeds, 3, 3, s, s]
        small = composite_on(F.interpolate(source, size=(args.size, args.size), mode="bilinear", antialias=True))  # [1, 3, s, s]
        rows.append(torch.cat([small, views.flatten(0, 1).cpu()]))
        print(f"{path.name}: done", flush=True)
    image_grid(rows, Path(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
