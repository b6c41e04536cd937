"""Multi-view UNet: the tiny teacher's denoiser and PEPD's phase 1 (Pattern Extraction).

One module serves both roles (DESIGN sections 2 and 4). As the teacher it predicts v (or eps) for all
frames of a multi-view diffusion sample; as PEPD's phase 1 it is initialised from the teacher, run once
at the first DDIM timestep and its last decoder feature map (``features``) becomes the pattern tokens.
In the ``base`` preset it has the shape of ImageDream's ``MultiViewUNetModel`` (SD-2.1-base: 320
channels, mult (1, 2, 4, 4), attention at the first three levels, 2 ResBlocks per level, 64-channel
heads, 1024-d context, flattened 4x4 camera matrix embedded and added to the timestep embedding).

Layout of the network (frames folded into the batch, ``N = B * F``, for everything but attention):

    conv_in                     [N, C_in (+6 Plücker), H, W] -> [N, C0, H, W]
    down level l (l = 0..L-1)   layers_per_block x (ResBlock [+ SpatialTransformer3D if attention_levels[l]])
                                then a stride-2 conv, except at the last level
    mid                         ResBlock, SpatialTransformer3D (if mid_block_attention), ResBlock
    up level l (l = L-1..0)     (layers_per_block + 1) x (concat skip, ResBlock [+ SpatialTransformer3D])
                                then nearest x2 + conv, except at level 0
    features                    [N, C0, H, W]   (returned with return_features=True)
    norm_out, SiLU, conv_out    [N, C_out, H, W]  (conv_out zero-initialised)

ResBlock: GroupNorm, SiLU, conv3x3, + Linear(SiLU(emb)), GroupNorm, SiLU, dropout, conv3x3, + skip
(1x1 conv when the channels change).

SpatialTransformer3D: GroupNorm, Linear proj_in, ``transformer_depth`` x BasicTransformerBlock3D,
Linear proj_out (zero-initialised), residual. BasicTransformerBlock3D works on the tokens of *all*
frames of a sample at once, ``[B, F * h * w, C]``:
    x = x + SelfAttention(LayerNorm(x))            multi-view: every token sees every frame's tokens
    x = x + CrossAttention(LayerNorm(x), context)  image tokens [B, L, context_dim]
    x = x + GEGLU-FeedForward(LayerNorm(x))
Attention uses ``torch.nn.functional.scaled_dot_product_attention``. There is no frame position
embedding: frames are told apart only by their camera (and timestep), so permuting frames together with
their cameras permutes the outputs.

Conditioning:
- timesteps ``[B]`` (one per sample) or ``[B, F]`` (one per frame, e.g. t = 0 for the clean input
  frame): sinusoidal embedding (cos first, as openaimodel/ImageDream) -> Linear, SiLU, Linear, added in
  every ResBlock of that frame.
- camera, ``camera_conditioning="plucker"`` (tiny default): per-pixel Plücker rays ``[B, F, 6, H, W]``
  (world-space unit direction d and moment o x d) concatenated to each frame's input channels.
- camera, ``camera_conditioning="matrix"`` (ImageDream/MVDream): ``[B, F, 16]`` flattened
  camera-to-world matrices -> Linear, SiLU, Linear, added to the timestep embedding. See
  ``camera_condition`` for the exact convention.
- context ``[B, L, context_dim]``: image tokens for cross-attention (zeros for the unconditional CFG
  branch).

Not included (the base-scale teacher adapter's business): ImageDream's text cross-attention and its
decoupled image-prompt attention (``to_k_ip``/``to_v_ip`` + CLIP resampler). Here the context *is* the
image tokens and attn2 has a single key/value projection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.utils import BaseOutput

from dd3g.cameras import Cameras
from dd3g.models.fused_projections import FUSED_KV, FusableAttention, refuse_training, stack_weights

CAMERA_CONDITIONINGS = ("plucker", "matrix")
PLUCKER_CHANNELS = 6
CAMERA_MATRIX_DIM = 16

# OpenCV camera axes (x right, y down, z forward) -> OpenGL camera axes (x right, y up, z backward).
_CV_TO_GL_CAMERA = (1.0, -1.0, -1.0)


@dataclass
class MultiViewUNetOutput(BaseOutput):
    """Output of ``MultiViewUNet.forward``.

    sample: [B, F, out_channels, H, W] the prediction (v or eps, as the model was trained).
    features: [B, F, feature_channels, H, W] the last decoder feature map, before the output
        GroupNorm/SiLU/conv (PEPD's pattern features); None unless ``return_features=True``.
    """

    sample: torch.Tensor
    features: Optional[torch.Tensor] = None


# ---------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------


class ResBlock(nn.Module):
    """ResBlock with a timestep-embedding shift (openaimodel/diffusers ``ResnetBlock2D`` style)."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, groups: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_channels, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        # (start, end) of this block's rows in the projection the UNet stacks for every ResBlock (None: not stacked)
        self.stacked_rows: Optional[tuple] = None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # x: [N, C_in, H, W]; emb: [N, E], or [N, sum of C_out] already projected when the UNet stacked (N = B * F)
        h = self.conv1(F.silu(self.norm1(x)))  # [N, C_out, H, W]
        shift = self.emb_proj(F.silu(emb)) if self.stacked_rows is None else emb[:, slice(*self.stacked_rows)]
        h = h + shift[:, :, None, None]  # [N, C_out, H, W]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))  # [N, C_out, H, W]
        return self.skip(x) + h  # [N, C_out, H, W]


class Attention(FusableAttention):
    """Multi-head attention (self when ``context`` is None, else cross) through SDPA; its projections can be stacked
    for inference (`dd3g.models.fused_projections`)."""

    def __init__(self, query_dim: int, heads: int, head_dim: int, context_dim: Optional[int] = None,
                 dropout: float = 0.0):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        # x: [B, T, D]; context: [B, M, D_ctx] or None (self-attention: M = T)
        b, t, _ = x.shape
        q, k, v = self.project_qkv(x, context)  # [B, T, inner], [B, M, inner] x 2
        m = k.shape[1]
        q = q.view(b, t, self.heads, -1).transpose(1, 2)  # [B, heads, T, d]
        k = k.view(b, m, self.heads, -1).transpose(1, 2)  # [B, heads, M, d]
        v = v.view(b, m, self.heads, -1).transpose(1, 2)  # [B, heads, M, d]
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, T, d]
        out = out.transpose(1, 2).reshape(b, t, -1)  # [B, T, heads * d]
        return self.to_out(out)  # [B, T, D]


class GEGLUFeedForward(nn.Module):
    """Linear -> GEGLU (gelu(gate) * value) -> dropout -> Linear, hidden = 4 * dim."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        hidden = dim * mult
        self.proj_in = nn.Linear(dim, 2 * hidden)
        self.dropout = nn.Dropout(dropout)
        self.proj_out = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, T, D]
        value, gate = self.proj_in(x).chunk(2, dim=-1)  # [B, T, 4D] each
        return self.proj_out(self.dropout(value * F.gelu(gate)))  # [B, T, D]


class BasicTransformerBlock3D(nn.Module):
    """Multi-view self-attention over all frames' tokens, cross-attention to the context, feed-forward."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, head_dim, dropout=dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, head_dim, context_dim=context_dim, dropout=dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = GEGLUFeedForward(dim, dropout=dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        # x: [B, F * h * w, D] (all frames of a sample in one sequence); context: [B, L, D_ctx]
        x = x + self.attn1(self.norm1(x))  # [B, F * h * w, D] multi-view self-attention
        x = x + self.attn2(self.norm2(x), context)  # [B, F * h * w, D] cross-attention to image tokens
        return x + self.ff(self.norm3(x))  # [B, F * h * w, D]


class SpatialTransformer3D(nn.Module):
    """GroupNorm -> Linear proj_in -> BasicTransformerBlock3D x depth -> Linear proj_out (zero) -> + input."""

    def __init__(self, channels: int, heads: int, head_dim: int, context_dim: int, depth: int, groups: int,
                 dropout: float = 0.0):
        super().__init__()
        inner = heads * head_dim
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.blocks = nn.ModuleList(
            [BasicTransformerBlock3D(inner, heads, head_dim, context_dim, dropout) for _ in range(depth)]
        )
        self.proj_out = nn.Linear(inner, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor, num_frames: int) -> torch.Tensor:
        # x: [B * F, C, h, w]; context: [B, L, D_ctx]
        n, c, h, w = x.shape
        b = n // num_frames
        tokens = self.norm(x).view(b, num_frames, c, h * w)  # [B, F, C, h*w]
        tokens = tokens.permute(0, 1, 3, 2).reshape(b, num_frames * h * w, c)  # [B, F*h*w, C]
        tokens = self.proj_in(tokens)  # [B, F*h*w, D]
        for block in self.blocks:
            tokens = block(tokens, context)  # [B, F*h*w, D]
        tokens = self.proj_out(tokens)  # [B, F*h*w, C]
        tokens = tokens.view(b, num_frames, h * w, c).permute(0, 1, 3, 2)  # [B, F, C, h*w]
        return x + tokens.reshape(n, c, h, w)  # [B * F, C, h, w]


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # [N, C, H, W] -> [N, C, H/2, W/2]


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # [N, C, H, W] -> [N, C, 2H, 2W]


class UNetLevel(nn.Module):
    """ResBlocks, each optionally followed by a SpatialTransformer3D, then an optional resampler."""

    def __init__(self, in_channels: Sequence[int], out_channels: int, emb_channels: int, attention: bool,
                 heads: int, head_dim: int, context_dim: int, depth: int, groups: int, dropout: float,
                 resample: Optional[nn.Module]):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResBlock(c, out_channels, emb_channels, groups, dropout) for c in in_channels]
        )
        self.attentions = nn.ModuleList(
            [SpatialTransformer3D(out_channels, heads, head_dim, context_dim, depth, groups, dropout)
             for _ in in_channels] if attention else []
        )
        self.resample = resample


# ---------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------


def _stack_again_after_load(unet: "MultiViewUNet", incompatible_keys) -> None:
    if unet.conditioning_stacked:  # the stacked copies must hold the weights just loaded
        unet.stack_conditioning_projections()


class MultiViewUNet(ModelMixin, ConfigMixin):
    """Multi-view diffusion UNet over ``F`` frames: ResBlocks + SpatialTransformer3D (3D self-attn, cross-attn, FF).

    Args:
        sample_size: side H = W of the frames the model is built for (pixels for ``tiny``, latents for
            ``base``); other sizes divisible by ``2 ** (len(block_out_channels) - 1)`` also run.
        in_channels / out_channels: channels per frame of the input and the prediction.
        num_frames: frames of the canonical layout (4 output views + the input view). Informational:
            attention has no frame embedding, so any frame count runs.
        block_out_channels: channels of each resolution level (the first is ``feature_channels``).
        layers_per_block: ResBlocks per down level (the up levels have one more).
        attention_levels: per level, whether its ResBlocks are followed by a SpatialTransformer3D.
        mid_block_attention: whether the mid block has a SpatialTransformer3D between its ResBlocks.
        attention_head_dim: channels per head; heads = level channels // attention_head_dim.
        context_dim: channels of the cross-attention context tokens.
        transformer_depth: BasicTransformerBlock3D per SpatialTransformer3D.
        camera_conditioning: ``"plucker"`` (rays concatenated to the input) or ``"matrix"`` (flattened
            camera-to-world embedded into the timestep embedding).
        norm_num_groups: GroupNorm groups.
        dropout: dropout in ResBlocks, attention outputs and feed-forwards.
    """

    _supports_gradient_checkpointing = True

    PRESETS: dict[str, dict] = {
        # Tiny teacher (pixel-space RGBA 64 px, 4 output views + the clean input frame). Multi-view
        # attention at 16x16 and 8x8 and in the mid block; 64 px and 32 px levels are convolution only.
        "tiny": dict(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            num_frames=5,
            block_out_channels=(32, 64, 128, 160),
            layers_per_block=1,
            attention_levels=(False, False, True, True),
            mid_block_attention=True,
            attention_head_dim=32,
            context_dim=112,
            transformer_depth=1,
            camera_conditioning="plucker",
            norm_num_groups=16,
            dropout=0.0,
        ),
        # ImageDream / SD-2.1-base UNet shape: latents 4 x 32 x 32 (256 px), 320 x (1, 2, 4, 4).
        "base": dict(
            sample_size=32,
            in_channels=4,
            out_channels=4,
            num_frames=5,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            attention_levels=(True, True, True, False),
            mid_block_attention=True,
            attention_head_dim=64,
            context_dim=1024,
            transformer_depth=1,
            camera_conditioning="matrix",
            norm_num_groups=32,
            dropout=0.0,
        ),
        # Same structure as "base", widths / 10, for CPU tests.
        "base-small": dict(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            num_frames=5,
            block_out_channels=(32, 64, 128, 128),
            layers_per_block=2,
            attention_levels=(True, True, True, False),
            mid_block_attention=True,
            attention_head_dim=16,
            context_dim=64,
            transformer_depth=1,
            camera_conditioning="matrix",
            norm_num_groups=32,
            dropout=0.0,
        ),
    }
    # Larger teachers of the tiny one's kind (64 px, Plücker cameras, the same tokens), for choosing a shape by quality
    # per GPU-minute: the tiny UNet keeps an H200 mostly idle (46 TFLOP/s of its ~790 bf16).
    # "tiny-wide": twice the channels at every level (33.3M parameters against 8.4M).
    PRESETS["tiny-wide"] = {**PRESETS["tiny"], "block_out_channels": (64, 128, 256, 320), "norm_num_groups": 32}
    # "small": tiny-wide with two ResBlocks a level and multi-view attention from 32 x 32 on (51.3M).
    PRESETS["small"] = {**PRESETS["tiny-wide"], "layers_per_block": 2, "attention_levels": (False, True, True, True)}

    @register_to_config
    def __init__(
        self,
        sample_size: int = 64,
        in_channels: int = 4,
        out_channels: int = 4,
        num_frames: int = 5,
        block_out_channels: Sequence[int] = (32, 64, 128, 160),
        layers_per_block: int = 1,
        attention_levels: Sequence[bool] = (False, False, True, True),
        mid_block_attention: bool = True,
        attention_head_dim: int = 32,
        context_dim: int = 112,
        transformer_depth: int = 1,
        camera_conditioning: str = "plucker",
        norm_num_groups: int = 16,
        dropout: float = 0.0,
    ):
        super().__init__()
        block_out_channels = tuple(int(c) for c in block_out_channels)
        attention_levels = tuple(bool(a) for a in attention_levels)
        if camera_conditioning not in CAMERA_CONDITIONINGS:
            raise ValueError(f"camera_conditioning must be one of {CAMERA_CONDITIONINGS}, got {camera_conditioning!r}")
        if len(attention_levels) != len(block_out_channels):
            raise ValueError(
                f"attention_levels {attention_levels} needs one entry per level of {block_out_channels}"
            )
        # The mid block attends at the last level's width.
        attends = attention_levels[:-1] + (attention_levels[-1] or mid_block_attention,)
        for c, attention in zip(block_out_channels, attends):
            if c % norm_num_groups or (attention and c % attention_head_dim):
                raise ValueError(
                    f"level channels must be divisible by norm_num_groups ({norm_num_groups}) and, where a "
                    f"level attends, by attention_head_dim ({attention_head_dim}); got {block_out_channels}"
                )
        if sample_size % (2 ** (len(block_out_channels) - 1)):
            raise ValueError(f"sample_size {sample_size} must be divisible by 2 ** (levels - 1)")

        c0 = block_out_channels[0]
        emb_channels = 4 * c0
        groups, depth = norm_num_groups, transformer_depth

        def heads(c: int) -> int:
            return c // attention_head_dim

        # Timestep (and camera-matrix) embedding.
        self.time_embedding = nn.Sequential(
            nn.Linear(c0, emb_channels), nn.SiLU(), nn.Linear(emb_channels, emb_channels)
        )
        if camera_conditioning == "matrix":
            self.camera_embedding = nn.Sequential(
                nn.Linear(CAMERA_MATRIX_DIM, emb_channels), nn.SiLU(), nn.Linear(emb_channels, emb_channels)
            )
        else:
            self.camera_embedding = None

        conv_in_channels = in_channels + (PLUCKER_CHANNELS if camera_conditioning == "plucker" else 0)
        self.conv_in = nn.Conv2d(conv_in_channels, c0, 3, padding=1)

        # Encoder: record the channels of every skip tensor (conv_in, each ResBlock, each downsample).
        skip_channels = [c0]
        ch = c0
        down = []
        for level, out in enumerate(block_out_channels):
            is_last = level == len(block_out_channels) - 1
            ins = [ch] + [out] * (layers_per_block - 1)
            down.append(UNetLevel(ins, out, emb_channels, attention_levels[level], heads(out), attention_head_dim,
                                  context_dim, depth, groups, dropout, None if is_last else Downsample(out)))
            skip_channels += [out] * layers_per_block
            ch = out
            if not is_last:
                skip_channels.append(out)
        self.down_levels = nn.ModuleList(down)

        # Middle.
        self.mid_res1 = ResBlock(ch, ch, emb_channels, groups, dropout)
        self.mid_attention = (
            SpatialTransformer3D(ch, heads(ch), attention_head_dim, context_dim, depth, groups, dropout)
            if mid_block_attention else None
        )
        self.mid_res2 = ResBlock(ch, ch, emb_channels, groups, dropout)

        # Decoder: mirror the encoder, concatenating skips in reverse order.
        up = []
        for level in reversed(range(len(block_out_channels))):
            out = block_out_channels[level]
            ins = []
            for _ in range(layers_per_block + 1):
                ins.append(ch + skip_channels.pop())
                ch = out
            up.append(UNetLevel(ins, out, emb_channels, attention_levels[level], heads(out), attention_head_dim,
                                context_dim, depth, groups, dropout, Upsample(out) if level > 0 else None))
        self.up_levels = nn.ModuleList(up)
        assert not skip_channels

        self.norm_out = nn.GroupNorm(groups, c0)
        self.conv_out = nn.Conv2d(c0, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

        self.gradient_checkpointing = False
        self.register_load_state_dict_post_hook(_stack_again_after_load)  # stacked projections follow loaded weights

    # -- construction ----------------------------------------------------------------------------------

    @classmethod
    def preset(cls, name: str, **overrides) -> "MultiViewUNet":
        """A fresh, randomly initialised model from ``PRESETS[name]`` with ``overrides`` applied."""
        if name not in cls.PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(cls.PRESETS)}")
        unknown = set(overrides) - set(cls.PRESETS[name])
        if unknown:
            raise TypeError(f"unknown config keys {sorted(unknown)}; allowed: {sorted(cls.PRESETS[name])}")
        return cls(**{**cls.PRESETS[name], **overrides})

    # -- shapes ----------------------------------------------------------------------------------------

    @property
    def feature_channels(self) -> int:
        """Channels of ``features`` (the last decoder feature map) = ``block_out_channels[0]``."""
        return int(self.config.block_out_channels[0])

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def downsample_factor(self) -> int:
        """H and W must be multiples of this."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    # -- camera conditioning -----------------------------------------------------------------------------

    def camera_condition(self, cameras: Cameras, size: Optional[int] = None) -> torch.Tensor:
        """The camera input ``forward`` takes, from ``cameras`` [B, F].

        ``"plucker"``: per-pixel Plücker rays of the cameras resized to ``size`` x ``size`` (default
        ``sample_size``): world-space unit direction d and moment o x d (``Cameras.plucker_rays``),
        returned as [B, F, 6, size, size]. World units are the project's (orbit radius 2.0), no
        normalisation.

        ``"matrix"``: [B, F, 16], ImageDream/MVDream's convention (``camera_utils.get_camera``):
        the camera-to-world matrix with OpenGL camera axes (x right, y up, z backward), expressed in
        Blender world axes (Z up: world (x, y, z) -> (x, -z, y), i.e. ``flip_yz @ c2w``), its
        translation divided by its norm (the camera centre on the unit sphere, as
        ``normalize_camera`` does, so the orbit radius drops out), flattened row-major. Our world and
        azimuth convention (+Y up, azimuth 0 on +Z, 90 on +X) is MVDream's ``create_camera_to_world
        _matrix`` one, so an orbit camera here gives exactly ImageDream's vector. ImageDream feeds an
        all-zero vector for its extra input frame; that choice belongs to the caller (zero
        ``[..., -1, :]`` if wanted), not to this function.
        """
        if self.config.camera_conditioning == "plucker":
            size = size or self.config.sample_size
            if (cameras.width, cameras.height) != (size, size):
                cameras = cameras.resized(size, size)
            return cameras.to(dtype=torch.float32).plucker_rays()  # [B, F, 6, size, size]

        viewmats = cameras.viewmats.float()  # [B, F, 4, 4] OpenCV world-to-camera
        rotation = viewmats[..., :3, :3]  # [B, F, 3, 3]
        c2w_rotation = rotation.transpose(-1, -2)  # [B, F, 3, 3] columns = camera axes in world
        centre = -(c2w_rotation @ viewmats[..., :3, 3:])[..., 0]  # [B, F, 3]
        axes = torch.tensor(_CV_TO_GL_CAMERA, dtype=viewmats.dtype, device=viewmats.device)  # [3]
        c2w_rotation = c2w_rotation * axes  # [B, F, 3, 3] OpenGL camera axes
        centre = centre / (centre.norm(dim=-1, keepdim=True) + 1e-8)  # [B, F, 3] on the unit sphere
        c2w = torch.zeros(viewmats.shape, dtype=viewmats.dtype, device=viewmats.device)  # [B, F, 4, 4]
        c2w[..., :3, :3] = c2w_rotation
        c2w[..., :3, 3] = centre
        c2w[..., 3, 3] = 1.0
        flip_yz = torch.tensor(
            [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]],
            dtype=viewmats.dtype, device=viewmats.device,
        )  # [4, 4] Y-up world -> Blender Z-up world
        return (flip_yz @ c2w).flatten(-2)  # [B, F, 16]

    # -- forward -----------------------------------------------------------------------------------------

    # -- stacked conditioning projections (inference) ------------------------------------------------
    # Every ResBlock projects the same time embedding, and every cross-attention the same context, each with its own
    # small matmul (at batch 1, 5 and 196 rows). Stacked, each group is one wider matmul that the forward runs once;
    # each block then reads its own rows. Made by dd3g.models.fused_projections.fuse_qkv_projections.
    STACKED_BUFFERS = ("stacked_emb_weight", "stacked_emb_bias", "stacked_context_weight")

    @property
    def conditioning_stacked(self) -> bool:
        return "stacked_emb_weight" in self._buffers

    def stack_conditioning_projections(self) -> None:
        self.unstack_conditioning_projections()
        resnets = [m for m in self.modules() if isinstance(m, ResBlock)]
        cross = [m.attn2 for m in self.modules() if isinstance(m, BasicTransformerBlock3D)]
        start = 0
        for resnet in resnets:
            resnet.stacked_rows = (start, start + resnet.emb_proj.out_features)
            start = resnet.stacked_rows[1]
        start = 0
        for attention in cross:
            keys, values = attention.to_k.out_features, attention.to_v.out_features
            attention.stacked_context_rows = (start, start + keys, start + keys + values)
            start += keys + values
            attention._buffers.pop(FUSED_KV, None)  # its own k/v stack is not used once the UNet projects the context
        projections = [r.emb_proj for r in resnets]
        self.register_buffer("stacked_emb_weight", torch.cat([p.weight.detach() for p in projections]), persistent=False)
        self.register_buffer("stacked_emb_bias", torch.cat([p.bias.detach() for p in projections]), persistent=False)
        if cross:  # (a UNet without attention has no context projections)
            self.register_buffer("stacked_context_weight", stack_weights([p for a in cross for p in (a.to_k, a.to_v)]),
                                 persistent=False)

    def unstack_conditioning_projections(self) -> None:
        for name in self.STACKED_BUFFERS:
            self._buffers.pop(name, None)
        for module in self.modules():
            if isinstance(module, ResBlock):
                module.stacked_rows = None
            elif isinstance(module, Attention):
                module.stacked_context_rows = None

    def _stacked_conditioning(self, emb: torch.Tensor, context: torch.Tensor):
        refuse_training(self)
        emb = F.linear(F.silu(emb), self.stacked_emb_weight, self.stacked_emb_bias)  # [N, sum C_out]
        if "stacked_context_weight" in self._buffers:
            context = F.linear(context, self.stacked_context_weight)  # [B, L, sum (k + v) rows]
        return emb, context

    def _run(self, module: nn.Module, *args):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(module, *args)
        return module(*args)

    def forward(
        self,
        sample: torch.Tensor,
        timesteps: Union[torch.Tensor, float, int],
        camera: Union[torch.Tensor, Cameras],
        context: torch.Tensor,
        return_features: bool = False,
        return_dict: bool = True,
    ) -> Union[MultiViewUNetOutput, tuple]:
        """Predict for every frame.

        sample: [B, F, in_channels, H, W] noisy frames (the clean input frame among them).
        timesteps: [B] or [B, F] (per frame; a scalar is broadcast), diffusion steps in [0, 1000).
        camera: [B, F, 6, H, W] Plücker rays or [B, F, 16] matrices (see ``camera_condition``), or a
            ``Cameras`` [B, F], converted here.
        context: [B, L, context_dim] image tokens (zeros for the unconditional branch of CFG).
        return_features: also return the last decoder feature map [B, F, feature_channels, H, W].

        Returns ``MultiViewUNetOutput`` (or ``(sample,)`` / ``(sample, features)`` when not return_dict).
        """
        cfg = self.config
        if sample.ndim != 5 or sample.shape[2] != cfg.in_channels:
            raise ValueError(f"sample must be [B, F, {cfg.in_channels}, H, W], got {tuple(sample.shape)}")
        b, f, _, h, w = sample.shape
        if h % self.downsample_factor or w % self.downsample_factor:
            raise ValueError(f"H and W must be multiples of {self.downsample_factor}, got {h}x{w}")
        if context.ndim != 3 or context.shape[0] != b or context.shape[2] != cfg.context_dim:
            raise ValueError(f"context must be [{b}, L, {cfg.context_dim}], got {tuple(context.shape)}")
        dtype = self.conv_in.weight.dtype
        n = b * f

        # Timestep embedding, one per frame.
        t = torch.as_tensor(timesteps, device=sample.device)
        if t.ndim == 0:
            t = t.expand(b)
        if t.ndim == 1:
            if t.shape[0] != b:
                raise ValueError(f"timesteps must be [B] or [B, F] with B={b}, F={f}, got {tuple(t.shape)}")
            t = t[:, None].expand(b, f)  # [B, F]
        if t.shape != (b, f):
            raise ValueError(f"timesteps must be [B] or [B, F] with B={b}, F={f}, got {tuple(t.shape)}")
        t_emb = get_timestep_embedding(t.reshape(n).float(), cfg.block_out_channels[0], flip_sin_to_cos=True,
                                       downscale_freq_shift=0)  # [N, C0]
        emb = self.time_embedding(t_emb.to(dtype))  # [N, E]

        # Camera conditioning.
        if isinstance(camera, Cameras):
            camera = self.camera_condition(camera, size=h if h == w else None)
        x = sample.reshape(n, cfg.in_channels, h, w).to(dtype)  # [N, C_in, H, W]
        if cfg.camera_conditioning == "plucker":
            if camera.shape != (b, f, PLUCKER_CHANNELS, h, w):
                raise ValueError(f"plucker camera must be [{b}, {f}, 6, {h}, {w}], got {tuple(camera.shape)}")
            x = torch.cat([x, camera.reshape(n, PLUCKER_CHANNELS, h, w).to(dtype)], dim=1)  # [N, C_in + 6, H, W]
        else:
            if camera.shape != (b, f, CAMERA_MATRIX_DIM):
                raise ValueError(f"matrix camera must be [{b}, {f}, 16], got {tuple(camera.shape)}")
            emb = emb + self.camera_embedding(camera.reshape(n, CAMERA_MATRIX_DIM).to(dtype))  # [N, E]
        context = context.to(dtype)  # [B, L, D_ctx]
        if self.conditioning_stacked:  # every block's projections of emb and of the context, one matmul each
            emb, context = self._stacked_conditioning(emb, context)  # [N, sum C_out], [B, L, sum 2 x inner]

        # Encoder.
        x = self.conv_in(x)  # [N, C0, H, W]
        skips = [x]
        for level in self.down_levels:
            for i, resnet in enumerate(level.resnets):
                x = self._run(resnet, x, emb)  # [N, C_l, h, w]
                if len(level.attentions):
                    x = self._run(level.attentions[i], x, context, f)  # [N, C_l, h, w]
                skips.append(x)
            if level.resample is not None:
                x = level.resample(x)  # [N, C_l, h/2, w/2]
                skips.append(x)

        # Middle.
        x = self._run(self.mid_res1, x, emb)  # [N, C_L, h, w]
        if self.mid_attention is not None:
            x = self._run(self.mid_attention, x, context, f)  # [N, C_L, h, w]
        x = self._run(self.mid_res2, x, emb)  # [N, C_L, h, w]

        # Decoder.
        for level in self.up_levels:
            for i, resnet in enumerate(level.resnets):
                x = torch.cat([x, skips.pop()], dim=1)  # [N, C + C_skip, h, w]
                x = self._run(resnet, x, emb)  # [N, C_l, h, w]
                if len(level.attentions):
                    x = self._run(level.attentions[i], x, context, f)  # [N, C_l, h, w]
            if level.resample is not None:
                x = level.resample(x)  # [N, C_l, 2h, 2w]

        features = x  # [N, C0, H, W]
        out = self.conv_out(F.silu(self.norm_out(features)))  # [N, C_out, H, W]
        out = out.view(b, f, cfg.out_channels, h, w)  # [B, F, C_out, H, W]
        feats = features.view(b, f, -1, h, w) if return_features else None  # [B, F, C0, H, W]
        if not return_dict:
            return (out,) if feats is None else (out, feats)
        return MultiViewUNetOutput(sample=out, features=feats)
