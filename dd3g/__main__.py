"""Command line: images -> 3D Gaussian files.

    python -m dd3g IMAGE... --out DIR [--checkpoint PATH] [--seed S] [--num-samples K] [--format ply,splat,glb,mp4]

Sample k of every image uses the noise of seed S + k, so a (checkpoint, image, seed) triple always gives
the same object. Outputs are named IMAGE-STEM_seedS.FORMAT; inputs that share a stem get their folders (and
if needed their extension) in the name. Existing outputs are never replaced without --overwrite, and --out is
checked before the model loads. Bad input never shows a traceback: one line on stderr names the problem; the
other images still run. Ctrl-C or SIGTERM keeps the finished outputs and removes partial ones.
Exit status: 0 all written, 1 some images failed, 2 nothing could run (arguments, --out, checkpoint),
130 interrupted, 143 terminated.
"""

from __future__ import annotations

import argparse
import glob
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence

FORMATS = ("ply", "splat", "glb", "mp4")  # dd3g.export.OUTPUT_FORMATS, written out so that --help imports no torch


class UsageError(Exception):
    pass


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that writers remove their temp files on the way out."""


def _raise_terminated(signum, frame):
    raise Terminated()


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
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that already exist (default: refuse)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        previous_handler = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: leave SIGTERM alone
        previous_handler = None
    try:
        return run(args)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interruption:
        print("interrupted: finished outputs are kept, partial ones removed", file=sys.stderr)
        return 143 if isinstance(interruption, Terminated) else 130
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)


def output_names(images: Sequence[str]) -> Dict[str, str]:
    """One distinct output name per input: its stem; where stems collide, the folders below the colliding
    inputs' common folder join the name (a/x.png, b/x.png -> a_x, b_x), then the extension (x.png, x.jpg ->
    x_png, x_jpg), then a number."""
    paths = {image: Path(os.path.abspath(image)) for image in images}
    names = {image: path.stem or "image" for image, path in paths.items()}
    for stem, count in Counter(names.values()).items():
        if count < 2:
            continue
        members = [image for image in names if names[image] == stem]
        common = Path(os.path.commonpath([str(paths[image].parent) for image in members]))
        for image in members:
            names[image] = "_".join(paths[image].parent.relative_to(common).parts + (names[image],))
    for image in _clashing(names):
        suffix = paths[image].suffix.lstrip(".")
        if suffix:
            names[image] = f"{names[image]}_{suffix}"
    for number, image in enumerate(_clashing(names), start=1):
        names[image] = f"{names[image]}-{number}"
    return names


def _clashing(names: Dict[str, str]) -> List[str]:
    counts = Counter(names.values())
    return [image for image, name in names.items() if counts[name] > 1]


def check_out_dir(out_dir: Path) -> bool:
    """Make sure results can be written to ``out_dir``, creating it if needed; True if it was created.
    Raises UsageError naming what is wrong, before any model is loaded."""
    for folder in (out_dir, *out_dir.parents):
        if folder.is_symlink() and not folder.exists():
            where = "" if folder == out_dir else f": {folder} "
            raise UsageError(f"--out {out_dir}{where or ' '}is a broken symbolic link (to {os.readlink(folder)}); "
                             "remove it or choose another folder")
        if folder.exists():
            if not folder.is_dir():
                which = "exists and" if folder == out_dir else f"cannot be created: {folder}"
                raise UsageError(f"--out {out_dir} {which} is not a folder")
            break
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=out_dir, prefix=".dd3g-write-test-")
        os.close(handle)
        os.remove(probe)
    except OSError as error:
        raise UsageError(f"--out {out_dir} is not writable: {error.strerror or error}") from None
    return created


def remove_partial_outputs(targets: Sequence[Path]) -> None:
    """Temp files the writers (dd3g.files: every PLY, .splat, GLB and MP4 writer) leave next to a target when cut short."""
    for target in targets:
        for temp in target.parent.glob(f".{glob.escape(target.name)}.*.tmp*"):
            try:
                temp.unlink()
            except OSError:
                pass


def run(args) -> int:
    formats = parse_formats(args.format)
    if args.num_samples < 1:
        raise UsageError(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.elevation is not None and not -90.0 < args.elevation < 90.0:
        raise UsageError(f"--elevation must be between -90 and 90 degrees, got {args.elevation:g}")
    # Heavy imports after argument checks, so --help and usage errors are instant.
    from tqdm.auto import tqdm

    from .devices import choose_device
    from .pipeline import CheckpointError, DD3GPipeline

    try:
        device = choose_device(args.device)
    except ValueError as error:
        raise UsageError(str(error)) from None
    out_dir = Path(args.out).expanduser()
    unique: Dict[str, str] = {}
    for image in args.images:
        unique.setdefault(os.path.realpath(image), image)  # a file given twice runs once
    images = list(unique.values())
    names = output_names(images)
    seeds = [args.seed + k for k in range(args.num_samples)]
    targets = {image: [out_dir / f"{names[image]}_seed{seed}.{fmt}" for seed in seeds for fmt in formats] for image in images}
    created = check_out_dir(out_dir)
    try:
        existing = [t for paths in targets.values() for t in paths if t.exists() or t.is_symlink()]
        if existing and not args.overwrite:
            more = f" (and {len(existing) - 1} more outputs of this run)" if len(existing) > 1 else ""
            raise UsageError(f"{existing[0]} already exists{more}; pass --overwrite to replace, or choose another --out")
        try:
            pipe = DD3GPipeline.from_pretrained(args.checkpoint)
        except CheckpointError as error:
            raise UsageError(str(error)) from None
    except UsageError:
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()  # leave no empty folder behind a run that did nothing
        raise
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)

    failures = 0
    progress = tqdm(images, desc="images", unit="image", disable=None)
    try:
        for image_path in progress:
            failures += generate_one(pipe, image_path, seeds, args.elevation, formats, names[image_path], out_dir, progress)
    except KeyboardInterrupt:
        remove_partial_outputs([t for paths in targets.values() for t in paths])
        raise
    return 1 if failures else 0


def generate_one(pipe, image_path: str, seeds: List[int], elevation, formats: List[str], name: str, out_dir: Path, progress) -> int:
    """Write every output of one image; returns the number of failures, each reported in one line."""
    from .export import EmptyMeshError, save_as
    from .preprocess import BackgroundRemovalError, ImageInputError

    start = time.perf_counter()
    try:
        prepared = pipe.prepare_image(image_path)
        gaussians = pipe([prepared], seeds=seeds, num_samples=len(seeds), elevation_deg=elevation).gaussians
    except (ImageInputError, BackgroundRemovalError) as error:
        progress.write(f"error: {image_path}: {error}", file=sys.stderr)
        return 1
    except (RuntimeError, ValueError) as error:  # e.g. out of memory: this image fails, the rest still run
        progress.write(f"error: {image_path}: the model failed: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    failures = 0
    for k, seed in enumerate(seeds):
        single = gaussians[k].visible()  # the splats a renderer draws: same pictures, about half the file
        for fmt in formats:
            target = out_dir / f"{name}_seed{seed}.{fmt}"
            try:
                save_as(single, target)
            except EmptyMeshError as error:  # nothing opaque enough to mesh: one line, the rest go on
                failures += 1
                progress.write(f"error: {image_path}: seed {seed}: {error}", file=sys.stderr)
            except OSError as error:  # disk full, folder removed meanwhile...
                failures += 1
                progress.write(f"error: {target}: cannot write: {error.strerror or error}", file=sys.stderr)
    progress.write(f"{image_path}: {len(seeds)} object(s) in {time.perf_counter() - start:.2f} s -> {out_dir}")
    return failures


if __name__ == "__main__":
    sys.exit(main())
