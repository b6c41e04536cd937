"""The student's inputs built from RGBA images, in one place.

Serving (`DD3GPipeline`), training (`training/distill.py`) and the teachers (their clean input frame and image
prompt) all build these through this module, so what the student sees at training and at serving time cannot
drift apart:

* image tokens: the student's own frozen tokenizer on the image composited on white (phase 2);
* the input frame: the image in the teacher's sample space, the clean last frame of phase 1: pixel RGBA in
  [-1, 1] at the phase-1 size ("rgba", the tiny teacher), or, for a latent teacher ("sd-vae", ImageDream), the
  image on white at the *image* resolution through the teacher's VAE encoder;
* phase-1 image-prompt tokens (ImageDream phase 1 only): the teacher's CLIP tokens of the image on white;
* cameras: the teacher's view layout, output views then the input view, at the views' pixel size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .cameras import Cameras, ViewLayout
from .preprocess import composite_on

# The teacher's sample space, where N and the clean input frame live: pixel RGBA in [-1, 1] (the tiny teacher)
# or the latents of an SD VAE (ImageDream).
SAMPLE_SPACES = ("rgba", "sd-vae")


def ddim_from_config(config):
    """The DDIM every teacher samples with, and that every exported student records as its `scheduler`: eta 0,
    trailing spacing (the first step starts from pure noise at t = T - 1), no clipping, the teacher's betas."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(config, timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=True)


def first_timestep(scheduler_config) -> int:
    """The timestep of a one-step DDIM of this schedule: where the teacher's sampling starts, so the timestep the
    student's phase 1 runs at (its noise N is pure noise at that t)."""
    scheduler = ddim_from_config(scheduler_config)
    scheduler.set_timesteps(1)
    return int(scheduler.timesteps[0])


def _resize(images: Tensor, size: int, antialias: bool) -> Tensor:
    """[..., C, H, W] -> [..., C, size, size] (bilinear), unchanged when already that size."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    lead = images.shape[:-3]
    flat = F.interpolate(images.reshape(-1, *images.shape[-3:]), size=(size, size), mode="bilinear", antialias=antialias, align_corners=False)
    return flat.reshape(*lead, *flat.shape[-3:])


def canonical_straight_rgba(rgba: Tensor) -> Tensor:
    """RGBA [..., 4, H, W] straight alpha -> the same with black colour wherever alpha is 0.

    Straight alpha leaves a fully transparent pixel's colour undefined, and inputs differ there: `preprocess` writes
    white, a PNG cut-out keeps its photo's background, a flat test image its own colour, while every render the models
    are trained on (`RenderOutput.rgba`) has black. The "rgba" frame carries that colour into the model, which reads it:
    the tiny teacher copied a cream disk on a cream transparent background as brown (76/255 off) and on a black one
    within 9/255. So every input is brought to the renders' convention first.
    """
    alpha = rgba[..., 3:, :, :]  # [..., 1, H, W]
    return torch.cat([rgba[..., :3, :, :] * (alpha > 0), alpha], dim=-3)


def encode_input_frame(rgba: Tensor, sample_space: str, sample_size: int, frame_encoder=None) -> Tensor:
    """RGBA [..., 4, S, S] straight alpha in [0, 1] -> the image in the teacher's sample space [..., C, h, w].

    "rgba": black where transparent (`canonical_straight_rgba`), resized to the phase-1 size and scaled to [-1, 1].
    "sd-vae": composited on white (the latent teachers are RGB), resized to the encoder's *image* resolution (never
    to the latent size in pixels), scaled to [-1, 1] and encoded by `frame_encoder` (a `LatentFrameEncoder`, or any
    callable doing the same); differentiable.
    """
    if sample_space == "rgba":
        return _resize(canonical_straight_rgba(rgba), sample_size, antialias=True) * 2 - 1
    if sample_space != "sd-vae":
        raise ValueError(f"sample_space must be one of {SAMPLE_SPACES}, got {sample_space!r}")
    if frame_encoder is None:
        raise ValueError("encoding the input frame into the 'sd-vae' sample space needs the teacher's VAE encoder "
                         "(a LatentFrameEncoder); none was given")
    image_size = int(frame_encoder.config.image_size)
    lead = rgba.shape[:-3]
    rgb = composite_on(rgba.float()).reshape(-1, 3, *rgba.shape[-2:])  # [N, 3, S, S] on white
    rgb = _resize(rgb, image_size, antialias=rgb.shape[-1] > image_size)
    latents = frame_encoder(rgb * 2 - 1).float()  # [N, C, h, w]
    if latents.shape[-1] != sample_size:
        raise ValueError(f"the frame encoder gives {latents.shape[-1]} px latents; the student's phase 1 works at {sample_size}")
    return latents.reshape(*lead, *latents.shape[1:])


def image_prompt_tokens(rgba: Tensor, prompt_encoder) -> Tensor:
    """RGBA [B, 4, S, S] -> the teacher's CLIP image tokens [B, T, E] of the image on white."""
    return prompt_encoder(composite_on(rgba.float()))


def tokenize(rgba: Tensor, tokenizer) -> Tensor:
    """RGBA [B, 4, S, S] -> the frozen tokenizer's tokens [B, L, D] of the image on white."""
    return tokenizer(composite_on(rgba).to(tokenizer.dtype))


@dataclass
class StudentInputs:
    image_tokens: Tensor  # [B, L, D] phase 2's tokens
    input_frame: Tensor  # [B, C, h, w] the clean input frame in the teacher's sample space
    phase1_tokens: Optional[Tensor]  # [B, T, E] the image prompt of an ImageDream phase 1, else None


class StudentInputBuilder:
    """What the student needs besides N, from images and elevations, for one student and its encoders."""

    def __init__(self, student, tokenizer, layout: ViewLayout, frame_encoder=None, prompt_encoder=None, check: bool = True):
        self.sample_space = student.config.sample_space
        self.sample_size = student.sample_size
        self.needs_prompt = student.needs_image_prompt
        self.tokenizer, self.layout = tokenizer, layout
        self.frame_encoder, self.prompt_encoder = frame_encoder, prompt_encoder
        problem = self.missing_parts() if check else None
        if problem:
            raise ValueError(problem)

    def missing_parts(self) -> Optional[str]:
        """Why this student cannot run with these encoders, or None."""
        if self.sample_space == "sd-vae" and self.frame_encoder is None:
            return ("the student works in the 'sd-vae' sample space and needs the teacher's VAE encoder (frame_encoder), "
                    "which is missing")
        if self.needs_prompt and self.prompt_encoder is None:
            return "the student's ImageDream phase 1 needs the teacher's CLIP image encoder (prompt_encoder), which is missing"
        return None

    @property
    def view_size(self) -> int:
        """Pixel side of the teacher's views: the renders and cameras of training and serving."""
        if self.sample_space == "sd-vae":
            return int(self.frame_encoder.config.image_size)
        return int(self.sample_size)

    def images(self, rgba: Tensor) -> StudentInputs:
        """rgba [B, 4, S, S] -> tokens, input frame and phase-1 tokens, on the tokenizer's device."""
        device = self.tokenizer.device
        rgba = rgba.to(device)
        with torch.no_grad():  # every encoder here is frozen
            tokens = tokenize(rgba, self.tokenizer)
            frame = encode_input_frame(rgba, self.sample_space, self.sample_size, self.frame_encoder)
            prompt = image_prompt_tokens(rgba, self.prompt_encoder) if self.needs_prompt else None
        return StudentInputs(tokens, frame, prompt)

    def cameras(self, elevation_deg, count: int, azimuth_offset_deg=0.0) -> Cameras:
        """[count, V + 1] cameras at the views' size: the output views, then the input view."""
        elevation = torch.as_tensor(elevation_deg, dtype=torch.float32).expand(count)
        size = self.view_size
        return self.layout.cameras(size, size, elevation_deg=elevation, azimuth_offset_deg=azimuth_offset_deg, include_input=True)
