"""app.py served on 127.0.0.1 (tests/conftest.py: running_app) and driven through gradio_client."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image
from plyfile import PlyData

import app
from dd3g.gaussians import Gaussians
from helpers import rgba_image

PLY_PROPERTIES = {"x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
                  "rot_0", "rot_1", "rot_2", "rot_3"}


@pytest.fixture(scope="module")
def client(running_app):
    url, _, _ = running_app
    return Client(url, verbose=False)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("inputs") / "blob.png"
    rgba_image(64).save(path)
    return path


def expected_gaussians(pipe, path, seeds):
    """What the pipeline itself makes for this file and seeds (the app must not change the result)."""
    return pipe(str(path), seeds=seeds, num_samples=len(seeds)).gaussians


def test_generate_returns_the_pipelines_gaussians_as_ply(running_app, client, image_file):
    _, pipe, settings = running_app
    viewer, video, thumbnails, downloads, timing = client.predict(
        handle_file(image_file), 0.85, 5, 2, api_name="/generate"
    )
    ply = PlyData.read(viewer)
    vertex = ply["vertex"]
    assert PLY_PROPERTIES <= {p.name for p in vertex.properties}
    expected = expected_gaussians(pipe, image_file, [5, 6])
    assert vertex.count == expected.num_gaussians
    shown = Gaussians.load_ply(viewer)
    assert shown.num_gaussians == expected.num_gaussians
    torch.testing.assert_close(shown.means, expected[0].means, atol=1e-5, rtol=1e-5)  # seed 5 in the viewer
    # Downloads: .ply, .splat and .glb for both variations, the second one being seed 6's object.
    names = sorted(p.rsplit("/", 1)[-1] for p in downloads)
    assert names == sorted(f"dd3g_seed{s}.{ext}" for s in (5, 6) for ext in ("ply", "splat", "glb"))
    second = Gaussians.load_ply(next(p for p in downloads if p.endswith("dd3g_seed6.ply")))
    torch.testing.assert_close(second.means, expected[1].means, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(second.means, shown.means)
    splat = next(p for p in downloads if p.endswith(".splat"))
    assert Gaussians.load_splat(splat).num_gaussians == expected.num_gaussians
    with open(next(p for p in downloads if p.endswith(".glb")), "rb") as f:
        assert f.read(4) == b"glTF"
    # The turntable shows both variations side by side, with the configured frame count and size.
    reader = imageio.get_reader(video["video"] if isinstance(video, dict) else video, "ffmpeg")
    frames = np.stack([frame for frame in reader.iter_data()])  # len(reader) is inf: no list()
    reader.close()
    assert frames.shape == (settings.video_frames, settings.video_size, 2 * settings.video_size, 3)
    assert len(thumbnails) == 2 and [t["caption"] for t in thumbnails] == ["seed 5", "seed 6"]
    assert "Generation:" in timing and " ms" in timing and "seeds 5..6" in timing


def test_interpolation_ends_are_the_two_seeds(running_app, client, image_file):
    _, pipe, _ = running_app
    expected = expected_gaussians(pipe, image_file, [2, 9])
    ends = []
    for weight in (0.0, 1.0, 0.5):
        viewer, downloads, timing = client.predict(handle_file(image_file), 0.85, 2, 9, weight, api_name="/interpolate")
        ends.append(Gaussians.load_ply(viewer).means)
        assert {p.rsplit(".", 1)[-1] for p in downloads} == {"ply", "splat"} and "Interpolation:" in timing
    torch.testing.assert_close(ends[0], expected[0].means, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ends[1], expected[1].means, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ends[2], ends[0], atol=1e-4) and not torch.allclose(ends[2], ends[1], atol=1e-4)


def test_preview_recentres_with_the_foreground_ratio(running_app, client, image_file):
    _, pipe, _ = running_app
    sizes = []
    for ratio in (0.6, 1.0):
        preview = np.asarray(Image.open(client.predict(handle_file(image_file), ratio, api_name="/preprocess")))
        assert preview.shape == (pipe.config.image_size, pipe.config.image_size, 4)
        rows, cols = np.nonzero(preview[..., 3] > 0)
        sizes.append(max(rows.max() - rows.min(), cols.max() - cols.min()) + 1)
        centre = (rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2
        assert abs(centre[0] - (pipe.config.image_size - 1) / 2) <= 1.5  # the off-centre blob is recentred
        assert abs(centre[1] - (pipe.config.image_size - 1) / 2) <= 1.5
    assert sizes[0] == pytest.approx(0.6 * pipe.config.image_size, abs=2)
    assert sizes[1] == pytest.approx(pipe.config.image_size, abs=2)


def test_opaque_photo_example_gets_its_background_removed(client):
    examples = app.example_inputs()
    renders = [e[0] for e in examples if e[0].endswith(".png") and "/examples/" in e[0]]
    assert len(renders) >= 4
    for path in renders:  # committed examples: small RGBA renders with a transparent background
        with Image.open(path) as image:
            assert image.mode == "RGBA" and image.size == (256, 256)
            alpha = np.asarray(image)[..., 3]
        assert alpha.min() == 0 and alpha.max() == 255
    photo = examples[-1][0]
    with Image.open(photo) as image:
        assert image.mode == "RGB"  # opaque: the app must cut the object out
    preview = np.asarray(Image.open(client.predict(handle_file(photo), 0.85, api_name="/preprocess")))
    transparent = (preview[..., 3] == 0).mean()
    assert 0.2 < transparent < 0.95, f"background removal left {transparent:.0%} of the frame transparent"


def _truncated_png() -> bytes:
    buffer = io.BytesIO()
    rgba_image(64).save(buffer, format="PNG")
    return buffer.getvalue()[:200]


def _large_png() -> bytes:
    # Random pixels do not compress: about 1.9 MB, over the test server's 1 MB upload limit.
    noise = np.random.default_rng(0).integers(0, 255, (800, 800, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


BAD_INPUTS = {
    # name: (file bytes or None for no image, seed, variations, expected message fragment)
    "no-image": (None, 0, 1, "No image"),
    "not-an-image": (b"just some text, not a picture", 0, 1, "not an image"),
    "truncated-png": (_truncated_png(), 0, 1, "truncated or corrupt"),
    "too-large": ("large", 0, 1, "maximum file size of 1048576 bytes"),  # refused before the upload
    "negative-seed": ("ok", -1, 1, "seed"),
    "empty-seed": ("ok", None, 1, "seed"),
    "huge-seed": ("ok", 2**40, 1, "seed must be a whole number from 0 to"),
    "zero-variations": ("ok", 0, 0, "less than minimum value 1"),  # the slider's own bounds check
    "too-many-variations": ("ok", 0, 99, "greater than maximum value 4"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_is_a_clear_error_and_the_app_keeps_serving(client, image_file, tmp_path, case):
    data, seed, count, message = BAD_INPUTS[case]
    if data is None:
        image = None
    elif data == "ok":
        image = handle_file(image_file)
    else:
        path = tmp_path / "upload.png"
        path.write_bytes(_large_png() if data == "large" else data)
        image = handle_file(path)
    with pytest.raises(Exception) as error:
        client.predict(image, 0.85, seed, count, api_name="/generate")
    assert message.lower() in str(error.value).lower(), str(error.value)
    assert "Traceback" not in str(error.value)
    viewer, *_ = client.predict(handle_file(image_file), 0.85, 0, 1, api_name="/generate")  # still serving
    assert Gaussians.load_ply(viewer).num_gaussians > 0


def test_eight_concurrent_clients_all_get_their_object(running_app, image_file):
    url, pipe, _ = running_app
    results, errors = {}, []

    def one_client(seed):
        try:
            viewer, *_ = Client(url, verbose=False).predict(handle_file(image_file), 0.85, seed, 1, api_name="/generate")
            results[seed] = Gaussians.load_ply(viewer).means
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(f"seed {seed}: {error!r}")

    threads = [threading.Thread(target=one_client, args=(seed,)) for seed in range(100, 108)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert sorted(results) == list(range(100, 108))
    expected = expected_gaussians(pipe, image_file, list(range(100, 108)))
    for k, seed in enumerate(range(100, 108)):  # every client got its own seed's object, not a neighbour's
        torch.testing.assert_close(results[seed], expected[k].means, atol=1e-5, rtol=1e-5)


def test_missing_checkpoint_is_a_message_not_a_traceback(tmp_path, capsys):
    missing = tmp_path / "no-such-checkpoint"
    assert app.main(["--checkpoint", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "cannot start the app" in err and str(missing) in err and "does not exist" in err
    assert "Traceback" not in err
    # Building the UI leaves no files behind in the repo (gradio writes .pyi stubs for component subclasses).
    assert not (Path(app.__file__).parent / "app.pyi").exists()


def test_checkpoint_from_the_environment_at_start_up(tmp_path):
    """The real start-up path: `python app.py` with DD3G_CHECKPOINT naming a missing folder."""
    import os
    import subprocess
    import sys

    missing = tmp_path / "env-checkpoint"
    root = Path(app.__file__).resolve().parent
    env = {**os.environ, "DD3G_CHECKPOINT": str(missing), "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, str(root / "app.py")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert str(missing) in proc.stderr and "Traceback" not in proc.stderr


def test_viewer_arrives_before_the_video_and_files(client, image_file):
    """The model's output is streamed first (the turntable and mesh take far longer on a CPU), then the rest."""
    job = client.submit(handle_file(image_file), 0.85, 3, 1, api_name="/generate")
    job.result()
    updates = job.outputs()
    assert len(updates) == 2
    (first_viewer, first_video, _, first_downloads, first_timing), (viewer, video, _, downloads, _) = updates
    assert Gaussians.load_ply(first_viewer).num_gaussians > 0 and first_video is None and not first_downloads
    assert "Rendering the turntable" in first_timing
    assert video is not None and len(downloads) == 3
    assert Gaussians.load_ply(first_viewer).means.equal(Gaussians.load_ply(viewer).means)
