"""Command line: images -> 3D Gaussian files.

    python -m dd3g IMAGE... --out DIR [--checkpoint PATH] [--seed S] [--num-samples K] [--format ply,splat,glb,mp4]

Sample k of every image uses the noise of seed S + k, so a (checkpoint, image, seed) triple always gives
the same object. Bad input never shows a traceback: one line on stderr names the problem; the other images
still run. Exit status: 0 all written, 1 some images failed, 2 nothing could run (arguments, checkpoint).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

FORMATS = ("ply", "splat", "glb", "mp4")  # glb: marching-cubes mesh; mp4: 24-frame 256 px turntable


class UsageError(Exception):
    pass


def parse_formats(text: str) -> list[str]:
    formats = [f.strip().lower().lstrip(".") for f in text.split(",") if f.strip()]
    if not formats:
        raise UsageError("--format needs at least one of: " + ", ".join(FORMATS))
    for f in formats:
        if f not in FORMATS:
            raise UsageError(f"unknown format {f!r}; available: {', '.join(FORMATS)}")
    return list(dict.fromkeys(formats))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dd3g", description="Single image -> 3D Gaussians (DD3G).")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="input images (RGBA kept as is; opaque ones go through background removal)")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--checkpoint", default=None, help="a DD3G pipeline folder (default: the shipped hub/dd3g-tiny)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed of the first sample (default 0)")
    parser.add_argument("--num-samples", type=int, default=1, help="objects per image, one noise each (default 1)")
    parser.add_argument("--elevation", type=float, default=None,
                        help="camera elevation the photos were taken at, degrees (default: the model's, 0 = level)")
    parser.add_argument("--format", default="ply", help=f"comma-separated output formats: {', '.join(FORMATS)} (default ply)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1... (default: cuda if available)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run(args) -> int:
    formats = parse_formats(args.format)
    if args.num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.elevation is not None and not -90.0 < args.elevation < 90.0:
        raise UsageError(f"--elevation must be between -90 and 90 degrees, got {args.elevation:g}")
    # Heavy imports after argument checks, so --help and usage errors are instant.
    import torch
    from tqdm.auto import tqdm

    from .export import EmptyMeshError, save_glb, save_turntable_mp4
    from .pipeline import CheckpointError, DD3GPipeline
    from .preprocess import BackgroundRemovalError, ImageInputError

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        torch.device(device)
    except RuntimeError as error:
        raise UsageError(f"--device {device!r} is not a device: {error}") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but no CUDA device is available")
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} exists and is not a folder")
    try:
        pipe = DD3GPipeline.from_pretrained(args.checkpoint)
    except CheckpointError as error:
        raise UsageError(str(error)) from None
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    out_dir.mkdir(parents=True, exist_ok=True)

    failures = 0
    progress = tqdm(args.images, desc="images", unit="image", disable=None)
    for image_path in progress:
        name = Path(image_path).stem or "image"
        start = time.perf_counter()
        try:
            prepared = pipe.prepare_image(image_path)
            seeds = [args.seed + k for k in range(args.num_samples)]
            gaussians = pipe([prepared], seeds=seeds, num_samples=args.num_samples, elevation_deg=args.elevation).gaussians
        except (ImageInputError, BackgroundRemovalError) as error:
            failures += 1
            progress.write(f"error: {image_path}: {error}", file=sys.stderr)
            continue
        for k, seed in enumerate(seeds):
            single = gaussians[k]
            for fmt in formats:
                target = out_dir / f"{name}_seed{seed}.{fmt}"
                if fmt == "ply":
                    single.save_ply(target)
                elif fmt == "splat":
                    single.save_splat(target)
                elif fmt == "mp4":
                    save_turntable_mp4(single, target)
                else:
                    try:
                        save_glb(single, target)
                    except EmptyMeshError as error:  # nothing opaque enough to mesh: one line, the rest go on
                        failures += 1
                        progress.write(f"error: {image_path}: seed {seed}: {error}", file=sys.stderr)
        progress.write(f"{image_path}: {args.num_samples} object(s) in {time.perf_counter() - start:.2f} s -> {out_dir}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
