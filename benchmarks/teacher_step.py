"""The teacher's training step against the model alone: how much of a step is data work?

    python benchmarks/teacher_step.py --device cuda --steps 60 --json runs/teacher_step.json [--compile]

Both are timed on the same machine, model and batch size, after warm-up steps, with the device synchronised only
at the ends:
* full step: what `training/train_teacher.py` runs each step (draws, gsplat renders of the 4 views and the input
  view, tokens, noising, UNet forward and backward, fused AdamW, EMA);
* model alone: the same UNet forward, backward, optimizer and EMA on one fixed, prepared batch.
TFLOP/s counts the UNet's forward + backward FLOPs (torch.utils.flop_counter) per step; the ratio full / model is
the share of the step that is not the model (the goal is <= 1.25).
"""

from __future__ import annotations

import argparse

import torch


from dd3g.cameras import ViewLayout
from dd3g.models.image_tokenizer import EfficientNetLite0Tokenizer
from dd3g.evaluation.timing import print_and_save, time_training_steps
from dd3g.teachers.tiny import training_scheduler
from training import train_teacher


def unet_step_flops(unet, inputs) -> int:
    """FLOPs of one UNet forward + backward on `inputs` (counted eagerly)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        train_teacher.unet_loss(unet, inputs).backward()
    unet.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--pool-size", type=int, default=256)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--unet-preset", default="tiny", choices=train_teacher.PIXEL_UNET_PRESETS, help="the UNet's shape")
    p.add_argument("--sample-size", type=int, default=None, help="frame side in px (default: the preset's, 64)")
    p.add_argument("--tiny-test", action="store_true", help="toy sizes (CPU tests)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from diffusers.training_utils import EMAModel

    device = torch.device(args.device)
    flags = ["--output-dir", "unused", "--batch-size", str(args.batch_size), "--pool-size", str(args.pool_size),
             "--unet-preset", args.unet_preset] + ([] if args.sample_size is None else ["--sample-size", str(args.sample_size)])
    targs = train_teacher.parse_args(flags + (["--tiny-test"] if args.tiny_test else []))
    torch.manual_seed(0)
    unet = train_teacher.build_unet(targs).to(device).train()
    tokenizer = EfficientNetLite0Tokenizer.from_imagenet(image_size=targs.tokenizer_size).to(device)
    scheduler, layout = training_scheduler(), ViewLayout()
    pool = train_teacher.build_pool(targs, device)
    size = unet.config.sample_size
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4, fused=device.type == "cuda")
    ema = EMAModel(unet.parameters(), decay=0.999, foreach=True)
    ema.to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    model = torch.compile(unet) if args.compile else unet
    counter = iter(range(10**9))

    def update(loss):
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(unet.parameters())

    def full_step():
        batch = train_teacher.sample_batch(targs, pool, layout, next(counter), size, device)
        with autocast:
            loss = train_teacher.unet_loss(model, train_teacher.model_inputs(unet, tokenizer, scheduler, batch))
        update(loss)

    fixed = train_teacher.model_inputs(unet, tokenizer, scheduler, train_teacher.sample_batch(targs, pool, layout, 0, size, device))

    def model_step():
        with autocast:
            loss = train_teacher.unet_loss(model, fixed)
        update(loss)

    with autocast:
        flops = unet_step_flops(unet, fixed)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "unet_preset": targs.unet_preset, "batch_size": args.batch_size,
              "sample_size": size, "compiled": args.compile, "unet_parameters": sum(p.numel() for p in unet.parameters()),
              "unet_forward_backward_tflop": flops / 1e12}
    report.update(time_training_steps({"model_alone": model_step, "full_step": full_step}, args.warmup, args.steps, device,
                                      args.batch_size, flops))
    return print_and_save(report, args.json)


if __name__ == "__main__":
    main()
