"""The whole chain with an ImageDream teacher on the CPU, on the tiny ImageDream-layout checkpoint of
dd3g/testing/imagedream_fixture.py: corpus -> simulate -> distil a few steps with implicit verification -> export ->
DD3GPipeline and `python -m dd3g` -> a standard 3DGS PLY. A checkpoint that loads but cannot run ends in one line."""

import contextlib
import json
import os
import re
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from plyfile import PlyData

from dd3g.pipeline import CheckpointError, DD3GPipeline
from helpers import REPO, app_client, rgba_image, serve, started
from dd3g.testing.imagedream_fixture import write_tiny_imagedream
from training import build_corpus, distill, simulate

# The standard 3DGS vertex properties (Kerbl et al.'s viewers and tools read these), in order.
GAUSSIAN_PLY_FIELDS = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                       "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagedream-chain")
    teacher = write_tiny_imagedream(root / "imagedream")
    build_corpus.main(["--source", "procedural", "--num-images", "2", "--size", "64", "--num-gaussians", "256",
                       "--out", str(root / "corpus"), "--no-progress"])
    simulate.main(["--teacher", str(teacher), "--corpus", str(root / "corpus"), "--out", str(root / "quadruples"),
                   "--seeds-per-image", "2", "--steps", "2", "--batch-size", "2", "--no-progress"])
    steps = distill.main(["--tiny-test", "--teacher", str(teacher), "--quadruples", str(root / "quadruples"),
                          "--output-dir", str(root / "run"), "--max-steps", "3", "--log-every", "1", "--sample-every", "1000",
                          "--checkpoint-every", "1000", "--verification-weight", "1.0", "--verification-k0", "0.0",
                          "--verification-tau", "0.01", "--export", str(root / "pipeline")])
    return root, steps


def test_distillation_from_imagedream_trains_with_verification(chain):
    root, steps = chain
    assert steps == 3
    records = [json.loads(line) for line in (root / "run" / "log.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(np.isfinite(r["total"]) for r in records)
    # The teacher scored every step (the ramp is centred on step 0, so its weight is 0.5 there, then ~1).
    assert all(r["verification"] > 0 for r in records)
    assert [round(r["verification_weight"], 2) for r in records] == [0.5, 1.0, 1.0]


def test_exported_latent_student_runs_in_the_pipeline(chain):
    root, _ = chain
    index = json.loads((root / "pipeline" / "model_index.json").read_text())
    assert index["frame_encoder"] == ["dd3g.models.input_encoders", "LatentFrameEncoder"]
    assert index["prompt_encoder"] == ["dd3g.models.input_encoders", "ImagePromptEncoder"]
    pipe = DD3GPipeline.from_pretrained(root / "pipeline")
    student = pipe.student
    assert student.config.sample_space == "sd-vae" and student.config.phase1_architecture == "imagedream"
    assert pipe.frame_encoder.config.image_size == 64 and pipe.frame_encoder.dtype == torch.float32
    out = pipe(rgba_image(80), seeds=[0, 1], num_samples=2)
    gaussians = out.gaussians
    surface = int((pipe.prepare_image(rgba_image(80)).detail_rgba[3] > 1 / 255).sum())  # the export's photo surface
    assert gaussians.means.shape == (2, student.num_gaussians + surface, 3) and torch.isfinite(gaussians.means).all()
    assert (gaussians.means[0, : student.num_gaussians] - gaussians.means[1, : student.num_gaussians]).abs().max() > 0  # N reaches the student's
    again = pipe(rgba_image(80), seeds=[0]).gaussians
    torch.testing.assert_close(again.means[0], gaussians.means[0])


@pytest.fixture(scope="module")
def cli_runs(chain, tmp_path_factory):
    """This module's two `python -m dd3g` runs: the exported pipeline on an 80-px image with --seed 5 ("ply"), and a
    copy of it without its VAE encoder, which loads but cannot run ("broken"). Each spends most of its time importing
    on one core, so they run side by side, started together by the first test that asks for them.
    -> (folder, {name: wait() -> CompletedProcess})"""
    root, _ = chain
    work = tmp_path_factory.mktemp("imagedream-cli")
    rgba_image(80).save(work / "object.png")
    rgba_image(48).save(work / "small.png")
    broken = work / "no-vae"
    shutil.copytree(root / "pipeline", broken)
    index = json.loads((broken / "model_index.json").read_text())
    index["frame_encoder"] = [None, None]  # a latent student without its teacher's VAE encoder
    (broken / "model_index.json").write_text(json.dumps(index))
    cli = [sys.executable, "-m", "dd3g"]
    commands = {
        "ply": [*cli, str(work / "object.png"), "--out", str(work / "out"), "--checkpoint", str(root / "pipeline"), "--seed", "5"],
        "broken": [*cli, str(work / "small.png"), "--out", str(work / "broken-out"), "--checkpoint", str(broken)],
    }
    with contextlib.ExitStack() as stack:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        yield work, {name: stack.enter_context(started(command, env=env)) for name, command in commands.items()}


def test_cli_writes_a_standard_3dgs_ply(chain, cli_runs):
    root, _ = chain
    work, runs = cli_runs
    result = runs["ply"]()
    assert result.returncode == 0, result.stderr
    ply = PlyData.read(str(work / "out" / "object_seed5.ply"))
    vertex = ply["vertex"]
    pipe = DD3GPipeline.from_pretrained(root / "pipeline")
    assert [p.name for p in vertex.properties] == GAUSSIAN_PLY_FIELDS  # (the count: by the comparison below)
    assert all(vertex.data.dtype[name] == np.float32 for name in GAUSSIAN_PLY_FIELDS)
    # The file holds the object the pipeline makes for that image and seed.
    expected = pipe(str(work / "object.png"), seeds=[5]).gaussians[0]
    xyz = np.stack([vertex[axis] for axis in "xyz"], axis=1)
    np.testing.assert_allclose(xyz, expected.means.numpy(), atol=1e-5)


def test_checkpoint_that_loads_but_cannot_run_is_one_line(cli_runs):
    work, runs = cli_runs
    with pytest.raises(CheckpointError, match="cannot run: .*VAE encoder"):
        DD3GPipeline.from_pretrained(work / "no-vae")
    result = runs["broken"]()
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "VAE encoder" in lines[0], result.stderr


def test_app_serves_the_latent_student(chain, tmp_path, capsys):
    from gradio_client import handle_file

    import app
    from dd3g.gaussians import Gaussians

    root, _ = chain
    pipe = app.load_pipeline(root / "pipeline", "cpu")  # through from_pretrained, as `python app.py` does
    image = tmp_path / "object.png"
    rgba_image(64).save(image)
    with serve(pipe) as (url, _):
        viewer, *_ = app_client(url).predict(handle_file(image), pipe.config.foreground_ratio, 3, 1, api_name="/generate")
    shown = Gaussians.load_ply(viewer)
    expected = pipe(str(image), seeds=[3]).gaussians[0]
    assert shown.num_gaussians == expected.num_gaussians > pipe.student.num_gaussians  # + the photo surface
    torch.testing.assert_close(shown.means, expected.means, atol=1e-5, rtol=1e-5)
    # A latent checkpoint without its teacher's encoders: the app does not start, and says why without a traceback.
    broken = tmp_path / "no-clip"
    shutil.copytree(root / "pipeline", broken)
    index = json.loads((broken / "model_index.json").read_text())
    index["prompt_encoder"] = [None, None]
    (broken / "model_index.json").write_text(json.dumps(index))
    assert app.main(["--checkpoint", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "cannot run" in err and "CLIP image encoder" in err and "Traceback" not in err


def test_full_size_benchmark_entry_point_runs_at_toy_size(tmp_path):
    """benchmarks/imagedream_chain.py is the GPU run of issue 16 (--size full); here its toy size on the CPU."""
    from benchmarks import imagedream_chain

    report = imagedream_chain.main(["--size", "tiny", "--work", str(tmp_path / "work"), "--images", "2", "--seeds-per-image", "1",
                                    "--steps", "2", "--simulate-batch-size", "2", "--distill-steps", "2", "--batch-size", "2",
                                    "--latency-repeats", "1", "--out", str(tmp_path / "report.json")])
    assert json.loads((tmp_path / "report.json").read_text()) == report
    assert report["simulate"]["quadruples"] == 2 and report["simulate"]["quadruples_per_s"] > 0
    assert report["distill"]["steps"] == 2 and report["distill"]["timed_steps"] == 1 and report["distill"]["samples_per_s"] > 0
    assert report["distill"]["verification_weight_last"] > 0.99
    exported = DD3GPipeline.from_pretrained(tmp_path / "work" / "pipeline")
    surface = int((exported.prepare_image(rgba_image(64)).detail_rgba[3] > 1 / 255).sum())  # the chain's timing image
    assert report["pipeline"]["gaussians"] == exported.student.num_gaussians + surface
    assert report["pipeline"]["latency_ms_median"] > 0 and report["export_mb"] > 0


@pytest.mark.parametrize("component, change, message", [
    ("frame_encoder/config.json", {"image_size": 100_000}, "frame_encoder/config.json: image_size must be an integer from 8 to 2,048"),
    ("prompt_encoder/config.json", {"vision_config": {"hidden_size": 1 << 20}}, "vision_config.hidden_size must be an integer"),
    ("model_index.json", {"frame_encoder": ["diffusers", "AutoencoderKL"]}, "frame_encoder must be dd3g.models.input_encoders.LatentFrameEncoder or null"),
    ("student/config.json", {"unet_config": {"image_size": 1 << 20}}, "unet_config.image_size must be an integer from 4 to 512"),
    ("student/config.json", {"phase1_architecture": "sdxl"}, "phase1_architecture must be one of ['imagedream', 'mv-unet']"),
])
def test_encoder_configs_are_checked_before_anything_is_built(chain, tmp_path, component, change, message):
    root, _ = chain
    broken = tmp_path / "broken"
    shutil.copytree(root / "pipeline", broken)
    path = broken / component
    config = json.loads(path.read_text())
    for key, value in change.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=re.escape(message)):
        DD3GPipeline.from_pretrained(broken)


def test_soft_matte_corpus_stops_distillation_before_training(chain, tmp_path):
    """A corpus of soft mattes (allowed here with --min-opaque-fraction 0) used to train and fail only at export."""
    root, _ = chain
    images = tmp_path / "images"
    images.mkdir()
    yy, xx = np.mgrid[:48, :48]
    for k in range(2):
        rgba = np.zeros((48, 48, 4), np.uint8)
        rgba[..., 1] = 100 + 50 * k
        rgba[..., 3] = (((yy - 24) ** 2 + (xx - 24) ** 2) < 14**2) * 90  # alpha 0.35: no opaque pixel
        Image.fromarray(rgba, "RGBA").save(images / f"soft{k}.png")
    build_corpus.main(["--source", "folder", "--images", str(images), "--out", str(tmp_path / "corpus"), "--size", "64",
                       "--no-progress", "--min-opaque-fraction", "0"])
    simulate.main(["--teacher", str(root / "imagedream"), "--corpus", str(tmp_path / "corpus"), "--out", str(tmp_path / "q"),
                   "--seeds-per-image", "1", "--steps", "1", "--batch-size", "2", "--no-progress"])
    with pytest.raises(SystemExit, match="inputs are empty .*build_corpus"):
        distill.main(["--tiny-test", "--teacher", str(root / "imagedream"), "--quadruples", str(tmp_path / "q"),
                      "--output-dir", str(tmp_path / "run"), "--max-steps", "2", "--export", str(tmp_path / "pipe")])
    assert not (tmp_path / "run" / "log.jsonl").exists()  # not one step was trained
