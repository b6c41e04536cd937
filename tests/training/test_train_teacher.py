"""Teacher training on the CPU at toy size: it learns, checkpoints, resumes exactly, exports a loadable teacher."""

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dd3g.teachers.tiny import TinyTeacher
from training import train_teacher
from helpers import REPO


def _run(output_dir, *extra):
    return train_teacher.main([
        "--tiny-test", "--output-dir", str(output_dir), "--checkpoint-every", "2", "--sample-every", "1000",
        "--log-every", "1", *extra,
    ])


def _weights(output_dir, step):
    return load_file(output_dir / "checkpoints" / f"step-{step:07d}" / "model.safetensors")


@pytest.fixture(scope="module")
def base_teacher(tmp_path_factory):
    """A 2-step run exported as a teacher, made once for the tests that start from it (they read it, none writes
    into it): the teacher's folder."""
    root = tmp_path_factory.mktemp("base")
    _run(root / "run", "--max-steps", "2", "--export", str(root / "teacher"))
    return root / "teacher"


@pytest.fixture(scope="module")
def expert_teacher(base_teacher, tmp_path_factory):
    """base_teacher with a high-noise expert (t >= 990) trained for one step beside it: the teacher's folder."""
    root = tmp_path_factory.mktemp("expert")
    _run(root / "run", "--max-steps", "1", "--expert-for", str(base_teacher), "--high-noise-start", "990",
         "--export", str(root / "teacher"))
    return root / "teacher"


def test_killed_run_resumes_exactly(tmp_path):
    straight, chunked = tmp_path / "straight", tmp_path / "chunked"
    assert _run(straight, "--max-steps", "4") == 4
    assert _run(chunked, "--max-steps", "4", "--stop-after", "2") == 2  # "killed" after step 2
    assert _run(chunked, "--max-steps", "4", "--resume", "latest") == 4
    a, b = _weights(straight, 4), _weights(chunked, 4)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    # The EMA is restored too (stored as safetensors: resume never unpickles).
    ema_a, ema_b = (load_file(d / "checkpoints" / "step-0000004" / "ema.safetensors") for d in (straight, chunked))
    assert all(torch.allclose(ema_a[k], ema_b[k], atol=1e-6) for k in ema_a)
    assert not list((chunked / "checkpoints" / "step-0000004").glob("custom_checkpoint_*"))  # loaded with weights_only=False
    losses = lambda d: [r["loss"] for r in map(json.loads, (d / "log.jsonl").read_text().splitlines()) if "loss" in r]  # noqa: E731
    assert losses(chunked) == pytest.approx(losses(straight), rel=1e-5)  # the same samples, in the same order
    # The last step wrote a sample grid: input | 4 teacher views | 4 true views per validation object.
    grid = Image.open(straight / "samples" / "step-0000004.png")
    assert grid.size == (9 * 16, 4 * 16)


def test_export_is_a_loadable_teacher(base_teacher):
    teacher = TinyTeacher.from_pretrained(base_teacher)  # the export of a 2-step run
    assert teacher.pipe.unet.dtype == torch.float32  # loaded as float32 from fp16 files
    assert all(f.stat().st_size <= 15 * 2**20 for f in base_teacher.rglob("*.safetensors"))
    views = teacher.simulate(torch.rand(1, 4, 32, 32), seeds=[0], num_steps=2).views
    assert views.shape == (1, 4, 4, 16, 16) and torch.isfinite(views).all()


def test_weights_only_handoff_continues_the_step_count(tmp_path):
    assert _run(tmp_path / "first", "--max-steps", "4", "--stop-after", "2", "--handoff", str(tmp_path / "handoff")) == 2
    assert (tmp_path / "handoff" / "model.safetensors").is_file()
    assert _run(tmp_path / "second", "--max-steps", "4", "--init-from", str(tmp_path / "handoff")) == 4
    first = load_file(tmp_path / "handoff" / "model.safetensors")
    continued = _weights(tmp_path / "second", 4)
    assert any(not torch.equal(first[k], continued[k]) for k in first)  # it trained on from there
    # A shipped teacher folder (EMA weights only) continues too, once told its step.
    assert _run(tmp_path / "third", "--max-steps", "3", "--init-from", str(tmp_path / "handoff" / "teacher"), "--init-step", "2") == 3


def test_resumed_chunk_of_a_continued_run_keeps_its_lr_schedule(tmp_path):
    """A run started with --init-from, killed and resumed, follows the LR schedule of the uninterrupted run."""
    _run(tmp_path / "first", "--max-steps", "6", "--stop-after", "2", "--handoff", str(tmp_path / "handoff"))
    common = ["--max-steps", "8", "--init-from", str(tmp_path / "handoff"), "--warmup-steps", "3"]
    _run(tmp_path / "straight", *common)
    _run(tmp_path / "chunked", *common, "--stop-after", "4")
    _run(tmp_path / "chunked", *common, "--resume", "latest")
    lrs = lambda d: [r["lr"] for r in map(json.loads, (d / "log.jsonl").read_text().splitlines()) if "lr" in r]  # noqa: E731
    assert lrs(tmp_path / "chunked") == pytest.approx(lrs(tmp_path / "straight"), rel=1e-9)
    assert len(lrs(tmp_path / "straight")) == 6  # steps 3..8


def test_high_noise_fraction_moves_that_share_of_timesteps_to_the_top_of_the_range():
    from dd3g.cameras import ViewLayout

    args = train_teacher.parse_args(["--tiny-test", "--output-dir", "unused"])
    pool = train_teacher.build_pool(args, torch.device("cpu"))
    args.batch_size = 64
    draw = lambda: train_teacher.sample_batch(args, pool, ViewLayout(), 0, 16, torch.device("cpu"))["timesteps"]  # noqa: E731
    uniform = draw()
    assert (uniform >= 800).float().mean() < 0.4
    args.high_noise_fraction = 1.0
    assert (draw() >= 800).all()
    args.high_noise_fraction = 0.5
    share = (draw() >= 800).float().mean()
    assert 0.45 < share < 0.8  # half moved, plus the uniform draws that were high already
    args.high_noise_fraction, args.high_noise_start = 1.0, 950
    assert (draw() >= 950).all()


def test_canonical_fraction_puts_that_share_of_view_sets_at_the_input_camera():
    """Sampling asks for views at azimuth 0/90/180/270 of the input: that share trains exactly that layout."""
    from dd3g.cameras import ViewLayout

    args = train_teacher.parse_args(["--tiny-test", "--output-dir", "unused"])
    pool = train_teacher.build_pool(args, torch.device("cpu"))
    args.batch_size = 64

    def canonical_share():
        cams = train_teacher.sample_batch(args, pool, ViewLayout(), 0, 16, torch.device("cpu"))["cameras"]  # [B, V+1]
        at_input = (cams.viewmats[:, 0] - cams.viewmats[:, -1]).abs().flatten(1).amax(1) < 1e-5  # view 0 = input camera
        return at_input.float().mean().item()

    args.canonical_fraction = 0.0
    assert canonical_share() == 0.0
    args.canonical_fraction = 1.0
    assert canonical_share() == 1.0
    args.canonical_fraction = 0.5
    assert 0.35 < canonical_share() < 0.65


def test_k_processes_draw_the_slices_of_the_one_process_batch_and_steps_differ():
    """A batch is keyed by (run seed, step): process k of K renders rows [k*b, (k+1)*b) of the one-process batch."""
    from dd3g.cameras import ViewLayout

    args = train_teacher.parse_args(["--tiny-test", "--output-dir", "unused"])
    pool = train_teacher.build_pool(args, torch.device("cpu"))
    args.batch_size = 4
    whole = train_teacher.sample_batch(args, pool, ViewLayout(), 3, 16, torch.device("cpu"))
    args.batch_size = 2
    halves = [train_teacher.sample_batch(args, pool, ViewLayout(), 3, 16, torch.device("cpu"), k, 2) for k in (0, 1)]
    for key in ("noise", "timesteps", "dropped"):
        assert torch.equal(torch.cat([h[key] for h in halves]), whole[key]), key
    for key in ("views", "input_view"):  # the same objects and cameras; the splatter's sums may round by batch
        assert torch.allclose(torch.cat([h[key] for h in halves]), whole[key], atol=1e-5), key
    assert torch.equal(torch.cat([h["cameras"].viewmats for h in halves]), whole["cameras"].viewmats)
    args.batch_size = 4
    other = train_teacher.sample_batch(args, pool, ViewLayout(), 4, 16, torch.device("cpu"))
    assert not torch.equal(other["noise"], whole["noise"]) and not torch.equal(other["views"], whole["views"])


def test_a_kept_expert_is_exported_beside_the_trained_main_unet(expert_teacher, tmp_path):
    """--keep-expert-from: the main UNet trains, the export carries the given teacher's expert unchanged."""
    _run(tmp_path / "main", "--max-steps", "2", "--keep-expert-from", str(expert_teacher),
         "--init-from", str(expert_teacher), "--init-step", "2", "--max-steps", "4", "--export", str(tmp_path / "out"))
    kept, out = TinyTeacher.from_pretrained(expert_teacher), TinyTeacher.from_pretrained(tmp_path / "out")
    assert out.pipe.config.high_noise_start == 990
    assert all(torch.equal(a, b) for a, b in zip(kept.pipe.high_noise_unet.state_dict().values(), out.pipe.high_noise_unet.state_dict().values()))
    assert any(not torch.equal(a, b) for a, b in zip(kept.unet.state_dict().values(), out.unet.state_dict().values()))
    # No path of the training machine (the folder the kept UNet was loaded from) goes into the shipped configs.
    for folder in ("unet", "high_noise_unet"):
        assert "_name_or_path" not in json.loads((tmp_path / "out" / folder / "config.json").read_text())


def test_a_teacher_continues_at_another_resolution_from_its_weights(expert_teacher, tmp_path):
    """--sample-size: the 16-px toy teacher (with its expert) warm-starts a 32-px one: its weights continue the 16-px
    ones (not a fresh UNet's), both UNets are exported at 32 px, and the new teacher samples 32-px views."""
    _run(tmp_path / "big", "--sample-size", "32", "--keep-expert-from", str(expert_teacher), "--init-from",
         str(expert_teacher), "--init-step", "2", "--max-steps", "3", "--export", str(tmp_path / "big-teacher"))
    small, big = TinyTeacher.from_pretrained(expert_teacher), TinyTeacher.from_pretrained(tmp_path / "big-teacher")
    assert small.image_size == 16 and big.image_size == 32
    assert big.pipe.high_noise_unet.config.sample_size == 32 and big.pipe.config.high_noise_start == 990
    start = load_file(tmp_path / "big" / "checkpoints" / "step-0000003" / "model.safetensors")  # one step from the 16-px weights
    moved = max(float((start[k] - v).abs().max()) for k, v in small.unet.state_dict().items())
    fresh = train_teacher.build_unet(train_teacher.parse_args(["--tiny-test", "--output-dir", "x", "--sample-size", "32"]))
    from_fresh = max(float((start[k] - v).abs().max()) for k, v in fresh.state_dict().items())
    assert moved < 0.1 * from_fresh  # it continued the small teacher's weights
    views = big.simulate(torch.rand(1, 4, 32, 32), seeds=[0], num_steps=2).views
    assert views.shape == (1, 4, 4, 32, 32) and torch.isfinite(views).all()
    # Going on from the 32-px teacher keeps 32 px without being told; --sample-size still wins.
    for flag in ("--init-from", "--expert-for", "--keep-expert-from"):
        args = train_teacher.parse_args(["--tiny-test", "--output-dir", "x", flag, str(tmp_path / "big-teacher")])
        assert train_teacher.build_unet(args).config.sample_size == 32, flag
    told = train_teacher.parse_args(["--tiny-test", "--output-dir", "x", "--init-from", str(tmp_path / "big-teacher"), "--sample-size", "16"])
    assert train_teacher.build_unet(told).config.sample_size == 16
    with pytest.raises(SystemExit):
        train_teacher.parse_args(["--tiny-test", "--output-dir", "x", "--sample-size", "0"])


def test_expert_run_trains_only_the_top_timesteps_and_exports_beside_its_base(base_teacher, tmp_path):
    """--expert-for: the export keeps the base teacher's UNet as is and adds the trained high-noise expert."""
    args = train_teacher.parse_args(["--tiny-test", "--output-dir", "x", "--expert-for", "b", "--high-noise-start", "995"])
    assert args.high_noise_fraction == 1.0
    _run(tmp_path / "expert", "--max-steps", "2", "--expert-for", str(base_teacher), "--high-noise-start", "995",
         "--sample-every", "2", "--export", str(tmp_path / "both"))
    base, both = TinyTeacher.from_pretrained(base_teacher), TinyTeacher.from_pretrained(tmp_path / "both")
    assert both.pipe.config.high_noise_start == 995
    assert all(torch.equal(a, b) for a, b in zip(base.unet.state_dict().values(), both.unet.state_dict().values()))
    assert "_name_or_path" not in json.loads((tmp_path / "both" / "unet" / "config.json").read_text())
    trained = load_file(tmp_path / "expert" / "checkpoints" / "step-0000002" / "ema.safetensors")
    expert = both.pipe.high_noise_unet.state_dict()
    assert any(not torch.equal(expert[k], base.unet.state_dict()[k]) for k in expert)
    # The sample grid during training scored the combined teacher, camera sensitivity included.
    rows = [json.loads(line) for line in (tmp_path / "expert" / "log.jsonl").read_text().splitlines()]
    assert any("camera_sensitivity_t999" in r for r in rows)
    # The expert is the run's EMA weights (stored in fp16).
    for i, param in enumerate(both.pipe.high_noise_unet.parameters()):
        assert torch.allclose(param, trained[f"shadow.{i}"].float(), atol=1e-3, rtol=1e-3)
    # A later expert run continues from that expert, not from the main UNet.
    again = _run(tmp_path / "again", "--max-steps", "5", "--stop-after", "3", "--expert-for", str(base_teacher),
                 "--init-from", str(tmp_path / "both"), "--init-step", "2")
    assert again == 3  # one step on from the init step
    first = load_file(tmp_path / "again" / "checkpoints" / "step-0000003" / "model.safetensors")
    moved_from_expert = sum(float((first[k] - v).abs().max()) for k, v in expert.items())
    moved_from_base = sum(float((first[k] - v).abs().max()) for k, v in base.unet.state_dict().items())
    assert moved_from_expert < moved_from_base


def test_example_accelerate_configs_parse_and_the_cpu_one_launches(tmp_path):
    """training/accelerate/*.yaml are valid accelerate configs; `accelerate launch` with cpu.yaml trains a step."""
    import os
    import subprocess
    import sys

    from accelerate.commands.config.config_args import ClusterConfig

    repo = REPO
    configs = {p.stem: ClusterConfig.from_yaml_file(str(p)) for p in (repo / "training" / "accelerate").glob("*.yaml")}
    assert set(configs) == {"cpu", "single_gpu", "multi_gpu", "multi_node"}
    assert configs["multi_gpu"].distributed_type == "MULTI_GPU" and configs["multi_gpu"].num_processes >= 2
    node = configs["multi_node"]
    assert node.num_machines > 1 and node.num_processes % node.num_machines == 0 and node.main_process_ip
    assert configs["cpu"].use_cpu and not configs["single_gpu"].use_cpu
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(repo / "training/accelerate/cpu.yaml"),
         "training/train_teacher.py", "--tiny-test", "--output-dir", str(tmp_path / "run"), "--max-steps", "1",
         "--sample-every", "1000"],
        capture_output=True, text=True, timeout=300, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "step-0000001" / "model.safetensors").is_file()


def test_the_pool_is_the_train_splits_objects_from_pool_start_in_the_world_of_print_fraction():
    from training import synthetic

    args = train_teacher.parse_args(["--tiny-test", "--output-dir", "unused", "--pool-start", "7", "--print-fraction", "1"])
    pool = train_teacher.build_pool(args, torch.device("cpu"))  # [P, N]
    seeds = [synthetic.split_seed("train", 7 + i) for i in range(args.pool_size)]
    expected = synthetic.batch_objects(seeds, args.num_gaussians, lighting=args.lighting, print_fraction=1.0)
    assert torch.equal(pool.means, expected.means) and torch.equal(pool.sh_dc, expected.sh_dc)
    unprinted = synthetic.batch_objects(seeds, args.num_gaussians, lighting=args.lighting)
    assert not torch.equal(pool.sh_dc, unprinted.sh_dc)  # the bodies now carry labels
    assert train_teacher.parse_args(["--output-dir", "unused"]).print_fraction == 0.5  # the shipped teacher's world
    for bad in (["--print-fraction", "1.5"], ["--pool-start", "-1"]):
        with pytest.raises(SystemExit):
            train_teacher.parse_args(["--output-dir", "unused", *bad])


def test_unet_preset_builds_that_shape_and_refuses_shapes_this_script_cannot_train(capsys):
    args = train_teacher.parse_args(["--output-dir", "unused", "--unet-preset", "tiny-wide"])
    with torch.device("meta"):
        unet = train_teacher.build_unet(args)
    assert tuple(unet.config.block_out_channels) == (64, 128, 256, 320)
    with pytest.raises(SystemExit):
        train_teacher.parse_args(["--output-dir", "unused", "--unet-preset", "base"])  # ImageDream's latent shape
    assert "invalid choice: 'base'" in capsys.readouterr().err
