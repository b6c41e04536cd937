"""Build the RGBA image corpus that the teacher turns into quadruples (docs/design.md sections 1 and 4, "Data").

    python training/build_corpus.py --source procedural --num-images 120000 --out runs/corpus-procedural
    python training/build_corpus.py --source folder --images my_pictures/ --out runs/corpus-mine
    python training/build_corpus.py --source text2image --t2i-model sd-2-1-base/ \
        --images-per-prompt 4 --out runs/corpus-t2i          # prompts: training/prompts/objects.txt
    accelerate launch --num_processes 4 training/build_corpus.py ...     # shards split over processes

Sources:
  procedural  renders of procedural objects from the `corpus` split (`split_seed("corpus", i)`, disjoint from
              the teacher's train/val/test objects; --split picks another, e.g. `test` or `heldout` for
              evaluation sets, or `train` for a 3D-only baseline on the teacher's own objects), one random
              input view each: yaw uniform in [0, 360),
              elevation uniform in --elevation-range (default [-10, 30]), the layout's radius and fov. These are
              raw renders (the object keeps its true scale in the frame, as the teacher saw in training).
  folder      every image file under --images (sorted by relative path); images with transparency are kept as
              they are, opaque ones go through rembg; all are validated and recentred by
              `dd3g.preprocess.preprocess` (--foreground-ratio, as the pipeline does). Bad files are skipped with
              a one-line warning and counted (in the shards' metadata and the card); they never stop the build.
  text2image  a local diffusers text-to-image pipeline (--t2i-model DIR) run on a prompt list (one prompt a
              line, blank lines and lines starting with '#' ignored; --images-per-prompt each), then rembg and
              recentring through `preprocess`, as the paper did. Images rembg finds nothing in are skipped.
              --prompts defaults to the shipped training/prompts/objects.txt: single whole objects on a plain
              white background, written for Stable Diffusion 2.1-base and SDXL-base 1.0 (see its header).

Folder and text-to-image items are also checked for what distillation needs: after background removal at least
--min-opaque-fraction of the image (default 1%) must be opaque (alpha > 0.5, the threshold training/distill.py
frames the inputs by). A soft or empty matte is dropped with a warning that gives the measured fraction, instead
of passing here and failing at export ("the training inputs are empty").

Dataset (`datasets`, parquet shards under OUT/data/, see training/data.py): `index` (int64, the item index),
`image` (RGBA PNG at --size, straight alpha), `source` ("procedural" | "folder" | "text2image"), `prompt`
(string or null), `origin` (JSON: object seed and view for procedural, the relative path for folder, the
generator seed for text2image). OUT/README.md is the dataset card; OUT/build.json the settings.

Randomness is keyed by the item index: procedural views and text-to-image latents come from CPU generators
seeded with `sample_seed("dd3g.corpus", source, --seed, index)`. A build killed at any point (or stopped by
--stop-after N items) and rerun with the same arguments makes only the missing shards, and the result equals a
straight build byte for byte; K processes make the shards with number % K == process index.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import sys
import time
from pathlib import Path
from typing import List

import torch


from dd3g.randomness import generator, sample_seed
from training import data
from training.common import process_layout

SOURCES = ("procedural", "folder", "text2image")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
SPLIT_NOTES = {
    "corpus": "never used to train, validate or test the tiny teacher",
    "train": "the objects the tiny teacher was trained on",
    "val": "the teacher's validation objects",
    "test": "held-out test objects: never trained on by the teacher or the student",
    "heldout": "the held-out torus family: never seen in any training",
}
DEFAULT_LICENSES = {"procedural": "apache-2.0", "folder": "other", "text2image": "other"}
DEFAULT_PROMPTS = Path(__file__).resolve().parent / "prompts" / "objects.txt"
OPAQUE_ALPHA = 0.5  # training/distill.py's input_framing measures the object by the pixels above this alpha


def features():
    import datasets

    return datasets.Features({
        "index": datasets.Value("int64"),
        "image": datasets.Image(),
        "source": datasets.Value("string"),
        "prompt": datasets.Value("string"),
        "origin": datasets.Value("string"),
    })


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="dataset folder (created; rerun with the same arguments to resume)")
    p.add_argument("--source", required=True, choices=SOURCES)
    p.add_argument("--size", type=int, default=256, help="side of the stored RGBA images")
    p.add_argument("--num-images", type=int, default=None,
                   help="procedural: how many (required); folder/text2image: at most this many of the items")
    p.add_argument("--seed", type=int, default=0, help="enters every per-item key (views, text-to-image latents)")
    p.add_argument("--shard-size", type=int, default=256, help="items per parquet shard")
    p.add_argument("--batch-size", type=int, default=4, help="text-to-image batch (procedural and folder go one by one)")
    p.add_argument("--time-limit", type=float, default=None,
                   help="seconds; start no shard that would end after it (rerun the same command to go on)")
    p.add_argument("--stop-after", type=int, default=None, help="stop after this many items, as if killed (tests, chunking)")
    p.add_argument("--process-index", type=int, default=None, help="override accelerate's process index (tests)")
    p.add_argument("--num-processes", type=int, default=None, help="override accelerate's process count (tests)")
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("procedural")
    g.add_argument("--num-gaussians", type=int, default=8192, help="per procedural object")
    g.add_argument("--split", default="corpus", help="which seed range of training/synthetic.py the objects come from")
    g.add_argument("--elevation-range", type=float, nargs=2, default=(-10.0, 30.0))
    g.add_argument("--lighting", default="mixed", help="the light baked into the objects (training/synthetic.py LIGHTINGS)")
    g.add_argument("--print-fraction", type=float, default=0.0,
                   help="the chance that an object's body carries a printed label (training/synthetic.py make_object; "
                        "hub/mvdm-tiny trained with 0.5 from its step 18,001 on; the evaluation sets so far have 0)")
    g = p.add_argument_group("folder")
    g.add_argument("--images", default=None, help="folder of images (searched recursively)")
    g.add_argument("--foreground-ratio", type=float, default=0.85, help="folder/text2image: alpha box side / image side")
    g.add_argument("--min-opaque-fraction", type=float, default=0.01,
                   help="folder/text2image: drop an image whose opaque part (alpha > 0.5) after background removal is "
                        "smaller than this fraction of it (0 keeps all)")
    g = p.add_argument_group("text2image")
    g.add_argument("--t2i-model", default=None, help="local diffusers text-to-image pipeline folder")
    g.add_argument("--prompts", default=str(DEFAULT_PROMPTS), help="text file, one prompt a line (default: the shipped object list)")
    g.add_argument("--images-per-prompt", type=int, default=1)
    g.add_argument("--t2i-steps", type=int, default=30)
    g.add_argument("--t2i-guidance-scale", type=float, default=7.5)
    g.add_argument("--t2i-resolution", type=int, default=None, help="generation side (default: the pipeline's)")
    g.add_argument("--negative-prompt", default=None)
    g.add_argument("--t2i-dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"),
                   help="auto: float16 on CUDA, float32 on the CPU")
    g = p.add_argument_group("card and Hub")
    g.add_argument("--license", default=None, help="license id for the card (default: apache-2.0 for procedural, else 'other')")
    g.add_argument("--push-to-hub", default=None, metavar="REPO", help="upload the finished dataset (token from HF_TOKEN or the login cache)")
    g.add_argument("--private", action="store_true", help="with --push-to-hub: create a private repo")
    args = p.parse_args(argv)
    if args.size < 8:
        p.error("--size must be at least 8")
    if args.source == "procedural" and not args.num_images:
        p.error("--source procedural needs --num-images")
    if args.source == "folder" and not args.images:
        p.error("--source folder needs --images DIR")
    if args.source == "text2image" and not args.t2i_model:
        p.error("--source text2image needs --t2i-model DIR")
    if not 0.0 <= args.min_opaque_fraction < 1.0:
        p.error("--min-opaque-fraction must be in [0, 1)")
    if args.num_images is not None and args.num_images < 1:
        p.error("--num-images must be positive")
    return args


# ---------------------------------------------------------------------------------------------- sources
class ProceduralSource:
    """Item i: the i-th `corpus` object, one random input view (keyed by i), rendered straight-alpha RGBA."""

    def __init__(self, args, device):
        from dd3g.cameras import ViewLayout
        from training import synthetic

        self.args, self.device, self.synthetic, self.layout = args, device, synthetic, ViewLayout()
        self.total = args.num_images
        if args.split not in synthetic.SPLITS:
            raise SystemExit(f"--split {args.split!r}: expected one of {', '.join(synthetic.SPLITS)}")
        synthetic.split_seed(args.split, self.total - 1)  # IndexError now rather than mid-build
        if args.lighting not in synthetic.LIGHTINGS:
            raise SystemExit(f"--lighting {args.lighting!r}: expected one of {', '.join(synthetic.LIGHTINGS)}")
        if not 0.0 <= args.print_fraction <= 1.0:
            raise SystemExit(f"--print-fraction {args.print_fraction}: expected a chance in [0, 1]")

    def manifest(self) -> dict:
        return {"num_gaussians": self.args.num_gaussians, "elevation_range": list(self.args.elevation_range), "split": self.args.split,
                "lighting": self.args.lighting, "print_fraction": self.args.print_fraction, "world_version": self.synthetic.WORLD_VERSION, "layout": [self.layout.radius, self.layout.fov_deg]}

    def view(self, index: int) -> tuple:
        gen = generator(sample_seed("dd3g.corpus", "procedural", self.args.seed, index))
        low, high = self.args.elevation_range
        yaw_deg = float(torch.rand(1, generator=gen)) * 360.0
        elevation = low + (high - low) * float(torch.rand(1, generator=gen))
        return yaw_deg, elevation

    def __call__(self, indices: List[int]) -> list:
        from dd3g.rendering import render

        rows = []
        for index in indices:  # one by one: a row never depends on its batch
            seed = self.synthetic.split_seed(self.args.split, index)
            yaw_deg, elevation = self.view(index)
            obj = self.synthetic.batch_objects([seed], self.args.num_gaussians, device=self.device, lighting=self.args.lighting,
                                               print_fraction=self.args.print_fraction)
            obj = obj.rotated_about_y(torch.tensor([math.radians(yaw_deg)], device=self.device))
            camera = self.layout.input_camera(self.args.size, self.args.size, torch.tensor([elevation])).to(self.device)
            with torch.no_grad():
                rgba = render(obj, camera, background=None).rgba()[0, 0]  # [4, S, S]
            origin = {"object_seed": seed, "yaw_deg": round(yaw_deg, 6), "elevation_deg": round(elevation, 6), "lighting": self.args.lighting,
                      "print_fraction": self.args.print_fraction}
            rows.append({"image": data.rgba_to_png(rgba), "source": "procedural", "prompt": None, "origin": json.dumps(origin)})
        return rows


def _cutout(image, args):
    """preprocess() one user/generated image: a row's RGBA PNG, or Skipped with a one-line reason."""
    from dd3g import preprocess as pp

    try:
        out = pp.preprocess(image, pp.PreprocessConfig(size=args.size, foreground_ratio=args.foreground_ratio))
    except pp.ImageInputError as exc:
        return data.Skipped(str(exc).splitlines()[0] if str(exc) else type(exc).__name__), None
    except pp.BackgroundRemovalError as exc:
        try:
            pp._rembg_session()  # rembg itself unusable: every opaque image would fail, so stop with its message
        except pp.BackgroundRemovalError as fatal:
            raise SystemExit(f"background removal is unavailable: {fatal}") from fatal
        return data.Skipped(f"background removal failed: {exc}"), None
    opaque = float((out.rgba[3] > OPAQUE_ALPHA).float().mean())
    if opaque < args.min_opaque_fraction:
        how = "after background removal" if out.background_removed else "in its own alpha channel"
        return data.Skipped(f"only {opaque:.2%} of the image is opaque (alpha > {OPAQUE_ALPHA:g}) {how}; distillation needs "
                            f"at least {args.min_opaque_fraction:.2%} (--min-opaque-fraction): the matte is too soft or empty"), None
    buffer = io.BytesIO()
    out.to_pil().save(buffer, format="PNG")
    return buffer.getvalue(), out.background_removed


def _warn(name: str, reason: str) -> None:
    print(f"warning: skipped {name}: {reason}", file=sys.stderr)


class FolderSource:
    """Item i: the i-th image file under --images, sorted by relative path."""

    def __init__(self, args, device):
        self.args, self.root = args, Path(args.images)
        if not self.root.is_dir():
            raise SystemExit(f"--images {self.root}: not a folder")
        files = sorted(
            (p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
             and not any(part.startswith(".") for part in p.relative_to(self.root).parts)),
            key=lambda p: p.relative_to(self.root).as_posix(),
        )
        if args.num_images:
            files = files[: args.num_images]
        if not files:
            raise SystemExit(f"--images {self.root}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
        self.files, self.total = files, len(files)

    def manifest(self) -> dict:
        listing = "\n".join(f"{p.relative_to(self.root).as_posix()}\t{p.stat().st_size}" for p in self.files)
        return {"files_sha256": hashlib.sha256(listing.encode()).hexdigest(), "foreground_ratio": self.args.foreground_ratio}

    def __call__(self, indices: List[int]) -> list:
        rows = []
        for index in indices:
            rel = self.files[index].relative_to(self.root).as_posix()
            png, removed = _cutout(self.files[index], self.args)
            if isinstance(png, data.Skipped):
                png.reason = png.reason.replace(str(self.files[index]), rel)  # no local paths in the dataset
                _warn(rel, png.reason)
                rows.append(png)
                continue
            origin = {"path": rel, "background_removed": bool(removed)}
            rows.append({"image": png, "source": "folder", "prompt": None, "origin": json.dumps(origin)})
        return rows


def read_prompts(path) -> List[str]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise SystemExit(f"--prompts {path}: no prompts in the file")
    return prompts


class TextToImageSource:
    """Item i: prompt i // images_per_prompt, latent noise from a CPU generator keyed by i, then rembg."""

    def __init__(self, args, device):
        self.args, self.device = args, device
        self.prompts = read_prompts(args.prompts)
        self.total = len(self.prompts) * args.images_per_prompt
        if args.num_images:
            self.total = min(self.total, args.num_images)
        self.model_dir = Path(args.t2i_model)
        if not (self.model_dir / "model_index.json").is_file():
            raise SystemExit(f"--t2i-model {self.model_dir}: not a diffusers pipeline folder (no model_index.json)")
        self._pipe = None

    @property
    def dtype(self):
        if self.args.t2i_dtype == "auto":
            return torch.float16 if torch.device(self.device).type == "cuda" else torch.float32
        return getattr(torch, self.args.t2i_dtype)

    def manifest(self) -> dict:
        weights = [p for p in self.model_dir.rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors", ".bin", ".txt")]
        a = self.args
        prompts_sha256 = hashlib.sha256("\n".join(self.prompts).encode()).hexdigest()
        return {"model_sha256": data.file_sha256(weights, self.model_dir), "num_prompts": len(self.prompts), "prompts_sha256": prompts_sha256,
                "images_per_prompt": a.images_per_prompt, "steps": a.t2i_steps, "guidance_scale": a.t2i_guidance_scale,
                "resolution": a.t2i_resolution, "negative_prompt": a.negative_prompt, "dtype": str(self.dtype),
                "batch_size": a.batch_size, "foreground_ratio": a.foreground_ratio}

    @property
    def pipe(self):
        if self._pipe is None:
            from diffusers import DiffusionPipeline

            try:
                pipe = DiffusionPipeline.from_pretrained(self.model_dir, dtype=self.dtype, local_files_only=True)
            except Exception as exc:  # noqa: BLE001
                raise SystemExit(f"--t2i-model {self.model_dir}: cannot load it as a diffusers pipeline ({type(exc).__name__}: {exc})") from exc
            pipe.set_progress_bar_config(disable=True)
            self._pipe = pipe.to(self.device)
        return self._pipe

    def __call__(self, indices: List[int]) -> list:
        a = self.args
        prompts = [self.prompts[i // a.images_per_prompt] for i in indices]
        seeds = [sample_seed("dd3g.corpus", "text2image", a.seed, i) for i in indices]
        kwargs = dict(num_inference_steps=a.t2i_steps, guidance_scale=a.t2i_guidance_scale, output_type="pil")
        if a.t2i_resolution:
            kwargs.update(height=a.t2i_resolution, width=a.t2i_resolution)
        if a.negative_prompt:
            kwargs["negative_prompt"] = [a.negative_prompt] * len(indices)
        with torch.no_grad():
            images = self.pipe(prompt=prompts, generator=[generator(s) for s in seeds], **kwargs).images
        rows = []
        for index, prompt, seed, image in zip(indices, prompts, seeds, images):
            png, _ = _cutout(image, a)
            if isinstance(png, data.Skipped):
                _warn(f"item {index} ({prompt!r})", png.reason)
                rows.append(png)
                continue
            origin = {"generator_seed": seed, "model": self.model_dir.name}
            rows.append({"image": png, "source": "text2image", "prompt": prompt, "origin": json.dumps(origin)})
        return rows


SOURCE_CLASSES = {"procedural": ProceduralSource, "folder": FolderSource, "text2image": TextToImageSource}


# ---------------------------------------------------------------------------------------------- card
def card(args, manifest: dict, infos) -> tuple:
    rows = sum(i.num_rows for i in infos)
    skipped = sum(len(i.skipped) for i in infos)
    how = {
        "procedural": (f"Renders of {manifest['total']} procedural objects from the `{args.split}` seed split of DD3G's "
                       f"synthetic world ({SPLIT_NOTES.get(args.split, 'see training/synthetic.py')}), one input view each: "
                       f"random yaw, elevation uniform in [{args.elevation_range[0]:g}, {args.elevation_range[1]:g}] "
                       f"degrees, {args.num_gaussians} Gaussians per object, straight-alpha RGBA."),
        "folder": (f"{manifest['total']} user images; opaque ones cut out with rembg (u2netp), all recentred so the "
                   f"object's alpha box fills {args.foreground_ratio:g} of the side."),
        "text2image": (f"Images from the text-to-image pipeline `{Path(args.t2i_model or '').name}` "
                       f"({manifest.get('num_prompts', 0)} prompts x {args.images_per_prompt}, {args.t2i_steps} steps, "
                       f"CFG {args.t2i_guidance_scale:g}), cut out with rembg (u2netp) and recentred, as in DD3G."),
    }[args.source]
    front = {
        "license": args.license or DEFAULT_LICENSES[args.source],
        "task_categories": ["image-to-3d"],
        "size_categories": [data.size_category(rows)],
        "pretty_name": f"DD3G RGBA corpus ({args.source})",
        "tags": ["rgba", "3d", "dd3g", "distillation", args.source],
        "configs": data.card_configs(),
    }
    body = f"""
# DD3G RGBA corpus ({args.source})

Input images for distilling a multi-view diffusion teacher into DD3G's 3D Gaussian generator: the teacher's
deterministic sampler turns each image into N-C-II-OI quadruples (`training/simulate.py`).

**How it was built.** {how} Built with `training/build_corpus.py --source {args.source}` at {args.size} px;
every per-item random draw is keyed by the item index, so the build is deterministic, resumable and the same
for any number of processes. {rows} rows; {skipped} items skipped (reasons are in each shard's parquet metadata).

| column | type | meaning |
|---|---|---|
| `index` | int64 | item index (gaps where an item was skipped) |
| `image` | image (RGBA PNG) | {args.size}x{args.size}, straight alpha |
| `source` | string | `{args.source}` |
| `prompt` | string or null | the text-to-image prompt |
| `origin` | string (JSON) | object seed and view / relative file path / generator seed |

```python
from datasets import load_dataset
ds = load_dataset("parquet", data_files="data/shard-*.parquet", split="train")  # or the Hub repo id
```
"""
    return front, body


# ---------------------------------------------------------------------------------------------- main
def main(argv=None) -> data.BuildReport:
    started = time.time()
    args = parse_args(argv)
    process_index, num_processes, device, wait = process_layout(args.process_index, args.num_processes)
    source = SOURCE_CLASSES[args.source](args, device)
    out = Path(args.out)
    manifest = {"kind": "dd3g-rgba-corpus", "source": args.source, "total": source.total, "size": args.size,
                "seed": args.seed, "shard_size": args.shard_size, **source.manifest()}
    try:
        manifest = data.check_manifest(out, manifest)
    except data.ManifestMismatch as exc:
        raise SystemExit(str(exc)) from exc
    report = data.build_shards(
        out, source.total, args.shard_size, features(), source, batch_size=args.batch_size if args.source == "text2image" else 1,
        process_index=process_index, num_processes=num_processes, stop_after=args.stop_after,
        progress=not args.no_progress, deadline=None if args.time_limit is None else started + args.time_limit, desc=f"corpus[{process_index}/{num_processes}]",
    )
    if report.skipped:
        print(f"skipped {len(report.skipped)} item(s) in this run (see the warnings above)", file=sys.stderr)
    if wait is not None:
        wait()
        report.complete = len(data.completed_rows(out)) == len(data.shard_ranges(source.total, args.shard_size))
    is_writer = wait is None or process_index == 0
    if report.complete and is_writer:
        url = data.finalize(out, lambda infos: card(args, manifest, infos), args.push_to_hub, args.private)
        print(f"corpus complete: {out}" + (f" (pushed to {url})" if url else ""))
    elif not report.complete and is_writer:
        print(f"corpus incomplete in {out}: rerun the same command to continue")
    return report


if __name__ == "__main__":
    main()
