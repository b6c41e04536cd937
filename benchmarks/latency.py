"""Student latency as docs/design.md section 6 defines it (random weights: the compute is the same as trained ones).

    python benchmarks/latency.py --scale tiny                  # CPU: warm process, RGBA file -> PLY file, median of 10
    python benchmarks/latency.py --scale base --device cuda    # GPU: image tensor -> Gaussians, bf16, eager + compiled
    python benchmarks/latency.py --scale base --device cuda --profile   # + where the time goes
    python benchmarks/latency.py --scale base --phase1 imagedream --device cuda   # a student distilled from ImageDream

On a GPU the figure covers the image tokenizer and the student (preprocessing and file writing excluded),
batch 1 and 8, steady state; "compiled" is torch.compile with CUDA graphs (mode="reduce-overhead"); mode "graph" is the
whole call compiled (mode="default") and captured in one CUDA graph by hand, so that a call is a replay and nothing
else on the host (`--modes reduce-overhead,graph` times both). `--projections separate,fused` times each mode with the
projections as trained and stacked (`dd3g.models.fused_projections`), in one process.
On the CPU the figure is the whole pipeline call from an RGBA image file to a written PLY file.
`--case pipeline` (GPU): the library call instead, `DD3GPipeline.generate_from_rgba` on an RGBA tensor (encoders, student
and the input-view colour match; a `base` pipeline also carries a VAE encoder for its input frame), without and with
`enable_cuda_graphs()`, and with the colour match off (the models alone, as the pipeline runs them).
`--phase1 imagedream`: the student as distillation from ImageDream makes it (phase 1 = ImageDream's UNet with its
image-prompt adapter, at the published sizes for `base`, the test fixture's for `base-small`), and the timed call
also runs the encoders its pipeline carries: the CLIP image encoder (ViT-H/14 at 224 px) and the VAE encoder (256 px).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


from dd3g.cameras import ViewLayout
from dd3g.models.fused_projections import fuse_qkv_projections, unfuse_qkv_projections
from dd3g.models.image_tokenizer import EfficientNetLite0Tokenizer
from dd3g.models.pepd import PEPD
from dd3g.evaluation.timing import (SDPA_BACKENDS, attention_backend, captured_graph, inductor_options, profile_kernels,
                                   time_samples)
from dd3g.pipeline import PIPELINE_GRAPH_COMPILE_MODES
from dd3g.testing import example_rgba, imagedream_parts, random_pipeline


PROJECTIONS = ("separate", "fused")


def check_projections(variants) -> None:
    """Refuse an unknown projection variant, before any model is built."""
    for projections in variants:
        if projections not in PROJECTIONS:
            raise ValueError(f"unknown projections {projections!r}: {', '.join(PROJECTIONS)}")


def set_projections(model: torch.nn.Module, projections: str) -> None:
    """"fused": projections that read one tensor stacked into one matmul (attention's q/k/v, and the multi-view UNet's
    context and time-embedding projections: `dd3g.models.fused_projections`); "separate": as trained."""
    check_projections([projections])
    (fuse_qkv_projections if projections == "fused" else unfuse_qkv_projections)(model)


def cpu_pipeline_latency(scale: str, repeats: int, phase1: str = "mv-unet", projection_variants=("separate",)) -> list:
    """Warm process, RGBA file in, PLY file out (rembg, video and GLB excluded by construction); a row per projection
    variant, timed one after the other in this process."""
    pipe = random_pipeline(scale, phase1)
    pipe.set_progress_bar_config(disable=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        image_path = Path(tmp) / "input.png"
        example_rgba().save(image_path)

        def once():
            g = pipe(str(image_path), seeds=[0]).gaussians
            g[0].save_ply(Path(tmp) / "out.ply")

        for projections in projection_variants:
            set_projections(pipe.student, projections)
            samples = time_samples(once, repeats, torch.device("cpu"), warmup=1)
            rows.append({"scale": scale, "phase1": phase1, "device": f"cpu ({torch.get_num_threads()} threads)",
                         "case": "RGBA file -> PLY file", "projections": projections, "median_ms": statistics.median(samples),
                         "min_ms": min(samples), "samples_ms": samples})
    return rows


def gpu_student(scale: str, device: torch.device, dtype: torch.dtype, channels_last: bool = False, phase1: str = "mv-unet"):
    """tokenizer + student as one callable: images [B, 3, S, S] on white, noise, frame -> Gaussian tensors. With an
    ImageDream phase 1 the callable also encodes the images with the CLIP and VAE encoders its pipeline carries (the
    `frame` argument is then unused)."""
    if phase1 == "imagedream":
        with torch.device(device):
            student, frame_encoder, prompt_encoder = (m.to(dtype) for m in imagedream_parts(scale))
    else:
        with torch.device(device):
            student = PEPD.preset(scale).eval().to(dtype)
        frame_encoder = prompt_encoder = None
    tokenizer = EfficientNetLite0Tokenizer.from_imagenet().to(device, dtype)
    if channels_last:  # cuDNN's native layout: saves the NCHW<->NHWC transposes around every conv
        for model in (student, tokenizer, frame_encoder):
            if model is not None:
                model.to(memory_format=torch.channels_last)
    size = student.sample_size

    def run(images, noise, frame, cameras):
        tokens = tokenizer(images)
        phase1_tokens = None
        if prompt_encoder is not None:
            phase1_tokens = prompt_encoder(images)
            side = frame_encoder.config.image_size
            frame = frame_encoder(F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False) * 2 - 1)
        g = student(noise, frame, cameras, tokens, phase1_tokens).gaussians
        return g.means, g.log_scales, g.quats, g.opacity_logits, g.sh_dc

    return student, run, size


def gpu_pipeline_latency(scale: str, device: torch.device, repeats: int, channels_last: bool = False, phase1: str = "mv-unet",
                         projection_variants=("separate",)) -> list:
    """`DD3GPipeline.generate_from_rgba` at batch 1, bf16: a row per projection variant x (eager, CUDA graphs) x colour
    match (on, off), in this process."""
    pipe = random_pipeline(scale, phase1).to(device, torch.bfloat16)
    if channels_last:
        for model in (pipe.student, pipe.image_encoder, pipe.frame_encoder, pipe.prompt_encoder):
            if model is not None:
                model.to(memory_format=torch.channels_last)
    rgba = pipe.prepare_image(example_rgba()).rgba[None]  # [1, 4, S, S]
    noise = pipe.draw_noise(1, seeds=[0])  # [1, V, C, H, W]
    rows = []
    for projections in projection_variants:
        (pipe.fuse_qkv_projections if projections == "fused" else pipe.unfuse_qkv_projections)()
        for graphs in (False, True):
            pipe.enable_cuda_graphs() if graphs else pipe.disable_cuda_graphs()
            for match in (True, False):
                pipe.register_to_config(match_input_view=match)
                t0 = time.perf_counter()
                pipe.generate_from_rgba(rgba, noise, [0])  # compiles and captures, with graphs
                torch.cuda.synchronize()
                first_s = time.perf_counter() - t0
                samples = time_samples(lambda: pipe.generate_from_rgba(rgba, noise, [0]), repeats, device, warmup=5)
                row = {"scale": scale, "phase1": phase1, "device": torch.cuda.get_device_name(device), "dtype": "bf16", "batch": 1,
                       "case": "generate_from_rgba" + ("" if match else ", no colour match"),
                       "mode": ("cuda graphs" if graphs else "eager") + (" channels_last" if channels_last else ""),
                       "projections": projections, "median_ms": statistics.median(samples), "min_ms": min(samples),
                       "p90_ms": statistics.quantiles(samples, n=10)[-1] if len(samples) > 1 else samples[0],
                       "first_call_s": first_s}
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def student_inputs(student, batch: int, device: torch.device, dtype: torch.dtype):
    """The timed call's inputs at `batch`: images [B, 3, 256, 256] in [0, 1], noise [B, *noise_shape], the input
    frame [B, C, S, S], cameras of the 4 views + the input frame."""
    gen = torch.Generator().manual_seed(0)
    size = student.sample_size
    images = torch.rand(batch, 3, 256, 256, generator=gen).to(device, dtype)
    noise = torch.randn((batch,) + student.noise_shape, generator=gen).to(device, dtype)
    frame = torch.randn(batch, student.unet.config.in_channels, size, size, generator=gen).to(device, dtype)
    cameras = ViewLayout().cameras(size, size, elevation_deg=torch.zeros(batch), include_input=True).to(device)
    return images, noise, frame, cameras


#: the modes "graph:MODE" compiles the call in before capturing it whole, as `DD3GPipeline.enable_cuda_graphs` does:
#: compiled (eager code copies constants from the host mid-forward, which a capture refuses: session 31) and without
#: CUDA graphs of their own.
GRAPH_INNER_MODES = PIPELINE_GRAPH_COMPILE_MODES


def check_modes(modes) -> None:
    """Refuse a mode that cannot be timed, before any model is built."""
    for mode in modes:
        kind, sep, inner = mode.partition(":")
        if kind == "graph":
            if sep and inner not in GRAPH_INNER_MODES:
                raise ValueError(f"mode {mode!r}: graph captures torch.compile's code without CUDA graphs of its own "
                                 f"({', '.join('graph:' + m for m in GRAPH_INNER_MODES)}); eager code cannot be captured "
                                 "(the models copy constants from the host in their forward)")
        elif sep or mode not in ("eager", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"):
            raise ValueError(f"unknown mode {mode!r}: eager, a torch.compile mode, or graph[:{'|'.join(GRAPH_INNER_MODES)}]")


def timed_callable(run, mode: str, example_args):
    """`run` as `mode` times it: eager, torch.compile(mode), or "graph[:MODE]": torch.compile(MODE, default "default")
    captured whole into one CUDA graph that each call replays (`captured_graph`: no guard checks or graph-tree books on
    the host between calls, unlike "reduce-overhead"). Compiles and captures now for "graph", at the first call else."""
    kind, _, inner = mode.partition(":")
    if kind == "graph":
        inner = inner or "default"
        return captured_graph(torch.compile(run, mode=inner, fullgraph=False), *example_args)
    return run if mode == "eager" else torch.compile(run, mode=mode, fullgraph=False)


def gpu_latency(scale: str, device: torch.device, batches, repeats: int, compile_modes, profile: bool, channels_last: bool = False,
                phase1: str = "mv-unet", projection_variants=("separate",)) -> list:
    dtype = torch.bfloat16
    student, run, _ = gpu_student(scale, device, dtype, channels_last, phase1)
    params = sum(p.numel() for p in student.parameters())
    rows = []
    for batch, projections, mode in itertools.product(batches, projection_variants, compile_modes):
        images, noise, frame, cameras = student_inputs(student, batch, device, dtype)
        set_projections(student, projections)
        t0 = time.perf_counter()
        with torch.inference_mode():
            fn = timed_callable(run, mode, (images, noise, frame, cameras))
            fn(images, noise, frame, cameras)  # compile / warm up
            torch.cuda.synchronize()
            warmup_s = time.perf_counter() - t0
            samples = time_samples(lambda: fn(images, noise, frame, cameras), repeats, device, warmup=5)
        row = {
            "scale": scale, "phase1": phase1, "device": torch.cuda.get_device_name(device), "dtype": "bf16", "batch": batch,
            "mode": mode + (" channels_last" if channels_last else ""), "projections": projections,
            "median_ms": statistics.median(samples), "ms_per_image": statistics.median(samples) / batch,
            "min_ms": min(samples), "p90_ms": statistics.quantiles(samples, n=10)[-1] if len(samples) > 1 else samples[0],
            "first_call_s": warmup_s, "params_M": params / 1e6, "gaussians": student.num_gaussians,
        }
        if profile and device.type == "cuda":  # where this mode's time goes on the GPU (kernels by kind)
            with torch.inference_mode():
                row["profile"] = profile_kernels(lambda: fn(images, noise, frame, cameras), repeats=10)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if profile:  # the eager call at the first batch, with the last projection variant
        images, noise, frame, cameras = student_inputs(student, batches[0], device, dtype)
        rows.append({"profile": profile_table(run, (images, noise, frame, cameras))})
    return rows


def profile_table(fn, args, top: int = 25) -> str:
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        for _ in range(3):
            fn(*args)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                fn(*args)
            torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=top)
    print(table)
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(PEPD.PRESETS), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--modes", default="eager,reduce-overhead",
                        help="comma-separated: eager, torch.compile modes, graph[:MODE] (the whole call, compiled in MODE, "
                             "default 'default', captured in one CUDA graph and replayed)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--phase1", choices=("mv-unet", "imagedream"), default="mv-unet",
                        help="imagedream: the student distilled from ImageDream, with its CLIP and VAE encoders (module docstring)")
    parser.add_argument("--channels-last", action="store_true", help="convolution weights in NHWC (cuDNN's native layout)")
    parser.add_argument("--sdpa-backend", choices=SDPA_BACKENDS, default="auto",
                        help="the attention kernel tried first in every run (auto: torch's choice; cudnn: cuDNN's fused attention)")
    parser.add_argument("--cudnn-benchmark", action="store_true", help="cuDNN times its convolution algorithms once per shape")
    parser.add_argument("--inductor", action="append", default=[], metavar="KEY=VALUE",
                        help="a torch._inductor.config option for the compiled modes, e.g. coordinate_descent_tuning=True (repeatable)")
    parser.add_argument("--projections", default="separate",
                        help="comma-separated: separate (the projections' matmuls as trained), fused (those that read one "
                             "tensor stacked into one matmul, dd3g.models.fused_projections); 'separate,fused' times both "
                             "in this process")
    parser.add_argument("--case", choices=("student", "pipeline"), default="student",
                        help="on a GPU: the tokenizer + student call (modes above), or the pipeline's generate_from_rgba "
                             "without and with enable_cuda_graphs() (module docstring)")
    parser.add_argument("--json", help="write results here")
    args = parser.parse_args(argv)
    projection_variants = args.projections.split(",")
    try:
        check_modes(args.modes.split(","))
        check_projections(projection_variants)
        inductor_options(args.inductor)  # refuse an unknown option before loading anything
    except ValueError as error:
        parser.error(str(error))
    device = torch.device(args.device)
    if args.case == "pipeline" and device.type != "cuda":
        parser.error("--case pipeline is for a GPU (on the CPU the figure is already the whole pipeline call)")
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    with attention_backend(args.sdpa_backend), inductor_options(args.inductor):
        if device.type == "cuda" and args.case == "pipeline":
            rows = gpu_pipeline_latency(args.scale, device, args.repeats, args.channels_last, args.phase1, projection_variants)
        elif device.type == "cuda":
            rows = gpu_latency(args.scale, device, [int(b) for b in args.batches.split(",")], args.repeats, args.modes.split(","),
                               args.profile, args.channels_last, args.phase1, projection_variants)
        else:
            rows = cpu_pipeline_latency(args.scale, args.repeats, args.phase1, projection_variants)
    for row in rows:
        if "median_ms" in row:
            row.update(sdpa_backend=args.sdpa_backend, cudnn_benchmark=args.cudnn_benchmark, inductor=args.inductor)
    print("| scale | device | case | batch | mode | projections | median ms | ms / image |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "median_ms" in r:
            print(f"| {r['scale']} | {r['device']} | {r.get('case', 'tokenizer + student, ' + r.get('dtype', ''))} | {r.get('batch', 1)} | {r.get('mode', 'eager')} | {r['projections']} | {r['median_ms']:.2f} | {r.get('ms_per_image', r['median_ms']):.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
