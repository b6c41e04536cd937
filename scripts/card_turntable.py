#!/usr/bin/env python
"""The model card's turntable image: each example input, then its Gaussians seen from a turn of azimuths.

    python scripts/card_turntable.py [--checkpoint hub/dd3g-tiny] [--out hub/dd3g-tiny/turntable.png]

One row per image in examples/ (held-out procedural objects, never trained on): the preprocessed input, then
`--frames` renders on white at elevation 15 degrees, seed 0. CPU, a few seconds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from dd3g.export import turntable_frames
from dd3g.pipeline import DD3GPipeline
from dd3g.preprocess import composite_on, preprocess
from training.common import image_grid

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(ROOT / "hub" / "dd3g-tiny"))
    p.add_argument("--out", default=str(ROOT / "hub" / "dd3g-tiny" / "turntable.png"))
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=128)
    args = p.parse_args(argv)
    pipe = DD3GPipeline.from_pretrained(args.checkpoint)
    rows = []
    for path in sorted((ROOT / "examples").glob("*.png")):
        source = preprocess(path, pipe.preprocess_config).rgba[None]  # [1, 4, S, S]
        gaussians = pipe(str(path), seeds=[0]).gaussians[0]
        frames = torch.from_numpy(turntable_frames(gaussians, args.frames, args.size)).permute(0, 3, 1, 2).float() / 255  # [T, 3, s, s]
        source = F.interpolate(source, size=(args.size, args.size), mode="bilinear", antialias=True)
        source = composite_on(source)  # on white, like the renders
        rows.append(torch.cat([source, frames]))
    print(image_grid(rows, Path(args.out)))


if __name__ == "__main__":
    main()
