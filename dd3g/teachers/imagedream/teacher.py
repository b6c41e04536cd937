"""`ImageDreamTeacher`: ImageDream behind the `MultiViewTeacher` interface (the package docstring says how)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor

from ...cameras import Cameras, ViewLayout
from ...models.imagedream_unet import ImageDreamUNet, imagedream_camera_vectors
from ...models.input_encoders import ImagePromptEncoder, LatentFrameEncoder
from ...student_inputs import encode_input_frame, image_prompt_tokens
from ..base import MultiViewTeacher, TeacherCondition
from .checkpoint import PARTS, WEIGHT_STEMS, clip_preprocess_settings, load_imagedream_unet, read_json, safetensors_files, vae_dtype
from .alpha import alpha_from_white

#: ImageDream's demo negative prompt (scripts/demo.py), the unconditional branch's text by default.
IMAGEDREAM_NEGATIVE_PROMPT = (
    "uniform low no texture ugly, boring, bad anatomy, blurry, pixelated,  obscure, unnatural colors, "
    "poor lighting, dull, and unclear."
)

#: LGM's camera settings for ImageDream/MVDream outputs (core/options.py: cam_radius 1.5, fovy 49.1).
IMAGEDREAM_LAYOUT = ViewLayout(num_views=4, radius=1.5, fov_deg=49.1)


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
        self.clip_settings = clip_preprocess_settings(image_processor_config)
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
        index = read_json(root / "model_index.json", "ImageDream folder")
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
        variants = {part: safetensors_files(root / part, part)[1] for part in WEIGHT_STEMS}

        from diffusers import AutoencoderKL
        from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModel, CLIPVisionModelWithProjection

        common = dict(use_safetensors=True, local_files_only=True)
        unet = load_imagedream_unet(root / "unet", dtype)
        vae_config = read_json(root / "vae" / "config.json", "part 'vae'")
        vae = AutoencoderKL.from_pretrained(
            root / "vae", torch_dtype=vae_dtype(dtype, vae_config), variant=variants["vae"], **common
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
        processor = read_json(root / "feature_extractor" / "preprocessor_config.json", "part 'feature_extractor'")
        scheduler = read_json(root / "scheduler" / "scheduler_config.json", "part 'scheduler'")
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
        self.vae.to(device) if dtype is None else self.vae.to(device, vae_dtype(dtype, self.vae.config))
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
