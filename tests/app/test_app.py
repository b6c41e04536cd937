"""app.py served on 127.0.0.1 (tests/app/conftest.py: running_app) and driven through gradio_client."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from gradio_client import handle_file
from PIL import Image
from plyfile import PlyData

import app
from dd3g.gaussians import Gaussians
from dd3g.preprocess import PreprocessConfig, preprocess
from helpers import app_client, rgba_image, serve, set_up_with_the_module, started, toy_pipeline

PLY_PROPERTIES = {"x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
                  "rot_0", "rot_1", "rot_2", "rot_3"}


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def app_processes(tmp_path_factory):
    """This module's two real `python app.py` processes. Their start-up (~15 s of imports on one core each) runs
    beside the module's in-process tests: they start with its first test.
    "no-checkpoint": DD3G_CHECKPOINT names a missing folder -> (that folder, wait() -> CompletedProcess);
    "served": --checkpoint a toy pipeline, --device cpu, on a free port -> (process, url, its stderr log).
    Both are killed at the end of the module if a test left them running."""
    root = Path(app.__file__).resolve().parent
    work = tmp_path_factory.mktemp("app-processes")
    missing = work / "env-checkpoint"
    checkpoint = work / "checkpoint"
    toy_pipeline().save_pretrained(checkpoint)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = work / "app.log"
    with contextlib.ExitStack() as stack:
        env = {**os.environ, "DD3G_CHECKPOINT": str(missing), "PYTHONPATH": str(root)}
        no_checkpoint = stack.enter_context(started([sys.executable, str(root / "app.py")], env=env))
        with open(log, "w") as stderr:
            served = subprocess.Popen(
                [sys.executable, str(root / "app.py"), "--checkpoint", str(checkpoint), "--port", str(port), "--device", "cpu"],
                cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, stdout=subprocess.DEVNULL, stderr=stderr)
        stack.callback(_kill, served)
        yield {"no-checkpoint": (missing, no_checkpoint), "served": (served, f"http://127.0.0.1:{port}/", log)}


_start_app_processes = set_up_with_the_module("app_processes")


@pytest.fixture(scope="module")
def client(running_app):
    url, _, _ = running_app
    client = app_client(url)
    yield client
    client.close()


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
    batch = expected_gaussians(pipe, image_file, [5, 6])
    expected = [batch[0].visible(), batch[1].visible()]  # what a renderer draws; the fainter ones are left out
    assert vertex.count == expected[0].num_gaussians
    shown = Gaussians.load_ply(viewer)
    assert shown.num_gaussians == expected[0].num_gaussians
    torch.testing.assert_close(shown.means, expected[0].means, atol=1e-5, rtol=1e-5)  # seed 5 in the viewer
    assert bool((shown.opacities >= 1 / 255).all())
    # Downloads: .ply, .splat and .glb for both variations, the second one being seed 6's object.
    names = sorted(p.rsplit("/", 1)[-1] for p in downloads)
    assert names == sorted(f"dd3g_seed{s}.{ext}" for s in (5, 6) for ext in ("ply", "splat", "glb"))
    second = Gaussians.load_ply(next(p for p in downloads if p.endswith("dd3g_seed6.ply")))
    torch.testing.assert_close(second.means, expected[1].means, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(second.means, shown.means)
    splat = next(p for p in downloads if p.endswith(".splat"))
    assert Gaussians.load_splat(splat).num_gaussians == expected[0].num_gaussians
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
    torch.testing.assert_close(ends[0], expected[0].visible().means, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ends[1], expected[1].visible().means, atol=1e-5, rtol=1e-5)
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
    deadline = time.monotonic() + 300  # one shared budget: generous for a loaded 2-core CI machine (7 s when idle)

    def one_client(seed):
        job = None
        try:
            job = app_client(url).submit(handle_file(image_file), 0.85, seed, 1, api_name="/generate")
            viewer, *_ = job.result(timeout=max(1.0, deadline - time.monotonic()))
            results[seed] = Gaussians.load_ply(viewer).means
        except Exception as error:  # noqa: BLE001 - reported below, with where the job was when it failed
            status = job.status().code if job is not None else "not submitted"
            errors.append(f"seed {seed}: {error!r} (job status {status})")

    threads = [threading.Thread(target=one_client, args=(seed,), daemon=True) for seed in range(100, 108)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()) + 10)
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


def test_checkpoint_from_the_environment_at_start_up(app_processes):
    """The real start-up path: `python app.py` with DD3G_CHECKPOINT naming a missing folder."""
    missing, wait = app_processes["no-checkpoint"]
    proc = wait(timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert str(missing) in proc.stderr and "Traceback" not in proc.stderr


def test_viewer_arrives_before_the_files_and_the_files_before_the_video(client, image_file):
    """The model's output is streamed first, then the files, then the turntable (the slowest on a CPU)."""
    job = client.submit(handle_file(image_file), 0.85, 3, 1, api_name="/generate")
    job.result()
    updates = job.outputs()
    assert len(updates) == 3
    (first_viewer, first_video, _, first_downloads, first_timing), (_, files_video, _, files, files_timing), \
        (viewer, video, thumbnails, downloads, timing) = updates
    assert Gaussians.load_ply(first_viewer).num_gaussians > 0 and first_video is None and not first_downloads
    assert "Writing the files" in first_timing
    assert files_video is None and len(files) == 3 and "Rendering the turntable" in files_timing
    assert video is not None and len(downloads) == 3 and len(thumbnails) == 1 and "Turntable video" in timing
    assert Gaussians.load_ply(first_viewer).means.equal(Gaussians.load_ply(viewer).means)


# ---------------------------------------------------------------------------------------------------------
# What one visitor can cost the server (issue 20): each test fails when its protection is removed.

class CountingPipe:
    """The pipeline, counting its calls (and preprocessing's, through `track`) that run at the same time.

    Each call is held for `hold_s` so that jobs the server lets run together do overlap.
    """

    def __init__(self, pipe, hold_s: float):
        self.pipe, self.hold_s = pipe, hold_s
        self.running = self.peak = self.calls = 0
        self._lock = threading.Lock()

    def __getattr__(self, name):  # config, device, ... of the real pipeline
        return getattr(self.pipe, name)

    def track(self, fn, *args, **kwargs):
        with self._lock:
            self.running += 1
            self.calls += 1
            self.peak = max(self.peak, self.running)
        try:
            time.sleep(self.hold_s)
            return fn(*args, **kwargs)
        finally:
            with self._lock:
                self.running -= 1

    def __call__(self, *args, **kwargs):
        return self.track(self.pipe, *args, **kwargs)

    def interpolate(self, *args, **kwargs):
        return self.track(self.pipe.interpolate, *args, **kwargs)


def test_one_concurrency_limit_across_generate_interpolate_and_preprocess(running_app, tmp_path, monkeypatch):
    _, pipe, _ = running_app
    counting = CountingPipe(pipe, hold_s=0.4)
    monkeypatch.setattr(app, "preprocess", lambda *a, **k: counting.track(preprocess, *a, **k))
    errors = []
    with serve(counting, concurrency_limit=2) as (url, _):
        def job(kind, k):
            path = tmp_path / f"{kind}-{k}.png"  # one file each: no job reuses another's preprocessing
            rgba_image(64, seed=k).save(path)
            try:
                client = app_client(url)
                if kind == "generate":
                    client.predict(handle_file(path), 0.85, k, 1, api_name="/generate")
                elif kind == "interpolate":
                    client.predict(handle_file(path), 0.85, k, k + 1, 0.5, api_name="/interpolate")
                else:
                    client.predict(handle_file(path), 0.85, api_name="/preprocess")
            except Exception as error:  # noqa: BLE001 - reported below
                errors.append(f"{kind} {k}: {error!r}")

        threads = [threading.Thread(target=job, args=(kind, k)) for k in range(4)
                   for kind in ("generate", "interpolate", "preprocess")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=180)
    assert not errors, errors
    assert counting.calls >= 20  # 12 preprocessings + 8 model calls
    # Each handler alone may run 2 at once; together they must still be 2 (gradio's limit is per event).
    assert counting.peak == 2, f"{counting.peak} model/preprocessing calls ran at once"


def test_the_queue_is_bounded(running_app, image_file):
    _, pipe, _ = running_app
    counting = CountingPipe(pipe, hold_s=2.0)
    with serve(counting, concurrency_limit=1, max_queue_size=2) as (url, _):
        client = app_client(url)
        jobs = [client.submit(handle_file(image_file), 0.85, k, 1, api_name="/generate") for k in range(6)]
        outcomes = []
        for job in jobs:
            try:
                job.result(timeout=120)
                outcomes.append("served")
            except Exception as error:  # noqa: BLE001 - the refusals are the point
                outcomes.append(str(error))
    refused = [o for o in outcomes if o != "served"]
    assert refused and all("queue is full" in o.lower() for o in refused), outcomes
    assert 1 <= outcomes.count("served") <= 4, outcomes  # one running + two waiting (+ one that finished meanwhile)


def test_uploads_are_rate_limited_per_client(running_app, image_file):
    _, pipe, _ = running_app
    with serve(pipe, uploads_per_minute=3) as (url, _):
        statuses = []
        for _ in range(5):
            with open(image_file, "rb") as f:
                statuses.append(httpx.post(url + "gradio_api/upload", files={"files": f}, timeout=30).status_code)
    assert statuses == [200, 200, 200, 429, 429]


def test_upload_rate_limit_counts_each_client_apart():
    async def downstream(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    limit = app.UploadRateLimit(downstream, limit=2, trust_forwarded=True)

    def upload_from(address):
        sent = []

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/gradio_api/upload", "client": ("10.0.0.1", 1),
                 "headers": [(b"x-forwarded-for", address.encode())]}
        asyncio.run(limit(scope, None, send))
        return sent[0]["status"]

    assert [upload_from("1.1.1.1") for _ in range(3)] == [200, 200, 429]
    assert upload_from("2.2.2.2") == 200  # another visitor behind the same proxy is not held back


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height 8-bit RGBA pixels and carries none (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)) + chunk(b"IEND", b"")


def _call_with_data_uri(url: str, data: bytes) -> str:
    """POST /preprocess with the image as a `data:` URI, as a script may (the browser uploads files)."""
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    event = httpx.post(url + "gradio_api/call/preprocess", json={"data": [{"url": uri, "path": None}, 0.85]}, timeout=30)
    event.raise_for_status()
    return httpx.get(url + f"gradio_api/call/preprocess/{event.json()['event_id']}", timeout=60).text


def _files_under(folder: Path) -> set:
    return {p for p in folder.rglob("*") if p.is_file()}


def test_data_uri_uploads_are_held_to_the_upload_limits(running_app):
    url, _, settings = running_app
    cache = app.gradio_cache_dir()
    before = _files_under(cache)
    # Over the pixel limit: refused from the header, before anything decodes it.
    answer = _call_with_data_uri(url, _png_header(20_000, 20_000))
    assert "exceeds the limit of 1,000,000 pixels" in answer, answer
    # Over the byte limit: refused before the URI is even base64-decoded, so nothing reaches the disk.
    answer = _call_with_data_uri(url, b"\x89PNG" + bytes(settings.max_file_bytes + 10))
    assert f"exceeds the maximum file size of {settings.max_file_bytes} bytes" in answer, answer
    assert not {p for p in _files_under(cache) - before if "upload-" not in str(p)}
    assert not [p for p in _files_under(cache) - before if p.stat().st_size > settings.max_file_bytes]
    # Within the limits the URI works like an upload.
    buffer = io.BytesIO()
    rgba_image(64).save(buffer, format="PNG")
    assert '"path"' in _call_with_data_uri(url, buffer.getvalue())


def test_links_are_not_fetched(client):
    with pytest.raises(Exception) as error:
        client.predict(handle_file("https://example.com/object.png"), 0.85, api_name="/preprocess")
    assert "does not fetch images from links" in str(error.value)


def test_the_app_pixel_limit_is_below_the_librarys(client, tmp_path):
    assert app.AppSettings().max_pixels < PreprocessConfig().max_pixels
    path = tmp_path / "wide.png"
    rgba_image(1100).save(path)  # 1.21 MP: the library takes it, the test server (1 MP) must not
    preprocess(path, PreprocessConfig(size=64))
    with pytest.raises(Exception) as error:
        client.predict(handle_file(path), 0.85, api_name="/preprocess")
    assert "exceeds the limit of 1,000,000 pixels" in str(error.value)


def test_results_are_stored_once(running_app, image_file):
    url, _, _ = running_app
    client = app_client(url, download_files=False)  # the server's files only, no client-side copies
    before = _files_under(app.gradio_cache_dir())
    viewer, video, _, downloads, _ = client.predict(handle_file(image_file), 0.85, 41, 1, api_name="/generate")
    new = _files_under(app.gradio_cache_dir()) - before
    results = sorted(p.name for p in new if p.suffix in (".ply", ".splat", ".glb", ".mp4"))
    assert results == ["dd3g_seed41.glb", "dd3g_seed41.ply", "dd3g_seed41.splat", "turntable.mp4"], results  # no copies
    # gradio serves the files the app wrote (one result folder), not copies of them (one hash folder each).
    served = [viewer["path"], video["video"]["path"] if "video" in video else video["path"]] + [d["path"] for d in downloads]
    assert {Path(p).parent.name[:7] for p in served} == {"result-"} and len({Path(p).parent for p in served}) == 1, served


def test_old_results_are_removed(running_app, image_file):
    url, _, settings = running_app
    client = app_client(url, download_files=False)  # answers name the server's files
    first = Path(client.predict(handle_file(image_file), 0.85, 42, 1, api_name="/generate")[0]["path"]).parent
    stale = time.time() - settings.max_output_age_s - 60
    os.utime(first, (stale, stale))
    second = Path(client.predict(handle_file(image_file), 0.85, 43, 1, api_name="/generate")[0]["path"]).parent
    assert not first.exists()  # any new result prunes the old ones
    assert second.is_dir() and second.parent == first.parent


def test_results_are_removed_at_shutdown(app_processes, tmp_path):
    """`python app.py` stopped by SIGTERM (as a service manager stops it) leaves no results behind."""
    proc, url, log = app_processes["served"]
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                httpx.get(url, timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.5)
        assert proc.poll() is None, log.read_text()
        results = Path(log.read_text().split("results in ", 1)[1].splitlines()[0].strip())
        image = tmp_path / "blob.png"
        rgba_image(64).save(image)
        app_client(url, download_files=False).predict(handle_file(image), 0.85, 0, 1, api_name="/generate")
        assert any(results.rglob("dd3g_seed0.ply"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()
    finally:
        _kill(proc)
    assert not results.exists()


def test_expected_errors_leave_one_log_line_not_a_traceback(client, image_file, caplog, capfd):
    capfd.readouterr()
    with caplog.at_level(logging.WARNING, logger="dd3g.app"):
        with pytest.raises(Exception):
            client.predict(handle_file(image_file), 0.85, -1, 1, api_name="/generate")
        time.sleep(0.5)  # the server finishes its side after the client has its answer
    lines = [r.getMessage() for r in caplog.records if r.name == "dd3g.app"]
    assert len(lines) == 1 and "seed must be a whole number" in lines[0], lines
    assert "Traceback" not in capfd.readouterr().err
