"""The whole DD3G chain with an ImageDream teacher of random weights: corpus -> simulate -> distil -> export -> pipeline.

    python benchmarks/imagedream_chain.py --size full --work runs/imagedream-chain --images 32 --seeds-per-image 2 \\
        --distill-steps 60 --batch-size 8 --profile-steps 5 --out runs/imagedream-chain/report.json     # one GPU
    python benchmarks/imagedream_chain.py --size tiny --work /tmp/chain --images 2 --distill-steps 3   # CPU, toy

`--size full` writes ImageDream's published sizes (SD-2.1 UNet with its image-prompt adapter, SD VAE, OpenCLIP
ViT-H towers; dd3g/testing/imagedream_fixture.py, a few GB of random weights) and distils the `base` student (phase 1 =
ImageDream's UNet, 65,536 Gaussians) with implicit verification from the first step; `--size tiny` runs the same
code on the tiny fixture with the toy student of `distill.py --tiny-test`. Each stage runs through its own
script's `main`, on the device accelerate picks (the GPU when there is one).

Reports (JSON): quadruples/s of the simulation (the teacher's 30-step CFG ODE, decoding included), distillation
samples/s over the steps after the first and after any profiled ones (from distill.py's log), peak GPU memory of
each stage (or the process's peak RSS on a CPU), the export's size, and the pipeline's latency for one image at
batch 1. With `--profile-steps N`, distill.py prints torch.profiler's table of N steps (where a step's time goes) to
stdout.
The random weights make the outputs meaningless; the timings and memory are what a real checkpoint of the same
sizes costs. The ODE speed and `base` latency goals have their own benchmarks (simulate_throughput.py,
latency.py; see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import time
from pathlib import Path

import torch


from dd3g.evaluation.timing import print_and_save


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=("tiny", "full"), default="tiny", help="the fixture's sizes (full: ImageDream's published ones)")
    p.add_argument("--work", required=True,
                   help="folder for the teacher, corpus, quadruples, run and export (teacher and corpus are reused when present; "
                        "the timed stages are redone)")
    p.add_argument("--images", type=int, default=16, help="procedural corpus images")
    p.add_argument("--seeds-per-image", type=int, default=2)
    p.add_argument("--steps", type=int, default=30, help="the teacher's DDIM steps")
    p.add_argument("--simulate-batch-size", type=int, default=8)
    p.add_argument("--distill-steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=8, help="distillation batch")
    p.add_argument("--profile-steps", type=int, default=0, help="torch.profiler over this many distillation steps")
    p.add_argument("--latency-repeats", type=int, default=5)
    p.add_argument("--out", default=None, help="also write the JSON report here")
    args = p.parse_args(argv)
    if args.distill_steps < 2:
        p.error("--distill-steps must be at least 2 (the first step is not timed)")
    return args


def _reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak_mb() -> dict:
    if torch.cuda.is_available():
        return {"peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
    return {"peak_process_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}  # monotone over the run


def main(argv=None) -> dict:
    args = parse_args(argv)
    from dd3g.pipeline import DD3GPipeline
    from dd3g.testing import rgba_image
    from dd3g.testing.imagedream_fixture import write_tiny_imagedream
    from training import build_corpus, distill, simulate

    full = args.size == "full"
    work = Path(args.work)
    for timed in ("quadruples", "run", "pipeline"):  # a resumed stage would time nothing
        shutil.rmtree(work / timed, ignore_errors=True)
    report = {"size": args.size, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    teacher = work / "teacher"
    if not (teacher / "model_index.json").is_file():
        write_tiny_imagedream(teacher, full_size=full)
    image_size = 256 if full else 64
    build_corpus.main(["--source", "procedural", "--num-images", str(args.images), "--size", str(image_size),
                       "--num-gaussians", "4096" if full else "256", "--out", str(work / "corpus"), "--no-progress"])

    _reset_peak()
    start = time.perf_counter()
    simulate.main(["--teacher", str(teacher), "--corpus", str(work / "corpus"), "--out", str(work / "quadruples"),
                   "--seeds-per-image", str(args.seeds_per_image), "--steps", str(args.steps),
                   "--batch-size", str(args.simulate_batch_size), "--no-progress"])
    seconds = time.perf_counter() - start
    quadruples = args.images * args.seeds_per_image
    report["simulate"] = {"quadruples": quadruples, "steps": args.steps, "seconds": round(seconds, 3),
                          "quadruples_per_s": round(quadruples / seconds, 3), **_peak_mb()}

    run, export = work / "run", work / "pipeline"
    _reset_peak()
    distill.main([*([] if full else ["--tiny-test"]), "--preset", "base", "--teacher", str(teacher), "--quadruples",
                  str(work / "quadruples"), "--output-dir", str(run), "--max-steps", str(args.distill_steps),
                  "--batch-size", str(args.batch_size), "--log-every", "1", "--sample-every", str(10**9),
                  "--checkpoint-every", str(10**9), "--verification-weight", "1.0", "--verification-k0", "0.0",
                  "--verification-tau", "0.01", "--profile-steps", str(args.profile_steps), "--export", str(export)])
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    # Timed from the first step after the profiled ones (StepProfiler: 2 warm-up steps, then N profiled, then the
    # table is printed): the profiler's overhead is not the step's (session 19: 5 profiled steps took 48 s of 92).
    unprofiled = [r for r in records if r["step"] > args.profile_steps + 3] if args.profile_steps else records
    first, last = (unprofiled if len(unprofiled) >= 2 else records)[0], records[-1]
    timed_steps = last["step"] - first["step"]
    batch = distill.parse_args(["--teacher", "t", "--quadruples", "q", "--output-dir", "o", "--batch-size", str(args.batch_size),
                                *([] if full else ["--tiny-test"])]).batch_size
    seconds = last["elapsed_s"] - first["elapsed_s"]
    report["distill"] = {"steps": last["step"], "batch_size": batch, "timed_steps": timed_steps, "seconds": round(seconds, 3),
                         "samples_per_s": round(timed_steps * batch / seconds, 3) if seconds > 0 else None,
                         "verification_weight_last": last.get("verification_weight"), **_peak_mb()}
    report["export_mb"] = round(sum(f.stat().st_size for f in export.rglob("*") if f.is_file()) / 2**20, 1)

    _reset_peak()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = DD3GPipeline.from_pretrained(export).to(device)
    pipe.set_progress_bar_config(disable=True)
    prepared = pipe.prepare_image(rgba_image(image_size))
    pipe([prepared], seeds=[0])  # warm-up
    latencies = []
    for k in range(args.latency_repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        gaussians = pipe([prepared], seeds=[k]).gaussians
        if device == "cuda":
            torch.cuda.synchronize()
        latencies.append((time.perf_counter() - start) * 1e3)
    report["pipeline"] = {"gaussians": int(gaussians.num_gaussians), "latency_ms_median": round(statistics.median(latencies), 2),
                          "latency_ms": [round(x, 2) for x in latencies], **_peak_mb()}
    return print_and_save(report, args.out)


if __name__ == "__main__":
    main()
