"""Simulate N-C-II-OI quadruples with the teacher's deterministic ODE (docs/design.md section 1, step 1).

    accelerate launch training/simulate.py --teacher hub/mvdm-tiny --corpus runs/corpus-procedural \
        --out runs/quadruples --seeds-per-image 4 --steps 30 --guidance-scale 3 --batch-size 64

For corpus row p (rows in `index` order) and seed slot j < S (--seeds-per-image), the quadruple's global index is
q = p * S + j. Its noise N comes from the seed `sample_seed("dd3g.quadruple", --seed, corpus_index, j)`, where
corpus_index is the corpus row's own `index`: the seed of (image, slot) does not depend on S, so raising S later
keeps the earlier seeds. N = `noise_from_seeds(teacher.noise_shape, [seed])`, drawn on the CPU; the teacher's DDIM
sampler (eta = 0, trailing spacing, CFG) maps (N, C, II) to the 4 views OI.

Input view: the corpus image is taken as the view at azimuth 0 and elevation --elevation-deg (default 0, the
inference default; the corpus does not record a camera for user images). With --elevation-from-origin, a
procedural corpus row's recorded elevation is used instead, so the cameras are the true ones.

--ground-truth (procedural corpora only): OI are the object's true renders at C instead of the teacher's
samples, from the row's recorded object seed, yaw and elevation: the data of the 3D-only baseline
(training/train_3d_baseline.py) and of student-vs-ground-truth evaluation. N is still stored (seed and hash).

Cameras C: the teacher's layout, the 4 output views at azimuth 0/90/180/270 then the input view (azimuth 0)
as the 5th frame, all at that elevation.

Dataset (`datasets`, parquet shards under OUT/data/, see training/data.py), one row per quadruple:
  index           int64   q
  corpus_index    int64   the corpus row's `index`;  seed_slot int32 j
  seed            int64   the seed of N;  noise_sha256 string  sha256 of N (float32 little-endian bytes)
  image           image   the input RGBA PNG, byte for byte as in the corpus
  views           list of 4 images: the teacher's RGBA views at its resolution, uint8 PNG (the ground truth OI)
  cameras         struct: viewmats [5][4][4] (OpenCV world-to-camera), Ks [5][3][3] (pixel intrinsics for the
                  stored views' width x height), width, height, azimuth_deg [5], elevation_deg [5], radius, fov_deg
                  (frames: the 4 output views then the input view)
  teacher_id      string  the teacher's name @ the first 12 hex digits of the sha256 of its files
  num_steps int32, guidance_scale float32, elevation_deg float32: the sampler settings

Batches are formed inside shards (aligned to the shard start), so a quadruple is computed in the same batch
whatever the number of processes and however often the run was resumed: the stored views are reproduced
exactly (after uint8 quantisation) by re-simulating that batch on the same device and software. Re-simulating a
quadruple alone agrees to float rounding (batched kernels are not bit-identical across batch sizes). The stored
views are the ground truth either way.

Process k of K (accelerate, or --process-index/--num-processes) makes the shards with number % K == k; a
killed run (or --stop-after N quadruples) rerun with the same arguments makes only the missing shards.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import List

import torch


from dd3g.randomness import noise_sha256, sample_seed
from training import data
from training.common import load_teacher_or_exit, process_layout

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def features():
    import datasets

    floats = lambda depth: datasets.Value("float32") if depth == 0 else datasets.List(floats(depth - 1))  # noqa: E731
    return datasets.Features({
        "index": datasets.Value("int64"),
        "corpus_index": datasets.Value("int64"),
        "seed_slot": datasets.Value("int32"),
        "seed": datasets.Value("int64"),
        "noise_sha256": datasets.Value("string"),
        "image": datasets.Image(),
        "views": datasets.List(datasets.Image()),
        "cameras": {
            "viewmats": floats(3), "Ks": floats(3),
            "width": datasets.Value("int32"), "height": datasets.Value("int32"),
            "azimuth_deg": floats(1), "elevation_deg": floats(1),
            "radius": datasets.Value("float32"), "fov_deg": datasets.Value("float32"),
        },
        "teacher_id": datasets.Value("string"),
        "num_steps": datasets.Value("int32"),
        "guidance_scale": datasets.Value("float32"),
        "elevation_deg": datasets.Value("float32"),
    })


def quadruple_seed(corpus_index: int, slot: int, run_seed: int = 0) -> int:
    """The seed of N for seed slot `slot` of the corpus image with index `corpus_index`."""
    return sample_seed("dd3g.quadruple", run_seed, int(corpus_index), int(slot))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="teacher folder (TinyMVDMPipeline or ImageDream diffusers layout)")
    p.add_argument("--corpus", required=True, help="a complete corpus folder from build_corpus.py")
    p.add_argument("--out", required=True, help="dataset folder (created; rerun with the same arguments to resume)")
    p.add_argument("--seeds-per-image", type=int, default=4)
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the teacher's, 30)")
    p.add_argument("--guidance-scale", type=float, default=None, help="CFG scale (default: the teacher's)")
    p.add_argument("--elevation-deg", type=float, default=0.0, help="the elevation the input view is taken at")
    p.add_argument("--elevation-from-origin", action="store_true", help="procedural corpora: each row's recorded elevation")
    p.add_argument("--ground-truth", action="store_true", help="procedural corpora: true renders as OI instead of the teacher's")
    p.add_argument("--num-images", type=int, default=None, help="use only the first N corpus rows")
    p.add_argument("--seed", type=int, default=0, help="enters every quadruple's seed key")
    p.add_argument("--batch-size", type=int, default=16, help="quadruples per teacher call")
    p.add_argument("--shard-size", type=int, default=256, help="quadruples per parquet shard (a multiple of --batch-size is best)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="teacher weights and compute")
    p.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                   help="torch.compile the teacher's UNets (mode: default, or e.g. max-autotune-no-cudagraphs); "
                        "the quadruples match the eager ones to rounding")
    p.add_argument("--time-limit", type=float, default=None,
                   help="seconds; start no shard that would end after it (rerun the same command to go on)")
    p.add_argument("--stop-after", type=int, default=None, help="stop after this many quadruples, as if killed (tests, chunking)")
    p.add_argument("--process-index", type=int, default=None, help="override accelerate's process index (tests)")
    p.add_argument("--num-processes", type=int, default=None, help="override accelerate's process count (tests)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--license", default="other", help="license id for the card (the teacher's and corpus's terms apply)")
    p.add_argument("--push-to-hub", default=None, metavar="REPO", help="upload the finished dataset (token from HF_TOKEN or the login cache)")
    p.add_argument("--private", action="store_true")
    args = p.parse_args(argv)
    if args.seeds_per_image < 1 or args.batch_size < 1:
        p.error("--seeds-per-image and --batch-size must be positive")
    return args


def teacher_fingerprint(path) -> str:
    root = Path(path)
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors", ".txt")
             and p.name != "README.md"]
    return data.file_sha256(files, root)


class Simulator:
    """generate(indices) for build_shards: one batched teacher call per batch of quadruple indices."""

    def __init__(self, teacher, corpus: data.ShardReader, args, teacher_id: str):
        self.teacher, self.corpus, self.args, self.teacher_id = teacher, corpus, args, teacher_id
        self.steps = args.steps or teacher.default_num_steps
        self.guidance = teacher.default_guidance_scale if args.guidance_scale is None else args.guidance_scale
        layout = teacher.layout
        self.azimuths = [float(a) for a in layout.azimuths(0.0)] + [0.0]
        self.radius, self.fov = float(layout.radius), float(layout.fov_deg)
        # --ground-truth rebuilds the corpus's objects at the size it rendered them.
        self.corpus_gaussians = int((data.read_manifest(args.corpus) or {}).get("num_gaussians", 8192))

    def __call__(self, indices: List[int]) -> list:
        s = self.args.seeds_per_image
        rows = [self.corpus.row(q // s) for q in indices]
        images_png = [data.image_bytes(r["image"]) for r in rows]
        images = [data.png_to_rgba(b) for b in images_png]
        if len({tuple(im.shape) for im in images}) != 1:
            raise ValueError(f"corpus images of one batch differ in size: {sorted({tuple(im.shape) for im in images})}")
        seeds = [quadruple_seed(r["index"], q % s, self.args.seed) for q, r in zip(indices, rows)]
        elevations = self.elevations(rows)
        if self.args.ground_truth:
            views, noise, cameras = self.true_views(rows, seeds, elevations)
        else:
            result = self.teacher.simulate(torch.stack(images), seeds, self.steps, self.guidance, elevations)
            views, noise, cameras = result.views, result.noise, result.cameras
        size = views.shape[-1]
        cameras = cameras.resized(size, size).to("cpu")  # Ks for the stored views' pixel grid
        out = []
        for b, (q, row) in enumerate(zip(indices, rows)):
            out.append({
                "corpus_index": int(row["index"]), "seed_slot": q % s, "seed": seeds[b],
                "noise_sha256": noise_sha256(noise[b]),
                "image": images_png[b],
                "views": [data.rgba_to_png(v) for v in views[b]],
                "cameras": {
                    "viewmats": cameras.viewmats[b].tolist(), "Ks": cameras.Ks[b].tolist(),
                    "width": size, "height": size, "azimuth_deg": self.azimuths,
                    "elevation_deg": [float(elevations[b])] * len(self.azimuths),
                    "radius": self.radius, "fov_deg": self.fov,
                },
                "teacher_id": self.teacher_id, "num_steps": self.steps, "guidance_scale": float(self.guidance),
                "elevation_deg": float(elevations[b]),
            })
        return out

    def elevations(self, rows) -> torch.Tensor:
        """[B] degrees: --elevation-deg, or each procedural row's recorded input elevation."""
        if not (self.args.elevation_from_origin or self.args.ground_truth):
            return torch.full((len(rows),), float(self.args.elevation_deg))
        return torch.tensor([float(procedural_origin(r)["elevation_deg"]) for r in rows])

    def true_views(self, rows, seeds, elevations):
        """The objects' true renders at the quadruple cameras: views [B, V, 4, s, s], N [B, ...], cameras [B, V+1]."""
        import math

        from dd3g.gaussians import Gaussians
        from dd3g.randomness import noise_from_seeds
        from dd3g.rendering import render
        from training import synthetic

        origins = [procedural_origin(r) for r in rows]
        # Each object as the corpus made it (rows from before the lighting option were hard-lit: "baked"; from before
        # the prints, unprinted).
        objects = Gaussians.stack([
            synthetic.make_object(int(o["object_seed"]), self.corpus_gaussians, lighting=o.get("lighting", "baked"),
                                  print_fraction=o.get("print_fraction", 0.0)).gaussians
            for o in origins]).to(self.teacher.device)
        objects = objects.rotated_about_y(torch.tensor([math.radians(float(o["yaw_deg"])) for o in origins], device=self.teacher.device))
        cameras = self.teacher.cameras(len(rows), elevations)
        size = self.teacher.image_size
        views = render(objects, cameras[:, : self.teacher.layout.num_views], size, size, background=None).rgba()
        return views.float().cpu(), noise_from_seeds(self.teacher.noise_shape, seeds), cameras


def procedural_origin(row) -> dict:
    origin = json.loads(row.get("origin") or "{}")
    if "object_seed" not in origin:
        raise SystemExit("--ground-truth and --elevation-from-origin need a procedural corpus (rows with an object seed)")
    return origin


def card(args, manifest: dict, infos) -> tuple:
    elevation = "the input view's recorded elevation" if manifest.get("elevation_from_origin") or manifest.get("ground_truth") \
        else f"input view at elevation {manifest['elevation_deg']:g} degrees"
    if manifest.get("ground_truth"):
        how = f"OI are the objects' true renders at C ({elevation}), not a teacher's samples (3D-only baseline / evaluation data)."
    else:
        how = (f"the teacher's deterministic DDIM sampler (eta = 0, {manifest['num_steps']} steps, CFG {manifest['guidance_scale']:g}, "
               f"{elevation}) mapped (N, C, II) to OI.")
    rows = sum(i.num_rows for i in infos)
    front = {
        "license": args.license,
        "task_categories": ["image-to-3d"],
        "size_categories": [data.size_category(rows)],
        "pretty_name": "DD3G N-C-II-OI quadruples",
        "tags": ["rgba", "3d", "multi-view", "dd3g", "distillation"],
        "configs": data.card_configs(),
    }
    body = f"""
# DD3G N-C-II-OI quadruples

{rows} quadruples (noise N, cameras C, input image II, teacher output views OI) for distilling the multi-view
diffusion teacher `{manifest['teacher_id']}` into DD3G's 3D Gaussian generator. Each corpus image got
{manifest['seeds_per_image']} seeds; {how}
Built with `training/simulate.py`: N = `noise_from_seeds(teacher.noise_shape, [seed])`, seed =
`sample_seed("dd3g.quadruple", {manifest['seed']}, corpus_index, seed_slot)`; `noise_sha256` checks it. The stored uint8
views are the ground truth.

| column | meaning |
|---|---|
| `index`, `corpus_index`, `seed_slot` | quadruple index q = row * seeds_per_image + slot, the corpus row's index, the slot |
| `seed`, `noise_sha256` | the seed of N and the sha256 of N (float32 bytes) |
| `image` | the input RGBA PNG, as in the corpus |
| `views` | the 4 teacher views (RGBA PNG, azimuth 0/90/180/270) |
| `cameras` | OpenCV world-to-camera `viewmats` [5,4,4] and pixel `Ks` [5,3,3] (4 views, then the input view), with azimuths, elevations, radius, fov |
| `teacher_id`, `num_steps`, `guidance_scale`, `elevation_deg` | teacher and sampler settings |

```python
from datasets import load_dataset
ds = load_dataset("parquet", data_files="data/shard-*.parquet", split="train")
```
"""
    return front, body


def main(argv=None) -> data.BuildReport:
    started = time.time()
    args = parse_args(argv)
    process_index, num_processes, device, wait = process_layout(args.process_index, args.num_processes)
    corpus = data.ShardReader(args.corpus, columns=["index", "image", "origin"])
    num_images = len(corpus) if args.num_images is None else min(args.num_images, len(corpus))
    if num_images == 0:
        raise SystemExit(f"--corpus {args.corpus}: no rows")
    total = num_images * args.seeds_per_image
    fingerprint = teacher_fingerprint(args.teacher)
    teacher = load_teacher_or_exit(args.teacher, device, DTYPES[args.dtype])
    teacher_id = f"{teacher.teacher_id}@{fingerprint[:12]}"
    if args.compile and not args.ground_truth:
        teacher.compile(args.compile)
    if args.ground_truth:
        teacher_id = "ground-truth"
    simulator = Simulator(teacher, corpus, args, teacher_id)
    out = Path(args.out)
    manifest = {
        "kind": "dd3g-quadruples", "total": total, "shard_size": args.shard_size, "batch_size": args.batch_size,
        "teacher_id": teacher_id, "teacher_sha256": fingerprint, "corpus_fingerprint": corpus.fingerprint(),
        "num_images": num_images, "seeds_per_image": args.seeds_per_image, "seed": args.seed,
        "num_steps": simulator.steps, "guidance_scale": simulator.guidance, "elevation_deg": args.elevation_deg,
        "elevation_from_origin": args.elevation_from_origin, "ground_truth": args.ground_truth,
        "dtype": args.dtype, "noise_shape": list(teacher.noise_shape),
    }
    try:
        manifest = data.check_manifest(out, manifest)
    except data.ManifestMismatch as exc:
        raise SystemExit(str(exc)) from exc
    build_start = time.time()
    report = data.build_shards(
        out, total, args.shard_size, features(), simulator, batch_size=args.batch_size,
        process_index=process_index, num_processes=num_processes, stop_after=args.stop_after,
        progress=not args.no_progress, deadline=None if args.time_limit is None else started + args.time_limit, desc=f"quadruples[{process_index}/{num_processes}]",
    )
    seconds = time.time() - build_start
    print(f"process {process_index}/{num_processes}: wrote {report.written_rows} quadruples in {seconds:.1f} s "
          f"({report.written_rows / max(seconds, 1e-9):.2f}/s)", flush=True)
    if wait is not None:
        wait()
        report.complete = len(data.completed_rows(out)) == len(data.shard_ranges(total, args.shard_size))
    is_writer = wait is None or process_index == 0
    if report.complete and is_writer:
        url = data.finalize(out, lambda infos: card(args, manifest, infos), args.push_to_hub, args.private)
        print(f"quadruples complete: {out}" + (f" (pushed to {url})" if url else ""))
    elif is_writer:
        print(f"quadruples incomplete in {out}: rerun the same command to continue")
    return report


if __name__ == "__main__":
    main()
