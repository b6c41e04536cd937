import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dd3g.__main__ import main
from dd3g.gaussians import Gaussians
from tests.helpers import rgba_image, toy_pipeline


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


def test_missing_default_model_says_so(image, tmp_path, capsys, monkeypatch):
    import dd3g.pipeline

    monkeypatch.setattr(dd3g.pipeline, "DEFAULT_CHECKPOINT", tmp_path / "hub" / "dd3g-tiny")
    assert main([str(image), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "the shipped dd3g-tiny is missing" in err


def test_real_subprocess(checkpoint, image, tmp_path):
    out = tmp_path / "sub"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run(
        [sys.executable, "-m", "dd3g", str(image), "--out", str(out), "--checkpoint", str(checkpoint), "--format", "splat"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr
    assert (out / "blob_seed0.splat").stat().st_size == 32 * 256
    missing = subprocess.run([sys.executable, "-m", "dd3g", str(tmp_path / "none.png"), "--out", str(out), "--checkpoint", str(checkpoint)], capture_output=True, text=True, timeout=300, env=env)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr and "none.png" in missing.stderr
