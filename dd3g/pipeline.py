"""DD3GPipeline: image -> 3D Gaussians with a distilled PEPD student (diffusers-style, holds no weights itself).

Components: `student` (PEPD), `image_encoder` (the frozen tokenizer) and `scheduler` (the teacher's DDIM
settings, which fix the timestep phase 1 runs at; loading checks that the student agrees); a student of a latent
teacher (ImageDream) also carries `frame_encoder` (the teacher's VAE encoder, for the input frame) and
`prompt_encoder` (the teacher's CLIP image encoder, for its phase 1's image prompt). Preprocessing and view-layout settings live in the pipeline config,
so a saved folder is everything needed to reproduce a result. The student's inputs are built by
`dd3g.student_inputs`, the same code training uses. After the student, `match_input_view` (config, default True)
gives the Gaussians the input camera sees the photo's colours, and its coverage where they are thinner than the
photo; `photo_surface_size` (config, 0 = off; exported pipelines: 256) adds the photo's pixels at that size as flat
Gaussians on the student's surface (`dd3g.input_view`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Union

import torch
from diffusers import DDIMScheduler, DiffusionPipeline
from diffusers.utils import BaseOutput
from torch import Tensor

from .cameras import Cameras, ViewLayout
from .checkpoint_config import CheckpointError, check_checkpoint_configs, one_line, read_config
from .cuda_graphs import GraphedCall
from .gaussians import Gaussians
from .input_view import match_input_view, photo_surface
from .models.fused_projections import fuse_qkv_projections, unfuse_qkv_projections
from .models.image_tokenizer import EfficientNetLite0Tokenizer
from .models.input_encoders import ImagePromptEncoder, LatentFrameEncoder
from .models.pepd import PEPD
from .randomness import noise_from_seeds
from .preprocess import PreprocessConfig, PreprocessedImage, preprocess
from .shipped import REPOSITORY_HUB, missing_hint, shipped_folder
from .student_inputs import StudentInputBuilder, first_timestep

OUTPUT_TYPES = ("gaussians", "ply", "np")
DEFAULT_CHECKPOINT = REPOSITORY_HUB / "dd3g-tiny"  # the repository's copy; from_pretrained() also honours DD3G_HUB
# the photo surface's side in exported pipelines: the 256-px views the real-scan evaluation scores (0 in the class
# default, so a checkpoint saved before the setting existed serves as it did)
EXPORTED_PHOTO_SURFACE_SIZE = 256
# torch.compile modes enable_cuda_graphs captures: compiled, without CUDA graphs of their own
PIPELINE_GRAPH_COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
# from_pretrained's keyword arguments that choose what to fetch from the Hub
HUB_DOWNLOAD_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision", "variant")


@dataclass
class DD3GPipelineOutput(BaseOutput):
    """`gaussians`: a Gaussians batch [num_images * num_samples] (image-major), a list of PLY files as bytes,
    or a list of dicts of numpy arrays of the activated parameters, following `output_type`."""

    gaussians: Union[Gaussians, List[bytes], List[dict]]
    seeds: Optional[List[int]] = None  # the seed of each sample's noise, when the pipeline drew it from seeds


def slerp(a: Tensor, b: Tensor, weight: float) -> Tensor:
    """Spherical interpolation between two noise tensors: keeps the norm a Gaussian sample has."""
    a_flat, b_flat = a.flatten().double(), b.flatten().double()
    cos = torch.dot(a_flat, b_flat) / (a_flat.norm() * b_flat.norm())
    angle = torch.arccos(cos.clamp(-1, 1))
    if angle.abs() < 1e-4:  # nearly parallel: linear is exact enough
        return ((1 - weight) * a + weight * b).to(a.dtype)
    out = (torch.sin((1 - weight) * angle) * a.double() + torch.sin(weight * angle) * b.double()) / torch.sin(angle)
    return out.to(a.dtype)


class DD3GPipeline(DiffusionPipeline):
    """Single image -> 3D Gaussians in one forward pass of a distilled student."""

    model_cpu_offload_seq = "prompt_encoder->frame_encoder->image_encoder->student"  # absent encoders are skipped
    _optional_components = ["frame_encoder", "prompt_encoder"]

    def __init__(
        self,
        student: PEPD,
        image_encoder: EfficientNetLite0Tokenizer,
        scheduler: DDIMScheduler,
        frame_encoder: Optional[LatentFrameEncoder] = None,
        prompt_encoder: Optional[ImagePromptEncoder] = None,
        image_size: int = 256,
        foreground_ratio: float = 0.85,
        elevation_deg: float = 0.0,
        radius: float = 2.0,
        fov_deg: float = 40.0,
        match_input_view: bool = True,
        photo_surface_size: int = 0,
    ):
        super().__init__()
        self.register_modules(student=student, image_encoder=image_encoder, scheduler=scheduler,
                              frame_encoder=frame_encoder, prompt_encoder=prompt_encoder)
        self.register_to_config(
            image_size=image_size, foreground_ratio=foreground_ratio, elevation_deg=elevation_deg, radius=radius, fov_deg=fov_deg,
            match_input_view=match_input_view, photo_surface_size=photo_surface_size,
        )

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path=None, **kwargs) -> "DD3GPipeline":
        """Load a saved pipeline folder or Hub repo id (safetensors only, never pickles). Defaults to the shipped
        dd3g-tiny. Every config is checked against sane bounds before anything is built (dd3g.checkpoint_config)."""
        default = pretrained_model_name_or_path is None
        path = shipped_folder("dd3g-tiny") if default else pretrained_model_name_or_path
        if _looks_local(path):
            folder = Path(os.path.expanduser(str(path)))
        else:
            folder = _download(cls, str(path), {k: kwargs[k] for k in HUB_DOWNLOAD_KWARGS if k in kwargs})
        _check_checkpoint_folder(folder, missing_hint("dd3g-tiny") if default else "")
        check_checkpoint_configs(folder)
        kwargs["use_safetensors"] = True  # also where a .bin lies beside weights of another name: never unpickled
        from diffusers.utils import logging as diffusers_logging

        bars = diffusers_logging.is_progress_bar_enabled()
        diffusers_logging.disable_progress_bar()  # a bar over a few components adds nothing, and would break one-line errors
        try:
            pipe = super().from_pretrained(folder, **kwargs)
        except CheckpointError:
            raise
        except (OSError, ValueError, KeyError, RuntimeError, TypeError, json.JSONDecodeError) as error:
            raise CheckpointError(f"could not load a DD3G checkpoint from {path}: {one_line(error)}") from error
        finally:
            if bars:
                diffusers_logging.enable_progress_bar()
        for component in ("student", "image_encoder", "frame_encoder", "prompt_encoder"):
            if getattr(pipe, component, None) is not None:
                _check_finite(getattr(pipe, component), component, path)
        problem = pipe.missing_parts() or pipe.schedule_mismatch()
        if problem:  # it loads but could not run: say so now, in one line, not at the first image
            raise CheckpointError(f"checkpoint {path} cannot run: {problem}; re-export it with training/distill.py --export")
        return pipe

    def fuse_qkv_projections(self) -> int:
        """For inference: the student's projections that read one tensor stacked into one matmul (q, k and v in
        self-attention; k and v in cross-attention; in a multi-view UNet phase 1, every block's projection of the
        shared context and time embedding), so a call runs fewer, wider matmuls for the same Gaussians
        (`dd3g.models.fused_projections`). Checkpoints saved afterwards are unchanged. Returns the attention layers fused."""
        self._drop_cuda_graphs()  # the stacked weights are new tensors
        return fuse_qkv_projections(self.student)

    def unfuse_qkv_projections(self) -> int:
        """Undo `fuse_qkv_projections` (needed before training the student); returns the layers unfused."""
        self._drop_cuda_graphs()
        return unfuse_qkv_projections(self.student)

    # ------------------------------------------------------------------ CUDA graphs
    _graphed_student: Optional[GraphedCall] = None
    _graph_hooks: tuple = ()
    _graph_device_dtype: Optional[tuple] = None  # (device, dtype), see _graph_target

    def enable_cuda_graphs(self, compile_mode: Optional[str] = "default", max_graphs: int = 8) -> None:
        """For latency on a GPU: the tokenizer and student (the encoders included) compiled with `compile_mode` and
        captured into one CUDA graph per batch shape, which each call replays (`dd3g.cuda_graphs.GraphedCall`). The
        host then launches one graph instead of hundreds of kernels. On one H200, bf16, batch 1, `base` with stacked
        projections (`fuse_qkv_projections()`): `generate_from_rgba` 15.4 ms without the input-view colour match and
        20.6 ms with it, against 40.3 and 82.8 ms eager (benchmarks/README.md; measured while every call still looked
        the device and dtype up, 10-14 ms of host work on a 2-core CPU, since done once per move). The first call at each new number of
        images or samples compiles and captures (about 90 s at `base`). Moving the pipeline (`to`), fusing or unfusing,
        or loading weights into a component drops the graphs; they are captured again at the next call."""
        if compile_mode not in PIPELINE_GRAPH_COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {PIPELINE_GRAPH_COMPILE_MODES}, got {compile_mode!r}: the models "
                             "copy small constants from the host in their forward (camera axes, the timestep), which a CUDA "
                             "graph cannot capture from eager code (torch.compile folds them in), and a mode with CUDA "
                             "graphs of its own cannot be captured inside one")
        device = self._execution_device
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need the pipeline on a CUDA device (pipe.to('cuda') first); it runs on {device}")
        parts = [m for m in (self.student, self.image_encoder, self.frame_encoder, self.prompt_encoder) if m is not None]
        if any(getattr(m, "_hf_hook", None) is not None for m in parts):
            raise ValueError("CUDA graphs cannot follow weights that CPU offload moves between calls: call "
                             "enable_cuda_graphs() on a pipeline without enable_model_cpu_offload()")
        if any(m.training for m in parts):
            raise ValueError("CUDA graphs are for inference: put the pipeline's models in eval mode first")
        self.disable_cuda_graphs()
        self._graph_device_dtype = None
        graphed = GraphedCall(self._student_tensors, compile_mode, max_graphs, state=parts)
        # weights loaded into any component replace tensors the graphs read (a fused model restacks its projections)
        self._graph_hooks = tuple(module.register_load_state_dict_post_hook(lambda *_: graphed.clear())
                                  for part in parts for module in part.modules())
        self._graphed_student = graphed

    def disable_cuda_graphs(self) -> None:
        """Undo `enable_cuda_graphs`: every call runs the models directly again, and the graphs' memory is freed."""
        for handle in self._graph_hooks:
            handle.remove()
        self._graph_hooks, self._graphed_student = (), None

    def _drop_cuda_graphs(self) -> None:
        self._graph_device_dtype = None
        if self._graphed_student is not None:
            self._graphed_student.clear()

    def _graph_target(self) -> tuple:
        """(device, dtype) the graphs run at, looked up at the first call after enabling or moving the pipeline."""
        if self._graph_device_dtype is None:
            device = self._execution_device
            if device.type != "cuda" or self.student.device.type != "cuda":
                raise ValueError(f"CUDA graphs are enabled but the pipeline runs on {device}: move it back to CUDA or "
                                 "call disable_cuda_graphs()")
            self._graph_device_dtype = (device, self.student.dtype)
        return self._graph_device_dtype

    def to(self, *args, **kwargs):
        self._drop_cuda_graphs()  # the graphs read the weights where they were
        return super().to(*args, **kwargs)

    def missing_parts(self) -> Optional[str]:
        """Why this pipeline's student cannot run with the encoders it carries, or None."""
        return self._input_builder(check=False).missing_parts()

    def schedule_mismatch(self) -> Optional[str]:
        """Why the registered scheduler (the teacher's DDIM) and the student disagree, or None: the student's
        phase 1 must run at the timestep where that schedule's sampling starts, the level its noise N is drawn for."""
        expected = first_timestep(self.scheduler.config)
        if int(self.student.config.phase1_timestep) != expected:
            return (f"its student's phase 1 runs at t = {self.student.config.phase1_timestep}, but its scheduler's sampling "
                    f"starts at t = {expected} (scheduler/ and student/ come from different teachers)")
        return None

    def _input_builder(self, check: bool = True) -> StudentInputBuilder:
        return StudentInputBuilder(self.student, self.image_encoder, self.view_layout, self.frame_encoder,
                                   self.prompt_encoder, check=check)

    # ------------------------------------------------------------------ inputs
    @property
    def view_layout(self) -> ViewLayout:
        return ViewLayout(num_views=self.student.config.num_views, radius=self.config.radius, fov_deg=self.config.fov_deg)

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return PreprocessConfig(size=self.config.image_size, foreground_ratio=self.config.foreground_ratio,
                                detail_size=int(self.config.get("photo_surface_size", 0)))

    def prepare_image(self, image) -> PreprocessedImage:
        """Validate and recentre one input (path, bytes, PIL, numpy, or an already preprocessed image)."""
        if isinstance(image, PreprocessedImage):
            return image
        return preprocess(image, self.preprocess_config)

    def draw_noise(self, count: int, generator=None, seeds: Optional[Sequence[int]] = None) -> Tensor:
        """`count` noises N [count, V, C, H, W], drawn on the CPU (the same values on every device).

        With `seeds`, sample i's noise comes from its own generator seeded with seeds[i], so a sample does not
        depend on its batch position; with a generator (or a list of them), samples are drawn in order.
        """
        shape = self.student.noise_shape
        if seeds is not None:
            return noise_from_seeds(shape, seeds)
        if isinstance(generator, (list, tuple)):
            if len(generator) != count:
                raise ValueError(f"got {len(generator)} generators for {count} samples")
            gens = list(generator)
        else:
            gens = [generator] * count
        for gen in gens:
            if gen is not None and gen.device.type != "cpu":
                raise ValueError("pass a CPU torch.Generator: noise is drawn on the CPU so results match across devices")
        return torch.stack([torch.randn(shape, generator=gen) for gen in gens])

    # ------------------------------------------------------------------ the forward pass
    @torch.no_grad()
    def generate(self, images: Sequence[PreprocessedImage], noise: Tensor, sample_images: Sequence[int], elevation_deg=None) -> Gaussians:
        """Run the student for noise[i] with image images[sample_images[i]].  noise [S, V, C, H, W]."""
        rgba = torch.stack([img.rgba for img in images])  # [I, 4, S, S]
        size = int(self.config.get("photo_surface_size", 0))
        detail = None
        if size and all(img.detail_rgba is not None and img.detail_rgba.shape[-1] == size for img in images):
            detail = torch.stack([img.detail_rgba for img in images])  # [I, 4, D, D]
        return self.generate_from_rgba(rgba, noise, sample_images, elevation_deg, detail)

    @torch.no_grad()
    def generate_from_rgba(self, rgba: Tensor, noise: Tensor, sample_images: Sequence[int], elevation_deg=None,
                           detail_rgba: Optional[Tensor] = None) -> Gaussians:
        """The student's forward pass on images as they are (no recentring): rgba [I, 4, S, S] straight alpha in
        [0, 1], noise [S', V, C, H, W]; elevation_deg: the input views' elevation, one number or [S'] (default:
        the pipeline's). Evaluation feeds training-distribution images here. detail_rgba [I, 4, D, D]: the same
        images at the photo surface's side (default: rgba itself)."""
        # diffusers' lookups walk every module (~10 ms a call on a 2-core CPU): with graphs, done once per move
        device, dtype = self._graph_target() if self._graphed_student is not None else (self._execution_device, self.student.dtype)
        count = noise.shape[0]
        index = torch.as_tensor(list(sample_images), dtype=torch.long)  # [S'] each sample's image
        elevation = float(self.config.elevation_deg) if elevation_deg is None else elevation_deg
        cameras = self._input_builder().cameras(elevation, count)
        if self._graphed_student is None:
            student_fields = self._student_tensors(rgba, index, noise.to(device, dtype), cameras.viewmats.to(device),
                                                   cameras.Ks.to(device))
        else:
            student_fields = self._graphed_student(rgba.to(device), index.to(device), noise.to(device, dtype),
                                                   cameras.viewmats.to(device), cameras.Ks.to(device))
        student_dtype = student_fields[0].dtype
        gaussians = Gaussians(*student_fields).to(dtype=torch.float32)  # the steps below render: float32, like the renderer
        elevations = torch.as_tensor(elevation, dtype=torch.float32).expand(count)  # [S']
        if self.config.get("match_input_view", True):
            # The photo is the one view whose truth is known: the Gaussians it shows take its colours and, where
            # they let the background through, its coverage (dd3g.input_view).
            size = rgba.shape[-1]
            gaussians = match_input_view(gaussians, rgba[index.cpu()], self.view_layout.input_camera(size, size, elevations))
        if int(self.config.get("photo_surface_size", 0)):
            # ... and its pixels, as sharp as it is, laid on the student's surface (dd3g.input_view.photo_surface).
            photo = (rgba if detail_rgba is None else detail_rgba)[index.cpu()]  # [S', 4, D, D]
            size = photo.shape[-1]
            gaussians = photo_surface(gaussians, photo, self.view_layout.input_camera(size, size, elevations))
        return gaussians.to(dtype=student_dtype)

    def _student_tensors(self, rgba: Tensor, index: Tensor, noise: Tensor, viewmats: Tensor, Ks: Tensor) -> tuple:
        """The forward pass's model part, tensors in and out, as a CUDA graph captures it: rgba [I, 4, S, S], index [S']
        (each sample's image), noise [S', V, C, H, W], viewmats [S', V + 1, 4, 4], Ks [S', V + 1, 3, 3] (the output
        views, then the input view) -> the student's Gaussians as a tuple in `Gaussians`' field order."""
        device, dtype = noise.device, noise.dtype
        builder = self._input_builder(check=False)  # checked when the pipeline was loaded or built
        inputs = builder.images(rgba)  # tokens [I, L, D], input frame [I, C, h, w], phase-1 tokens [I, T, E] or None
        index = index.to(inputs.image_tokens.device)
        size = builder.view_size
        cameras = Cameras(viewmats, Ks, size, size)
        phase1_tokens = None if inputs.phase1_tokens is None else inputs.phase1_tokens[index].to(device, dtype)
        gaussians = self.student(noise, inputs.input_frame[index].to(device, dtype), cameras,
                                 inputs.image_tokens[index].to(device, dtype), phase1_tokens).gaussians
        return tuple(getattr(gaussians, field.name) for field in dataclasses.fields(gaussians))

    def __call__(
        self,
        image: Union[Any, Sequence[Any]],
        generator: Union[torch.Generator, List[torch.Generator], None] = None,
        num_samples: int = 1,
        seeds: Optional[Sequence[int]] = None,
        output_type: str = "gaussians",
        return_dict: bool = True,
        elevation_deg: Optional[float] = None,
    ):
        """Image(s) -> Gaussians. `image`: a path, bytes, PIL image, numpy array (or a list of them).

        num_samples noises per image (several plausible objects). `seeds` (one per output) or `generator`
        fixes the noise; both draw on the CPU. Output order is image-major. elevation_deg: the camera
        elevation the photo was taken at, in degrees (default: the pipeline's, 0 = level).
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if elevation_deg is not None and not -90.0 < float(elevation_deg) < 90.0:
            raise ValueError(f"elevation_deg must be between -90 and 90 degrees, got {elevation_deg}")
        inputs = list(image) if isinstance(image, (list, tuple)) else [image]
        if not inputs:
            raise ValueError("no image given")
        prepared = [self.prepare_image(item) for item in inputs]
        count = len(prepared) * num_samples
        if seeds is not None and len(seeds) != count:
            raise ValueError(f"got {len(seeds)} seeds for {count} outputs ({len(prepared)} images x {num_samples} samples)")
        noise = self.draw_noise(count, generator, seeds)
        sample_images = [i for i in range(len(prepared)) for _ in range(num_samples)]
        gaussians = self.generate(prepared, noise, sample_images, elevation_deg).to(dtype=torch.float32)
        result = self._format(gaussians, output_type)
        seeds_out = [int(s) for s in seeds] if seeds is not None else None
        if not return_dict:
            return (result,)
        return DD3GPipelineOutput(gaussians=result, seeds=seeds_out)

    def interpolate(self, image, seed_a: int, seed_b: int, weights: Sequence[float], output_type: str = "gaussians", return_dict: bool = True):
        """Objects along the slerp path between the noises of seed_a and seed_b (weights in [0, 1])."""
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        weights = [float(w) for w in weights]
        if not weights or any(not (0.0 <= w <= 1.0) for w in weights):
            raise ValueError("weights must be a non-empty list of numbers in [0, 1]")
        prepared = self.prepare_image(image)
        noise_a, noise_b = self.draw_noise(2, seeds=[seed_a, seed_b])
        noise = torch.stack([slerp(noise_a, noise_b, w) for w in weights])
        gaussians = self.generate([prepared], noise, [0] * len(weights)).to(dtype=torch.float32)
        result = self._format(gaussians, output_type)
        return DD3GPipelineOutput(gaussians=result) if return_dict else (result,)

    @staticmethod
    def _format(gaussians: Gaussians, output_type: str):
        if output_type == "gaussians":
            return gaussians.detach().to("cpu")
        singles = [gaussians[i].detach().to("cpu") for i in range(gaussians.batch_shape[0])]
        if output_type == "np":
            return [g.to_numpy() for g in singles]
        return [g.to_ply_bytes() for g in singles]


_HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")


def _looks_local(path) -> bool:
    """A folder on disk (or meant to be one), as opposed to a Hub repo id such as "owner/name".

    "owner/name" and "runs/x" have the same shape: a string is local when it exists, looks like a path
    (starts with . / ~ or \\, holds a backslash, more or fewer than one /, ends in /) or when its first part
    is a local folder (runs/ exists, so runs/x is a missing folder, not a Hub repo).
    """
    text = str(path)
    if isinstance(path, Path) or Path(os.path.expanduser(text)).exists():
        return True
    if text.startswith((".", "/", "~", "\\")) or "\\" in text or text.count("/") != 1 or os.sep != "/" and os.sep in text:
        return True
    owner, name = text.split("/")
    if Path(owner).exists():
        return True
    return not (_HUB_NAME.fullmatch(owner) and _HUB_NAME.fullmatch(name)) or ".." in text


def _download(cls, repo_id: str, hub_kwargs: dict) -> Path:
    """The Hub repo's files in the local cache (safetensors only), so they are checked like a folder."""
    try:
        return Path(cls.download(repo_id, use_safetensors=True, **hub_kwargs))
    except Exception as error:  # noqa: BLE001 - offline, missing repo, no access, a pickled-only repo...
        raise CheckpointError(
            f"could not load a DD3G checkpoint from {repo_id}: no local folder of that name, and the Hub gave "
            f"{one_line(error)}"
        ) from error


def _check_checkpoint_folder(path: Path, hint: str = "") -> None:
    """`hint`: what to do when the folder is missing (for the default checkpoint: how to get the shipped one)."""
    if not path.exists():
        raise CheckpointError(f"checkpoint folder {path} does not exist" + (f" ({hint})" if hint else ""))
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} is not a folder (expected a save_pretrained folder with model_index.json)")
    index = path / "model_index.json"
    if not index.is_file():
        raise CheckpointError(f"{path} is not a DD3G checkpoint: model_index.json is missing")
    config = read_config(index)
    if "_class_name" not in config:
        raise CheckpointError(f"{index} names no pipeline class (no _class_name): not a saved DD3GPipeline folder")
    if config.get("_class_name") != DD3GPipeline.__name__:
        raise CheckpointError(f"{path} holds a {config.get('_class_name')!r} pipeline, not a DD3GPipeline")
    listed = [name for name in ("frame_encoder", "prompt_encoder") if isinstance(config.get(name), list) and config[name][0]]
    for component in ("student", "image_encoder", "scheduler", *listed):
        folder = path / component
        if not folder.is_dir():
            raise CheckpointError(f"{path} is incomplete: the {component}/ folder is missing")
        if component != "scheduler" and not any(folder.glob("*.safetensors")):
            raise CheckpointError(f"{folder} has no .safetensors weights (pickled weights are never loaded)")


def _check_finite(model: torch.nn.Module, name: str, path) -> None:
    tensors = {k: t for k, t in model.state_dict().items() if t.is_floating_point()}
    # One float64 sum per tensor is finite iff every entry is (and cannot overflow for real weights).
    if torch.isfinite(torch.stack([t.double().sum() for t in tensors.values()])).all():
        return
    for param_name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(f"checkpoint {path}: {name}.{param_name} has {bad} non-finite values (NaN/inf)")
