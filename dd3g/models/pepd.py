"""PEPD: Pattern Extraction + Progressive Decoding, the feed-forward student (docs/design.md sections 1 and 4).

Phase 1 (pattern extraction) is the teacher's multi-view UNet run *once*, at the sampler's first timestep,
on the same noise N and cameras C the teacher's ODE started from, with the input image as the clean 5th
frame. Its last decoder feature map holds per-view "patterns": the input view copied, the others imagined.
It is the teacher's own network for every teacher (`phase1_architecture`), conditioned as that teacher is:
"mv-unet" (our MultiViewUNet, the tiny teacher): the tokenizer's image tokens, the input frame at t = 0,
per-pixel Plücker cameras; "imagedream" (ImageDream's UNet, weights loaded as they are): its text context (the
prompt's CLIP text tokens, stored in the student as `phase1_text_context`) plus its resampler on the CLIP image
tokens (`phase1_tokens`), the input frame at the views' timestep and an all-zero camera for it, as ImageDream
feeds them. `phase1_prediction` returns the UNet's own output, which the tests hold against the teacher's.

Phase 2 (progressive decoding) patchifies the 4 output views' patterns into tokens, adds each patch of N
itself, concatenates the frozen tokenizer's image tokens, and runs transformer blocks over all of them. Heads
tap the stack at increasing depth: positions first, then scale + rotation, then opacity + colour. After the
position head, Fourier features of the decoded positions are added to the view tokens, so later blocks attend
with geometry known. Every view token emits `gaussians_per_token` Gaussians.

Why N reaches phase 2 directly: at the first sampler timestep the teacher's UNet sees next to no signal, so its
prediction (v ~ -x0 under v-prediction) is a function of the image and cameras alone; a UNet trained there learns
to drop N, and its features carry little of it. Yet the teacher's later steps keep N (its epsilon part) and that is
what makes its seeds differ. Without this path a student sees almost nothing that tells one seed from another and
learns the per-image mean (measured on a CPU toy: outputs for different seeds agreed to 46.6 dB). The path makes
N readable, not used: a student trained on plain MSE learned the per-image mean and ignored it; with the
seed-deviation term of training/distill.py it follows it in part, and with the seed-spread term as well its seeds
vary 0.6-0.7 as much as the teacher's (hub/dd3g-tiny/README.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from torch import Tensor, nn

from ..cameras import Cameras
from ..gaussians import Gaussians
from ..student_inputs import SAMPLE_SPACES
from .imagedream_unet import ImageDreamUNet, imagedream_camera_vectors
from .mv_unet import MultiViewUNet


@dataclass
class PEPDOutput(BaseOutput):
    gaussians: Gaussians  # batch [B], N = views * tokens_per_view * gaussians_per_token


class TransformerBlock(nn.Module):
    """Pre-norm self-attention + MLP over a token set (the point-transformer block of phase 2)."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))

    def forward(self, x: Tensor) -> Tensor:  # x [B, L, D]
        b, length, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v)  # [B, heads, L, D / heads]
        x = x + self.proj(attended.transpose(1, 2).reshape(b, length, width))
        return x + self.mlp(self.norm2(x))


def fourier_features(x: Tensor, num_frequencies: int) -> Tensor:
    """sin/cos of x at octave frequencies.  x [..., C] -> [..., C * 2 * num_frequencies]"""
    freqs = (2.0 ** torch.arange(num_frequencies, device=x.device, dtype=x.dtype)) * math.pi  # [F]
    angles = x[..., None] * freqs  # [..., C, F]
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)


# The network of phase 1: our MultiViewUNet (the tiny teacher's) or ImageDream's UNet, each the teacher's own.
PHASE1_ARCHITECTURES = {"mv-unet": MultiViewUNet, "imagedream": ImageDreamUNet}
# Where a Gaussian's mean comes from: "free", a 3D point per Gaussian inside the ball; "pixel-aligned", a depth
# along the ray through its own pixel of its view (Splatter Image / LGM style), so what a view's token sees in
# its patch lands where that patch looks.
POSITION_MODES = ("free", "pixel-aligned")


def _init_config(model: ConfigMixin) -> Dict[str, Any]:
    """The constructor arguments of a diffusers model (its config without the bookkeeping keys)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.config.items() if not k.startswith("_")}


class PEPD(ModelMixin, ConfigMixin):
    """Noise + cameras + image -> 3D Gaussians in one pass."""

    PRESETS: Dict[str, Dict[str, Any]] = {
        # 4 views x 16 x 16 tokens x 16 Gaussians = 16,384 Gaussians, one per pixel of the 4 views at 64 px, on that
        # pixel's ray; the input view's Gaussians start from the input's colours. Phase 1 is the tiny teacher's UNet.
        "tiny": dict(unet_preset="tiny", patch_size=4, width=256, num_heads=4, blocks_before_means=2,
                     blocks_before_shape=2, blocks_before_appearance=2, image_token_dim=112, sample_space="rgba",
                     position_mode="pixel-aligned", input_colour_anchor=True),
        # 4 views x 32 x 32 latent tokens x 16 = 65,536 Gaussians. Built alone, phase 1 is a MultiViewUNet shaped like
        # ImageDream's (for timing); PEPD.from_teacher(ImageDream teacher, preset="base") puts ImageDream's own UNet there
        # and takes sample_space from the teacher (the value here is for the standalone build).
        "base": dict(unet_preset="base", patch_size=1, width=768, num_heads=12, blocks_before_means=4,
                     blocks_before_shape=2, blocks_before_appearance=2, image_token_dim=112, sample_space="sd-vae"),
        # base's structure at toy widths, for CPU tests.
        "base-small": dict(unet_preset="base-small", patch_size=1, width=64, num_heads=2, blocks_before_means=1,
                           blocks_before_shape=1, blocks_before_appearance=1, image_token_dim=112, sample_space="sd-vae"),
    }

    @register_to_config
    def __init__(
        self,
        unet_preset: Optional[str] = "tiny",
        unet_config: Optional[Dict[str, Any]] = None,
        num_views: int = 4,
        patch_size: int = 4,
        gaussians_per_token: int = 16,
        width: int = 256,
        num_heads: int = 4,
        blocks_before_means: int = 2,
        blocks_before_shape: int = 2,
        blocks_before_appearance: int = 2,
        image_token_dim: int = 112,
        fourier_frequencies: int = 6,
        position_bound: float = 0.6,
        min_scale: float = 1e-3,
        max_scale: float = 0.1,
        initial_scale: float = 0.02,
        initial_opacity: float = 0.1,
        phase1_timestep: int = 999,
        sample_space: str = "rgba",
        position_mode: str = "free",
        input_colour_anchor: bool = False,
        phase1_architecture: str = "mv-unet",
        phase1_text_tokens: int = 77,
    ):
        super().__init__()
        if phase1_architecture not in PHASE1_ARCHITECTURES:
            raise ValueError(f"phase1_architecture must be one of {sorted(PHASE1_ARCHITECTURES)}, got {phase1_architecture!r}")
        if sample_space not in SAMPLE_SPACES:
            raise ValueError(f"sample_space must be one of {SAMPLE_SPACES}, got {sample_space!r}")
        if position_mode not in POSITION_MODES:
            raise ValueError(f"position_mode must be one of {POSITION_MODES}, got {position_mode!r}")
        if input_colour_anchor and (position_mode != "pixel-aligned" or sample_space != "rgba"):
            raise ValueError("input_colour_anchor needs position_mode='pixel-aligned' and sample_space='rgba' "
                             "(view 0's Gaussians take the colours of the input frame's pixels)")
        if unet_config is None:
            if unet_preset is None:
                raise ValueError("PEPD needs unet_preset or unet_config")
            if phase1_architecture != "mv-unet":
                raise ValueError(f"a {phase1_architecture!r} phase 1 is built from its teacher's unet_config (PEPD.from_teacher), not a preset")
            unet_config = dict(MultiViewUNet.PRESETS[unet_preset])
            self.register_to_config(unet_config=unet_config)
        self.unet = PHASE1_ARCHITECTURES[phase1_architecture](**unet_config)
        # Phase 1 uses the UNet's features, not its denoising output: freeze that head (kept so the teacher's
        # weights load as they are) so every trainable parameter gets a gradient, as DDP requires.
        for head in self._phase1_output_head():
            head.requires_grad_(False)
        if phase1_architecture == "mv-unet" and self.unet.config.num_frames != num_views + 1:
            raise ValueError(f"the UNet has {self.unet.config.num_frames} frames; PEPD needs {num_views} views + the input frame")
        if phase1_architecture == "imagedream":
            if self.unet.config.ip_dim <= 0:
                raise ValueError("an ImageDream phase 1 needs the image-prompt adapter (ip_dim > 0)")
            # The prompt's text tokens ImageDream cross-attends to (77 CLIP tokens of "" by default): fixed per
            # teacher, so stored here instead of shipping the text encoder; PEPD.from_teacher fills them in.
            self.register_buffer("phase1_text_context", torch.zeros(1, phase1_text_tokens, self.unet.config.context_dim))
        sample_size = self.sample_size
        if sample_size % patch_size:
            raise ValueError(f"patch_size {patch_size} must divide the UNet's sample size {sample_size}")
        self.grid = sample_size // patch_size
        if position_mode == "pixel-aligned" and gaussians_per_token % (patch_size * patch_size):
            raise ValueError(f"pixel-aligned Gaussians need gaussians_per_token ({gaussians_per_token}) to be a multiple of "
                             f"the pixels of a patch ({patch_size}x{patch_size})")
        patch_dim = self.unet.feature_channels * patch_size * patch_size
        in_channels = self.unet.config.in_channels

        self.patch_embed = nn.Linear(patch_dim, width)
        noise_channels = in_channels * patch_size * patch_size
        self.noise_embed = nn.Linear(noise_channels, width)  # N's own patch: the seed's identity (module docstring)
        self.ray_embed = nn.Linear(6, width)  # the patch centre's Plücker ray: where this token looks from
        self.view_embed = nn.Parameter(torch.zeros(num_views, width))
        self.image_embed = nn.Linear(image_token_dim, width)
        # An mv-unet phase 1 cross-attends to the image tokens; one with another context width (the `base` preset:
        # 1024) gets a learned projection. An ImageDream phase 1 has its own image prompt (phase1_tokens).
        context_dim = self.unet.config.context_dim
        if phase1_architecture == "imagedream" or context_dim == image_token_dim:
            self.context_projection = nn.Identity()
        else:
            self.context_projection = nn.Linear(image_token_dim, context_dim)
        self.image_type = nn.Parameter(torch.zeros(width))

        def blocks(n):
            return nn.ModuleList([TransformerBlock(width, num_heads) for _ in range(n)])

        self.blocks_means = blocks(blocks_before_means)
        self.blocks_shape = blocks(blocks_before_shape)
        self.blocks_appearance = blocks(blocks_before_appearance)
        self.norm_means, self.norm_shape, self.norm_appearance = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        k = gaussians_per_token
        self.head_means = nn.Linear(width, k * 3)
        self.means_encoding = nn.Linear(k * 3 * 2 * fourier_frequencies, width)
        self.head_shape = nn.Linear(width, k * (3 + 4))  # log-scale logits + quaternion
        self.head_appearance = nn.Linear(width, k * (1 + 3))  # opacity logit + SH DC
        self._init_heads()

    def _init_heads(self):
        cfg = self.config
        k = cfg.gaussians_per_token
        for head in (self.head_means, self.head_shape, self.head_appearance):
            nn.init.normal_(head.weight, std=1e-3)
            nn.init.zeros_(head.bias)
        # Start as small, faint, grey, axis-aligned splats spread through the volume.
        scale_fraction = (math.log(cfg.initial_scale) - math.log(cfg.min_scale)) / (math.log(cfg.max_scale) - math.log(cfg.min_scale))
        shape_bias = self.head_shape.bias.view(k, 7)
        shape_bias.data[:, :3] = math.log(scale_fraction / (1 - scale_fraction))
        shape_bias.data[:, 3] = 1.0
        appearance_bias = self.head_appearance.bias.view(k, 4)
        appearance_bias.data[:, 0] = math.log(cfg.initial_opacity / (1 - cfg.initial_opacity))
        if cfg.position_mode == "free":
            with torch.no_grad():
                self.head_means.bias.normal_(std=0.5)  # distinct positions for the k Gaussians of a token
        # pixel-aligned: zero bias, every Gaussian starts where its ray passes closest to the centre

    @classmethod
    def preset(cls, name: str, **overrides) -> "PEPD":
        if name not in cls.PRESETS:
            raise ValueError(f"unknown PEPD preset {name!r}; choose from {sorted(cls.PRESETS)}")
        return cls(**{**cls.PRESETS[name], **overrides})

    def _phase1_output_head(self) -> tuple:
        if isinstance(self.unet, ImageDreamUNet):
            return (self.unet.out,)
        return (self.unet.norm_out, self.unet.conv_out)

    @property
    def sample_size(self) -> int:
        """Side of phase 1's frames (N and the input frame): pixels for "rgba", latents for "sd-vae"."""
        unet = self.unet.config
        return int(unet.image_size if isinstance(self.unet, ImageDreamUNet) else unet.sample_size)

    @property
    def needs_image_prompt(self) -> bool:
        """Whether forward needs `phase1_tokens` (the teacher's CLIP image tokens): an ImageDream phase 1."""
        return self.config.phase1_architecture == "imagedream"

    @property
    def noise_shape(self) -> tuple:
        """Shape of one sample's noise N: [views, channels, H, W] (the teacher's x_T for the output views)."""
        return (self.config.num_views, self.unet.config.in_channels, self.sample_size, self.sample_size)

    @property
    def num_gaussians(self) -> int:
        return self.config.num_views * self.grid * self.grid * self.config.gaussians_per_token

    def load_phase1_from_teacher(self, teacher_unet, text_context: Optional[Tensor] = None) -> None:
        """Initialise phase 1 from the teacher's weights (the architectures must match)."""
        if _init_config(teacher_unet) != _init_config(self.unet) or type(teacher_unet) is not type(self.unet):
            raise ValueError("the teacher UNet's config differs from PEPD's phase 1; build it with PEPD.from_teacher(...)")
        self.unet.load_state_dict(teacher_unet.state_dict())
        if self.needs_image_prompt:
            if text_context is None or tuple(text_context.shape) != tuple(self.phase1_text_context.shape):
                raise ValueError(f"an ImageDream phase 1 needs the teacher's text context {tuple(self.phase1_text_context.shape)}, "
                                 f"got {None if text_context is None else tuple(text_context.shape)}")
            self.phase1_text_context.copy_(text_context.detach())

    @classmethod
    def from_teacher(cls, teacher, preset: Optional[str] = None, **config) -> "PEPD":
        """A PEPD whose phase 1 is a copy of the teacher's own UNet.

        `teacher`: a MultiViewTeacher (the tiny teacher or ImageDream: its UNet at the sampler's first timestep,
        its sample space, and ImageDream's text context), a MultiViewUNet, or a MultiViewUNet save_pretrained folder.
        Phase 2 comes from `preset` and `config`; `sample_space` always comes from the teacher.
        """
        from ..student_inputs import first_timestep
        from ..teachers.base import MultiViewTeacher

        text_context = None
        if isinstance(teacher, MultiViewTeacher):
            first_step = first_timestep(teacher.scheduler_config)
            teacher_unet = teacher.phase1_unet(first_step)
            sample_space = teacher.sample_space
            config.setdefault("phase1_timestep", first_step)
            if isinstance(teacher_unet, ImageDreamUNet):
                if getattr(teacher, "input_frame_timestep", "views") != "views":
                    raise ValueError("the student's ImageDream phase 1 gives the input frame the views' timestep, as "
                                     "ImageDream does; load the teacher with input_frame_timestep='views'")
                text_context = teacher.prompt_context()
        else:
            teacher_unet = teacher
            if not isinstance(teacher_unet, (MultiViewUNet, ImageDreamUNet)):
                teacher_unet = MultiViewUNet.from_pretrained(teacher_unet, use_safetensors=True)
            sample_space = config.pop("sample_space", "rgba")
        architecture = "imagedream" if isinstance(teacher_unet, ImageDreamUNet) else "mv-unet"
        settings = dict(cls.PRESETS[preset]) if preset else {}
        settings.update(config, unet_preset=None, unet_config=_init_config(teacher_unet), sample_space=sample_space,
                        phase1_architecture=architecture)
        if text_context is not None:
            settings["phase1_text_tokens"] = int(text_context.shape[1])
        if sample_space != "rgba" and "input_colour_anchor" not in config:
            settings["input_colour_anchor"] = False  # the anchor reads pixel colours; a latent frame has none
        student = cls(**settings)
        student.load_phase1_from_teacher(teacher_unet, text_context)
        return student.to(teacher_unet.dtype)

    def phase1_features(self, noise: Tensor, input_frame: Tensor, cameras: Cameras, image_tokens: Tensor,
                        phase1_tokens: Optional[Tensor] = None) -> Tensor:
        """Phase 1 once: the last decoder features of all frames [B, V+1, Cf, H, W] (shapes as in forward)."""
        return self._phase1(noise, input_frame, cameras, image_tokens, phase1_tokens, features=True)

    def phase1_prediction(self, noise: Tensor, input_frame: Tensor, cameras: Cameras, image_tokens: Tensor,
                          phase1_tokens: Optional[Tensor] = None) -> Tensor:
        """Phase 1's UNet output (the teacher's denoising prediction) for all frames [B, V+1, C, H, W]."""
        return self._phase1(noise, input_frame, cameras, image_tokens, phase1_tokens, features=False)

    def _phase1(self, noise, input_frame, cameras, image_tokens, phase1_tokens, features: bool) -> Tensor:
        b, v = noise.shape[:2]
        frames = torch.cat([noise, input_frame[:, None].to(noise.dtype)], dim=1)  # [B, V+1, C, H, W]
        timesteps = torch.full((b, v + 1), float(self.config.phase1_timestep), device=noise.device)
        if isinstance(self.unet, MultiViewUNet):
            timesteps[:, -1] = 0  # our teachers see the input frame clean
            camera = self.unet.camera_condition(cameras).to(noise.dtype)
            context = self.context_projection(image_tokens.to(noise.dtype))  # [B, L, context_dim]
            out = self.unet(frames, timesteps, camera, context, return_features=features)
            return out.features if features else out.sample
        # ImageDream: one t for all frames (the clean input frame included), an all-zero camera for the input
        # frame, context = the prompt's text tokens + the resampled CLIP image tokens.
        if phase1_tokens is None:
            raise ValueError("an ImageDream phase 1 needs phase1_tokens: the teacher's CLIP image tokens [B, T, E]")
        camera = imagedream_camera_vectors(cameras.to(noise.device))  # [B, V+1, 16]
        camera[:, -1] = 0.0
        text = self.phase1_text_context.to(noise.dtype).expand(b, -1, -1)  # [B, 77, D]
        context = torch.cat([text, self.unet.image_prompt_tokens(phase1_tokens)], dim=1)  # [B, 77 + ip_dim, D]
        return self.unet(frames, timesteps, camera, context, return_features=features)

    def forward(
        self,
        noise: Tensor,  # [B, V, C, H, W] the teacher's initial noise for the output views
        input_frame: Tensor,  # [B, C, H, W] the input image in the teacher's sample space (clean)
        cameras: Cameras,  # [B, V + 1]: the output views, then the input view
        image_tokens: Tensor,  # [B, L, image_token_dim] from the frozen tokenizer
        phase1_tokens: Optional[Tensor] = None,  # [B, T, E] the teacher's CLIP image tokens (ImageDream phase 1)
        return_dict: bool = True,
    ):
        cfg = self.config
        b, v = noise.shape[:2]
        if v != cfg.num_views or tuple(noise.shape[1:]) != self.noise_shape:
            raise ValueError(f"noise must be [B, {', '.join(map(str, self.noise_shape))}], got {tuple(noise.shape)}")
        if cameras.shape != (b, v + 1):
            raise ValueError(f"cameras must be [B, {v + 1}] (output views + input view), got {tuple(cameras.shape)}")

        # Phase 1: the teacher's UNet once, output views at the first sampler timestep, conditioned as the teacher is.
        features = self.phase1_features(noise, input_frame, cameras, image_tokens, phase1_tokens)
        features = features[:, :v].to(noise.dtype)  # [B, V, Cf, H, W]: the output views' patterns

        # Tokens: patchified patterns + the same patch of N + the ray through each patch centre + which view.
        p, g = cfg.patch_size, self.grid

        def patchify(x: Tensor) -> Tensor:  # [B, V, C, H, W] -> [B, V, g, g, C*p*p]
            return x.reshape(b, v, -1, g, p, g, p).permute(0, 1, 3, 5, 2, 4, 6).flatten(4)

        patches, noise_patches = patchify(features), patchify(noise)  # [B, V, g, g, Cf*p*p], [B, V, g, g, C*p*p]
        rays = cameras[:, :v].resized(g, g).plucker_rays().to(noise.dtype).permute(0, 1, 3, 4, 2)  # [B, V, g, g, 6]
        view_tokens = (self.patch_embed(patches) + self.noise_embed(noise_patches) + self.ray_embed(rays)
                       + self.view_embed[None, :, None, None])
        view_tokens = view_tokens.reshape(b, v * g * g, -1)  # [B, T, D]
        image = self.image_embed(image_tokens.to(noise.dtype)) + self.image_type  # [B, L, D]
        num_view_tokens = view_tokens.shape[1]
        tokens = torch.cat([view_tokens, image], dim=1)  # [B, T + L, D]

        # Phase 2: geometry first, then shape, then appearance.
        k = cfg.gaussians_per_token
        for block in self.blocks_means:
            tokens = block(tokens)
        raw_means = self.head_means(self.norm_means(tokens[:, :num_view_tokens])).reshape(b, -1, k, 3)
        if cfg.position_mode == "pixel-aligned":
            means = self._pixel_aligned_means(raw_means[..., 0], cameras[:, :v])  # [B, T, k, 3]
        else:
            radius = raw_means.norm(dim=-1, keepdim=True).clamp_min(1e-6)
            means = raw_means * (cfg.position_bound * torch.tanh(radius) / radius)  # [B, T, k, 3] inside the ball
        encoding = self.means_encoding(fourier_features(means.flatten(2) / cfg.position_bound, cfg.fourier_frequencies))
        tokens = torch.cat([tokens[:, :num_view_tokens] + encoding, tokens[:, num_view_tokens:]], dim=1)
        for block in self.blocks_shape:
            tokens = block(tokens)
        shape = self.head_shape(self.norm_shape(tokens[:, :num_view_tokens])).reshape(b, -1, k, 7)
        for block in self.blocks_appearance:
            tokens = block(tokens)
        appearance = self.head_appearance(self.norm_appearance(tokens[:, :num_view_tokens])).reshape(b, -1, k, 4)

        sh_dc = appearance[..., 1:]  # [B, T, k, 3]
        if cfg.input_colour_anchor:
            sh_dc = sh_dc + self._input_colour_anchor(input_frame, v)

        log_min, log_max = math.log(cfg.min_scale), math.log(cfg.max_scale)
        log_scales = log_min + (log_max - log_min) * torch.sigmoid(shape[..., :3])  # clamped scales
        gaussians = Gaussians(
            means=means.reshape(b, -1, 3),
            log_scales=log_scales.reshape(b, -1, 3),
            quats=shape[..., 3:].reshape(b, -1, 4),
            opacity_logits=appearance[..., 0].reshape(b, -1),
            sh_dc=sh_dc.reshape(b, -1, 3),
        )
        if not return_dict:
            return (gaussians,)
        return PEPDOutput(gaussians=gaussians)

    def _per_token_pixels(self, x: Tensor) -> Tensor:
        """A view-major pixel map to the Gaussians' layout: [B, V, H, W, C] -> [B, V*g*g, k, C], Gaussian j of a
        token on pixel j mod p*p of its patch (row-major)."""
        b, v, _, _, c = x.shape
        g, p, k = self.grid, self.config.patch_size, self.config.gaussians_per_token
        x = x.reshape(b, v, g, p, g, p, c).permute(0, 1, 2, 4, 3, 5, 6).reshape(b, v * g * g, p * p, c)
        return x.repeat(1, 1, k // (p * p), 1)

    def _pixel_aligned_means(self, raw_depth: Tensor, cameras: Cameras) -> Tensor:
        """Means on each Gaussian's pixel ray: the ray's closest approach to the world origin, moved along the ray
        by up to +-position_bound (the object's ball).  raw_depth [B, T, k] -> means [B, T, k, 3]"""
        size = self.sample_size
        origins, dirs = cameras.resized(size, size).pixel_rays()  # [B, V, S, S, 3] each, S the phase-1 grid
        origins, dirs = (self._per_token_pixels(x.to(raw_depth.dtype)) for x in (origins, dirs))  # [B, T, k, 3]
        closest = -(origins * dirs).sum(-1)  # [B, T, k] depth of the point nearest the origin
        depth = closest + self.config.position_bound * torch.tanh(raw_depth)
        return origins + depth[..., None] * dirs

    def _input_colour_anchor(self, input_frame: Tensor, num_views: int) -> Tensor:
        """View 0 is the input camera (ViewLayout): its Gaussians start from the input frame's pixel colours, so
        the photo's colours need not be relearned through the network.  [B, C, H, W] -> SH DC offsets [B, T, k, 3]"""
        from ..gaussians import SH_C0

        rgb = (input_frame[:, :3].float() + 1) / 2  # [B, 3, H, W] in [0, 1]
        anchor = ((rgb - 0.5) / SH_C0).permute(0, 2, 3, 1)[:, None]  # [B, 1, H, W, 3]
        views = torch.cat([anchor, torch.zeros_like(anchor).expand(-1, num_views - 1, -1, -1, -1)], dim=1)
        return self._per_token_pixels(views).to(input_frame.dtype)
