"""ImageDream's multi-view UNet and camera convention, as a diffusers model (no weights loaded here).

The network of ImageDream (Wang & Shi, arXiv 2312.02201): SD-2.1-base's UNet with a camera embedding, 3D
(all-frames) self-attention and an image-prompt adapter (resampler + `to_k_ip` / `to_v_ip`). The module tree
and parameter names are those of the published checkpoint, so its state dict loads with `strict=True`. It lives
under `dd3g.models` because it serves both as the teacher's denoiser (`dd3g.teachers.imagedream`) and as the
student's phase 1 (`dd3g.models.pepd`, `phase1_architecture="imagedream"`), so serving a student never imports
a teacher.
"""

from __future__ import annotations

import inspect
import math
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import Tensor

from ..cameras import Cameras
from .fused_projections import FusableAttention

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


# Parallel to ImageDream's ResBlock (bytedance/ImageDream, imagedream/ldm/modules/diffusionmodules/openaimodel.py): module tree and
# parameter names follow the published weights; keep them in step.
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


# Parallel to ImageDream's Downsample (bytedance/ImageDream, imagedream/ldm/modules/diffusionmodules/openaimodel.py): module tree and
# parameter names follow the published weights; keep them in step.
class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)  # [N, C, H, W] -> [N, C, H/2, W/2]


# Parallel to ImageDream's Upsample (bytedance/ImageDream, imagedream/ldm/modules/diffusionmodules/openaimodel.py): module tree and
# parameter names follow the published weights; keep them in step.
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


# Parallel to ImageDream's MemoryEfficientCrossAttention (bytedance/ImageDream, imagedream/ldm/modules/attention.py): module tree and
# parameter names follow the published weights; keep them in step.
class CrossAttention(FusableAttention):
    """ImageDream's attention: self-attention (no context) or cross-attention to [text tokens; ip tokens].

    With `ip_dim > 0` the last `ip_dim` context tokens are the image prompt: they get their own key/value
    projections (`to_k_ip`, `to_v_ip`) and their attention output is added with weight `ip_weight`. The projections
    can be stacked for inference (`dd3g.models.fused_projections`).
    """

    extra_pairs = (("fused_kv_ip_weight", ("to_k_ip", "to_v_ip")),)

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
        ip = None
        if context is not None and self.ip_dim > 0:
            context, ip = context[:, : -self.ip_dim], context[:, -self.ip_dim :]  # [B, M - ip, D], [B, ip, D]
        q, k, v = self.project_qkv(x, context)  # [B, T, inner], [B, M, inner] x 2 (M = T without a context)
        out = _heads_attention(q, k, v, self.heads)  # [B, T, inner]
        if ip is not None:
            k_ip, v_ip = self.project_pair("fused_kv_ip_weight", ip)  # [B, ip, inner] each
            out = out + self.ip_weight * _heads_attention(q, k_ip, v_ip, self.heads)
        return self.to_out(out)  # [B, T, D]


# Parallel to ImageDream's GEGLU (bytedance/ImageDream, imagedream/ldm/modules/attention.py): module tree and
# parameter names follow the published weights; keep them in step.
class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


# Parallel to ImageDream's FeedForward (bytedance/ImageDream, imagedream/ldm/modules/attention.py): module tree and
# parameter names follow the published weights; keep them in step.
class FeedForward(nn.Module):
    """net = (GEGLU, Dropout, Linear), hidden 4 x dim (ldm's gated feed-forward)."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(dropout), nn.Linear(dim * mult, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


# Parallel to ImageDream's BasicTransformerBlock3D (bytedance/ImageDream, imagedream/ldm/modules/attention.py): module tree and
# parameter names follow the published weights; keep them in step.
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


# Parallel to ImageDream's SpatialTransformer3D (bytedance/ImageDream, imagedream/ldm/modules/attention.py): module tree and
# parameter names follow the published weights; keep them in step.
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


# Parallel to ImageDream's TimestepEmbedSequential (bytedance/ImageDream, imagedream/ldm/modules/diffusionmodules/openaimodel.py): module tree and
# parameter names follow the published weights; keep them in step.
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


# Parallel to ImageDream's PerceiverAttention (bytedance/ImageDream, imagedream/ldm/modules/diffusionmodules/adaptors.py): module tree and
# parameter names follow the published weights; keep them in step.
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


# Parallel to ImageDream's Resampler (bytedance/ImageDream, imagedream/ldm/modules/diffusionmodules/adaptors.py): module tree and
# parameter names follow the published weights; keep them in step.
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


# Parallel to ImageDream's MultiViewUNetModel (bytedance/ImageDream, imagedream/ldm/modules/diffusionmodules/openaimodel.py): module tree and
# parameter names follow the published weights; keep them in step.
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
        return_features: bool = False,
    ) -> Tensor:
        """The predicted noise [B, F, out_channels, H, W]; with `return_features`, the last decoder feature map
        [B, F, model_channels, H, W] before the `out` head instead (PEPD's patterns; `out` maps them to the noise)."""
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
        if return_features:
            return x.reshape(b, f, -1, h, w)
        return self.out(x).reshape(b, f, cfg.out_channels, h, w)

    @property
    def feature_channels(self) -> int:
        """Channels of the last decoder feature map (`return_features=True`)."""
        return int(self.config.model_channels)
