"""ImageDream as a DD3G teacher (the `base` scale of DESIGN.md section 2), loaded from a local folder.

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
* `unet`: ImageDream's own `MultiViewUNetModel` (not a diffusers class). `ImageDreamUNet` below rebuilds it
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
  it skips the processor's uint8 rounding.
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

import inspect
import json
import math
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import Tensor

from ..cameras import Cameras, ViewLayout
from .base import MultiViewTeacher, TeacherCondition

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
# Camera convention
# ---------------------------------------------------------------------------------------------------


def imagedream_camera_vectors(cameras: Cameras) -> Tensor:
    """Our cameras [..., F] -> ImageDream's camera vectors [..., F, 16] (float32).

    ImageDream's `camera_utils.get_camera`: camera-to-world matrix with OpenGL camera axes (x right, y up,
    z backward) in a +Y-up world, centre normalised onto the unit sphere, then `flip_yz @ c2w` (Blender's
    Z-up world: (x, y, z) -> (x, -z, y)), flattened row-major. The input frame's all-zero vector is the
    caller's business (`ImageDreamTeacher.denoise` sets it).
    """
    viewmats = cameras.viewmats.float()  # [..., F, 4, 4] OpenCV world-to-camera
    rotation = viewmats[..., :3, :3]  # [..., F, 3, 3] rows = camera axes in world
    c2w_rotation = rotation.transpose(-1, -2)  # [..., F, 3, 3] columns = camera axes in world
    centre = -(c2w_rotation @ viewmats[..., :3, 3:])[..., 0]  # [..., F, 3]
    cv_to_gl = torch.tensor([1.0, -1.0, -1.0], device=viewmats.device)  # flip camera y and z
    c2w = torch.zeros_like(viewmats)  # [..., F, 4, 4]
    c2w[..., :3, :3] = c2w_rotation * cv_to_gl
    c2w[..., :3, 3] = centre / (centre.norm(dim=-1, keepdim=True) + 1e-8)
    c2w[..., 3, 3] = 1.0
    flip_yz = torch.tensor(
        [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]],
        device=viewmats.device,
    )  # [4, 4]
    return (flip_yz @ c2w).flatten(-2)  # [..., F, 16]


# ---------------------------------------------------------------------------------------------------
# ImageDream's multi-view UNet (module tree and parameter names of the published checkpoint)
# ---------------------------------------------------------------------------------------------------


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding, cosines first (openaimodel).  timesteps [N] -> [N, dim] float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]  # [N, half]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # [N, 2 * half]
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class ResBlock(nn.Module):
    """openaimodel ResBlock: in_layers (GN, SiLU, conv), emb_layers (SiLU, Linear), out_layers (GN, SiLU, drop, conv)."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.in_layers = nn.Sequential(
            nn.GroupNorm(groups, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            nn.GroupNorm(groups, out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        # x: [N, C_in, H, W]; emb: [N, E]
        h = self.in_layers(x)  # [N, C_out, H, W]
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)  # [N, C_out, H, W]


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)  # [N, C, H, W] -> [N, C, H/2, W/2]


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # [N, C, 2H, 2W]


def _heads_attention(q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    """Scaled dot-product attention over `heads` heads.  q [B, T, H*d], k/v [B, M, H*d] -> [B, T, H*d]."""
    b, t, inner = q.shape
    q = q.view(b, t, heads, -1).transpose(1, 2)  # [B, H, T, d]
    k = k.view(b, k.shape[1], heads, -1).transpose(1, 2)  # [B, H, M, d]
    v = v.view(b, v.shape[1], heads, -1).transpose(1, 2)  # [B, H, M, d]
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, inner)


class CrossAttention(nn.Module):
    """ImageDream's attention: self-attention (no context) or cross-attention to [text tokens; ip tokens].

    With `ip_dim > 0` the last `ip_dim` context tokens are the image prompt: they get their own key/value
    projections (`to_k_ip`, `to_v_ip`) and their attention output is added with weight `ip_weight`.
    """

    def __init__(
        self,
        query_dim: int,
        heads: int,
        dim_head: int,
        context_dim: Optional[int] = None,
        dropout: float = 0.0,
        ip_dim: int = 0,
        ip_weight: float = 1.0,
    ):
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads, self.ip_dim, self.ip_weight = heads, ip_dim, ip_weight
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        if ip_dim > 0:
            self.to_k_ip = nn.Linear(context_dim, inner, bias=False)
            self.to_v_ip = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        # x: [B, T, D]; context: [B, M, D_ctx] (text tokens then ip_dim image tokens), None for self-attention
        if context is None:
            context = x
            ip = None
        elif self.ip_dim > 0:
            context, ip = context[:, : -self.ip_dim], context[:, -self.ip_dim :]  # [B, M - ip, D], [B, ip, D]
        else:
            ip = None
        q = self.to_q(x)  # [B, T, inner]
        out = _heads_attention(q, self.to_k(context), self.to_v(context), self.heads)  # [B, T, inner]
        if ip is not None:
            out = out + self.ip_weight * _heads_attention(q, self.to_k_ip(ip), self.to_v_ip(ip), self.heads)
        return self.to_out(out)  # [B, T, D]


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """net = (GEGLU, Dropout, Linear), hidden 4 x dim (ldm's gated feed-forward)."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class BasicTransformerBlock3D(nn.Module):
    """attn1 over the tokens of all frames of a sample (multi-view), attn2 to the context, gated FF."""

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        context_dim: int,
        dropout: float = 0.0,
        ip_dim: int = 0,
        ip_weight: float = 1.0,
    ):
        super().__init__()
        self.attn1 = CrossAttention(dim, heads, dim_head, None, dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, heads, dim_head, context_dim, dropout, ip_dim, ip_weight)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        # x: [B, F * h * w, D]; context: [B, M, D_ctx], the same for every frame of a sample, so
        # cross-attention over all frames' tokens at once equals ImageDream's per-frame cross-attention.
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer3D(nn.Module):
    """GroupNorm (per frame), Linear proj_in, transformer blocks, Linear proj_out, residual."""

    def __init__(
        self,
        channels: int,
        heads: int,
        dim_head: int,
        context_dim: int,
        depth: int,
        groups: int,
        dropout: float = 0.0,
        ip_dim: int = 0,
        ip_weight: float = 1.0,
    ):
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            [
                BasicTransformerBlock3D(inner, heads, dim_head, context_dim, dropout, ip_dim, ip_weight)
                for _ in range(depth)
            ]
        )
        self.proj_out = nn.Linear(inner, channels)

    def forward(self, x: Tensor, context: Tensor, num_frames: int) -> Tensor:
        # x: [B * F, C, h, w]; context: [B, M, D_ctx]
        n, c, h, w = x.shape
        b = n // num_frames
        tokens = self.norm(x).reshape(b, num_frames, c, h * w).transpose(2, 3).reshape(b, num_frames * h * w, c)
        tokens = self.proj_in(tokens)  # [B, F*h*w, inner]
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        tokens = self.proj_out(tokens)  # [B, F*h*w, C]
        tokens = tokens.reshape(b, num_frames, h * w, c).transpose(2, 3).reshape(n, c, h, w)
        return x + tokens


class TimestepSequential(nn.Sequential):
    """openaimodel's sequential: ResBlocks get the embedding, transformers the context."""

    def forward(self, x: Tensor, emb: Tensor, context: Tensor, num_frames: int) -> Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer3D):
                x = layer(x, context, num_frames)
            else:
                x = layer(x)
        return x


class PerceiverAttention(nn.Module):
    """IP-Adapter-plus resampler attention: latents attend to [image features; latents]."""

    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        inner = dim_head * heads
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: Tensor, latents: Tensor) -> Tensor:
        # x: [B, T, dim] image features; latents: [B, Q, dim]
        x, latents = self.norm1(x), self.norm2(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)  # [B, T + Q, inner] each
        return self.to_out(_heads_attention(self.to_q(latents), k, v, self.heads))  # [B, Q, dim]


class Resampler(nn.Module):
    """CLIP image tokens [B, T, E] -> `num_queries` context tokens [B, Q, output_dim] (ImageDream's `image_embed`)."""

    def __init__(
        self,
        dim: int,
        depth: int,
        dim_head: int,
        heads: int,
        num_queries: int,
        embedding_dim: int,
        output_dim: int,
        ff_mult: int = 4,
    ):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, num_queries, dim) / dim**0.5)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            [
                nn.ModuleList(
                    [
                        PerceiverAttention(dim, dim_head, heads),
                        nn.Sequential(
                            nn.LayerNorm(dim),
                            nn.Linear(dim, dim * ff_mult, bias=False),
                            nn.GELU(),
                            nn.Linear(dim * ff_mult, dim, bias=False),
                        ),
                    ]
                )
                for _ in range(depth)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, T, embedding_dim]
        latents = self.latents.expand(x.shape[0], -1, -1)  # [B, Q, dim]
        x = self.proj_in(x)  # [B, T, dim]
        for attention, feed_forward in self.layers:
            latents = latents + attention(x, latents)
            latents = latents + feed_forward(latents)
        return self.norm_out(self.proj_out(latents))  # [B, Q, output_dim]


# Config fields of the published unet/config.json that do not change the network (or must keep one value).
_NEUTRAL_UNET_FIELDS = {
    "use_checkpoint": None,
    "legacy": False,
    "use_spatial_transformer": True,
    "use_linear_in_transformer": True,
    "with_ip": None,
    "ip_mode": "local_resample",
    "dropout": 0,
    "conv_resample": True,
    "dims": 2,
    "num_classes": None,
    "num_heads": -1,
    "num_heads_upsample": -1,
    "use_scale_shift_norm": False,
    "resblock_updown": False,
    "n_embed": None,
    "num_attention_blocks": None,
    "adm_in_channels": None,
    "use_fp16": None,
    "use_bf16": None,
    "use_new_attention_order": False,
}


class ImageDreamUNet(ModelMixin, ConfigMixin):
    """ImageDream's `MultiViewUNetModel` (SD-2.1-base UNet + camera embedding + image-prompt adapter).

    The constructor takes the fields of the published `unet/config.json`; the `ip_*resampler*` /
    `ip_embedding_dim` / `norm_num_groups` arguments are constants of the published code (not in its config)
    exposed so scaled-down copies can be built. Parameter names follow the published checkpoint:
    `time_embed.`, `camera_embed.`, `image_embed.` (resampler), `input_blocks.`, `middle_block.`,
    `output_blocks.`, `out.`.

    Forward (all frames of a sample together, frames folded as ImageDream does not):
        sample [B, F, C, H, W], timesteps [B] or [B, F], camera [B, F, 16], context [B, M, context_dim]
        (77 text tokens, plus the ip_dim image-prompt tokens when `ip` is None), ip [B, T, E] optional
        CLIP tokens (resampled and appended), ip_img [B, C, H, W] optional latent written into the last
        frame (ImageDream's pixel controller). Returns the predicted noise [B, F, out_channels, H, W].
    """

    @register_to_config
    def __init__(
        self,
        image_size: int = 32,
        in_channels: int = 4,
        out_channels: int = 4,
        model_channels: int = 320,
        attention_resolutions: Sequence[int] = (4, 2, 1),
        num_res_blocks: int = 2,
        channel_mult: Sequence[int] = (1, 2, 4, 4),
        num_head_channels: int = 64,
        transformer_depth: int = 1,
        context_dim: int = 1024,
        use_checkpoint: bool = False,
        camera_dim: Optional[int] = 16,
        ip_dim: int = 16,
        ip_weight: float = 1.0,
        ip_embedding_dim: int = 1280,
        ip_resampler_depth: int = 4,
        ip_resampler_heads: int = 12,
        ip_resampler_dim_head: int = 64,
        norm_num_groups: int = 32,
    ):
        super().__init__()
        groups = norm_num_groups
        time_dim = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        if camera_dim is not None:
            self.camera_embed = nn.Sequential(nn.Linear(camera_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        if ip_dim > 0:
            self.image_embed = Resampler(
                context_dim,
                ip_resampler_depth,
                ip_resampler_dim_head,
                ip_resampler_heads,
                ip_dim,
                ip_embedding_dim,
                context_dim,
            )

        def transformer(ch: int) -> SpatialTransformer3D:
            heads = ch // num_head_channels
            return SpatialTransformer3D(
                ch, heads, num_head_channels, context_dim, transformer_depth, groups, ip_dim=ip_dim, ip_weight=ip_weight
            )

        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
        skip_channels = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [ResBlock(ch, time_dim, mult * model_channels, groups)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(transformer(ch))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepSequential(Downsample(ch)))
                skip_channels.append(ch)
                ds *= 2
        self.middle_block = TimestepSequential(
            ResBlock(ch, time_dim, ch, groups), transformer(ch), ResBlock(ch, time_dim, ch, groups)
        )
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), time_dim, model_channels * mult, groups)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(transformer(ch))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepSequential(*layers))
        self.out = nn.Sequential(
            nn.GroupNorm(groups, ch), nn.SiLU(), nn.Conv2d(model_channels, out_channels, 3, padding=1)
        )

    @classmethod
    def from_published_config(cls, config: dict, **inferred) -> "ImageDreamUNet":
        """Build from a published unet/config.json dict (private `_` keys ignored; unknown fields refused)."""
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
        kwargs = {}
        for key, value in config.items():
            if key.startswith("_"):
                continue
            if key in accepted:
                kwargs[key] = value
            elif key in _NEUTRAL_UNET_FIELDS:
                neutral = _NEUTRAL_UNET_FIELDS[key]
                if neutral is not None and value != neutral:
                    raise ValueError(
                        f"unet/config.json: {key}={value!r} is not supported (ImageDream uses {neutral!r})"
                    )
            else:
                raise ValueError(
                    f"unet/config.json: unknown field {key!r}; this is not ImageDream's MultiViewUNetModel config"
                )
        if config.get("with_ip") is False:
            kwargs["ip_dim"] = 0
        kwargs.update({k: v for k, v in inferred.items() if k not in kwargs})
        return cls(**kwargs)

    @property
    def latent_size(self) -> int:
        return int(self.config.image_size)

    def image_prompt_tokens(self, ip: Tensor) -> Tensor:
        """CLIP penultimate-layer tokens [B, T, E] -> the ip_dim image-prompt context tokens [B, ip_dim, context_dim]."""
        return self.image_embed(ip.to(self.dtype))

    def forward(
        self,
        sample: Tensor,
        timesteps: Union[Tensor, float, int],
        camera: Optional[Tensor],
        context: Tensor,
        ip: Optional[Tensor] = None,
        ip_img: Optional[Tensor] = None,
    ) -> Tensor:
        cfg = self.config
        if sample.ndim != 5 or sample.shape[2] != cfg.in_channels:
            raise ValueError(f"sample must be [B, F, {cfg.in_channels}, H, W], got {tuple(sample.shape)}")
        b, f, c, h, w = sample.shape
        n = b * f
        dtype = self.out[2].weight.dtype
        t = torch.as_tensor(timesteps, device=sample.device)
        t = t.reshape(1, 1).expand(b, f) if t.ndim == 0 else (t[:, None].expand(b, f) if t.ndim == 1 else t)
        if t.shape != (b, f):
            raise ValueError(f"timesteps must be [B] or [B, F] = [{b}, {f}], got {tuple(t.shape)}")
        emb = self.time_embed(timestep_embedding(t.reshape(n), cfg.model_channels).to(dtype))  # [N, 4 * mc]
        if cfg.camera_dim is not None:
            if camera is None or camera.shape != (b, f, cfg.camera_dim):
                raise ValueError(
                    f"camera must be [{b}, {f}, {cfg.camera_dim}], got {None if camera is None else tuple(camera.shape)}"
                )
            emb = emb + self.camera_embed(camera.reshape(n, -1).to(dtype))  # [N, 4 * mc]
        context = context.to(dtype)  # [B, M, D]
        if ip is not None:
            context = torch.cat([context, self.image_prompt_tokens(ip)], dim=1)  # [B, 77 + ip_dim, D]
        if cfg.ip_dim > 0 and context.shape[1] <= cfg.ip_dim:
            raise ValueError(
                f"context must hold text tokens and the {cfg.ip_dim} image-prompt tokens, got {tuple(context.shape)}"
            )
        if ip_img is not None:
            sample = torch.cat([sample[:, :-1], ip_img[:, None].to(sample.dtype)], dim=1)  # the pixel controller
        x = sample.reshape(n, c, h, w).to(dtype)
        skips = []
        for module in self.input_blocks:
            x = module(x, emb, context, f)
            skips.append(x)
        x = self.middle_block(x, emb, context, f)
        for module in self.output_blocks:
            x = module(torch.cat([x, skips.pop()], dim=1), emb, context, f)
        return self.out(x).reshape(b, f, cfg.out_channels, h, w)


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
        self._scheduler_config = dict(scheduler_config)
        self.prompt, self.negative_prompt = prompt, negative_prompt
        self._layout = layout or IMAGEDREAM_LAYOUT
        self.input_frame_timestep = input_frame_timestep
        self.alpha_thresholds = tuple(alpha_thresholds)
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scaling_factor = float(vae.config.scaling_factor)
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

    def _clip_pixels(self, rgb: Tensor) -> Tensor:
        """RGB [B, 3, H, W] in [0, 1] -> CLIP pixel values (shortest-edge resize, centre crop, normalise)."""
        settings = self.clip_settings
        x = rgb.float()
        if settings["resize"] is not None:
            h, w = x.shape[-2:]
            scale = settings["resize"] / min(h, w)
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            if size != (h, w):
                x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
        if settings["crop"] is not None:
            crop = settings["crop"]
            h, w = x.shape[-2:]
            top, left = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
            x = x[..., top : top + crop, left : left + crop]
        if settings["mean"] is not None:
            mean = torch.tensor(settings["mean"], device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(settings["std"], device=x.device).view(1, 3, 1, 1)
            x = (x - mean) / std
        return x.to(self.image_encoder.dtype)

    def _to_vae_input(self, images: Tensor) -> Tensor:
        """RGBA/RGB [N, C, H, W] in [0, 1] -> RGB on white in [-1, 1] at the teacher resolution."""
        rgb = composite_on_white(images.float())
        size = self.image_size
        if rgb.shape[-2:] != (size, size):
            downscale = rgb.shape[-1] > size
            rgb = F.interpolate(rgb, size=(size, size), mode="bilinear", align_corners=False, antialias=downscale)
        return (rgb * 2.0 - 1.0).to(self.vae.dtype)

    @torch.no_grad()
    def condition(self, images: Tensor) -> TeacherCondition:
        """images [B, 4, S, S] RGBA -> context [B, 77 + ip_dim, D] (text + image-prompt tokens) and the input latent."""
        images = images.to(self.device)
        b = images.shape[0]
        rgb = composite_on_white(images.float())  # [B, 3, S, S]
        clip_tokens = self.image_encoder(self._clip_pixels(rgb), output_hidden_states=True).hidden_states[
            -2
        ]  # [B, T, E]
        ip_tokens = self.unet.image_prompt_tokens(clip_tokens)  # [B, ip_dim, D]
        null_ip_tokens = self.unet.image_prompt_tokens(torch.zeros_like(clip_tokens))  # [B, ip_dim, D]
        text, negative = self._text_context()  # [1, 77, D] each
        context = torch.cat([text.expand(b, -1, -1), ip_tokens], dim=1)  # [B, 77 + ip_dim, D]
        null_context = torch.cat([negative.expand(b, -1, -1), null_ip_tokens], dim=1)
        input_frame = self.encode(images)  # [B, 4, h, w]
        return TeacherCondition(context, input_frame, null_context, torch.zeros_like(input_frame))

    def encode(self, images: Tensor) -> Tensor:
        """RGBA [..., 4, S, S] in [0, 1] -> scaled VAE latents [..., 4, h, w] (posterior mean), differentiable."""
        lead = images.shape[:-3]
        x = self._to_vae_input(images.reshape(-1, *images.shape[-3:]))  # [N, 3, S, S]
        latents = self.vae.encode(x).latent_dist.mean * self.scaling_factor  # [N, 4, h, w]
        return latents.float().reshape(*lead, *latents.shape[1:])

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
