"""The tiny teacher: our own pixel-space RGBA multi-view diffusion model (docs/design.md section 4, "Tiny teacher").

Frames are the 4 output views (noisy) plus the clean input image as a 5th frame, RGBA at 64 px scaled to
[-1, 1]; cameras enter as per-pixel Plücker rays; the input image also enters through cross-attention to its
frozen EfficientNet-Lite0 tokens. v-prediction, 1000 training steps; sampled with DDIM (eta = 0, trailing).
The unconditional branch of classifier-free guidance sees zero tokens and a zero input frame.

An optional high-noise expert (eDiff-I's ensemble of expert denoisers, with two members) takes the timesteps
from `high_noise_start` up. At 64 px with the cosine schedule only t >= ~995 hides every view's mean colour in
the noise, so only there must the network place the views from the input and the cameras alone; a single UNet
trained on uniform t learns to read the noise instead and stays camera-blind at the sampler's first step
(t = 999), which decides the views' layout. The expert is trained on that range alone.

Stored as `TinyMVDMPipeline` (save_pretrained layout: unet/, image_encoder/, scheduler/, optionally
high_noise_unet/); `TinyTeacher` adapts it to the `MultiViewTeacher` interface.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from diffusers import DDPMScheduler, DiffusionPipeline
from torch import Tensor

from ..cameras import Cameras, ViewLayout
from ..models.image_tokenizer import EfficientNetLite0Tokenizer
from ..models.mv_unet import MultiViewUNet
from ..student_inputs import encode_input_frame, tokenize
from .base import MultiViewTeacher, SimulationResult, TeacherCondition


def training_scheduler() -> DDPMScheduler:
    """The tiny teacher's noise schedule: cosine (better than linear at 64 px), v-prediction, 1000 steps."""
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", clip_sample=False)


class TinyMVDMPipeline(DiffusionPipeline):
    """Storage and one-call sampling for the tiny teacher: image -> 4 RGBA views."""

    _optional_components = ["high_noise_unet"]

    def __init__(
        self,
        unet: MultiViewUNet,
        image_encoder: EfficientNetLite0Tokenizer,
        scheduler: DDPMScheduler,
        high_noise_unet: Optional[MultiViewUNet] = None,
        radius: float = 2.0,
        fov_deg: float = 40.0,
        guidance_scale: float = 3.0,
        high_noise_start: int = 1000,
    ):
        super().__init__()
        if high_noise_unet is not None:
            shape = lambda u: (u.config.num_frames, u.config.in_channels, u.config.sample_size, u.config.camera_conditioning)  # noqa: E731
            if shape(high_noise_unet) != shape(unet):
                raise ValueError(f"high_noise_unet (frames, channels, size, camera conditioning) {shape(high_noise_unet)} "
                                 f"must match unet's {shape(unet)}")
        self.register_modules(unet=unet, image_encoder=image_encoder, scheduler=scheduler, high_noise_unet=high_noise_unet)
        self.register_to_config(radius=radius, fov_deg=fov_deg, guidance_scale=guidance_scale, high_noise_start=high_noise_start)

    @torch.no_grad()
    def __call__(self, images: Tensor, seeds: Sequence[int], num_inference_steps: int = 30, guidance_scale: Optional[float] = None, elevation_deg=0.0) -> SimulationResult:
        """images [B, 4, S, S] straight-alpha RGBA -> the deterministic DDIM views (see MultiViewTeacher.simulate)."""
        return TinyTeacher(self).simulate(images, seeds, num_inference_steps, guidance_scale, elevation_deg)


class TinyTeacher(MultiViewTeacher):
    teacher_id = "mvdm-tiny"
    sample_space = "rgba"

    def __init__(self, pipe: TinyMVDMPipeline):
        self.pipe = pipe
        self.default_guidance_scale = float(pipe.config.guidance_scale)

    @classmethod
    def from_pretrained(cls, path, device="cpu", dtype=torch.float32) -> "TinyTeacher":
        pipe = TinyMVDMPipeline.from_pretrained(path, use_safetensors=True, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe.to(device))

    # ------------------------------------------------------------------ hooks
    @property
    def unet(self) -> MultiViewUNet:
        return self.pipe.unet

    @property
    def layout(self) -> ViewLayout:
        return ViewLayout(num_views=self.unet.config.num_frames - 1, radius=self.pipe.config.radius, fov_deg=self.pipe.config.fov_deg)

    @property
    def noise_shape(self) -> tuple:
        size = self.unet.config.sample_size
        return (self.unet.config.num_frames - 1, self.unet.config.in_channels, size, size)

    @property
    def image_size(self) -> int:
        return self.unet.config.sample_size

    @property
    def scheduler_config(self) -> dict:
        return dict(self.pipe.scheduler.config)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def condition(self, images: Tensor) -> TeacherCondition:
        images = images.to(self.device)  # [B, 4, S, S]
        tokens = tokenize(images, self.pipe.image_encoder)  # [B, L, D]: the student's phase-2 tokens too
        frame = self.encode(images)  # [B, 4, h, w]
        return TeacherCondition(tokens, frame, torch.zeros_like(tokens), torch.zeros_like(frame))

    def encode(self, images: Tensor) -> Tensor:
        return encode_input_frame(images, self.sample_space, self.image_size)

    def decode(self, samples: Tensor) -> Tensor:
        return ((samples + 1) / 2).clamp(0, 1)

    def denoise(self, frames: Tensor, timesteps: Tensor, cameras: Cameras, context: Tensor) -> Tensor:
        """frames [B, F, C, h, w], timesteps [B, F] (the output views share one t; the input frame is at 0)."""
        expert = self.pipe.high_noise_unet
        if expert is None:
            return self._run(self.unet, frames, timesteps, cameras, context)
        high = timesteps.amax(dim=1) >= self.pipe.config.high_noise_start  # [B]
        if not high.any():
            return self._run(self.unet, frames, timesteps, cameras, context)
        if high.all():
            return self._run(expert, frames, timesteps, cameras, context)
        out = torch.empty(frames.shape, dtype=torch.float32, device=frames.device)
        out[high] = self._run(expert, frames[high], timesteps[high], cameras[high], context[high])
        out[~high] = self._run(self.unet, frames[~high], timesteps[~high], cameras[~high], context[~high])
        return out

    def denoisers(self) -> list:
        expert = self.pipe.high_noise_unet
        return [self.unet] + ([expert] if expert is not None else [])

    def unet_for_timestep(self, timestep: int) -> MultiViewUNet:
        """The UNet that denoises at `timestep`: the high-noise expert from `high_noise_start` up, if there is one."""
        expert = self.pipe.high_noise_unet
        return expert if expert is not None and timestep >= self.pipe.config.high_noise_start else self.unet

    def phase1_unet(self, timestep: int) -> MultiViewUNet:
        return self.unet_for_timestep(timestep)

    @staticmethod
    def _run(unet: MultiViewUNet, frames: Tensor, timesteps: Tensor, cameras: Cameras, context: Tensor) -> Tensor:
        dtype = unet.dtype
        camera = unet.camera_condition(cameras).to(dtype)
        return unet(frames.to(dtype), timesteps, camera, context.to(dtype)).sample.float()
