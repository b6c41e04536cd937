import contextlib
import os
import sys
from pathlib import Path

import pytest
import torch

from dd3g.__main__ import main
from dd3g.gaussians import Gaussians
from dd3g.testing import rgba_image, toy_pipeline
from helpers import REPO, started


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "toy"
    toy_pipeline().save_pretrained(path)
    return path


@pytest.fixture()
def image(tmp_path):
    path = tmp_path / "blob.png"
    rgba_image().save(path)
    return path


def test_writes_each_format_per_sample(checkpoint, image, tmp_path, capsys):
    out = tmp_path / "out"
    code = main([str(image), "--out", str(out), "--checkpoint", str(checkpoint), "--seed", "3", "--num-samples", "2", "--format", "ply,splat"])
    assert code == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["blob_seed3.ply", "blob_seed3.splat", "blob_seed4.ply", "blob_seed4.splat"]
    g3, g4 = Gaussians.load_ply(out / "blob_seed3.ply"), Gaussians.load_ply(out / "blob_seed4.ply")
    assert g3.num_gaussians == 256 and not (g3.means == g4.means).all()
    assert (out / "blob_seed3.splat").stat().st_size == 32 * 256
    # The same seed gives the same file (byte for byte at the same batch size, to rounding in a batch).
    once, twice = tmp_path / "once", tmp_path / "twice"
    for folder in (once, twice):
        assert main([str(image), "--out", str(folder), "--checkpoint", str(checkpoint), "--seed", "3"]) == 0
    assert (once / "blob_seed3.ply").read_bytes() == (twice / "blob_seed3.ply").read_bytes()
    assert torch.allclose(Gaussians.load_ply(once / "blob_seed3.ply").means, g3.means, atol=1e-5)
    # --elevation reaches the model's cameras: another object from the same seed.
    assert main([str(image), "--out", str(tmp_path / "raised"), "--checkpoint", str(checkpoint), "--seed", "3", "--elevation", "20"]) == 0
    assert not torch.allclose(Gaussians.load_ply(tmp_path / "raised" / "blob_seed3.ply").means, g3.means, atol=1e-5)


def test_writes_glb_and_mp4(checkpoint, image, tmp_path):
    import imageio.v2 as imageio
    import trimesh

    out = tmp_path / "out"
    code = main([str(image), "--out", str(out), "--checkpoint", str(checkpoint), "--seed", "5", "--format", "glb,mp4"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["blob_seed5.glb", "blob_seed5.mp4"]
    loaded = trimesh.load(out / "blob_seed5.glb")
    meshes = list(loaded.geometry.values()) if isinstance(loaded, trimesh.Scene) else [loaded]
    assert len(meshes) == 1 and len(meshes[0].faces) > 0 and meshes[0].visual.kind == "vertex"
    reader = imageio.get_reader(out / "blob_seed5.mp4", format="FFMPEG")
    try:
        assert reader.get_meta_data()["size"] == (256, 256)
        assert sum(1 for _ in reader) == 24
    finally:
        reader.close()


def test_a_bad_image_is_one_line_and_the_rest_still_run(checkpoint, image, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(image.read_bytes()[:40])  # truncated PNG
    out = tmp_path / "out"
    code = main([str(bad), str(image), "--out", str(out), "--checkpoint", str(checkpoint)])
    assert code == 1
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "broken.png" in error_lines[0]
    assert "Traceback" not in err
    assert (out / "blob_seed0.ply").exists() and not (out / "broken_seed0.ply").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--checkpoint", "/nonexistent/ckpt"], "does not exist"),
        (["--format", "obj"], "unknown format 'obj'"),
        (["--format", "ply,gltf"], "unknown format 'gltf'"),
        (["--num-samples", "0"], "--num-samples must be >= 1"),
        (["--elevation", "95"], "--elevation must be between -90 and 90"),
    ],
)
def test_usage_errors_exit_2_with_one_line(checkpoint, image, tmp_path, capsys, extra, message):
    args = [str(image), "--out", str(tmp_path / "o"), "--checkpoint", str(checkpoint)] + extra
    # later flags override earlier ones, so extra --checkpoint wins
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_missing_default_model_says_how_to_get_it(image, tmp_path, capsys, monkeypatch):
    """A wheel install has no hub/ beside the package: the default model's absence is one line saying what to do."""
    import dd3g.shipped

    monkeypatch.delenv("DD3G_HUB", raising=False)
    monkeypatch.setattr(dd3g.shipped, "REPOSITORY_HUB", tmp_path / "site-packages" / "hub")
    assert main([str(image), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dd3g-tiny" in err[0] and "pip install -e ." in err[0] and "DD3G_HUB" in err[0], err

    monkeypatch.setenv("DD3G_HUB", str(tmp_path / "empty-hub"))
    assert main([str(image), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"DD3G_HUB={tmp_path / 'empty-hub'} holds no dd3g-tiny/ folder" in err[0], err


def test_dd3g_hub_names_where_the_shipped_weights_are(tmp_path, monkeypatch):
    """DD3G_HUB pointing at a copy of hub/ serves the default pipeline and the default tokenizer weights."""
    import dd3g.shipped
    from dd3g.models.image_tokenizer import EfficientNetLite0Tokenizer
    from dd3g.pipeline import DD3GPipeline

    hub = tmp_path / "elsewhere" / "hub"
    hub.mkdir(parents=True)
    for name in ("dd3g-tiny", "efficientnet-lite0"):
        (hub / name).symlink_to(REPO / "hub" / name, target_is_directory=True)
    monkeypatch.setattr(dd3g.shipped, "REPOSITORY_HUB", tmp_path / "nowhere")
    monkeypatch.setenv("DD3G_HUB", str(hub))
    pipe = DD3GPipeline.from_pretrained()
    shipped = DD3GPipeline.from_pretrained(REPO / "hub" / "dd3g-tiny")
    first = next(iter(shipped.student.state_dict().items()))
    torch.testing.assert_close(pipe.student.state_dict()[first[0]], first[1])
    assert EfficientNetLite0Tokenizer.from_imagenet().config.image_size == shipped.image_encoder.config.image_size
    (hub / "efficientnet-lite0").unlink()
    with pytest.raises(FileNotFoundError, match="holds no efficientnet-lite0/ folder"):
        EfficientNetLite0Tokenizer.from_imagenet()


@pytest.fixture(scope="module")
def real_runs(checkpoint, tmp_path_factory):
    """This module's real processes, each with its own --out: `python -m dd3g` on an image ("good", --format splat)
    and on a missing file ("missing"), and the CLI with a SIGTERM arriving while it writes its PLY ("sigterm").
    Each spends most of its time importing torch and diffusers on one core, so they run side by side, started
    together by the first test that asks for them. -> (folder, {name: wait() -> CompletedProcess})"""
    work = tmp_path_factory.mktemp("real-cli")
    image = work / "blob.png"
    rgba_image().save(image)
    cli = [sys.executable, "-m", "dd3g"]
    commands = {
        "good": [*cli, str(image), "--out", str(work / "sub"), "--checkpoint", str(checkpoint), "--format", "splat"],
        "missing": [*cli, str(work / "none.png"), "--out", str(work / "sub-missing"), "--checkpoint", str(checkpoint)],
        "sigterm": [sys.executable, "-c", SIGTERM_MID_WRITE, str(REPO), str(image), "--out", str(work / "sigterm-out"),
                    "--checkpoint", str(checkpoint)],
    }
    with contextlib.ExitStack() as stack:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        yield work, {name: stack.enter_context(started(command, env=env)) for name, command in commands.items()}


def test_real_subprocess(real_runs):
    work, runs = real_runs
    good, missing = runs["good"](), runs["missing"]()
    assert good.returncode == 0, good.stderr
    assert (work / "sub" / "blob_seed0.splat").stat().st_size == 32 * 256
    assert missing.returncode == 1 and "Traceback" not in missing.stderr and "none.png" in missing.stderr


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture()
def no_model(monkeypatch):
    """Fail the test if the CLI gets as far as loading a checkpoint."""
    from dd3g.pipeline import DD3GPipeline

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(DD3GPipeline, "from_pretrained", classmethod(refuse))


def test_same_named_inputs_from_different_folders_get_distinct_outputs(checkpoint, tmp_path):
    for folder, seed in (("a", 0), ("b", 1)):
        (tmp_path / folder).mkdir()
        rgba_image(seed=seed).save(tmp_path / folder / "blob.png")
    out = tmp_path / "out"
    args = [str(tmp_path / "a" / "blob.png"), str(tmp_path / "b" / "blob.png"), "--out", str(out), "--checkpoint", str(checkpoint)]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_blob_seed0.ply", "b_blob_seed0.ply"]
    assert (out / "a_blob_seed0.ply").read_bytes() != (out / "b_blob_seed0.ply").read_bytes()


def test_existing_outputs_are_refused_unless_overwrite(checkpoint, image, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert main([str(image), "--out", str(out), "--checkpoint", str(checkpoint), "--format", "ply,splat"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "blob_seed0.ply").write_bytes(b"the user's own file")
    capsys.readouterr()
    with monkeypatch.context() as patch:
        from dd3g.pipeline import DD3GPipeline

        patch.setattr(DD3GPipeline, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("the model was loaded")))
        assert main([str(image), "--out", str(out), "--checkpoint", str(checkpoint), "--format", "ply,splat"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "blob_seed0.ply already exists (and 1 more outputs of this run); pass --overwrite" in line
    assert (out / "blob_seed0.ply").read_bytes() == b"the user's own file"
    assert main([str(image), "--out", str(out), "--checkpoint", str(checkpoint), "--format", "ply,splat", "--overwrite"]) == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def _unwritable_folder(tmp_path) -> Path:
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o500)
        return folder
    if not Path("/proc/self").is_dir():
        pytest.skip("running as root without /proc: no folder here refuses writes")
    return Path("/proc/self")  # root may write anywhere but here


@pytest.mark.parametrize("case", ["file in the path", "dangling symlink", "unwritable"])
def test_a_bad_out_is_refused_before_the_model_loads(image, tmp_path, capsys, no_model, case):
    if case == "file in the path":
        (tmp_path / "notes.txt").write_text("a file")
        out, expected = tmp_path / "notes.txt" / "results", "cannot be created: " + str(tmp_path / "notes.txt") + " is not a folder"
    elif case == "dangling symlink":
        out = tmp_path / "results"
        out.symlink_to(tmp_path / "gone")
        expected = f"is a broken symbolic link (to {tmp_path / 'gone'})"
    else:
        out, expected = _unwritable_folder(tmp_path), "is not writable"
    assert main([str(image), "--out", str(out)]) == 2
    assert expected in _one_error_line(capsys.readouterr().err)


def test_interruption_removes_partial_outputs_and_keeps_finished_ones(checkpoint, image, tmp_path, capsys, monkeypatch):
    import tempfile

    out = tmp_path / "out"
    real_save_ply = Gaussians.save_ply

    def cut_short(self, path):
        if str(path).endswith("seed1.ply"):  # the writer was cut before it could clean up after itself
            tempfile.mkstemp(dir=os.path.dirname(path), prefix="." + os.path.basename(path) + ".", suffix=".tmp")
            raise KeyboardInterrupt
        return real_save_ply(self, path)

    monkeypatch.setattr(Gaussians, "save_ply", cut_short)
    assert main([str(image), "--out", str(out), "--checkpoint", str(checkpoint), "--num-samples", "2"]) == 130
    assert sorted(p.name for p in out.iterdir()) == ["blob_seed0.ply"]
    assert "interrupted" in capsys.readouterr().err


SIGTERM_MID_WRITE = r"""
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from dd3g import files, gaussians
from dd3g.__main__ import main

def write_then_terminated(self, path):
    def chunks():
        yield b"ply\n"
        os.kill(os.getpid(), signal.SIGTERM)  # arrives while the temp file is open
        yield b"never written"
    files.write_atomically(path, chunks())

gaussians.Gaussians.save_ply = write_then_terminated
sys.exit(main(sys.argv[2:]))
"""


def test_sigterm_while_writing_leaves_no_temp_file(real_runs):
    work, runs = real_runs
    result = runs["sigterm"]()
    assert result.returncode == 143, result.stderr
    assert "interrupted" in result.stderr and "Traceback" not in result.stderr
    assert list((work / "sigterm-out").iterdir()) == []  # no output, no hidden .blob_seed0.ply.*.tmp


def test_a_missing_local_looking_checkpoint_is_not_fetched_from_the_hub(image, tmp_path, capsys, monkeypatch):
    from dd3g.pipeline import DD3GPipeline

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    monkeypatch.setattr(DD3GPipeline, "download", classmethod(lambda *a, **k: pytest.fail("went to the Hub")))
    assert main([str(image), "--out", "results", "--checkpoint", "runs/dd3g-tiny"]) == 2
    assert _one_error_line(capsys.readouterr().err) == "error: checkpoint folder runs/dd3g-tiny does not exist"
    assert not (tmp_path / "results").exists()  # the run did nothing, so it left no empty folder


@pytest.mark.parametrize(
    "file, key, value, message",
    [
        ("model_index.json", "student", ["diffusers", "UNet2DModel"], "student must be dd3g.models.pepd.PEPD, got diffusers.UNet2DModel"),
        ("student/config.json", "width", "256", "width must be an integer from 1 to 8,192, got '256'"),
        ("scheduler/scheduler_config.json", "num_train_timesteps", 1e9, "num_train_timesteps must be an integer from 2 to 10,000"),
    ],
)
def test_a_bad_checkpoint_config_is_one_line(checkpoint, image, tmp_path, capsys, file, key, value, message):
    import json
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(checkpoint, bad)
    config = json.loads((bad / file).read_text())
    config[key] = value
    (bad / file).write_text(json.dumps(config))
    assert main([str(image), "--out", str(tmp_path / "o"), "--checkpoint", str(bad)]) == 2
    assert message in _one_error_line(capsys.readouterr().err)


def test_the_cli_formats_are_what_export_writes(tmp_path):
    """--format's list is written out in the CLI (so --help imports no torch); export.save_as is what writes them."""
    from dd3g.__main__ import FORMATS
    from dd3g.export import OUTPUT_FORMATS, save_as

    assert FORMATS == OUTPUT_FORMATS
    with pytest.raises(ValueError, match="unknown output format 'obj'"):
        save_as(toy_pipeline()(rgba_image(32), seeds=[0]).gaussians[0], tmp_path / "object.obj")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("requested, message", [("tpu9", "is not a device"), ("cuda:0", "no CUDA device is available")])
def test_a_device_that_cannot_run_is_one_line(image, tmp_path, capsys, requested, message):
    if message.startswith("no CUDA") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main([str(image), "--out", str(tmp_path / "o"), "--device", requested]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
