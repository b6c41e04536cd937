"""Distil a multi-view diffusion teacher into the PEPD student (docs/design.md sections 1 and 4).

    accelerate launch training/distill.py --teacher hub/mvdm-tiny --quadruples data/quadruples \\
        --output-dir runs/dd3g-tiny --max-steps 20000 --resume latest --export runs/dd3g-tiny/pipeline
    python training/distill.py --tiny-test ...       # toy sizes for CPU tests

Each quadruple (N, C, II, OI) was made by the teacher's deterministic ODE; the student gets the *same* N (re-drawn
from the stored seed and checked against the stored hash), the same cameras C and the image II, and:
* explicit supervision: its renders at C against OI (RGB on white MSE + alpha MSE + LPIPS when available);
* implicit verification: the frozen teacher scores renders (canonical cameras or the layout rotated by a random
  azimuth, input frame kept) in the SDS form, weighted lambda * sigmoid((k - k0) / tau) over training.
Ablations: `--no-verification`, `--fresh-noise` (the student gets a new N each time: no noise alignment).
* optionally (`--input-view-weight`), its render at the input's own camera and resolution against the input image II
  itself (RGB on white MSE + alpha MSE): the one view whose truth is known, where the teacher's copy is blurred.
* optionally (`--seed-deviation-weight`), a term only a seed-aware student can lower: within each image's seeds in
  the batch, every render's difference from their mean against the same for the teacher's views (MSE). Plain MSE
  is this plus the error of the per-image mean; while the mean's error dominates, a student learns the mean and
  drops N, so this weight tips the balance toward N.
* optionally (`--seed-spread-weight`), how much the renders vary across an image's seeds, matched to how much the
  teacher's views do: the root mean square of each sample's deviation from its image's mean over the seeds, per
  window of `--seed-spread-window` pixels, student against teacher (MSE). An MSE-trained student shrinks what it
  cannot predict of N toward the mean; this term asks for the teacher's amount of variation where the teacher
  varies without asking for its exact pattern.
Rows are read in epochs of whole image groups (an image's seeds stay together), their order shuffled each epoch
by a key of (run seed, epoch). Per-sample randomness (verification azimuths, timesteps, fresh noise) is keyed by
(run seed, global sample index, step), so resume is exact and 1-vs-K processes see the same samples.
`--preload` decodes every quadruple once and keeps them on the device (uint8 images, float32 N).
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


from dd3g.models.pepd import PEPD
from dd3g.preprocess import composite_on
from dd3g.randomness import generator, noise_from_seeds, noise_sha256, sample_seed
from dd3g.rendering import render
from dd3g.student_inputs import StudentInputBuilder
from training.common import (
    image_grid, load_teacher_or_exit, optimization_step, resolve_resume, restore_checkpoint, save_checkpoint,
    start_run, StepProfiler, warmup_cosine,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True,
                   help="a teacher folder, tiny (TinyMVDMPipeline) or ImageDream's diffusers layout: phase-1 init and the Verifier")
    p.add_argument("--tokenizer-size", type=int, default=224,
                   help="image size of the student's own EfficientNet-Lite0 tokenizer, for a teacher without one (ImageDream)")
    p.add_argument("--quadruples", required=True, help="a quadruple dataset folder written by training/simulate.py")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--resume", default=None)
    p.add_argument("--tiny-test", action="store_true", help="toy phase-2 sizes for CPU tests")
    p.add_argument("--preset", default="tiny", help="PEPD preset for phase 2 (phase 1 always copies the teacher)")
    p.add_argument("--max-steps", type=int, default=20000)
    p.add_argument("--stop-after", type=int, default=None)
    p.add_argument("--time-limit", type=float, default=None, help="seconds from the start (loading included); checkpoint and stop")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup-steps", type=int, default=500)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--alpha-weight", type=float, default=1.0)
    p.add_argument("--lpips-weight", type=float, default=0.5)
    p.add_argument("--verification-weight", type=float, default=0.1,
                   help="lambda of implicit verification (its loss is a per-element mean, like the RGB MSE)")
    p.add_argument("--verification-k0", type=float, default=0.3, help="ramp centre, fraction of max steps")
    p.add_argument("--verification-tau", type=float, default=0.05, help="ramp width, fraction of max steps")
    p.add_argument("--seed-deviation-weight", type=float, default=0.0,
                   help="weight of the per-image seed-deviation MSE (module docstring); 0 turns it off")
    p.add_argument("--seed-spread-weight", type=float, default=0.0,
                   help="weight of the per-image seed-spread match (module docstring); 0 turns it off")
    p.add_argument("--seed-spread-window", type=int, default=8, help="pixels a side of the windows the spread is measured in")
    p.add_argument("--init-from", default=None,
                   help="start the student from this DD3GPipeline folder's student (or a PEPD folder) instead of the teacher's "
                        "UNet and fresh phase-2 weights; its configuration must be the one this run builds. A checkpoint "
                        "found by --resume takes precedence")
    p.add_argument("--input-view-weight", type=float, default=0.0,
                   help="weight of the render at the input camera against the input image itself; 0 turns it off")
    p.add_argument("--position-mode", default=None, choices=["free", "pixel-aligned"],
                   help="override the preset's Gaussian placement (PEPD position_mode)")
    p.add_argument("--no-colour-anchor", action="store_true", help="view 0's colours do not start from the input's pixels")
    p.add_argument("--preload", action="store_true", help="decode all quadruples once and keep them on the device")
    p.add_argument("--no-verification", action="store_true", help="ablation: explicit supervision only")
    p.add_argument("--fresh-noise", action="store_true", help="ablation: a new N per step instead of the teacher's")
    p.add_argument("--checkpoint-every", type=int, default=1000)
    p.add_argument("--sample-every", type=int, default=2000)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allow-incomplete", action="store_true",
                   help="train on the finished shards of a quadruple build that is still under way (a warning says how many)")
    p.add_argument("--profile-steps", type=int, default=0, help="profile N steps (torch.profiler) and print where time goes")
    p.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                   help="torch.compile the student's forward (mode: default, or e.g. max-autotune-no-cudagraphs); the losses, "
                        "renders and optimizer stay eager, checkpoints and the export are the same weights")
    p.add_argument("--export", default=None, help="write the EMA student as a DD3GPipeline folder here at the end")
    args = p.parse_args(argv)
    if args.tiny_test:
        args.batch_size = min(args.batch_size, 2)
        args.warmup_steps = min(args.warmup_steps, 2)
    return args


def verification_weight(args, step: int) -> float:
    """lambda * sigmoid((k - k0) / tau): verification joins once explicit supervision has shaped the object."""
    if args.no_verification or args.verification_weight == 0:
        return 0.0
    k0, tau = args.verification_k0 * args.max_steps, max(1e-6, args.verification_tau * args.max_steps)
    return args.verification_weight / (1 + math.exp(-(step - k0) / tau))


def verification_t_range(args, step: int) -> tuple:
    """t ~ U[0.02, 0.98] annealed toward U[0.02, 0.5] over training (docs/design.md section 4)."""
    progress = min(1.0, step / max(1, args.max_steps))
    return (0.02, 0.98 - (0.98 - 0.5) * progress)


def decode_png(data, as_uint8: bool = False) -> torch.Tensor:
    """RGBA PNG (bytes, or a datasets {"bytes": ...} cell) -> [4, H, W] float in [0, 1] (uint8 0-255 if as_uint8)."""
    if isinstance(data, dict):
        data = data["bytes"]
    array = np.array(Image.open(io.BytesIO(data)).convert("RGBA"))  # [H, W, 4] uint8, writable
    tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    return tensor if as_uint8 else tensor.float() / 255.0


class QuadrupleBatches:
    """Rows of the quadruple dataset by global sample index (epochs wrap), decoded to tensors."""

    def __init__(self, folder: str, noise_shape: tuple, verify_hashes: bool = True, allow_incomplete: bool = False):
        from training.data import ShardError, completed_rows, load_shards, read_manifest

        try:  # images stay PNG bytes until a batch needs them
            self.rows = load_shards(Path(folder), decode=False, require_complete=not allow_incomplete)
        except (ShardError, FileNotFoundError) as error:
            raise SystemExit(f"--quadruples {folder}: {error}") from error
        total = (read_manifest(folder) or {}).get("total")
        if allow_incomplete and total and len(self.rows) < total:
            done = sum(len(r) for r in completed_rows(folder))
            print(f"warning: {folder} is incomplete: training on its {done} finished quadruples of {total}", file=sys.stderr)
        self.noise_shape, self.verify_hashes = noise_shape, verify_hashes
        self.verified_seeds = set()  # each row's N is checked against its hash once, not every epoch
        if len(self.rows) == 0:
            raise SystemExit(f"no quadruples in {folder}")
        columns = self.rows.column_names if hasattr(self.rows, "column_names") else []
        images = self.rows["corpus_index"] if "corpus_index" in columns else list(range(len(self.rows)))
        self.image_of_row = torch.tensor([int(i) for i in images])  # [R] which image a row's seed belongs to
        groups: Dict[int, List[int]] = {}
        for row, image in enumerate(self.image_of_row.tolist()):
            groups.setdefault(image, []).append(row)
        self.groups = list(groups.values())
        self._epoch_order = (None, None)
        self.preloaded = None

    def training_rows(self, global_indices, seed: int) -> List[int]:
        """Rows for global sample indices: epoch e = i // R reads whole image groups in an order keyed by (seed, e),
        so an image's seeds share a batch and every epoch differs (the same for any process count and on resume)."""
        total, rows = len(self.rows), []
        for i in global_indices:
            epoch, position = divmod(int(i), total)
            if self._epoch_order[0] != (seed, epoch):
                permutation = torch.randperm(len(self.groups), generator=generator(sample_seed(seed, "epoch", epoch)))
                self._epoch_order = ((seed, epoch), [row for g in permutation.tolist() for row in self.groups[g]])
            rows.append(self._epoch_order[1][position])
        return rows

    def preload(self, device, workers: int = 0) -> None:
        """Decode every row once (hashes checked) and keep images and views as uint8, N as float32, on `device`.

        Chunks of rows are decoded by a pool of threads (PNG decoding, noise draws and hashing release the GIL): one
        thread took ~150 s for 4,096 quadruples, longer than a short training chunk. workers: 0 = one per core, <= 8.
        """
        from concurrent.futures import ThreadPoolExecutor

        total, size = len(self.rows), 256
        workers = workers or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:  # map keeps the chunks in order
            chunks = list(pool.map(lambda k: self._decode(range(k, min(k + size, total)), as_uint8=True), range(0, total, size)))
        self.verified_seeds.update(s for c in chunks for s in c["seeds"])
        stack = lambda key: torch.cat([c[key] for c in chunks]).to(device)  # noqa: E731
        self.preloaded = {"image": stack("image"), "views": stack("views"), "noise": stack("noise"),
                          "seeds": [s for c in chunks for s in c["seeds"]], "elevation": torch.cat([c["elevation"] for c in chunks])}

    def batch(self, indices) -> dict:
        rows = [int(i) % len(self.rows) for i in indices]
        if self.preloaded is None:
            out = self._decode(rows)
        else:
            index = torch.tensor(rows)
            data = self.preloaded
            device_index = index.to(data["image"].device, non_blocking=True)
            out = {"image": data["image"][device_index].float() / 255, "views": data["views"][device_index].float() / 255,
                   "noise": data["noise"][device_index], "seeds": [data["seeds"][r] for r in rows], "elevation": data["elevation"][index]}
        out["image_ids"] = self.image_of_row[torch.tensor(rows)]  # [B] on the CPU
        return out

    def _rows(self, row_indices) -> List[dict]:
        if isinstance(row_indices, range) and row_indices.step == 1 and hasattr(self.rows, "column_names"):
            # A contiguous slice is one Arrow read; row-by-row access formats each row on its own (slow).
            columns = self.rows[row_indices.start : row_indices.stop]
            return [dict(zip(columns, values)) for values in zip(*columns.values())]
        return [self.rows[r] for r in row_indices]

    def _decode(self, row_indices, as_uint8: bool = False) -> dict:
        rows = self._rows(row_indices)
        seeds = [int(r["seed"]) for r in rows]
        noise = noise_from_seeds(self.noise_shape, seeds)  # the teacher's own N, re-drawn from its seed
        if self.verify_hashes:
            for n, r in zip(noise, rows):
                if int(r["seed"]) in self.verified_seeds:
                    continue
                if noise_sha256(n) != r["noise_sha256"]:
                    raise SystemExit(f"quadruple seed {r['seed']}: re-drawn noise does not match its stored hash")
                if not as_uint8:  # preload's threads record theirs once they are done
                    self.verified_seeds.add(int(r["seed"]))
        return {
            "image": torch.stack([decode_png(r["image"], as_uint8) for r in rows]),  # [B, 4, S, S]
            "views": torch.stack([torch.stack([decode_png(v, as_uint8) for v in r["views"]]) for r in rows]),  # [B, V, 4, s, s]
            "noise": noise,  # [B, V, C, h, w]
            "seeds": seeds,
            "elevation": torch.tensor([float(r["elevation_deg"]) for r in rows]),
        }


def explicit_loss(renders, views, args, lpips_model) -> dict:
    """renders: RenderOutput at C with background=None; views [B, V, 4, s, s] the teacher's OI."""
    rgb_pred = renders.rgb + (1 - renders.alpha)  # on white
    rgb_true = composite_on(views)
    losses = {"rgb": F.mse_loss(rgb_pred, rgb_true), "alpha": F.mse_loss(renders.alpha, views[:, :, 3:])}
    total = losses["rgb"] + args.alpha_weight * losses["alpha"]
    if lpips_model is not None and args.lpips_weight > 0:
        pred, true = rgb_pred.flatten(0, 1), rgb_true.flatten(0, 1)  # [B*V, 3, s, s]
        if pred.shape[-1] < 32:  # AlexNet needs >= 31 px (toy test sizes)
            pred, true = (F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False) for x in (pred, true))
        losses["lpips"] = lpips_model(pred, true).mean()
        total = total + args.lpips_weight * losses["lpips"]
    losses["total"] = total
    return losses


def seed_groups(image_ids: torch.Tensor, device):
    """image_ids [B] (CPU) -> (inverse [B], counts [G], shared [B]) on `device`: each sample's image group, the
    groups' sizes, and whether a sample shares its image with another seed of the batch (None when none does)."""
    _, inverse, counts = torch.unique(image_ids, return_inverse=True, return_counts=True)  # on the CPU: no device sync
    shared = counts[inverse] > 1  # [B]
    if not bool(shared.any()):
        return None
    return tuple(x.to(device, non_blocking=True) for x in (inverse, counts, shared))


def deviation_from_group_mean(x: torch.Tensor, inverse: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """x [B, ...] -> [B, ...] (float32): each sample minus the mean of its image group's samples."""
    x = x.float()
    sums = torch.zeros((len(counts),) + x.shape[1:], device=x.device).index_add_(0, inverse, x)  # [G, ...]
    return x - (sums / counts.view(-1, *[1] * (x.dim() - 1)))[inverse]


def seed_deviation_loss(rendered: torch.Tensor, target: torch.Tensor, image_ids: torch.Tensor) -> torch.Tensor:
    """MSE between each sample's difference from its image's mean over the batch's seeds, student vs teacher.

    rendered, target [B, ...]; image_ids [B] (CPU). Images with one seed in the batch carry no such signal and are
    left out; 0 when none has two.
    """
    groups = seed_groups(image_ids, rendered.device)
    if groups is None:
        return rendered.sum() * 0
    inverse, counts, shared = groups
    # The mean-free part of the difference is what a seed-blind model cannot fit.
    deviation = deviation_from_group_mean(rendered - target, inverse, counts)
    return deviation[shared].pow(2).mean()


def seed_spread_loss(rendered: torch.Tensor, target: torch.Tensor, image_ids: torch.Tensor, window: int = 8) -> torch.Tensor:
    """MSE between the local RMS deviation from the image's mean over seeds, student vs teacher.

    rendered, target [B, V, C, s, s]; image_ids [B] (CPU); window: pixels a side (where s is not a multiple of it,
    the last window of a row or column averages only the pixels it has). Images with one seed in the batch are left
    out; 0 when none has two.
    """
    groups = seed_groups(image_ids, rendered.device)
    if groups is None:
        return rendered.sum() * 0
    inverse, counts, shared = groups

    def local_rms(x):  # [B, V, C, s, s] -> [B, V, C, s / window, s / window]
        energy = deviation_from_group_mean(x, inverse, counts).pow(2).flatten(0, 1)  # [B*V, C, s, s]
        energy = F.avg_pool2d(energy, window, ceil_mode=True).unflatten(0, x.shape[:2])
        return (energy + 1e-6).sqrt()  # eps: the root's gradient stays finite where nothing varies

    return F.mse_loss(local_rms(rendered)[shared], local_rms(target)[shared])


def add_seed_terms(losses: dict, renders, views: torch.Tensor, image_ids: torch.Tensor, args) -> None:
    """The seed-deviation and seed-spread terms (when weighted), added to losses["total"] and logged by name.
    renders: RenderOutput at C with background=None; views [B, V, 4, s, s] the teacher's OI; image_ids [B] (CPU)."""
    if args.seed_deviation_weight <= 0 and args.seed_spread_weight <= 0:
        return
    rendered = torch.cat([renders.rgb + (1 - renders.alpha), renders.alpha], dim=2)  # [B, V, 4, s, s] on white, + alpha
    target = torch.cat([composite_on(views), views[:, :, 3:]], dim=2)
    if args.seed_deviation_weight > 0:
        losses["seed_deviation"] = seed_deviation_loss(rendered, target, image_ids)
        losses["total"] = losses["total"] + args.seed_deviation_weight * losses["seed_deviation"]
    if args.seed_spread_weight > 0:
        losses["seed_spread"] = seed_spread_loss(rendered, target, image_ids, args.seed_spread_window)
        losses["total"] = losses["total"] + args.seed_spread_weight * losses["seed_spread"]


def input_view_loss(gaussians, input_camera, image: torch.Tensor, args) -> torch.Tensor:
    """The render at the input's camera, at the input's resolution, against the input image: RGB on white MSE +
    alpha_weight x alpha MSE. input_camera [B, 1] (any size: resized here); image [B, 4, S, S] straight alpha."""
    side = image.shape[-1]
    rendered = render(gaussians, input_camera, side, side, background=None)
    rgb_pred = rendered.rgb[:, 0] + (1 - rendered.alpha[:, 0])  # [B, 3, S, S] on white
    return F.mse_loss(rgb_pred, composite_on(image)) + args.alpha_weight * F.mse_loss(rendered.alpha[:, 0], image[:, 3:])


def distillation_step(student, teacher, inputs_builder: StudentInputBuilder, batch, args, step: int, global_indices, lpips_model):
    device = next(student.parameters()).device
    layout = teacher.layout
    image = batch["image"].to(device)
    views = batch["views"].to(device)
    if args.fresh_noise:  # ablation: break the (N, C, II) -> OI correspondence
        noise = torch.stack([torch.randn(teacher.noise_shape, generator=generator(sample_seed(args.seed, "fresh", i, step))) for i in global_indices])
    else:
        noise = batch["noise"]
    noise = noise.to(device)
    inputs = inputs_builder.images(image)  # what the pipeline builds at serving time, by the same code
    cameras = inputs_builder.cameras(batch["elevation"], len(global_indices)).to(device)
    gaussians = student(noise, inputs.input_frame, cameras, inputs.image_tokens, inputs.phase1_tokens).gaussians
    renders = render(gaussians, cameras[:, : layout.num_views], background=None)
    losses = explicit_loss(renders, views, args, lpips_model)
    add_seed_terms(losses, renders, views, batch["image_ids"], args)
    if args.input_view_weight > 0:
        losses["input_view"] = input_view_loss(gaussians, cameras[:, layout.num_views :], image, args)
        losses["total"] = losses["total"] + args.input_view_weight * losses["input_view"]
    weight = verification_weight(args, step)
    losses["verification_weight"] = torch.tensor(weight)
    total = losses["total"]
    if weight > 0:
        # Half the samples are verified at the canonical layout, the others rotated: keyed per sample.
        offsets = []
        for i in global_indices:
            gen = generator(sample_seed(args.seed, "verify-cameras", i, step))
            canonical, azimuth = float(torch.rand(1, generator=gen)) < 0.5, float(torch.rand(1, generator=gen)) * 360
            offsets.append(0.0 if canonical else azimuth)
        offsets = torch.tensor(offsets)
        check_cams = inputs_builder.cameras(batch["elevation"], len(global_indices), azimuth_offset_deg=offsets).to(device)
        check = render(gaussians, check_cams[:, : layout.num_views], background=None).rgba()
        cond = teacher.condition(image)
        seeds = [sample_seed(args.seed, "verify", i, step) for i in global_indices]
        losses["verification"] = teacher.verification_loss(check, cond, check_cams, seeds, t_range=verification_t_range(args, step))
        total = total + weight * losses["verification"]
    losses["total"] = total
    return losses, gaussians, renders


def input_framing(images: torch.Tensor) -> tuple:
    """(image side, median foreground ratio) of training inputs [B, 4, S, S]: the pipeline recentres user
    images to the framing the student was trained on (the side of the alpha box over the image side)."""
    ratios = []
    for alpha in images[:, 3] > 0.5:
        rows, cols = alpha.any(dim=1).nonzero(), alpha.any(dim=0).nonzero()
        if len(rows) and len(cols):
            ratios.append(max(int(rows[-1] - rows[0]) + 1, int(cols[-1] - cols[0]) + 1) / alpha.shape[-1])
    if not ratios:
        raise SystemExit("the training inputs are empty (no pixel with alpha > 0.5): cannot tell the framing the export "
                         "needs; rebuild the corpus with training/build_corpus.py, which drops such images")
    return int(images.shape[-1]), float(torch.tensor(ratios).median())


def export_pipeline(student, ema, teacher, path: Path, framing: tuple, inputs_builder: StudentInputBuilder, dtype=torch.float16):
    """The EMA student as a DD3GPipeline folder (fp16 safetensors, sharded under 15 MiB a file), with the encoders its
    inputs need: its tokenizer and, for a latent teacher, copies of the teacher's VAE encoder and CLIP image encoder."""
    import copy

    from dd3g.pipeline import EXPORTED_PHOTO_SURFACE_SIZE, DD3GPipeline
    from dd3g.student_inputs import ddim_from_config

    export = PEPD.from_config(student.config)
    export.load_state_dict(student.state_dict())  # buffers (ImageDream's text context) ride along...
    ema.copy_to(export.parameters())  # ...the parameters are the EMA's
    scheduler = ddim_from_config(teacher.scheduler_config)
    image_size, foreground_ratio = framing
    tokenizer = copy.deepcopy(inputs_builder.tokenizer)  # the teacher keeps its own in float32
    # SD's VAE overflows in float16 (diffusers keeps it in float32: force_upcast), so the frame encoder stays float32.
    frame_encoder = None if inputs_builder.frame_encoder is None else inputs_builder.frame_encoder.copy().float()
    prompt_encoder = None if inputs_builder.prompt_encoder is None else inputs_builder.prompt_encoder.copy().to(dtype)
    pipe = DD3GPipeline(export.to(dtype), tokenizer.to(dtype), scheduler, frame_encoder=frame_encoder, prompt_encoder=prompt_encoder,
                        image_size=image_size, foreground_ratio=round(foreground_ratio, 3), radius=teacher.layout.radius,
                        fov_deg=teacher.layout.fov_deg, photo_surface_size=EXPORTED_PHOTO_SURFACE_SIZE)
    pipe.save_pretrained(path, safe_serialization=True, max_shard_size="12MB")
    return pipe


def load_student_weights(student: PEPD, folder: str) -> None:
    """Copy the weights of a trained student (a DD3GPipeline folder or its `student` folder) into `student`, whose
    configuration they must have: a warm start differs from the run it continues only in its data and objective,
    and possibly in its frames' size (phase 1's `sample_size`: no parameter of the student is bound to it, so a
    64-px student starts one taught by a 128-px teacher)."""
    path = Path(folder)
    if (path / "student" / "config.json").is_file():
        path = path / "student"
    if not (path / "config.json").is_file():
        raise SystemExit(f"--init-from {folder}: neither a DD3GPipeline folder nor a student folder (no config.json)")
    trained = PEPD.from_pretrained(path, torch_dtype=torch.float32)

    def comparable(config: dict) -> dict:
        settings = {k: v for k, v in config.items() if not k.startswith("_")}
        if isinstance(settings.get("unet_config"), dict):
            settings["unet_config"] = {k: v for k, v in settings["unet_config"].items() if k != "sample_size"}
        return settings

    this_run = comparable(student.config)
    different = {k: (v, this_run.get(k)) for k, v in comparable(trained.config).items() if this_run.get(k) != v}
    if different:
        raise SystemExit(f"--init-from {folder}: its student is configured differently from this run's: "
                         + ", ".join(f"{k} {theirs!r} (this run {ours!r})" for k, (theirs, ours) in sorted(different.items())))
    student.load_state_dict(trained.state_dict())


def main(argv=None):
    launched = time.time()  # --time-limit counts from here: loading and building data are part of the budget
    args = parse_args(argv)
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    accelerator, device, output_dir, log = start_run(args.output_dir)

    teacher = load_teacher_or_exit(args.teacher, device)
    if hasattr(teacher, "pipe"):  # the tiny teacher's pipeline leaves its modules trainable
        for unet in (teacher.pipe.unet, teacher.pipe.high_noise_unet):
            if unet is not None:
                unet.requires_grad_(False).eval()
        tokenizer = teacher.pipe.image_encoder
    else:  # a teacher without our tokenizer (ImageDream): phase 2's tokenizer is the student's own
        from dd3g.models.image_tokenizer import EfficientNetLite0Tokenizer

        tokenizer = EfficientNetLite0Tokenizer.from_imagenet(image_size=64 if args.tiny_test else args.tokenizer_size).to(device)
    torch.manual_seed(args.seed)  # phase-2 initial weights only
    phase2 = dict(patch_size=4, gaussians_per_token=4, width=32, num_heads=2, blocks_before_means=1, blocks_before_shape=1, blocks_before_appearance=1) if args.tiny_test else {}
    if args.position_mode:
        phase2["position_mode"] = args.position_mode
        if args.position_mode == "pixel-aligned" and args.tiny_test:
            phase2["gaussians_per_token"] = 16  # one per pixel of a 4 x 4 patch
    if args.no_colour_anchor or args.position_mode == "free":
        phase2["input_colour_anchor"] = False
    # Phase 1 runs once on N at the sampler's first timestep: it starts as the UNet the teacher runs there (the tiny
    # teacher's high-noise expert when it has one; the main UNet is camera-blind at that timestep), conditioned as
    # the teacher is; the sample space is the teacher's.
    student = PEPD.from_teacher(teacher, preset=None if args.tiny_test else args.preset, **phase2).float().train()
    if args.init_from:
        load_student_weights(student, args.init_from)
    inputs_builder = StudentInputBuilder(student, tokenizer, teacher.layout, getattr(teacher, "frame_encoder", None),
                                         getattr(teacher, "prompt_encoder", None))
    lpips_model = None
    try:
        from dd3g.evaluation.metrics import LPIPS

        lpips_model = LPIPS.from_pretrained().to(device) if args.lpips_weight > 0 else None
    except (ImportError, FileNotFoundError) as error:
        accelerator.print(f"LPIPS unavailable ({error}); explicit supervision uses MSE terms only")
    data = QuadrupleBatches(args.quadruples, teacher.noise_shape, allow_incomplete=args.allow_incomplete)
    if args.preload:
        data.preload(device)
    # What the export needs of the inputs (their framing) is checked before training, not after it.
    # One row per image (an image's seeds share it), up to 256 images: with 8 seeds an image, the first 256 rows were 32.
    framing = input_framing(data.batch([group[0] for group in data.groups[:256]])["image"]) if args.export else None

    ema = EMAModel(student.parameters(), decay=args.ema_decay, model_cls=PEPD, model_config=student.config, foreach=True)
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99),
                                  fused=accelerator.device.type == "cuda")  # one kernel for all parameters
    lr_schedule = warmup_cosine(optimizer, args.warmup_steps, args.max_steps)
    student, optimizer, lr_schedule = accelerator.prepare(student, optimizer, lr_schedule)
    if args.compile:  # in place on the module (a DDP wrapper calls it too): state-dict names stay those of the eager model
        module = accelerator.unwrap_model(student)
        module.forward = torch.compile(module.forward, mode=args.compile)
    ema.to(device)
    step = restore_checkpoint(accelerator, resolve_resume(output_dir, args.resume), ema)

    stop_at = min(args.max_steps, args.stop_after or args.max_steps)
    global_batch = args.batch_size * accelerator.num_processes
    start_time = time.time()
    progress = tqdm(total=stop_at, initial=step, desc="distill", disable=not accelerator.is_local_main_process)
    profiler = StepProfiler(args.profile_steps if accelerator.is_main_process else 0, device)
    while step < stop_at:
        first = step * global_batch + accelerator.process_index * args.batch_size
        indices = list(range(first, first + args.batch_size))
        with profiler.phase("load_batch"):
            batch = data.batch(data.training_rows(indices, args.seed))
        with profiler.phase("forward_losses"), accelerator.autocast():
            losses, gaussians, renders = distillation_step(student, teacher, inputs_builder, batch, args, step, indices, lpips_model)
        with profiler.phase("backward_step_ema"):
            grad_norm = optimization_step(accelerator, student, optimizer, lr_schedule, ema, losses["total"])
        profiler.step()
        step += 1
        progress.update(1)
        if step % args.log_every == 0 or step == stop_at:
            record = {k: float(v.detach()) for k, v in losses.items()}
            log.write(step=step, lr=lr_schedule.get_last_lr()[0], grad_norm=float(grad_norm), elapsed_s=time.time() - start_time, **record)
            progress.set_postfix(loss=f"{record['total']:.4f}")
        out_of_time = args.time_limit is not None and time.time() - launched > args.time_limit
        if step % args.checkpoint_every == 0 or step == stop_at or out_of_time:
            save_checkpoint(accelerator, output_dir, step, {"args": vars(args)}, ema=ema)
        if accelerator.is_main_process and (step % args.sample_every == 0 or step == stop_at):
            rows = [torch.cat([F.interpolate(batch["image"][i : i + 1].cpu(), size=batch["views"].shape[-2:], mode="bilinear", antialias=True),
                               batch["views"][i].cpu(), renders.rgba()[i].detach().float().cpu()]) for i in range(min(4, len(indices)))]
            image_grid(rows, output_dir / "samples" / f"step-{step:07d}.png")
        if out_of_time:
            accelerator.print(f"time limit reached at step {step}; resume with --resume latest")
            break
    progress.close()
    accelerator.wait_for_everyone()
    if args.export and accelerator.is_main_process:
        export_pipeline(accelerator.unwrap_model(student), ema, teacher, Path(args.export), framing, inputs_builder)
    accelerator.end_training()  # releases the process group of a multi-GPU run
    return step


if __name__ == "__main__":
    main()
