"""Train the tiny multi-view diffusion teacher on procedural objects (docs/design.md sections 2 and 4).

    accelerate launch training/train_teacher.py --output-dir runs/mvdm-tiny --max-steps 20000 --resume latest
    python training/train_teacher.py --tiny-test --output-dir /tmp/t    # the CPU smoke configuration

Each step renders a batch of objects from a pool (random yaw, input elevation in [-10, 30]; the output views in
the canonical layout, view 0 at the input's camera, for `--canonical-fraction` of the samples, since that is how the
teacher is sampled, and at a random azimuth offset for the others, so it can also verify views outside it); the
pool's objects carry the lights of `--lighting` (hard, soft or none; training/synthetic.py) and, on
`--print-fraction` of their bodies, printed labels; `--pool-start` picks which train-split objects: the 4 output
views at the teacher's resolution and the input view (for the clean 5th frame and the image tokens). The UNet
learns v-prediction on the 4 views; image tokens and the input frame are dropped together with probability
`--cond-dropout` (classifier-free guidance). bf16 on CUDA, EMA, AdamW with warm-up and cosine decay.

Every draw comes from generators keyed by (run seed, step) over the whole global batch, so a resumed run draws
exactly what the uninterrupted one would have, and 1 or K processes see the same samples. The data stays on the
device: the object pool lives there, views are rendered there with gsplat, noise is drawn there; the optimizer is
fused and `--compile` compiles the UNet (`benchmarks/teacher_step.py` compares the full step with the model alone).
`--time-limit` stops cleanly (with a checkpoint) before a wall-clock budget runs out; `--resume latest` goes on.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F


from dd3g.cameras import ViewLayout
from dd3g.gaussians import Gaussians
from dd3g.models.image_tokenizer import EfficientNetLite0Tokenizer
from dd3g.models.mv_unet import MultiViewUNet
from dd3g.preprocess import composite_on
from dd3g.randomness import generator, sample_seed
from dd3g.rendering import render
from dd3g.student_inputs import encode_input_frame
from dd3g.teachers.base import camera_sensitivity
from dd3g.teachers.tiny import TinyMVDMPipeline, TinyTeacher, training_scheduler
from training import synthetic
from training.common import (
    image_grid, optimization_step, resolve_resume, restore_checkpoint, save_checkpoint, start_run, StepProfiler,
    warmup_cosine,
)

# The shapes this script trains: pixel-space RGBA at 64 px with Plücker cameras (the latent `base` shapes are
# ImageDream's, trained elsewhere).
PIXEL_UNET_PRESETS = ("tiny", "tiny-wide", "small")

# A UNet of the tiny structure at toy width, for --tiny-test on the CPU.
TINY_TEST_UNET = dict(
    sample_size=16, in_channels=4, out_channels=4, num_frames=5, block_out_channels=(16, 32), layers_per_block=1,
    attention_levels=(False, True), mid_block_attention=True, attention_head_dim=8, context_dim=112,
    transformer_depth=1, camera_conditioning="plucker", norm_num_groups=8, dropout=0.0,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--resume", default=None, help="'latest' (this run's newest checkpoint, if any) or a checkpoint folder")
    p.add_argument("--tiny-test", action="store_true", help="toy sizes that run in seconds on a CPU (tests)")
    p.add_argument("--unet-preset", default="tiny", choices=PIXEL_UNET_PRESETS,
                   help="the main UNet's shape (MultiViewUNet.PRESETS; 64-px pixel-space ones); a new shape trains from scratch")
    p.add_argument("--sample-size", type=int, default=None,
                   help="side of the frames in px (default: that of the teacher --init-from, else --expert-for, else "
                        "--keep-expert-from names; with none, the preset's 64). The UNet holds no parameter bound to the "
                        "size, so weights of another size load as they are: a warm start at a new resolution (e.g. 128 "
                        "from a 64-px teacher)")
    p.add_argument("--max-steps", type=int, default=20000, help="length of the LR schedule")
    p.add_argument("--stop-after", type=int, default=None, help="stop (with a checkpoint) after this step, e.g. to chunk a run")
    p.add_argument("--time-limit", type=float, default=None, help="seconds from the start (loading and the pool included); checkpoint and stop before then")
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-steps", type=int, default=500)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--cond-dropout", type=float, default=0.1)
    p.add_argument("--high-noise-fraction", type=float, default=0.0,
                   help="share of samples whose timestep is drawn from [--high-noise-start, 1000), where only the "
                        "input and the cameras tell the views apart (uniform t alone left the teacher camera-blind)")
    p.add_argument("--high-noise-start", type=int, default=800,
                   help="first timestep of that range; at 64 px with the cosine schedule each view's mean colour "
                        "still shows through the noise below ~995 (whole-image SNR > 1)")
    p.add_argument("--expert-for", default=None, metavar="TEACHER",
                   help="train the high-noise expert for this teacher folder instead: every sample at t >= "
                        "--high-noise-start; samples and the export use TEACHER's UNet below that")
    p.add_argument("--keep-expert-from", default=None, metavar="TEACHER",
                   help="train the main UNet and export it beside TEACHER's high-noise expert (samples use it too)")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet (pays off on runs of many minutes)")
    p.add_argument("--guidance-scale", type=float, default=3.0, help="stored in the exported pipeline")
    p.add_argument("--pool-size", type=int, default=4096, help="procedural training objects built at the start")
    p.add_argument("--num-gaussians", type=int, default=8192, help="per procedural object")
    p.add_argument("--input-size", type=int, default=128, help="render size of the input view (tokens)")
    p.add_argument("--tokenizer-size", type=int, default=224, help="resolution the frozen tokenizer sees")
    p.add_argument("--elevation-range", type=float, nargs=2, default=(-10.0, 30.0))
    p.add_argument("--canonical-fraction", type=float, default=0.75,
                   help="share of samples whose 4 views are in the canonical layout (view 0 at the input's camera: what "
                        "sampling asks for); the others are turned by a random azimuth")
    p.add_argument("--lighting", default="mixed", choices=synthetic.LIGHTINGS,
                   help="the light baked into the pool's objects ('baked': every object hard-lit, the world before)")
    p.add_argument("--print-fraction", type=float, default=0.5,
                   help="the chance that a pool object's body carries a printed label (text, bands, logos, a picture; "
                        "training/synthetic.py make_object); 0.5: hub/mvdm-tiny's world from its step 18,001 on; 0: the world before")
    p.add_argument("--pool-start", type=int, default=0,
                   help="the pool is the train split's objects from this index on (a later chunk can see new objects)")
    p.add_argument("--checkpoint-every", type=int, default=1000)
    p.add_argument("--sample-every", type=int, default=2000)
    p.add_argument("--sample-steps", type=int, default=30)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile-steps", type=int, default=0, help="profile the first N steps (torch.profiler) and print where time goes")
    p.add_argument("--export", default=None, help="write the EMA teacher (fp16 safetensors) here at the end")
    p.add_argument("--handoff", default=None, help="at the end, write what --init-from needs here (weights, EMA teacher, step)")
    p.add_argument("--init-step", type=int, default=None, help="with --init-from a teacher folder: its training step")
    p.add_argument("--init-from", default=None, help="continue from weights alone (a checkpoint's model.safetensors folder "
                   "plus an exported teacher for the EMA), e.g. across machines; fresh optimizer, warm-up again")
    args = p.parse_args(argv)
    if not 0.0 <= args.print_fraction <= 1.0:
        p.error(f"--print-fraction {args.print_fraction}: expected a chance in [0, 1]")
    if args.sample_size is not None and args.sample_size <= 0:
        p.error(f"--sample-size {args.sample_size}: expected a side in px > 0")
    if args.pool_start < 0:
        p.error(f"--pool-start {args.pool_start}: expected an index >= 0 into the train split")
    if args.expert_for and args.keep_expert_from:
        p.error("--expert-for trains an expert; --keep-expert-from keeps one: choose one")
    if args.expert_for:
        args.high_noise_fraction = 1.0
    if args.sample_size is None:  # going on from a teacher keeps its frame size unless told otherwise
        args.sample_size = next((size for folder in (args.init_from, args.expert_for, args.keep_expert_from)
                                 if (size := frame_size_of(folder)) is not None), None)
    if args.tiny_test:
        args.unet_preset = None
        args.pool_size = min(args.pool_size, 4)
        args.num_gaussians = min(args.num_gaussians, 512)
        args.batch_size = min(args.batch_size, 2)
        args.input_size = 32
        args.tokenizer_size = 64
        args.warmup_steps = min(args.warmup_steps, 2)
        args.sample_steps = min(args.sample_steps, 2)
    return args


def frame_size_of(folder: Optional[str]) -> Optional[int]:
    """The frame side of the main UNet in a teacher or --handoff folder; None when there is none to read."""
    if folder is None:
        return None
    config = exported_teacher_of(Path(folder)) / "unet" / "config.json"
    return int(json.loads(config.read_text())["sample_size"]) if config.is_file() else None


def exported_teacher_of(folder: Path) -> Path:
    """The exported teacher in an --init-from folder: a --handoff folder keeps it in teacher/, else it is the folder."""
    return folder / "teacher" if (folder / "teacher").is_dir() else folder


def size_override(args) -> dict:
    """Config keys a UNet of this run is built or loaded with: the frame side, when --sample-size sets it."""
    return {} if args.sample_size is None else {"sample_size": args.sample_size}


def build_unet(args) -> MultiViewUNet:
    if args.unet_preset is None:
        return MultiViewUNet(**{**TINY_TEST_UNET, **size_override(args)})
    return MultiViewUNet.preset(args.unet_preset, **size_override(args))


def build_pool(args, device, num_processes: int = 1) -> Gaussians:
    """The training objects, built once on the CPU (deterministic by seed) and kept on the device.  [P, N]"""
    seeds = [synthetic.split_seed("train", args.pool_start + i) for i in range(args.pool_size)]
    workers = max(1, min(16, (os.cpu_count() or 1) // max(1, num_processes)))  # the machine's cores, shared by the ranks
    return synthetic.batch_objects(seeds, args.num_gaussians, lighting=args.lighting, print_fraction=args.print_fraction,
                                   workers=workers).to(device)


def sample_batch(args, pool: Gaussians, layout: ViewLayout, step: int, size: int, device, process_index: int = 0,
                 num_processes: int = 1):
    """Render this process's slice of global batch `step`.

    Every draw comes from generators keyed by (run seed, step) and is made for the whole global batch at once:
    the scalars (object, yaw, elevation, output-view offset, timestep, dropout) in one call on the CPU, the noise on
    the device. So a resumed run draws what the uninterrupted one drew, 1 or K processes see the same samples, and
    no host work or host-device copy grows with the batch (a per-sample CPU loop of draws and CPU noise was half
    of the step before).
    """
    total, rows = args.batch_size * num_processes, slice(process_index * args.batch_size, (process_index + 1) * args.batch_size)
    scalars = torch.rand((total, 7), generator=generator(sample_seed(args.seed, "teacher-batch", step)))[rows]  # [B, 7]
    pool_ids = (scalars[:, 0] * pool.batch_shape[0]).long().clamp_max(pool.batch_shape[0] - 1)
    yaws = scalars[:, 1] * 2 * math.pi
    low, high = args.elevation_range
    elevation = low + (high - low) * scalars[:, 2]  # [B] degrees
    # One uniform decides both: below the canonical fraction no turn, above it a turn spread over [0, 360).
    fraction = min(max(args.canonical_fraction, 0.0), 1.0)
    turned = scalars[:, 3] >= fraction
    offsets = torch.where(turned, (scalars[:, 3] - fraction) / max(1.0 - fraction, 1e-9) * 360.0, torch.zeros_like(scalars[:, 3]))
    timesteps = (scalars[:, 4] * 1000).long().clamp_max(999)
    if args.high_noise_fraction > 0:
        top = args.high_noise_start + timesteps % (1000 - args.high_noise_start)
        timesteps = torch.where(scalars[:, 5] < args.high_noise_fraction, top, timesteps)
    dropped = scalars[:, 6] < args.cond_dropout
    noise_generator = torch.Generator(device=device).manual_seed(sample_seed(args.seed, "teacher-noise", step))
    noise = torch.randn((total, layout.num_views, 4, size, size), generator=noise_generator, device=device)[rows]  # [B, V, 4, s, s]
    objects = pool[pool_ids.to(device, non_blocking=True)].rotated_about_y(yaws.to(device, non_blocking=True))
    cameras = layout.cameras(size, size, elevation_deg=elevation, azimuth_offset_deg=offsets, include_input=True).to(device)
    with torch.no_grad():
        views = render(objects, cameras[:, : layout.num_views], background=None).rgba()  # [B, V, 4, s, s]
        input_view = render(objects, layout.input_camera(args.input_size, args.input_size, elevation).to(device), background=None).rgba()[:, 0]
    return {
        "views": views, "input_view": input_view, "cameras": cameras,
        "timesteps": timesteps.to(device, non_blocking=True), "dropped": dropped.to(device, non_blocking=True), "noise": noise,
    }


def model_inputs(unet, tokenizer, scheduler, batch) -> dict:
    """The UNet's inputs and target for a rendered batch: noised views + the clean input frame, timesteps, camera
    rays, image tokens (zeroed with the frame for dropped samples), and the v-prediction target."""
    views, size = batch["views"], batch["views"].shape[-1]
    b, v = views.shape[:2]
    x0 = views * 2 - 1  # [B, V, 4, s, s]
    noise, t = batch["noise"], batch["timesteps"]
    x_t = scheduler.add_noise(x0, noise, t)
    input_view = batch["input_view"]  # [B, 4, S, S]
    with torch.no_grad():
        tokens = tokenizer(composite_on(input_view).to(tokenizer.dtype))  # [B, L, D]
    frame = encode_input_frame(input_view, "rgba", size)  # [B, 4, s, s] as the teacher encodes it when sampling
    keep = (~batch["dropped"]).to(x0.dtype)
    model = unet.module if hasattr(unet, "module") else unet
    return {
        "frames": torch.cat([x_t, (frame * keep.view(b, 1, 1, 1))[:, None]], dim=1),  # [B, V+1, 4, s, s]
        "timesteps": torch.cat([t[:, None].expand(b, v), torch.zeros_like(t)[:, None]], dim=1).float(),  # [B, V+1]
        "camera": model.camera_condition(batch["cameras"]),
        "tokens": tokens * keep.view(b, 1, 1).to(tokens.dtype),
        "target": scheduler.get_velocity(x0, noise, t),  # [B, V, 4, s, s]
    }


def unet_loss(unet, inputs: dict) -> torch.Tensor:
    """v-prediction MSE on the output views (the input frame is clean and not scored)."""
    v = inputs["target"].shape[1]
    prediction = unet(inputs["frames"], inputs["timesteps"], inputs["camera"], inputs["tokens"]).sample[:, :v]
    return F.mse_loss(prediction.float(), inputs["target"].float())


def training_loss(unet, tokenizer, scheduler, batch) -> torch.Tensor:
    return unet_loss(unet, model_inputs(unet, tokenizer, scheduler, batch))


def init_from_weights(unet: MultiViewUNet, ema, folder: Path, step: Optional[int] = None, component: str = "unet") -> int:
    """Continue from weights alone; returns the step to continue at. `component`: the teacher folder's UNet to
    start from (`high_noise_unet` to continue an expert).

    `folder` is a --handoff folder (fp32 model.safetensors, the EMA as teacher/, trainer_state.json) or an
    exported teacher folder such as hub/mvdm-tiny (its EMA weights then start both the model and the EMA,
    and --init-step says where the schedule stands).
    """
    from safetensors.torch import load_file

    teacher_dir = exported_teacher_of(folder)
    exported = MultiViewUNet.from_pretrained(teacher_dir / component, use_safetensors=True).float()
    if (folder / "model.safetensors").is_file():
        unet.load_state_dict(load_file(folder / "model.safetensors"))
    else:
        unet.load_state_dict(exported.state_dict())
    ema.shadow_params = [p.detach().clone() for p in exported.parameters()]
    step = init_step_of(folder, step)
    ema.optimization_step = step
    return step


def init_step_of(folder: Path, step: Optional[int] = None) -> int:
    """The training step an --init-from folder stands at: its trainer_state.json, else --init-step."""
    if (folder / "trainer_state.json").is_file():
        return int(json.loads((folder / "trainer_state.json").read_text())["step"])
    if step is None:
        raise SystemExit(f"--init-from {folder}: no trainer_state.json there, so pass --init-step")
    return step


def teacher_pipeline(model, tokenizer, args, base_unet=None, expert_unet=None) -> TinyMVDMPipeline:
    """`model` as the teacher (beside a kept `expert_unet`, --keep-expert-from), or as the high-noise expert
    beside `base_unet` (--expert-for)."""
    if base_unet is None and expert_unet is None:
        return TinyMVDMPipeline(model, tokenizer, training_scheduler(), guidance_scale=args.guidance_scale)
    main, expert = (base_unet, model) if base_unet is not None else (model, expert_unet)
    return TinyMVDMPipeline(main, tokenizer, training_scheduler(), high_noise_unet=expert,
                            guidance_scale=args.guidance_scale, high_noise_start=high_noise_start_of(args))


def high_noise_start_of(args) -> int:
    """Where the expert takes over: this run's --high-noise-start for an expert run, else the kept expert's own."""
    if args.keep_expert_from:
        return int(json.loads((Path(args.keep_expert_from) / "model_index.json").read_text())["high_noise_start"])
    return args.high_noise_start


def load_base_unet(args, device) -> Optional[MultiViewUNet]:
    if not args.expert_for:
        return None
    return MultiViewUNet.from_pretrained(Path(args.expert_for) / "unet", use_safetensors=True, **size_override(args)).float().to(device).eval()


def load_kept_expert(args, device) -> Optional[MultiViewUNet]:
    if not args.keep_expert_from:
        return None
    folder = Path(args.keep_expert_from) / "high_noise_unet"
    if not folder.is_dir():
        raise SystemExit(f"--keep-expert-from {args.keep_expert_from}: that teacher has no high_noise_unet/")
    return MultiViewUNet.from_pretrained(folder, use_safetensors=True, **size_override(args)).float().to(device).eval()


def export_teacher(unet, ema, tokenizer, args, path: Path, dtype=torch.float16, base_unet=None, expert_unet=None) -> TinyMVDMPipeline:
    """The EMA weights as a TinyMVDMPipeline folder (fp16 safetensors, sharded under 15 MiB a file)."""
    export_unet = MultiViewUNet.from_config(unet.config)
    ema.copy_to(export_unet.parameters())
    # The training copies stay fp32; rebuilt from their configs, so the folder a kept UNet was loaded from
    # (`_name_or_path`, a path on the training machine) is not written into the shipped config.
    base = None if base_unet is None else _fresh_copy(base_unet, dtype)
    expert = None if expert_unet is None else _fresh_copy(expert_unet, dtype)
    pipe = teacher_pipeline(export_unet.to(dtype), copy.deepcopy(tokenizer).to(dtype), args, base, expert)
    pipe.save_pretrained(path, safe_serialization=True, max_shard_size="12MB")
    return pipe


def _fresh_copy(model: MultiViewUNet, dtype) -> MultiViewUNet:
    fresh = MultiViewUNet.from_config({k: v for k, v in model.config.items() if k != "_name_or_path"})
    fresh.load_state_dict(model.state_dict())
    return fresh.to(dtype)


@torch.no_grad()
def sample_grid(unet, ema, tokenizer, args, layout, path: Path, device, num_objects: int = 4, base_unet=None, expert_unet=None):
    """Validation objects: input | teacher's 4 views (EMA weights, DDIM) | the true 4 renders."""
    size = unet.config.sample_size if not hasattr(unet, "module") else unet.module.config.sample_size
    model = unet.module if hasattr(unet, "module") else unet
    seeds = [synthetic.split_seed("val", i) for i in range(num_objects)]
    objects = synthetic.batch_objects(seeds, args.num_gaussians).to(device)
    elevation = torch.full((num_objects,), 10.0)
    cams = layout.cameras(size, size, elevation_deg=elevation, include_input=True).to(device)
    truth = render(objects, cams[:, : layout.num_views], background=None).rgba()
    inputs = render(objects, layout.input_camera(args.input_size, args.input_size, elevation).to(device), background=None).rgba()[:, 0]
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    try:
        teacher = TinyTeacher(teacher_pipeline(model, tokenizer, args, base_unet, expert_unet))
        result = teacher.simulate(inputs, seeds=list(range(num_objects)), num_steps=args.sample_steps, elevation_deg=elevation)
        # Uniform timesteps left the teacher ignoring its cameras at the sampler's first step (t = 999): watch it.
        sensitivity = {f"camera_sensitivity_t{t}": camera_sensitivity(teacher, inputs, truth, elevation, timestep=t) for t in (999, 950)}
    finally:
        ema.restore(model.parameters())
    small_inputs = F.interpolate(inputs, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    rows = [torch.cat([small_inputs[i : i + 1], result.views[i].to(device), truth[i]]) for i in range(num_objects)]
    image_grid(rows, path)
    psnr = -10 * torch.log10(F.mse_loss(composite_on(result.views.to(device)), composite_on(truth)).clamp_min(1e-10))
    return {"sample_psnr_white": float(psnr), **sensitivity}


def main(argv=None):
    launched = time.time()  # --time-limit counts from here: loading and building data are part of the budget
    args = parse_args(argv)
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    accelerator, device, output_dir, log = start_run(args.output_dir)

    torch.manual_seed(args.seed)  # initial weights only; data randomness is keyed per sample
    unet = build_unet(args)
    tokenizer = EfficientNetLite0Tokenizer.from_imagenet(image_size=args.tokenizer_size).to(device)
    scheduler = training_scheduler()
    layout = ViewLayout()
    ema = EMAModel(unet.parameters(), decay=args.ema_decay, model_cls=MultiViewUNet, model_config=unet.config, foreach=True)
    resume_from = resolve_resume(output_dir, args.resume)
    step = restart_step = 0
    if args.init_from:
        # The LR schedule restarts at the init step; a resumed chunk of such a run needs that offset too.
        restart_step = init_step_of(Path(args.init_from), args.init_step)
        if resume_from is None:
            # An expert run continues a teacher's expert when it has one, else starts from its main UNet.
            has_expert = (Path(args.init_from) / "high_noise_unet").is_dir()
            component = "high_noise_unet" if args.expert_for and has_expert else "unet"
            step = init_from_weights(unet, ema, Path(args.init_from), restart_step, component)
            accelerator.print(f"initialised from weights in {args.init_from} at step {step}")
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.99),
                                  fused=device.type == "cuda")  # one kernel for all parameters, no host loop
    lr_schedule = warmup_cosine(optimizer, args.warmup_steps, args.max_steps, restart_step=restart_step)
    unet, optimizer, lr_schedule = accelerator.prepare(unet, optimizer, lr_schedule)
    if args.compile:
        unet.forward = torch.compile(unet.forward)  # the wrapper stays, so saving and DDP see the same module
    ema.to(device)

    if resume_from is not None:
        step = restore_checkpoint(accelerator, resume_from, ema)
    pool = build_pool(args, device, accelerator.num_processes)
    base_unet = load_base_unet(args, device)
    expert_unet = load_kept_expert(args, device)
    size = (unet.module if hasattr(unet, "module") else unet).config.sample_size
    stop_at = min(args.max_steps, args.stop_after or args.max_steps)
    start_time = time.time()
    progress = tqdm(total=stop_at, initial=step, desc="teacher", disable=not accelerator.is_local_main_process)
    profiler = StepProfiler(args.profile_steps if accelerator.is_main_process else 0, device)
    while step < stop_at:
        with profiler.phase("sample_batch"):
            batch = sample_batch(args, pool, layout, step, size, device, accelerator.process_index, accelerator.num_processes)
        with profiler.phase("forward"), accelerator.autocast():
            loss = training_loss(unet, tokenizer, scheduler, batch)
        with profiler.phase("backward_step_ema"):
            grad_norm = optimization_step(accelerator, unet, optimizer, lr_schedule, ema, loss)
        profiler.step()
        step += 1
        progress.update(1)
        if step % args.log_every == 0 or step == stop_at:
            # Reading the loss waits for the GPU: only on log steps, so batch preparation overlaps compute.
            loss_value = accelerator.reduce(loss.detach(), reduction="mean").item()
            elapsed = time.time() - start_time
            log.write(step=step, loss=loss_value, lr=lr_schedule.get_last_lr()[0], grad_norm=float(grad_norm), elapsed_s=elapsed)
            progress.set_postfix(loss=f"{loss_value:.4f}")
        out_of_time = args.time_limit is not None and time.time() - launched > args.time_limit
        if step % args.checkpoint_every == 0 or step == stop_at or out_of_time:
            save_checkpoint(accelerator, output_dir, step, {"args": vars(args)}, ema=ema)
        if accelerator.is_main_process and (step % args.sample_every == 0 or step == stop_at or out_of_time):
            quality = sample_grid(unet, ema, tokenizer, args, layout, output_dir / "samples" / f"step-{step:07d}.png", device,
                                  base_unet=base_unet, expert_unet=expert_unet)
            log.write(step=step, **quality)
        if out_of_time:
            accelerator.print(f"time limit reached at step {step}; resume with --resume latest")
            break
    progress.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and args.export:
        export_teacher(accelerator.unwrap_model(unet), ema, tokenizer, args, Path(args.export), base_unet=base_unet, expert_unet=expert_unet)
    if accelerator.is_main_process and args.handoff:
        write_handoff(accelerator.unwrap_model(unet), ema, tokenizer, args, Path(args.handoff), step, expert_unet)
    accelerator.end_training()  # releases the process group of a multi-GPU run
    return step


def write_handoff(unet, ema, tokenizer, args, folder: Path, step: int, expert_unet=None) -> None:
    """Weights-only state small enough to carry between machines (no optimizer moments)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().float().cpu().contiguous() for k, v in unet.state_dict().items()}, folder / "model.safetensors")
    export_teacher(unet, ema, tokenizer, args, folder / "teacher", expert_unet=expert_unet)
    (folder / "trainer_state.json").write_text(json.dumps({"step": step, "args": vars(args)}, indent=1))


if __name__ == "__main__":
    main()
