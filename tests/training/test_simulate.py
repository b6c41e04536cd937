"""Quadruple simulation with a toy teacher: schema, seeds and noise hashes, exact reproduction, kill/resume, sharding."""


import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from dd3g.randomness import noise_from_seeds, noise_sha256
from dd3g.teachers.tiny import TinyMVDMPipeline, TinyTeacher
from training import build_corpus, data, simulate
from helpers import REPO, toy_teacher_pipeline

# 3 corpus images x 2 seeds = 6 quadruples; batches of 2 inside shards of 4 (shards 0-3 and 4-5).
SETTINGS = ["--seeds-per-image", "2", "--steps", "2", "--guidance-scale", "2.0", "--batch-size", "2", "--shard-size", "4", "--no-progress"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("simulate")
    toy_teacher_pipeline(tokenizer_size=64).save_pretrained(root / "teacher")
    build_corpus.main(["--source", "procedural", "--num-images", "3", "--size", "32", "--num-gaussians", "256",
                       "--print-fraction", "1", "--out", str(root / "corpus"), "--no-progress"])
    return root


def _simulate(world, out, *extra):
    return simulate.main(["--teacher", str(world / "teacher"), "--corpus", str(world / "corpus"), "--out", str(out), *SETTINGS, *extra])


def shard_contents(folder):
    return {p.name: (pq.read_table(p).to_pylist(), p.read_bytes()) for p in sorted((folder / "data").glob("shard-*.parquet"))}


@pytest.fixture(scope="module")
def straight(world):
    report = _simulate(world, world / "straight")
    assert report.complete and report.written_rows == 6
    return world / "straight"


def test_schema_seeds_and_noise_hashes(world, straight):
    ds = data.load_shards(straight)
    assert len(ds) == 6 and ds["index"] == list(range(6))  # rows x seeds
    assert ds["corpus_index"] == [0, 0, 1, 1, 2, 2] and ds["seed_slot"] == [0, 1] * 3
    teacher = TinyTeacher.from_pretrained(world / "teacher")
    corpus = data.load_shards(world / "corpus", decode=False)
    for row in data.load_shards(straight, decode=False):
        assert row["seed"] == simulate.quadruple_seed(row["corpus_index"], row["seed_slot"])
        assert row["noise_sha256"] == noise_sha256(noise_from_seeds(teacher.noise_shape, [row["seed"]])[0])
        assert row["image"]["bytes"] == corpus[row["corpus_index"]]["image"]["bytes"]  # the corpus PNG, untouched
        assert len(row["views"]) == 4 and row["teacher_id"].startswith("mvdm-tiny@")
        assert (row["num_steps"], row["guidance_scale"], row["elevation_deg"]) == (2, 2.0, 0.0)
        cams = row["cameras"]
        assert np.array(cams["viewmats"]).shape == (5, 4, 4) and np.array(cams["Ks"]).shape == (5, 3, 3)
        assert cams["azimuth_deg"] == [0.0, 90.0, 180.0, 270.0, 0.0] and (cams["width"], cams["height"]) == (16, 16)
        assert np.allclose(np.array(cams["viewmats"])[0], np.array(cams["viewmats"])[4])  # view 0 is the input view
    assert len(set(ds["seed"])) == 6
    view = ds[0]["views"][0]
    assert view.mode == "RGBA" and view.size == (16, 16)
    assert "N-C-II-OI" in (straight / "README.md").read_text()


def test_resimulating_a_stored_quadruple_reproduces_its_views(world, straight):
    teacher = TinyTeacher.from_pretrained(world / "teacher")
    rows = data.load_shards(straight, decode=False).select([2, 3])  # one stored batch (batches of 2 from index 0)
    images = torch.stack([data.png_to_rgba(r["image"]["bytes"]) for r in rows])
    result = teacher.simulate(images, [r["seed"] for r in rows], num_steps=2, guidance_scale=2.0, elevation_deg=0.0)
    stored = torch.stack([torch.stack([data.png_to_rgba(v["bytes"]) for v in r["views"]]) for r in rows])
    quantised = result.views.clamp(0, 1).mul(255).round() / 255
    assert torch.equal(quantised, stored)  # the same batch: exact after uint8 quantisation
    alone = teacher.simulate(images[1:], [rows[1]["seed"]], num_steps=2, guidance_scale=2.0)
    assert (alone.views[0].mul(255).round() / 255 - stored[1]).abs().max() <= 1 / 255 + 1e-6  # alone: float rounding


def test_killed_run_resumes_to_the_same_bytes(world, straight, tmp_path):
    out = tmp_path / "resumed"
    first = _simulate(world, out, "--stop-after", "2")  # half of shard 0-3 made, then "killed": nothing kept
    assert first.stopped_early and first.written_rows == 0 and data.completed_rows(out) == []
    second = _simulate(world, out, "--stop-after", "4")  # shard 0-3 finished
    assert second.written_rows == 4 and data.completed_rows(out) == [range(0, 4)]
    stray = out / "data" / ".tmp-shard-000000004-000000005.parquet.7.partial"
    stray.write_bytes(b"half a shard")
    third = _simulate(world, out)
    assert third.complete and third.written_rows == 2 and not stray.exists()
    assert shard_contents(out) == shard_contents(straight)


def test_two_processes_merge_to_the_single_process_result(world, straight, tmp_path):
    out = tmp_path / "sharded"
    assert _simulate(world, out, "--process-index", "1", "--num-processes", "2").written_rows == 2
    report = _simulate(world, out, "--process-index", "0", "--num-processes", "2")
    assert report.written_rows == 4 and report.complete
    assert shard_contents(out) == shard_contents(straight)


def test_a_compiled_teacher_makes_the_eager_quadruples(world, tmp_path, monkeypatch):
    # torch.compile as simulate.py calls it, but with the aot_eager backend: dynamo traces both UNets as it would on a
    # GPU, without inductor's C++ build (~40 s on 2 cores, and a compiler the CPU machine may lack)
    modes, real_compile = [], torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, mode=None, **_: (modes.append(mode), real_compile(fn, backend="aot_eager"))[1])
    # a teacher with a high-noise expert, as shipped: its first DDIM step (t = 999) runs the expert, the second the main UNet
    main, other = toy_teacher_pipeline(tokenizer_size=64), toy_teacher_pipeline(seed=1, tokenizer_size=64)
    TinyMVDMPipeline(main.unet, main.image_encoder, main.scheduler, high_noise_unet=other.unet,
                     high_noise_start=995).save_pretrained(tmp_path / "teacher")
    teacher = TinyTeacher.from_pretrained(tmp_path / "teacher")
    eager_forwards = [network.forward for network in teacher.denoisers()]
    teacher.compile("max-autotune-no-cudagraphs")
    assert modes == ["max-autotune-no-cudagraphs"] * 2  # the main UNet and the expert
    assert all(network.forward != f for network, f in zip(teacher.denoisers(), eager_forwards))
    modes.clear()
    made = {}
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        out = tmp_path / name
        argv = ["--teacher", str(tmp_path / "teacher"), "--corpus", str(world / "corpus"), "--out", str(out), *SETTINGS, *extra]
        assert simulate.main(argv).complete
        made[name] = data.load_shards(out, decode=False)
    assert modes == ["default"] * 2  # --compile compiled both UNets of the teacher that made the second set, only those
    assert made["compiled"]["noise_sha256"] == made["eager"]["noise_sha256"]
    for ours, theirs in zip(made["compiled"], made["eager"]):
        views = [torch.stack([data.png_to_rgba(v["bytes"]) for v in row["views"]]) for row in (ours, theirs)]  # [4, 4, S, S]
        assert (views[0] - views[1]).abs().max() <= 2 / 255 + 1e-6  # compiled kernels may round differently; uint8 PNGs


def test_other_settings_do_not_mix_into_an_existing_build(world, straight):
    with pytest.raises(SystemExit, match="other settings.*num_steps"):
        simulate.main(["--teacher", str(world / "teacher"), "--corpus", str(world / "corpus"), "--out", str(straight),
                       *SETTINGS, "--steps", "3"])


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(world, tmp_path):
    """A real 2-process run (torchrun, gloo) equals one process with the same thread count.

    Each launched CPU process runs one thread (OMP_NUM_THREADS=1); float reductions depend on the thread count,
    so the single-process reference uses one thread too (with two threads a view pixel may differ by one level).
    """
    import os
    import subprocess
    import sys

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _simulate(world, tmp_path / "one")
    finally:
        torch.set_num_threads(threads)
    repo = REPO
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo), "ACCELERATE_USE_CPU": "true"}
    result = subprocess.run(
        # torchrun: `accelerate launch --cpu` starts a single process (multi-CPU needs MPI there), which would
        # make this comparison vacuous; Accelerator reads torchrun's environment as 2 gloo processes.
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "training/simulate.py",
         "--teacher", str(world / "teacher"), "--corpus", str(world / "corpus"), "--out", str(tmp_path / "two"), *SETTINGS],
        capture_output=True, text=True, timeout=300, env=env, cwd=repo,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "quadruples complete" in result.stdout
    assert "process 0/2: wrote 4" in result.stdout and "process 1/2: wrote 2" in result.stdout  # both worked
    assert shard_contents(tmp_path / "two") == shard_contents(tmp_path / "one")


def test_ground_truth_mode_stores_the_objects_true_renders(world, tmp_path):
    """--ground-truth: OI are the procedural object's renders at the row's recorded yaw and elevation."""
    import json
    import math

    from dd3g.rendering import render
    from training import synthetic

    out = tmp_path / "truth"
    _simulate(world, out, "--ground-truth")
    rows = data.load_shards(out, decode=False)
    corpus = {r["index"]: r for r in data.load_shards(world / "corpus", decode=False)}
    teacher = TinyTeacher.from_pretrained(world / "teacher")
    for row in rows:
        origin = json.loads(corpus[row["corpus_index"]]["origin"])
        assert row["teacher_id"] == "ground-truth" and row["elevation_deg"] == pytest.approx(origin["elevation_deg"], abs=1e-5)
        assert origin["lighting"] == "mixed"  # build_corpus's default, recorded per row
        assert origin["print_fraction"] == 1.0  # the world's labels too: the truth must carry them
        obj = synthetic.batch_objects([origin["object_seed"]], 256, lighting="mixed", print_fraction=1.0)
        obj = obj.rotated_about_y(torch.tensor([math.radians(origin["yaw_deg"])]))
        cams = teacher.cameras(1, torch.tensor([origin["elevation_deg"]]))
        truth = render(obj, cams[:, :4], background=None).rgba()[0]  # [4, 4, s, s]
        stored = torch.stack([data.png_to_rgba(data.image_bytes(v)) for v in row["views"]])
        assert stored.shape == truth.shape
        assert (stored - truth).abs().max() <= 1 / 255 + 1e-6  # uint8 quantisation only
        assert noise_sha256(noise_from_seeds(teacher.noise_shape, [row["seed"]])[0]) == row["noise_sha256"]
    # The teacher's quadruples with recorded elevations carry the same cameras as the ground truth.
    _simulate(world, tmp_path / "teacher", "--elevation-from-origin")
    taught = {r["index"]: r for r in data.load_shards(tmp_path / "teacher", decode=False)}
    for row in rows:
        assert np.allclose(taught[row["index"]]["cameras"]["viewmats"], row["cameras"]["viewmats"], atol=1e-6)
        assert taught[row["index"]]["teacher_id"] != "ground-truth"


def test_ground_truth_needs_a_procedural_corpus(world, tmp_path):
    folder_corpus = tmp_path / "mine"
    images = tmp_path / "images"
    images.mkdir()
    from dd3g.testing import rgba_image

    rgba_image(32).save(images / "a.png")
    build_corpus.main(["--source", "folder", "--images", str(images), "--size", "32", "--out", str(folder_corpus), "--no-progress"])
    with pytest.raises(SystemExit, match="procedural corpus"):
        simulate.main(["--teacher", str(world / "teacher"), "--corpus", str(folder_corpus), "--out", str(tmp_path / "q"), *SETTINGS, "--ground-truth"])
