"""ImageDream as a DD3G teacher (the `base` scale of docs/design.md section 2), loaded from a local folder.

ImageDream (Wang & Shi, arXiv 2312.02201) is an image-prompt multi-view diffusion model built on
SD-2.1-base: 4 views of 256 x 256 RGB, latents 4 x 32 x 32 per view, plus the input image as a 5th
"pixel-controller" frame. This module loads its published diffusers layout and drives it through the
shared `MultiViewTeacher` interface (deterministic DDIM simulation, SDS-form verification).

Pointing it at the real weights
-------------------------------
Nothing here downloads. On a machine with network access::

    huggingface-cli download ashawkey/imagedream-ipmv-diffusers --local-dir DIR \\
        --include "*.json" "*.txt" "*.safetensors"

(the weights are fp16 safetensors; the repository's `*.py` files are never needed nor executed), copy DIR to
where the code runs, then::

    teacher = ImageDreamTeacher.from_pretrained(DIR, device="cuda", dtype=torch.float16)
    result = teacher.simulate(images, seeds=[0])   # images [B, 4, S, S] RGBA in [0, 1]

The folder must hold `model_index.json` and the parts `unet/`, `vae/`, `text_encoder/`, `tokenizer/`,
`image_encoder/`, `feature_extractor/`, `scheduler/`. Each part is loaded here, from safetensors only (no
`trust_remote_code`, no unpickling); a missing part or a pickle-only part gives an error naming it.

What each part is
-----------------
* `unet`: ImageDream's own `MultiViewUNetModel` (not a diffusers class). `ImageDreamUNet` (dd3g.models.imagedream_unet) rebuilds it
  with the exact module tree of the published code (bytedance/ImageDream `openaimodel.py`, mirrored by
  ashawkey/mvdream_diffusers `mv_unet.py`), so the published state dict loads with `strict=True`. Its
  `config.json` holds the fields of ImageDream's `sd_v2_base_ipmv.yaml` (`image_size`, `in_channels`,
  `out_channels`, `model_channels`, `attention_resolutions`, `num_res_blocks`, `channel_mult`,
  `num_head_channels`, `transformer_depth`, `context_dim`, `use_checkpoint`, `camera_dim`, `ip_dim`). The
  image-prompt resampler's sizes are hard-coded in the published code (CLIP width 1280, 4 layers, 12 heads
  of 64); here they are read off the weight shapes instead, so a scaled-down checkpoint loads too.
* `vae`: diffusers `AutoencoderKL` (SD-2.1 VAE, `scaling_factor` 0.18215 from its config). Asked for
  float16, it stays float32 when its config sets `force_upcast` (as diffusers' pipelines keep it).
* `text_encoder` + `tokenizer`: transformers `CLIPTextModel` (OpenCLIP ViT-H text tower, penultimate layer,
  as SD 2.1 ships it) + `CLIPTokenizer`; its last hidden state is the 77-token text context.
* `image_encoder` + `feature_extractor`: transformers `CLIPVisionModel` (OpenCLIP ViT-H/14) + the
  `CLIPImageProcessor` settings; the image prompt is the *penultimate* layer's 257 tokens, turned into
  `ip_dim` (16) tokens by the UNet's resampler and attended through `to_k_ip` / `to_v_ip`.
* `scheduler`: DDIM settings (scaled-linear betas 0.00085..0.012, 1000 steps, epsilon prediction).

Conventions and choices (read these before trusting numbers)
------------------------------------------------------------
* Prompt: empty (`prompt=""`, as LGM uses ImageDream). Negative prompt of the unconditional CFG branch:
  ImageDream's own demo sentence (`IMAGEDREAM_NEGATIVE_PROMPT`); pass `negative_prompt=""` to get the
  diffusers port's / LGM's behaviour instead.
* Unconditional branch, as ImageDream's samplers build it: negative-prompt text tokens, an all-zero CLIP
  image embedding (still passed through the resampler, so its 16 tokens are *not* zero) and an all-zero
  input-frame latent.
* Input image: ImageDream is RGB. RGBA inputs and renders are composited on white first (what LGM feeds
  it), then resized to the teacher resolution. The input-frame latent is the VAE posterior *mean* (the
  published samplers draw one sample from it; the mean keeps (N, C, II) -> OI a function). The CLIP
  preprocessing (shortest-edge bicubic resize, centre crop, mean/std) runs in torch on the float image, so
  it skips the processor's uint8 rounding. Both go through `dd3g.student_inputs` and the encoders of
  `dd3g.models.input_encoders` (`frame_encoder`, `prompt_encoder`, sharing this teacher's VAE and CLIP modules),
  the code a distilled student's pipeline runs too.
* Timesteps: ImageDream gives the clean input frame the *same* timestep as the noisy views (its DDIM
  sampler and the diffusers port pass one t for all 5 frames). `denoise` therefore overwrites the shared
  machinery's t = 0 for the last frame with the views' t (`input_frame_timestep="views"`); set
  `input_frame_timestep="given"` to pass the per-frame timesteps unchanged.
* Cameras: our OpenCV world-to-camera matrices are converted at the edge to ImageDream's vectors
  (`imagedream_camera_vectors`): camera-to-world with OpenGL camera axes, camera centre on the unit
  sphere, world turned to Blender's Z-up (`flip_yz @ c2w`), flattened row-major; the input frame gets
  ImageDream's all-zero camera. Our orbit convention (azimuth 0 on +Z, 90 on +X, +Y up) is MVDream's, so
  the canonical layout gives exactly ImageDream's `get_camera(4, elevation, extra_view=True)`.
* Layout: ImageDream never sees intrinsics or the orbit radius (it normalises them away). Renders of the
  student must still frame the object as ImageDream does; the default layout uses LGM's values for
  ImageDream/MVDream outputs (orbit radius 1.5, vertical fov 49.1 degrees). Override with `layout=`.
* Alpha: ImageDream has no alpha channel. `decode` estimates it from the distance to the white background:
  d = 1 - min over RGB, smoothed by a 3x3 box filter, mapped to alpha by a linear ramp between
  `alpha_thresholds` (default 0.02 .. 0.08, i.e. ~5/255 .. 20/255); the colour is un-composited from white
  (c = 1 - (1 - rgb) / alpha), so compositing the RGBA on white gives the decoded image back wherever
  alpha > 0. White or near-white object parts come out transparent: that is the limitation.
* Sampler: the shared machinery's DDIM (eta 0, *trailing* spacing, first step at t = 999). ImageDream's
  and the diffusers port's samplers use *leading* spacing with `steps_offset` 1 (first step at t = 967 for
  30 steps): trajectories differ from theirs though the model and guidance are the same.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cameras import Cameras, ViewLayout
from ..models.imagedream_unet import ImageDreamUNet, imagedream_camera_vectors
from ..models.input_encoders import ImagePromptEncoder, LatentFrameEncoder
from ..student_inputs import encode_input_frame, image_prompt_tokens
from .base import MultiViewTeacher, TeacherCondition

__all__ = ["ImageDreamTeacher", "ImageDreamUNet", "imagedream_camera_vectors", "load_imagedream_unet"]

#: ImageDream's demo negative prompt (scripts/demo.py), the unconditional branch's text by default.
IMAGEDREAM_NEGATIVE_PROMPT = (
    "uniform low no texture ugly, boring, bad anatomy, blurry, pixelated,  obscure, unnatural colors, "
    "poor lighting, dull, and unclear."
)

#: LGM's camera settings for ImageDream/MVDream outputs (core/options.py: cam_radius 1.5, fovy 49.1).
IMAGEDREAM_LAYOUT = ViewLayout(num_views=4, radius=1.5, fov_deg=49.1)

#: The parts of the published layout and the classes model_index.json may name for them.
PARTS = {
    "unet": ("MultiViewUNetModel",),
    "vae": ("AutoencoderKL",),
    "text_encoder": ("CLIPTextModel",),
    "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"),
    "image_encoder": ("CLIPVisionModel", "CLIPVisionModelWithProjection"),
    "feature_extractor": ("CLIPImageProcessor", "CLIPFeatureExtractor"),
    "scheduler": ("DDIMScheduler",),
}

# Weight-file stems of each part: diffusers models use diffusion_pytorch_model, transformers models model.
_WEIGHT_STEMS = {
    "unet": "diffusion_pytorch_model",
    "vae": "diffusion_pytorch_model",
    "text_encoder": "model",
    "image_encoder": "model",
}
_PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")


# ---------------------------------------------------------------------------------------------------
# Loading the published folder
# ---------------------------------------------------------------------------------------------------


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} is missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{what}: {path} is not valid JSON ({error})") from None


def _safetensors_files(folder: Path, part: str) -> tuple[list[Path], Optional[str]]:
    """The part's safetensors weight files and their variant ("fp16" or None); a clear error otherwise."""
    stem = _WEIGHT_STEMS[part]
    for variant in (None, "fp16"):
        name = stem + (f".{variant}" if variant else "") + ".safetensors"
        if (folder / name).is_file():
            return [folder / name], variant
        index = folder / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set(_read_json(index, f"{part} weight index").get("weight_map", {}).values()))
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing or not shards:
                raise FileNotFoundError(
                    f"part {part!r}: shards {missing or '(none listed)'} of {index.name} are missing in {folder}"
                )
            return [folder / s for s in shards], variant
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(
            f"part {part!r}: only pickle weights {pickles} in {folder}; they are never unpickled here. "
            f"Download the safetensors files ({stem}.safetensors) or convert them elsewhere."
        )
    raise FileNotFoundError(f"part {part!r}: no {stem}.safetensors (or fp16 variant / sharded index) in {folder}")


def _load_safetensors(files: list[Path]) -> dict:
    from safetensors.torch import load_file

    state = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


def _resampler_sizes(state: dict) -> dict:
    """The resampler constants the published config leaves out, read off the weight shapes."""
    if "image_embed.proj_in.weight" not in state:
        return {}
    depth = len({key.split(".")[2] for key in state if key.startswith("image_embed.layers.")})
    inner = state["image_embed.layers.0.0.to_q.weight"].shape[0] if depth else 12 * 64
    dim_head = 64 if inner % 64 == 0 else inner
    return dict(
        ip_embedding_dim=int(state["image_embed.proj_in.weight"].shape[1]),
        ip_resampler_depth=depth,
        ip_resampler_heads=inner // dim_head,
        ip_resampler_dim_head=dim_head,
    )


def load_imagedream_unet(folder: Union[str, Path], dtype: torch.dtype = torch.float32) -> ImageDreamUNet:
    """unet/ of the published layout -> ImageDreamUNet with every weight loaded (strict)."""
    folder = Path(folder)
    config = _read_json(folder / "config.json", "part 'unet'")
    files, _ = _safetensors_files(folder, "unet")
    state = _load_safetensors(files)
    with torch.device("meta"):
        unet = ImageDreamUNet.from_published_config(config, **_resampler_sizes(state))
    expected = unet.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"part 'unet': the weights do not match ImageDream's MultiViewUNetModel built from config.json: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    bad = [k for k in expected if expected[k].shape != state[k].shape]
    if bad:
        raise ValueError(
            f"part 'unet': shape mismatch for {bad[:3]} (e.g. {bad[0]}: checkpoint "
            f"{tuple(state[bad[0]].shape)} vs model {tuple(expected[bad[0]].shape)})"
        )
    unet.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    return unet.eval().requires_grad_(False)


def _clip_preprocess_settings(config: dict) -> dict:
    """CLIPImageProcessor's preprocessor_config.json -> resize / crop sizes, mean and std."""

    def side(value, key):
        if isinstance(value, dict):
            return int(value.get(key) or value.get("height"))
        return int(value)

    return dict(
        resize=side(config.get("size", 224), "shortest_edge") if config.get("do_resize", True) else None,
        crop=side(config.get("crop_size", 224), "height") if config.get("do_center_crop", True) else None,
        mean=(
            config.get("image_mean", [0.48145466, 0.4578275, 0.40821073]) if config.get("do_normalize", True) else None
        ),
        std=config.get("image_std", [0.26862954, 0.26130258, 0.27577711]),
    )


def _vae_dtype(dtype: torch.dtype, vae_config) -> torch.dtype:
    """The VAE stays float32 under float16 when its config says `force_upcast` (as diffusers pipelines do)."""
    force = (
        vae_config.get("force_upcast", False)
        if isinstance(vae_config, dict)
        else getattr(vae_config, "force_upcast", False)
    )
    return torch.float32 if dtype == torch.float16 and force else dtype


def composite_on_white(images: Tensor) -> Tensor:
    """RGBA [..., 4, H, W] straight alpha in [0, 1] -> RGB [..., 3, H, W] on white (RGB passes through)."""
    if images.shape[-3] == 3:
        return images
    rgb, alpha = images[..., :3, :, :], images[..., 3:4, :, :]
    return rgb * alpha + (1.0 - alpha)


def alpha_from_white(rgb: Tensor, thresholds: tuple = (0.02, 0.08)) -> Tensor:
    """RGB on white [N, 3, H, W] in [0, 1] -> straight-alpha RGBA [N, 4, H, W] (see the module docstring)."""
    distance = 1.0 - rgb.amin(dim=1, keepdim=True)  # [N, 1, H, W] how far from white
    distance = F.avg_pool2d(distance, 3, stride=1, padding=1, count_include_pad=False)  # smoothing
    low, high = thresholds
    alpha = ((distance - low) / (high - low)).clamp(0.0, 1.0)  # [N, 1, H, W]
    colour = (1.0 - (1.0 - rgb) / alpha.clamp_min(1e-3)).clamp(0.0, 1.0)  # un-composite from white
    colour = torch.where(alpha > 0, colour, rgb)
    return torch.cat([colour, alpha], dim=1)


class ImageDreamTeacher(MultiViewTeacher):
    """ImageDream (pixel controller, `sd-v2.1-base-4view-ipmv`) behind the `MultiViewTeacher` interface."""

    teacher_id = "imagedream-ipmv"
    sample_space = "sd-vae"
    default_guidance_scale = 5.0
    default_num_steps = 30

    def __init__(
        self,
        unet: ImageDreamUNet,
        vae,
        text_encoder,
        tokenizer,
        image_encoder,
        image_processor_config: dict,
        scheduler_config: dict,
        prompt: str = "",
        negative_prompt: str = IMAGEDREAM_NEGATIVE_PROMPT,
        layout: Optional[ViewLayout] = None,
        input_frame_timestep: str = "views",
        alpha_thresholds: tuple = (0.02, 0.08),
    ):
        if input_frame_timestep not in ("views", "given"):
            raise ValueError(f"input_frame_timestep must be 'views' or 'given', got {input_frame_timestep!r}")
        if unet.config.ip_dim <= 0:
            raise ValueError("this UNet has no image-prompt adapter (ip_dim = 0): it is MVDream, not ImageDream")
        self.unet, self.vae = unet, vae
        self.text_encoder, self.tokenizer, self.image_encoder = text_encoder, tokenizer, image_encoder
        self.clip_settings = _clip_preprocess_settings(image_processor_config)
        # The student's input builders (dd3g.student_inputs) run these same modules, shared, not copied.
        self.prompt_encoder = ImagePromptEncoder.wrapping(image_encoder, **self.clip_settings)
        self._scheduler_config = dict(scheduler_config)
        self.prompt, self.negative_prompt = prompt, negative_prompt
        self._layout = layout or IMAGEDREAM_LAYOUT
        self.input_frame_timestep = input_frame_timestep
        self.alpha_thresholds = tuple(alpha_thresholds)
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.frame_encoder = LatentFrameEncoder.wrapping(vae, unet.latent_size * self.vae_scale)
        self._text_cache: dict = {}
        if image_encoder.config.hidden_size != unet.config.ip_embedding_dim:
            raise ValueError(
                f"image_encoder width {image_encoder.config.hidden_size} != the UNet resampler's input "
                f"width {unet.config.ip_embedding_dim}"
            )
        if text_encoder.config.hidden_size != unet.config.context_dim:
            raise ValueError(
                f"text_encoder width {text_encoder.config.hidden_size} != unet context_dim {unet.config.context_dim}"
            )

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        path: Union[str, Path],
        device: Union[str, torch.device] = "cpu",
        dtype: torch.dtype = torch.float32,
        **options,
    ) -> "ImageDreamTeacher":
        """Load the published diffusers layout (ashawkey/imagedream-ipmv-diffusers) from a local folder.

        `options` go to the constructor (prompt, negative_prompt, layout, input_frame_timestep,
        alpha_thresholds). Nothing is downloaded; only safetensors weights are read.
        """
        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(
                f"ImageDream folder {root} does not exist (download it first; see dd3g.teachers.imagedream)"
            )
        index = _read_json(root / "model_index.json", "ImageDream folder")
        for part, classes in PARTS.items():
            entry = index.get(part)
            if not entry or not isinstance(entry, (list, tuple)) or entry[-1] is None:
                raise ValueError(f"model_index.json in {root} lists no {part!r} part; ImageDream needs {sorted(PARTS)}")
            if entry[-1] not in classes:
                raise ValueError(f"model_index.json: part {part!r} is {entry[-1]!r}, expected one of {classes}")
            if not (root / part).is_dir():
                raise FileNotFoundError(
                    f"part {part!r} is missing: no folder {root / part} (model_index.json lists it as {entry})"
                )
        # Check every weight file before loading anything.
        variants = {part: _safetensors_files(root / part, part)[1] for part in _WEIGHT_STEMS}

        from diffusers import AutoencoderKL
        from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModel, CLIPVisionModelWithProjection

        common = dict(use_safetensors=True, local_files_only=True)
        unet = load_imagedream_unet(root / "unet", dtype)
        vae_config = _read_json(root / "vae" / "config.json", "part 'vae'")
        vae = AutoencoderKL.from_pretrained(
            root / "vae", torch_dtype=_vae_dtype(dtype, vae_config), variant=variants["vae"], **common
        )
        text_encoder = CLIPTextModel.from_pretrained(
            root / "text_encoder", dtype=dtype, variant=variants["text_encoder"], **common
        )
        vision_class = (
            CLIPVisionModelWithProjection
            if index["image_encoder"][-1] == "CLIPVisionModelWithProjection"
            else CLIPVisionModel
        )
        image_encoder = vision_class.from_pretrained(
            root / "image_encoder", dtype=dtype, variant=variants["image_encoder"], **common
        )
        for name in ("vocab.json", "merges.txt"):
            if not (root / "tokenizer" / name).is_file():
                raise FileNotFoundError(f"part 'tokenizer': {root / 'tokenizer' / name} is missing")
        tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
        processor = _read_json(root / "feature_extractor" / "preprocessor_config.json", "part 'feature_extractor'")
        scheduler = _read_json(root / "scheduler" / "scheduler_config.json", "part 'scheduler'")
        if scheduler.get("prediction_type", "epsilon") != "epsilon":
            raise ValueError(
                f"scheduler: ImageDream predicts epsilon, config says {scheduler.get('prediction_type')!r}"
            )
        teacher = cls(
            unet,
            vae.eval().requires_grad_(False),
            text_encoder.eval().requires_grad_(False),
            tokenizer,
            image_encoder.eval().requires_grad_(False),
            processor,
            scheduler,
            **options,
        )
        return teacher.to(device)

    def to(self, device=None, dtype=None) -> "ImageDreamTeacher":
        for module in (self.unet, self.text_encoder, self.image_encoder):
            module.to(device) if dtype is None else module.to(device, dtype)
        self.vae.to(device) if dtype is None else self.vae.to(device, _vae_dtype(dtype, self.vae.config))
        self._text_cache.clear()
        return self

    # ------------------------------------------------------------------ backend hooks
    @property
    def layout(self) -> ViewLayout:
        return self._layout

    @property
    def noise_shape(self) -> tuple:
        size = self.unet.latent_size
        return (self._layout.num_views, int(self.unet.config.in_channels), size, size)

    @property
    def image_size(self) -> int:
        return self.unet.latent_size * self.vae_scale

    @property
    def scheduler_config(self) -> dict:
        return self._scheduler_config

    @property
    def device(self) -> torch.device:
        return self.unet.out[2].weight.device

    def _text_context(self) -> tuple[Tensor, Tensor]:
        """(prompt, negative prompt) text tokens, each [1, 77, context_dim], cached per device and dtype."""
        key = (self.device, self.unet.dtype)
        if key not in self._text_cache:
            embeds = []
            for text in (self.prompt, self.negative_prompt):
                ids = self.tokenizer(
                    text,
                    padding="max_length",
                    max_length=self.tokenizer.model_max_length,
                    truncation=True,
                    return_tensors="pt",
                ).input_ids
                with torch.no_grad():
                    embeds.append(self.text_encoder(ids.to(self.device))[0].to(self.unet.dtype))
            self._text_cache[key] = tuple(embeds)
        return self._text_cache[key]

    def prompt_context(self) -> Tensor:
        """The prompt's text tokens [1, 77, context_dim] of the conditional branch (what a student's phase 1 keeps)."""
        return self._text_context()[0]

    def _clip_pixels(self, rgb: Tensor) -> Tensor:
        """RGB [B, 3, H, W] in [0, 1] -> CLIP pixel values (shortest-edge resize, centre crop, normalise)."""
        return self.prompt_encoder.pixels(rgb).to(self.image_encoder.dtype)

    @torch.no_grad()
    def condition(self, images: Tensor) -> TeacherCondition:
        """images [B, 4, S, S] RGBA -> context [B, 77 + ip_dim, D] (text + image-prompt tokens) and the input latent."""
        images = images.to(self.device)
        b = images.shape[0]
        clip_tokens = image_prompt_tokens(images, self.prompt_encoder)  # [B, T, E] CLIP's penultimate layer
        ip_tokens = self.unet.image_prompt_tokens(clip_tokens)  # [B, ip_dim, D]
        null_ip_tokens = self.unet.image_prompt_tokens(torch.zeros_like(clip_tokens))  # [B, ip_dim, D]
        text, negative = self._text_context()  # [1, 77, D] each
        context = torch.cat([text.expand(b, -1, -1), ip_tokens], dim=1)  # [B, 77 + ip_dim, D]
        null_context = torch.cat([negative.expand(b, -1, -1), null_ip_tokens], dim=1)
        input_frame = self.encode(images)  # [B, 4, h, w]
        return TeacherCondition(context, input_frame, null_context, torch.zeros_like(input_frame))

    def encode(self, images: Tensor) -> Tensor:
        """RGBA [..., 4, S, S] in [0, 1] -> scaled VAE latents [..., 4, h, w] (posterior mean), differentiable."""
        return encode_input_frame(images, self.sample_space, self.unet.latent_size, self.frame_encoder)

    def decode(self, samples: Tensor) -> Tensor:
        """Scaled latents [..., 4, h, w] -> RGBA [..., 4, S, S] in [0, 1] (alpha estimated from the white background)."""
        lead = samples.shape[:-3]
        z = samples.reshape(-1, *samples.shape[-3:]).to(self.device, self.vae.dtype) / self.scaling_factor
        rgb = (self.vae.decode(z).sample.float() / 2 + 0.5).clamp(0, 1)  # [N, 3, S, S]
        rgba = alpha_from_white(rgb, self.alpha_thresholds)
        return rgba.reshape(*lead, *rgba.shape[1:])

    def denoise(self, frames: Tensor, timesteps: Tensor, cameras: Cameras, context: Tensor) -> Tensor:
        """frames [B, V+1, 4, h, w] (input latent last), timesteps [B, V+1] -> predicted noise [B, V+1, 4, h, w]."""
        timesteps = timesteps.to(frames.device).clone()
        if self.input_frame_timestep == "views":
            timesteps[:, -1] = timesteps[:, 0]  # ImageDream: one t for all frames, the clean input frame included
        camera = imagedream_camera_vectors(cameras.to(frames.device))  # [B, V+1, 16]
        camera[:, -1] = 0.0  # ImageDream's extra (input) view has an all-zero camera
        return self.unet(frames, timesteps, camera, context).float()
