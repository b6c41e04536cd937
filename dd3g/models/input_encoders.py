"""Frozen encoders a student of a latent teacher carries, so a saved pipeline encodes its input as the teacher did.

* `LatentFrameEncoder`: the teacher VAE's encoder half (diffusers `Encoder` + `quant_conv`), giving the scaled
  posterior mean the teacher feeds as its clean input frame. The decoder is left behind: a student never decodes.
* `ImagePromptEncoder`: a CLIP vision tower with the teacher's preprocessing (shortest-edge bicubic resize, centre
  crop, mean/std, in torch on the float image), giving the penultimate layer's tokens ImageDream's resampler reads.

Both are diffusers models (ModelMixin + ConfigMixin), so they save and load with the pipeline as safetensors.
`wrapping(...)` builds one around a teacher's own modules without copying them (the teacher uses them too);
`copy()` gives an independent one for export.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import Encoder
from torch import Tensor, nn


class LatentFrameEncoder(ModelMixin, ConfigMixin):
    """RGB in [-1, 1] at `image_size` -> the VAE posterior mean times `scaling_factor`.  [N, 3, S, S] -> [N, C, S/f, S/f]"""

    @register_to_config
    def __init__(
        self,
        image_size: int = 256,
        in_channels: int = 3,
        latent_channels: int = 4,
        down_block_types: Sequence[str] = ("DownEncoderBlock2D",) * 4,
        block_out_channels: Sequence[int] = (128, 256, 512, 512),
        layers_per_block: int = 2,
        act_fn: str = "silu",
        norm_num_groups: int = 32,
        mid_block_add_attention: bool = True,
        use_quant_conv: bool = True,
        scaling_factor: float = 0.18215,
    ):
        super().__init__()
        self.encoder = Encoder(
            in_channels=in_channels, out_channels=latent_channels, down_block_types=tuple(down_block_types),
            block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block, act_fn=act_fn,
            norm_num_groups=norm_num_groups, double_z=True, mid_block_add_attention=mid_block_add_attention,
        )
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1) if use_quant_conv else None

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    @property
    def latent_size(self) -> int:
        return self.config.image_size // self.downscale

    @classmethod
    def config_from_vae(cls, vae, image_size: int) -> Dict[str, Any]:
        vae_config = vae.config
        if getattr(vae_config, "shift_factor", None) not in (None, 0, 0.0):
            raise ValueError(f"a VAE with shift_factor {vae_config.shift_factor} is not supported (SD-2.1's has none)")
        keys = ("in_channels", "latent_channels", "down_block_types", "block_out_channels", "layers_per_block", "act_fn",
                "norm_num_groups", "mid_block_add_attention", "use_quant_conv", "scaling_factor")
        config = {k: getattr(vae_config, k) for k in keys if hasattr(vae_config, k)}
        return dict(config, image_size=int(image_size))

    @classmethod
    def wrapping(cls, vae, image_size: int) -> "LatentFrameEncoder":
        """An encoder that shares `vae`'s encoder modules (no copy; its dtype and device follow the VAE's)."""
        with torch.device("meta"):
            encoder = cls(**cls.config_from_vae(vae, image_size))
        encoder.encoder, encoder.quant_conv = vae.encoder, vae.quant_conv
        return encoder.eval().requires_grad_(False)

    def copy(self) -> "LatentFrameEncoder":
        twin = type(self).from_config(self.config)
        twin.load_state_dict(self.state_dict())
        return twin.to(self.device, self.dtype).eval().requires_grad_(False)

    def forward(self, rgb: Tensor) -> Tensor:
        size = self.config.image_size
        if rgb.ndim != 4 or rgb.shape[1] != self.config.in_channels or tuple(rgb.shape[-2:]) != (size, size):
            raise ValueError(f"expected RGB [N, {self.config.in_channels}, {size}, {size}] in [-1, 1], got {tuple(rgb.shape)}")
        moments = self.encoder(rgb.to(self.dtype))
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean = moments[:, : self.config.latent_channels]  # the posterior mean: keeps (N, C, II) -> OI a function
        return mean * self.config.scaling_factor


class ImagePromptEncoder(ModelMixin, ConfigMixin):
    """RGB in [0, 1] [N, 3, H, W] -> the CLIP vision tower's tokens at `hidden_state_index` [N, T, hidden_size]."""

    @register_to_config
    def __init__(
        self,
        vision_config: Optional[Dict[str, Any]] = None,
        resize: Optional[int] = 224,
        crop: Optional[int] = 224,
        mean: Optional[Sequence[float]] = (0.48145466, 0.4578275, 0.40821073),
        std: Sequence[float] = (0.26862954, 0.26130258, 0.27577711),
        hidden_state_index: int = -2,
    ):
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModel

        self.vision = CLIPVisionModel(CLIPVisionConfig(**(vision_config or {})))

    @property
    def hidden_size(self) -> int:
        return int(self.vision.config.hidden_size)

    @classmethod
    def wrapping(cls, clip_vision, resize, crop, mean, std, hidden_state_index: int = -2) -> "ImagePromptEncoder":
        """Around a transformers CLIPVisionModel (or ...WithProjection), sharing its vision tower (no copy)."""
        vision_config = {k: v for k, v in clip_vision.config.to_dict().items()
                         if k not in ("architectures", "_name_or_path", "transformers_version", "torch_dtype", "dtype")}
        with torch.device("meta"):
            # keywords, not positions: register_to_config records positional arguments as defaults
            encoder = cls(vision_config=vision_config, resize=resize, crop=crop, mean=None if mean is None else list(mean),
                          std=list(std), hidden_state_index=hidden_state_index)
        # ...WithProjection holds the tower as `vision_model`; the projection is not used here.
        encoder.vision = clip_vision.vision_model if hasattr(clip_vision, "visual_projection") else clip_vision
        return encoder.eval().requires_grad_(False)

    def copy(self) -> "ImagePromptEncoder":
        twin = type(self).from_config(self.config)
        twin.load_state_dict(self.state_dict())
        return twin.to(self.device, self.dtype).eval().requires_grad_(False)

    def pixels(self, rgb: Tensor) -> Tensor:
        """CLIP's preprocessing in torch on the float image (no uint8 rounding).  [N, 3, H, W] -> [N, 3, crop, crop]"""
        cfg = self.config
        x = rgb.float()
        if cfg.resize is not None:
            h, w = x.shape[-2:]
            scale = cfg.resize / min(h, w)
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            if size != (h, w):
                x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
        if cfg.crop is not None:
            h, w = x.shape[-2:]
            top, left = max(0, (h - cfg.crop) // 2), max(0, (w - cfg.crop) // 2)
            x = x[..., top : top + cfg.crop, left : left + cfg.crop]
        if cfg.mean is not None:
            mean = torch.tensor(cfg.mean, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(cfg.std, device=x.device).view(1, 3, 1, 1)
            x = (x - mean) / std
        return x

    def forward(self, rgb: Tensor) -> Tensor:
        if rgb.ndim != 4 or rgb.shape[1] != 3:
            raise ValueError(f"expected RGB [N, 3, H, W] in [0, 1], got {tuple(rgb.shape)}")
        pixels = self.pixels(rgb).to(self.dtype)
        return self.vision(pixel_values=pixels, output_hidden_states=True).hidden_states[self.config.hidden_state_index]
