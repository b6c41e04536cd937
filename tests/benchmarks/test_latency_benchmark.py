"""benchmarks/latency.py's ImageDream-phase-1 student (the GPU latency goal of issue 16) at toy size on the CPU."""

import json

import pytest
import torch

from benchmarks import latency
from dd3g.cameras import ViewLayout


def test_imagedream_student_pipeline_latency_runs_on_the_cpu(tmp_path):
    rows = latency.main(["--scale", "base-small", "--phase1", "imagedream", "--repeats", "1", "--json", str(tmp_path / "r.json")])
    assert json.loads((tmp_path / "r.json").read_text()) == rows
    assert rows[0]["phase1"] == "imagedream" and rows[0]["median_ms"] > 0


def test_gpu_callable_encodes_the_images_it_is_given():
    """The callable the GPU path times, run here on the CPU: its CLIP and VAE encoders read the images (the frame
    argument is not used), so two images give two objects."""
    student, run, size = latency.gpu_student("base-small", torch.device("cpu"), torch.float32, phase1="imagedream")
    assert student.config.phase1_architecture == "imagedream" and size == 8
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 256, 256, generator=gen)
    noise = torch.randn(1, *student.noise_shape, generator=gen).expand(2, -1, -1, -1, -1)
    cameras = ViewLayout().cameras(size, size, elevation_deg=torch.zeros(2), include_input=True)
    with torch.no_grad():
        means, *_ = run(images, noise, None, cameras)
    assert means.shape == (2, student.num_gaussians, 3) and not torch.allclose(means[0], means[1])


def test_latent_space_student_pipeline_latency_runs_on_the_cpu():
    """`base-small` with its own phase 1 works in the 'sd-vae' sample space: the timed pipeline carries a VAE encoder
    (it used to stop at "needs the teacher's VAE encoder")."""
    (row,) = latency.main(["--scale", "base-small", "--repeats", "1"])
    assert row["phase1"] == "mv-unet" and row["median_ms"] > 0


def test_modes_that_cannot_be_timed_are_refused_before_a_model_is_built():
    for modes in ("reduce-overhead,graph", "graph:max-autotune-no-cudagraphs,eager", "graph:default,max-autotune"):
        latency.check_modes(modes.split(","))
    for modes, message in (("graph:reduce-overhead", "without CUDA graphs of its own"),  # a graph inside a graph
                           ("graph:max-autotune", "without CUDA graphs of its own"),
                           ("graph:eager", "eager code cannot be captured"),
                           ("reduce_overhead", "unknown mode 'reduce_overhead'"), ("eager:default", "unknown mode")):
        with pytest.raises(ValueError, match=message):
            latency.check_modes(modes.split(","))
    with pytest.raises(SystemExit):  # argparse's error: before anything is loaded
        latency.main(["--scale", "base", "--device", "cuda", "--modes", "graph:reduce-overhead"])


def test_projection_variants_are_timed_in_order_and_unknown_ones_refused_before_a_model_is_built():
    rows = latency.main(["--scale", "base-small", "--repeats", "1", "--projections", "fused,separate"])
    assert [row["projections"] for row in rows] == ["fused", "separate"]
    with pytest.raises(SystemExit):  # argparse's error, before anything is loaded
        latency.main(["--scale", "base", "--projections", "separate,stacked"])
