"""The student's distillation step against the model alone: how much of a step is not the model?

    python benchmarks/student_step.py --device cuda --steps 60 --json runs/student_step.json [--quadruples DIR] [--compile]

Both are timed on the same machine, model and batch size, after warm-up steps, with the device synchronised only
at the ends:
* full step: what `training/distill.py` runs each step: the batch's rows (`--quadruples DIR`, held on the device as
  with distill's `--preload`; without it, a synthetic set of rows in the same format, also on the device), then
  `distill.distillation_step` (tokenizer, input frame, cameras, PEPD, render, RGB/alpha MSE + LPIPS, the
  seed-deviation and input-view terms; implicit verification only with `--verification`) under bf16 autocast on CUDA, then
  backward, clipping, AdamW, the LR schedule and the EMA (`training.common.optimization_step`);
* model alone: the PEPD forward, the render at C, the same loss, backward, AdamW and EMA on one fixed batch
  prepared once (tokens, frame, cameras and N already on the device: no row indexing, no tokenizer).
Both use one AdamW (distill's settings, fused on CUDA). TFLOP/s counts the student's (PEPD's) forward + backward
FLOPs per step (torch.utils.flop_counter, eager); the loss side (LPIPS, and the torch splatter off CUDA) is
reported apart. The ratio full / model is the share of the step that is not the model.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from types import SimpleNamespace

import torch


from dd3g.evaluation.timing import print_and_save, time_training_steps
from dd3g.models.pepd import PEPD
from dd3g.randomness import noise_from_seeds
from dd3g.rendering import render
from dd3g.student_inputs import StudentInputBuilder
from dd3g.teachers.tiny import TinyTeacher
from training import distill
from training.common import optimization_step, warmup_cosine

TOY_PHASE2 = dict(patch_size=4, gaussians_per_token=4, width=32, num_heads=2, blocks_before_means=1, blocks_before_shape=1,
                  blocks_before_appearance=1)  # distill.py's --tiny-test phase 2


def build_student(dargs, teacher) -> PEPD:
    """The PEPD as distill.py's main() builds it: phase 1 is the teacher's UNet at the sampler's first timestep."""
    torch.manual_seed(dargs.seed)
    student = PEPD.from_teacher(teacher, preset=None if dargs.tiny_test else dargs.preset, **(TOY_PHASE2 if dargs.tiny_test else {}))
    return student.float().train()


class SyntheticQuadruples:
    """Random rows in the format of `distill.QuadrupleBatches` after `preload`: uint8 images and views and float32 N
    (re-drawn from each row's seed, as distill does) on the device; `seeds_per_image` consecutive rows share an image."""

    def __init__(self, rows: int, image_size: int, teacher, seeds_per_image: int, device):
        gen = torch.Generator().manual_seed(0)
        views, side = teacher.layout.num_views, teacher.image_size
        self.image = torch.randint(0, 256, (rows, 4, image_size, image_size), generator=gen, dtype=torch.uint8).to(device)  # [R, 4, S, S]
        self.views = torch.randint(0, 256, (rows, views, 4, side, side), generator=gen, dtype=torch.uint8).to(device)  # [R, V, 4, s, s]
        self.seeds = list(range(rows))
        self.noise = noise_from_seeds(teacher.noise_shape, self.seeds).to(device)  # [R, V, C, h, w]
        self.elevation = torch.rand(rows, generator=gen) * 30 - 10  # [R] degrees
        self.image_of_row = torch.arange(rows) // seeds_per_image  # [R]

    def training_rows(self, indices, seed: int) -> list:
        return [int(i) % len(self.seeds) for i in indices]  # in order: an image's seeds stay together

    def batch(self, rows) -> dict:
        index = torch.tensor(rows)
        device_index = index.to(self.image.device, non_blocking=True)
        return {"image": self.image[device_index].float() / 255,  # [B, 4, S, S]
                "views": self.views[device_index].float() / 255,  # [B, V, 4, s, s]
                "noise": self.noise[device_index],  # [B, V, C, h, w]
                "seeds": [self.seeds[r] for r in rows], "elevation": self.elevation[index],  # [B]
                "image_ids": self.image_of_row[index]}  # [B] on the CPU


def prepare(batch: dict, inputs_builder: StudentInputBuilder, device) -> dict:
    """distillation_step's model inputs, computed once (by the same builder): what the model-alone step starts from."""
    image = batch["image"].to(device)  # [B, 4, S, S]
    inputs = inputs_builder.images(image)  # tokens [B, L, D], frame [B, C, h, w]
    cameras = inputs_builder.cameras(batch["elevation"], image.shape[0]).to(device)  # [B, V + 1]
    return {"noise": batch["noise"].to(device), "frame": inputs.input_frame, "cameras": cameras, "tokens": inputs.image_tokens,
            "phase1_tokens": inputs.phase1_tokens, "image": image, "views": batch["views"].to(device), "image_ids": batch["image_ids"]}


def model_loss(student, inputs: dict, dargs, lpips_model) -> torch.Tensor:
    """distillation_step without the data work: PEPD, render at C, distill's explicit, seed-deviation and input-view terms."""
    gaussians = student(inputs["noise"], inputs["frame"], inputs["cameras"], inputs["tokens"], inputs["phase1_tokens"]).gaussians
    return render_loss(gaussians, inputs, dargs, lpips_model)


def render_loss(gaussians, inputs: dict, dargs, lpips_model) -> torch.Tensor:
    """The renders at C scored as distillation_step scores them (without verification)."""
    views = inputs["views"]  # [B, V, 4, s, s]
    renders = render(gaussians, inputs["cameras"][:, : views.shape[1]], background=None)  # [B, V, ...]
    losses = distill.explicit_loss(renders, views, dargs, lpips_model)
    distill.add_seed_terms(losses, renders, views, inputs["image_ids"], dargs)
    if dargs.input_view_weight > 0:  # the render at the input camera [B, 1] against the input image [B, 4, S, S]
        input_view = distill.input_view_loss(gaussians, inputs["cameras"][:, views.shape[1] :], inputs["image"], dargs)
        losses["total"] = losses["total"] + dargs.input_view_weight * input_view
    return losses["total"]


def count_flops(student, inputs: dict, dargs, lpips_model) -> tuple:
    """(student's, the loss side's) FLOPs of one model-alone forward + backward, counted eagerly. The loss side
    (render, LPIPS, from the Gaussians back to them) is counted on detached Gaussians and taken off the whole."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as whole:
        model_loss(student, inputs, dargs, lpips_model).backward()
    with torch.no_grad():
        gaussians = student(inputs["noise"], inputs["frame"], inputs["cameras"], inputs["tokens"], inputs["phase1_tokens"]).gaussians
    leaves = {f.name: getattr(gaussians, f.name) for f in dataclasses.fields(gaussians)}
    leaves = type(gaussians)(**{k: None if v is None else v.detach().requires_grad_() for k, v in leaves.items()})
    with FlopCounterMode(display=False) as loss_side:
        render_loss(leaves, inputs, dargs, lpips_model).backward()
    student.zero_grad(set_to_none=True)
    return whole.get_total_flops() - loss_side.get_total_flops(), loss_side.get_total_flops()


def build(args):
    """Teacher, student, data and the two steps (closures over one optimizer and EMA)."""
    from diffusers.training_utils import EMAModel

    device = torch.device(args.device)
    flags = ["--teacher", args.teacher, "--quadruples", args.quadruples or "synthetic", "--output-dir", "unused",
             "--batch-size", str(args.batch_size), "--preset", args.preset, "--seed-deviation-weight", str(args.seed_deviation_weight),
             "--seed-spread-weight", str(args.seed_spread_weight), "--input-view-weight", str(args.input_view_weight)]
    flags += ["--verification-k0", "0"] if args.verification else ["--no-verification"]  # k0 = 0: full weight from the start
    dargs = distill.parse_args(flags + (["--tiny-test"] if args.tiny_test else []))
    teacher = TinyTeacher.from_pretrained(dargs.teacher, device=device)
    for unet in (teacher.pipe.unet, teacher.pipe.high_noise_unet):
        if unet is not None:
            unet.requires_grad_(False).eval()
    tokenizer = teacher.pipe.image_encoder
    student = build_student(dargs, teacher).to(device)
    inputs_builder = StudentInputBuilder(student, tokenizer, teacher.layout)
    lpips_model = None
    if dargs.lpips_weight > 0:
        try:
            from dd3g.evaluation.metrics import LPIPS

            lpips_model = LPIPS.from_pretrained().to(device)
        except (ImportError, FileNotFoundError) as error:
            print(f"LPIPS unavailable ({error}); the loss uses MSE terms only", file=sys.stderr)
    if args.quadruples:
        data = distill.QuadrupleBatches(args.quadruples, teacher.noise_shape)
        data.preload(device)
    else:
        data = SyntheticQuadruples(max(args.pool_size, dargs.batch_size), args.image_size or 2 * teacher.image_size, teacher,
                                   args.seeds_per_image, device)
    optimizer = torch.optim.AdamW(student.parameters(), lr=dargs.lr, weight_decay=0.01, betas=(0.9, 0.99), fused=device.type == "cuda")
    lr_schedule = warmup_cosine(optimizer, dargs.warmup_steps, dargs.max_steps)
    ema = EMAModel(student.parameters(), decay=dargs.ema_decay, foreach=True)
    ema.to(device)
    plain = SimpleNamespace(backward=lambda loss: loss.backward(), clip_grad_norm_=torch.nn.utils.clip_grad_norm_)  # one process
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    model = torch.compile(student) if args.compile else student
    batch_size, steps = dargs.batch_size, itertools.count()

    def update(loss):
        optimization_step(plain, student, optimizer, lr_schedule, ema, loss)

    def full_step():
        step = next(steps)
        indices = list(range(step * batch_size, (step + 1) * batch_size))
        batch = data.batch(data.training_rows(indices, dargs.seed))
        with autocast:
            losses, _, _ = distill.distillation_step(model, teacher, inputs_builder, batch, dargs, step, indices, lpips_model)
        update(losses["total"])

    with autocast:
        fixed = prepare(data.batch(data.training_rows(range(batch_size), dargs.seed)), inputs_builder, device)

    def model_step():
        with autocast:
            loss = model_loss(model, fixed, dargs, lpips_model)
        update(loss)

    return SimpleNamespace(device=device, dargs=dargs, teacher=teacher, tokenizer=tokenizer, inputs_builder=inputs_builder, student=student, data=data,
                           lpips=lpips_model, fixed=fixed, autocast=autocast, full_step=full_step, model_step=model_step)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--teacher", default="hub/mvdm-tiny")
    p.add_argument("--quadruples", default=None, help="a quadruple set (training/simulate.py); default: synthetic rows")
    p.add_argument("--preset", default="tiny", help="the student's PEPD preset (phase 2)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--pool-size", type=int, default=256, help="synthetic rows")
    p.add_argument("--image-size", type=int, default=None, help="synthetic input side (default twice the teacher's)")
    p.add_argument("--seeds-per-image", type=int, default=4, help="synthetic rows per image")
    p.add_argument("--seed-deviation-weight", type=float, default=2.0, help="as the session's arms")
    p.add_argument("--seed-spread-weight", type=float, default=0.0, help="as distill.py's; 0 turns it off")
    p.add_argument("--input-view-weight", type=float, default=1.0, help="as the session's main arm; 0 turns it off")
    p.add_argument("--verification", action="store_true", help="include implicit verification in the full step")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--tiny-test", action="store_true", help="distill.py's toy phase 2 and batch <= 2 (CPU tests)")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    bench = build(args)
    device, batch_size = bench.device, bench.dargs.batch_size
    with bench.autocast:
        flops, loss_flops = count_flops(bench.student, bench.fixed, bench.dargs, bench.lpips)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "teacher": args.teacher,
              "preset": "tiny-test" if args.tiny_test else args.preset, "quadruples": args.quadruples or "synthetic",
              "batch_size": batch_size, "verification": args.verification, "seed_deviation_weight": args.seed_deviation_weight,
              "seed_spread_weight": args.seed_spread_weight,
              "input_view_weight": args.input_view_weight,
              "lpips": bench.lpips is not None, "compiled": args.compile,
              "student_parameters": sum(p.numel() for p in bench.student.parameters()), "gaussians": bench.student.num_gaussians,
              "student_forward_backward_tflop": flops / 1e12, "loss_forward_backward_tflop": loss_flops / 1e12}
    report.update(time_training_steps({"model_alone": bench.model_step, "full_step": bench.full_step}, args.warmup, args.steps,
                                      device, batch_size, flops))
    return print_and_save(report, args.json)


if __name__ == "__main__":
    main()
