"""Distillation at toy size on the CPU: it learns from quadruples, resumes exactly, exports a loadable pipeline."""

import argparse
import json

import pytest
import torch
from safetensors.torch import load_file

from dd3g.evaluation.metrics import LPIPS
from dd3g.pipeline import DD3GPipeline
from dd3g.preprocess import composite_on
from dd3g.testing import rgba_image, toy_teacher_pipeline
from training import build_corpus, distill, simulate
from helpers import REPO


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    toy_teacher_pipeline(tokenizer_size=64).save_pretrained(root / "teacher")
    build_corpus.main(["--source", "procedural", "--num-images", "2", "--size", "32", "--num-gaussians", "256", "--out", str(root / "corpus"), "--no-progress"])
    simulate.main(["--teacher", str(root / "teacher"), "--corpus", str(root / "corpus"), "--out", str(root / "quadruples"),
                   "--seeds-per-image", "2", "--steps", "2", "--batch-size", "2", "--no-progress"])
    return root


def _run(world, out, *extra):
    return distill.main(["--tiny-test", "--teacher", str(world / "teacher"), "--quadruples", str(world / "quadruples"),
                         "--output-dir", str(out), "--checkpoint-every", "2", "--log-every", "1", "--sample-every", "1000",
                         "--verification-weight", "1.0", "--verification-k0", "0.0", "--verification-tau", "0.01", *extra])


def _losses(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_killed_distillation_resumes_exactly(world, tmp_path):
    straight, chunked = tmp_path / "straight", tmp_path / "chunked"
    assert _run(world, straight, "--max-steps", "4") == 4
    assert _run(world, chunked, "--max-steps", "4", "--stop-after", "2") == 2
    assert _run(world, chunked, "--max-steps", "4", "--resume", "latest") == 4
    a = load_file(straight / "checkpoints" / "step-0000004" / "model.safetensors")
    b = load_file(chunked / "checkpoints" / "step-0000004" / "model.safetensors")
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    assert [r["total"] for r in _losses(chunked)] == pytest.approx([r["total"] for r in _losses(straight)], rel=1e-5)  # same samples; float sums may reorder
    record = _losses(straight)[-1]
    assert {"rgb", "alpha", "lpips", "verification"} <= set(record)  # every term of the joint objective ran
    assert record["verification_weight"] > 0.99


def test_verification_ramp_and_ablations():
    args = distill.parse_args(["--teacher", "t", "--quadruples", "q", "--output-dir", "o", "--max-steps", "1000"])
    weights = [distill.verification_weight(args, k) for k in (0, 300, 1000)]
    assert weights[0] < 0.01 * args.verification_weight and abs(weights[1] - 0.5 * args.verification_weight) < 1e-9
    assert weights[2] > 0.99 * args.verification_weight
    assert distill.verification_t_range(args, 0) == (0.02, 0.98) and distill.verification_t_range(args, 1000) == (0.02, 0.5)
    off = distill.parse_args(["--teacher", "t", "--quadruples", "q", "--output-dir", "o", "--no-verification"])
    assert distill.verification_weight(off, 10**6) == 0.0


def test_fresh_noise_ablation_and_export(world, tmp_path):
    assert _run(world, tmp_path / "fresh", "--max-steps", "2", "--fresh-noise", "--no-verification", "--export", str(tmp_path / "pipe")) == 2
    pipe = DD3GPipeline.from_pretrained(tmp_path / "pipe")
    out = pipe(rgba_image(), seeds=[0]).gaussians
    # The student's Gaussians and the photo surface the export turns on: one per opaque pixel at 256 px.
    assert pipe.config.photo_surface_size == 256
    surface = int((pipe.prepare_image(rgba_image()).detail_rgba[3] > 1 / 255).sum())
    assert out.num_gaussians == pipe.student.num_gaussians + surface and torch.isfinite(out.means).all()
    assert "verification" not in _losses(tmp_path / "fresh")[-1]
    # The pipeline recentres user images to the training inputs' framing (corpus side and alpha-box ratio).
    rows = distill.QuadrupleBatches(str(world / "quadruples"), pipe.student.noise_shape)
    assert pipe.config.image_size == 32
    one_row_per_image = rows.batch([group[0] for group in rows.groups])["image"]
    assert pipe.config.foreground_ratio == pytest.approx(distill.input_framing(one_row_per_image)[1], abs=1e-3)


def test_input_framing_is_the_median_alpha_box():
    images = torch.zeros(3, 4, 20, 20)
    images[0, 3, 2:12, 5:9] = 1  # a 10-pixel-tall box
    images[1, 3, 0:4, 0:14] = 1  # 14 wide
    images[2, 3, 5:11, 5:11] = 1  # 6
    assert distill.input_framing(images) == (20, pytest.approx(10 / 20))
    with pytest.raises(SystemExit, match="empty"):
        distill.input_framing(torch.zeros(2, 4, 8, 8))


def test_3d_only_baseline_trains_on_ground_truth_without_the_teacher(world, tmp_path):
    from training import train_3d_baseline

    simulate.main(["--teacher", str(world / "teacher"), "--corpus", str(world / "corpus"), "--out", str(world / "truth"),
                   "--seeds-per-image", "2", "--batch-size", "2", "--no-progress", "--ground-truth"])
    common = ["--tiny-test", "--teacher", str(world / "teacher"), "--max-steps", "2", "--log-every", "1", "--sample-every", "1000",
              "--verification-weight", "1.0", "--verification-k0", "0.0", "--verification-tau", "0.01"]
    with pytest.raises(SystemExit, match="not ground-truth"):
        train_3d_baseline.main([*common, "--quadruples", str(world / "quadruples"), "--output-dir", str(tmp_path / "bad")])
    assert train_3d_baseline.main([*common, "--quadruples", str(world / "truth"), "--output-dir", str(tmp_path / "b")]) == 2
    records = _losses(tmp_path / "b")
    assert all("verification" not in r and r["verification_weight"] == 0 for r in records)  # the teacher never scores
    saved = json.loads(next((tmp_path / "b" / "checkpoints").glob("step-*/trainer_state.json")).read_text())
    assert saved["args"]["fresh_noise"] and saved["args"]["no_verification"]


def test_two_processes_match_one_with_the_same_global_batch(world, tmp_path):
    """Two processes (2 x batch 1, gloo) end at the weights of 1 process x batch 2:
    keyed per-sample randomness and DDP's gradient averaging make the runs equivalent up to float rounding."""
    import os
    import subprocess
    import sys

    args = ["--tiny-test", "--teacher", str(world / "teacher"), "--quadruples", str(world / "quadruples"),
            "--max-steps", "2", "--checkpoint-every", "2", "--log-every", "1", "--sample-every", "1000",
            "--verification-weight", "1.0", "--verification-k0", "0.0", "--verification-tau", "0.01"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the two processes: float sums depend on the thread count
    try:
        assert distill.main([*args, "--output-dir", str(tmp_path / "one"), "--batch-size", "2"]) == 2
    finally:
        torch.set_num_threads(threads)
    repo = REPO
    result = subprocess.run(
        # torchrun: `accelerate launch --cpu` starts a single process (multi-CPU needs MPI there); the script's
        # Accelerator picks the torchrun environment up as a 2-process gloo (MULTI_CPU) run.
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "training/distill.py",
         *args, "--output-dir", str(tmp_path / "two"), "--batch-size", "1"],
        capture_output=True, text=True, timeout=300, cwd=repo,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo), "ACCELERATE_USE_CPU": "true"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    one = load_file(tmp_path / "one" / "checkpoints" / "step-0000002" / "model.safetensors")
    two = load_file(tmp_path / "two" / "checkpoints" / "step-0000002" / "model.safetensors")
    diff = torch.cat([(one[k] - two[k]).abs().flatten() for k in one])
    # Adam moves every weight by ~lr per step whatever the gradient's size, so a weight whose gradient is ~0
    # can step either way on float rounding; all others must agree.
    assert (diff > 1e-6).float().mean() < 0.01, (diff > 1e-6).float().mean()
    assert diff.max() <= 2 * 2 * distill.parse_args(args + ["--output-dir", "x"]).lr + 1e-6


def test_distill_quality_benchmark_scores_students_against_teacher_and_truth(world, tmp_path, monkeypatch):
    from benchmarks import distill_quality

    _run(world, tmp_path / "run", "--max-steps", "1", "--no-verification", "--export", str(tmp_path / "pipe"))
    truth = world / "truth-eval"
    if not truth.exists():
        simulate.main(["--teacher", str(world / "teacher"), "--corpus", str(world / "corpus"), "--out", str(truth),
                       "--seeds-per-image", "2", "--batch-size", "2", "--no-progress", "--ground-truth"])
    report = distill_quality.main([
        "--quadruples", str(world / "quadruples"), "--truth", str(truth), "--pipeline", f"toy={tmp_path / 'pipe'}",
        "--count", "4", "--batch", "2", "--diversity-images", "2", "--fit-steps", "3", "--fit-gaussians", "64",
        "--device", "cpu", "--out", str(tmp_path / "eval")])
    model = report["models"]["toy"]
    # Twice: the same to the bit. Alone vs last in its batch: the Gaussians agree to rounding; the render may move at
    # a few pixels by up to ~1/255 (a fragment at the rasterizer's alpha cut-off), never in the mean.
    same = model["determinism"]
    assert same["repeat_max_abs"] == 0.0 and same["batch_position_gaussians_max_abs"] < 1e-4, same
    assert same["batch_position_mean_abs"] < 1e-5 and same["batch_position_max_abs"] < 0.02, same
    assert set(model["vs_teacher"]) == {"psnr", "psnr_masked", "ssim", "ssim_masked", "lpips"}
    assert model["diversity"]["images"] == 2 and model["diversity"]["back_view_lpips_teacher"] > 0  # seeds differ
    assert set(report["ceiling"]) == {"teacher_views", "true_views"}
    assert "| toy |" in (tmp_path / "eval" / "distill_quality.md").read_text()
    # Scoring the truth against itself is perfect; the teacher against the truth is not.
    dq = distill_quality
    views = distill.QuadrupleBatches(str(truth), (4, 4, 16, 16)).batch([0, 1])["views"]
    same = dq.compare(views, views, LPIPS.from_pretrained())
    assert (same["psnr"] > 100).all() and same["lpips"].abs().max() < 1e-5
    assert report["teacher_vs_truth"]["psnr"]["all"] < 40
    # N-use: a student that outputs the teacher's seed-mean whatever its N follows no seed (own = other) and sits
    # exactly on the N-blind floor; one that outputs each seed's own views is at 0 against its own seed.
    teacher_data = distill.QuadrupleBatches(str(world / "quadruples"), (4, 4, 16, 16))
    args = argparse.Namespace(seeds_per_image=2, diversity_images=2)
    lpips_model = LPIPS.from_pretrained()
    size = teacher_data.batch([0])["views"].shape[-1]

    def seed_mean(pipe, batch, size):  # opaque views whose colour on white is the mean of the teacher's
        mean = composite_on(batch["views"]).mean(0, keepdim=True).expand(batch["views"].shape[0], -1, -1, -1, -1)
        return torch.cat([mean, torch.ones_like(mean[:, :, :1])], dim=2)

    for name, fake in (("mean", seed_mean), ("own", lambda pipe, batch, size: batch["views"])):
        monkeypatch.setattr(dq, "student_views", fake)
        result = dq.diversity(None, teacher_data, args, lpips_model, size, torch.device("cpu"))
        assert result["mse_floor_of_n_blind_model"] > 0  # the teacher's seeds differ
        if name == "mean":
            assert result["mse_vs_own_seed"] == pytest.approx(result["mse_vs_other_seeds"], rel=1e-5)
            assert result["mse_vs_own_seed"] == pytest.approx(result["mse_floor_of_n_blind_model"], rel=1e-4)
        else:
            assert result["mse_vs_own_seed"] == 0 and result["mse_vs_other_seeds"] > result["mse_floor_of_n_blind_model"]


def test_an_unfinished_quadruple_build_is_refused_unless_allowed(world, tmp_path, capsys):
    partial = tmp_path / "partial"
    simulate.main(["--teacher", str(world / "teacher"), "--corpus", str(world / "corpus"), "--out", str(partial),
                   "--seeds-per-image", "2", "--steps", "2", "--batch-size", "2", "--shard-size", "2", "--no-progress", "--stop-after", "2"])
    common = ["--tiny-test", "--teacher", str(world / "teacher"), "--quadruples", str(partial), "--max-steps", "1", "--log-every", "1"]
    with pytest.raises(SystemExit, match="missing|incomplete"):
        distill.main([*common, "--output-dir", str(tmp_path / "refused")])
    assert distill.main([*common, "--output-dir", str(tmp_path / "allowed"), "--allow-incomplete"]) == 1
    assert "training on its 2 finished quadruples of 4" in capsys.readouterr().err


def test_quadruple_noise_is_checked_against_its_hash_once_per_row(world, monkeypatch):
    data = distill.QuadrupleBatches(str(world / "quadruples"), (4, 4, 16, 16))
    calls = []
    real_hash = distill.noise_sha256
    monkeypatch.setattr(distill, "noise_sha256", lambda n: calls.append(1) or real_hash(n))
    data.batch([0, 1])
    data.batch([0, 1])  # the same rows again (a later epoch): not re-hashed
    assert len(calls) == 2
    fresh = distill.QuadrupleBatches(str(world / "quadruples"), (4, 4, 16, 16))
    monkeypatch.setattr(distill, "noise_sha256", lambda n: "0" * 64)  # a noise that no longer matches its row
    with pytest.raises(SystemExit, match="does not match its stored hash"):
        fresh.batch([0])


def test_phase_one_starts_as_the_teachers_first_step_unet(world, tmp_path):
    """With a high-noise expert, the teacher's first sampler step (t = 999) runs the expert: phase 1 copies it."""
    from dd3g.teachers.tiny import TinyMVDMPipeline

    main, other = toy_teacher_pipeline(seed=0, tokenizer_size=64), toy_teacher_pipeline(seed=1, tokenizer_size=64)
    TinyMVDMPipeline(main.unet, main.image_encoder, main.scheduler, high_noise_unet=other.unet,
                     high_noise_start=995).save_pretrained(tmp_path / "teacher")
    distill.main(["--tiny-test", "--teacher", str(tmp_path / "teacher"), "--quadruples", str(world / "quadruples"),
                  "--output-dir", str(tmp_path / "run"), "--max-steps", "1", "--lr", "1e-12", "--no-verification",
                  "--sample-every", "1000"])
    weights = load_file(tmp_path / "run" / "checkpoints" / "step-0000001" / "model.safetensors")
    phase1 = {k[len("unet."):]: v for k, v in weights.items() if k.startswith("unet.")}
    expert, base = other.unet.state_dict(), main.unet.state_dict()
    assert phase1.keys() == expert.keys()
    assert all(torch.allclose(phase1[k], expert[k], atol=1e-6) for k in expert)  # a 1e-12 step moves nothing visible
    assert not all(torch.allclose(phase1[k], base[k], atol=1e-6) for k in base)


def test_epochs_read_whole_image_groups_in_a_keyed_order_that_changes_each_epoch():
    data = distill.QuadrupleBatches.__new__(distill.QuadrupleBatches)  # the ordering alone, on 12 images x 4 seeds
    data.rows = list(range(48))
    data.image_of_row = torch.arange(48) // 4
    data.groups = [list(range(4 * g, 4 * g + 4)) for g in range(12)]
    data._epoch_order = (None, None)
    first, second = data.training_rows(range(48), seed=0), data.training_rows(range(48, 96), seed=0)
    assert sorted(first) == sorted(second) == list(range(48))  # each epoch reads every row once
    assert first != second and first != list(range(48))  # shuffled, and differently each epoch
    for rows in (first, second):
        images = [r // 4 for r in rows]
        assert all(len(set(images[k : k + 4])) == 1 for k in range(0, 48, 4))  # an image's seeds stay together
    assert data.training_rows(range(48, 96), seed=0) == second  # keyed: the same on a rerun or resume
    assert data.training_rows(range(4, 8), seed=0) == first[4:8]  # any slice of the global batch alone
    assert data.training_rows(range(48), seed=1) != first


def test_seed_deviation_loss_is_blind_to_the_per_image_mean_and_zero_only_for_seed_aware_predictions():
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(6, 3, 8, 8, generator=gen)  # 2 images x 3 seeds
    images = torch.tensor([0, 0, 0, 1, 1, 1])
    per_image_mean = target.view(2, 3, 3, 8, 8).mean(1, keepdim=True).expand(2, 3, 3, 8, 8).reshape(6, 3, 8, 8)
    seed_blind = distill.seed_deviation_loss(per_image_mean, target, images)
    deviation = (target - per_image_mean).pow(2).mean()
    assert float(seed_blind) == pytest.approx(float(deviation), rel=1e-5)  # what a seed-blind model pays
    assert float(distill.seed_deviation_loss(target, target, images)) == 0
    shifted = target + torch.tensor([0.3, 0.3, 0.3, -0.2, -0.2, -0.2]).view(6, 1, 1, 1)  # a wrong mean per image only
    assert float(distill.seed_deviation_loss(shifted, target, images)) == pytest.approx(0, abs=1e-10)
    singletons = distill.seed_deviation_loss(per_image_mean, target, torch.arange(6))  # no image has two seeds
    assert float(singletons) == 0


def test_preloaded_batches_equal_decoded_ones_and_training_runs_pixel_aligned_with_the_seed_term(world, tmp_path):
    decoded = distill.QuadrupleBatches(str(world / "quadruples"), (4, 4, 16, 16))
    preloaded = distill.QuadrupleBatches(str(world / "quadruples"), (4, 4, 16, 16))
    preloaded.preload(torch.device("cpu"))
    a, b = decoded.batch([3, 0]), preloaded.batch([3, 0])
    for key in ("image", "views", "noise", "elevation", "image_ids"):
        assert torch.equal(a[key], b[key]), key
    assert a["seeds"] == b["seeds"]
    out = tmp_path / "pixel"
    assert _run(world, out, "--max-steps", "2", "--preload", "--position-mode", "pixel-aligned", "--seed-deviation-weight", "2",
                "--no-verification", "--batch-size", "2", "--export", str(tmp_path / "pipe")) == 2
    assert "seed_deviation" in _losses(out)[-1]
    pipe = DD3GPipeline.from_pretrained(tmp_path / "pipe")
    assert pipe.student.config.position_mode == "pixel-aligned"
    assert torch.isfinite(pipe(rgba_image(), seeds=[0]).gaussians.means).all()


def test_input_view_loss_is_zero_for_the_inputs_own_render_and_joins_the_total(world, tmp_path):
    """The render at the input camera is scored against the input itself, at the input's resolution."""
    from dd3g.cameras import ViewLayout
    from dd3g.rendering import render
    from training import synthetic

    args = argparse.Namespace(alpha_weight=1.0)
    obj = synthetic.batch_objects([3], 256)
    camera = ViewLayout().input_camera(16, 16, torch.tensor([10.0]))  # [1, 1] at another size than the image
    image = render(obj, camera, 32, 32, background=None).rgba()[:, 0]  # [1, 4, 32, 32] straight alpha
    assert distill.input_view_loss(obj, camera, image, args) < 1e-10
    assert distill.input_view_loss(obj.rotated_about_y(torch.tensor([1.0])), camera, image, args) > 1e-3

    out = tmp_path / "with-input-view"
    _run(world, out, "--max-steps", "2", "--no-verification", "--input-view-weight", "3")
    record = [r for r in _losses(out) if "input_view" in r][-1]
    parts = record["rgb"] + record["alpha"] + 0.5 * record.get("lpips", 0.0) + 3 * record["input_view"]
    assert record["input_view"] > 0 and record["total"] == pytest.approx(parts, rel=1e-4)


def test_seed_spread_loss_asks_for_the_teachers_amount_of_variation_not_its_pattern():
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(6, 2, 4, 8, 8, generator=gen)  # [B, V, C, s, s]: 2 images x 3 seeds
    images = torch.tensor([0, 0, 0, 1, 1, 1])
    groups = target.view(2, 3, 2, 4, 8, 8)
    mean = groups.mean(1, keepdim=True).expand_as(groups).reshape_as(target)
    mirrored = (2 * mean - target)  # every seed's deviation negated: same amount, opposite pattern
    assert float(distill.seed_spread_loss(target, target, images, window=4)) == pytest.approx(0, abs=1e-8)
    assert float(distill.seed_spread_loss(mirrored, target, images, window=4)) == pytest.approx(0, abs=1e-6)
    assert float(distill.seed_deviation_loss(mirrored, target, images)) > 0.05  # the pattern term does tell them apart
    seed_blind = float(distill.seed_spread_loss(mean, target, images, window=4))
    shrunk = float(distill.seed_spread_loss(mean + 0.5 * (target - mean), target, images, window=4))
    assert seed_blind > shrunk > 0  # half the teacher's variation pays less than none
    assert float(distill.seed_spread_loss(mean, target, torch.arange(6), window=4)) == 0  # no image has two seeds
    prediction = mean.clone().requires_grad_()
    distill.seed_spread_loss(prediction, target, images, window=4).backward()
    assert torch.isfinite(prediction.grad).all()  # the root's gradient where nothing varies yet


def test_init_from_starts_the_student_from_a_trained_one_of_the_same_configuration(world, tmp_path):
    assert _run(world, tmp_path / "first", "--max-steps", "2", "--no-verification", "--export", str(tmp_path / "first-pipe")) == 2
    # lr 0: the run changes nothing, so its export is the student it started from, weight for weight
    assert _run(world, tmp_path / "warm", "--max-steps", "1", "--no-verification", "--lr", "0", "--init-from",
                str(tmp_path / "first-pipe"), "--seed-spread-weight", "1", "--export", str(tmp_path / "warm-pipe")) == 1
    assert "seed_spread" in _losses(tmp_path / "warm")[-1]
    first, warm = (load_file(next((tmp_path / p / "student").glob("*.safetensors"))) for p in ("first-pipe", "warm-pipe"))
    assert first.keys() == warm.keys() and all(torch.equal(first[k], warm[k]) for k in first)
    with pytest.raises(SystemExit, match="gaussians_per_token 4 .this run 16."):
        _run(world, tmp_path / "other", "--max-steps", "1", "--position-mode", "pixel-aligned", "--init-from", str(tmp_path / "first-pipe"))
    with pytest.raises(SystemExit, match="no config.json"):
        _run(world, tmp_path / "none", "--max-steps", "1", "--init-from", str(tmp_path))


def test_a_student_continues_under_a_teacher_of_another_resolution(world, tmp_path):
    """The 16-px world's student starts the one taught by a 32-px teacher (the same toy weights at twice the size):
    weight for weight (lr 0), exported at 32 px, and served with 4x the Gaussians."""
    toy_teacher_pipeline(tokenizer_size=64, sample_size=32).save_pretrained(tmp_path / "teacher32")
    simulate.main(["--teacher", str(tmp_path / "teacher32"), "--corpus", str(world / "corpus"), "--out", str(tmp_path / "q32"),
                   "--seeds-per-image", "2", "--steps", "2", "--batch-size", "2", "--no-progress"])
    assert _run(world, tmp_path / "small", "--max-steps", "1", "--no-verification", "--export", str(tmp_path / "small-pipe")) == 1
    assert distill.main(["--tiny-test", "--teacher", str(tmp_path / "teacher32"), "--quadruples", str(tmp_path / "q32"),
                         "--output-dir", str(tmp_path / "big"), "--max-steps", "1", "--no-verification", "--lr", "0",
                         "--init-from", str(tmp_path / "small-pipe"), "--export", str(tmp_path / "big-pipe")]) == 1
    small, big = (load_file(next((tmp_path / p / "student").glob("*.safetensors"))) for p in ("small-pipe", "big-pipe"))
    assert small.keys() == big.keys() and all(torch.equal(small[k], big[k]) for k in small)
    config = json.loads((tmp_path / "big-pipe" / "student" / "config.json").read_text())
    assert config["unet_config"]["sample_size"] == 32
    counts = []
    for folder in ("small-pipe", "big-pipe"):
        pipe = DD3GPipeline.from_pretrained(tmp_path / folder)
        pipe.register_to_config(photo_surface_size=0)  # the student's own Gaussians, without the photo's surfels
        counts.append(pipe(rgba_image(), seeds=[0]).gaussians.num_gaussians)
    assert counts[1] == 4 * counts[0]


def test_a_compiled_student_trains_as_the_eager_one(world, tmp_path, monkeypatch):
    # torch.compile as distill.py calls it, with dynamo's aot_eager backend (no C++ build on the CPU machine): the
    # student's forward is traced for real; the losses, the weights and the export's names must be the eager run's
    modes, real_compile = [], torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, mode=None, **_: (modes.append(mode), real_compile(fn, backend="aot_eager"))[1])
    runs = {}
    for name, extra in (("eager", []), ("compiled", ["--compile", "max-autotune-no-cudagraphs"])):
        out = tmp_path / name
        assert _run(world, out, "--max-steps", "3", "--no-verification", "--export", str(out / "pipeline"), *extra) == 3
        runs[name] = out
    assert modes == ["max-autotune-no-cudagraphs"]  # the student's forward, once; nothing else was compiled
    eager, compiled = (_losses(runs[n]) for n in ("eager", "compiled"))
    for key in ("total", "rgb", "alpha", "lpips"):
        assert [r[key] for r in compiled] == pytest.approx([r[key] for r in eager], rel=1e-4, abs=1e-6), key
    weights = [load_file(next((runs[n] / "pipeline" / "student").glob("*.safetensors"))) for n in ("eager", "compiled")]
    assert set(weights[0]) == set(weights[1]) and not any("_orig_mod" in k for k in weights[1])
    for key in weights[0]:
        assert torch.allclose(weights[0][key].float(), weights[1][key].float(), atol=1e-3), key
