#!/usr/bin/env python
"""Render the app's example inputs: RGBA PNGs of held-out procedural objects (training/synthetic.py).

Two objects of the standard family's "test" split and two of the held-out torus family, each seen from
the input camera (azimuth 0) at a slight elevation, transparent background. None of them is a training
object, and none comes from the real evaluation set (../shared/eval is never used for examples).

    python scripts/make_examples.py [--out examples] [--size 256]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from dd3g.cameras import ViewLayout
from dd3g.rendering import render
from training.synthetic import batch_objects, split_seed

ROOT = Path(__file__).resolve().parents[1]

# (file stem, split, index in the split): fixed, so rerunning the script rewrites the same files.
EXAMPLES = [
    ("test-0", "test", 0),
    ("test-3", "test", 3),
    ("heldout-0", "heldout", 0),
    ("heldout-2", "heldout", 2),
]
ELEVATION_DEG = 15.0
NUM_GAUSSIANS = 16384


def render_example(seed: int, size: int) -> Image.Image:
    """The object of `seed` from the input camera: straight-alpha RGBA, size x size."""
    gaussians = batch_objects([seed], NUM_GAUSSIANS)[0]
    camera = ViewLayout().input_camera(size, size, ELEVATION_DEG)  # [1]
    rgba = render(gaussians, camera, background=None).rgba()[0]  # [4, H, W]
    array = (rgba.permute(1, 2, 0).clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(array, "RGBA")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "examples"), help="output folder (default: examples/)")
    parser.add_argument("--size", type=int, default=256, help="side in pixels (default 256)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for stem, split, index in EXAMPLES:
        path = out / f"{stem}.png"
        render_example(split_seed(split, index), args.size).save(path, optimize=True)
        print(f"{path} ({path.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
