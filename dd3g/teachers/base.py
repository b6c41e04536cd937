"""The one interface distillation and evaluation use for any multi-view diffusion teacher.

A backend says how to condition on an image, how to move between RGBA images and its sample space, and how
to call its denoiser; this base class turns that into the two things DD3G needs:

* `simulate`: the deterministic DDIM ODE (eta = 0) from seeded noise N to multi-view RGBA images OI, so
  (N, C, II) -> OI is a function and a quadruple can be stored and reproduced;
* `verification_loss`: implicit verification in the SDS form of docs/design.md section 4, with no gradient
  through the teacher.

Frames: the V output views, then the input image as a clean last frame (t = 0). Cameras are [B, V + 1] in
the project convention; a backend converts them to its native form at its edge.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from diffusers import DDIMScheduler
from torch import Tensor

from ..cameras import Cameras, ViewLayout
from ..randomness import generator as cpu_generator
from ..randomness import noise_from_seeds
from ..student_inputs import ddim_from_config


@dataclass
class TeacherCondition:
    """What a backend needs from the input image, for the conditional and the unconditional branch."""

    context: Tensor  # [B, L, D] image tokens for cross-attention
    input_frame: Tensor  # [B, C, h, w] the input image in sample space (the clean last frame)
    null_context: Tensor  # [B, L, D] the unconditional branch's tokens
    null_input_frame: Tensor  # [B, C, h, w] the unconditional branch's input frame

    def select(self, index) -> "TeacherCondition":
        return TeacherCondition(self.context[index], self.input_frame[index], self.null_context[index], self.null_input_frame[index])


@dataclass
class SimulationResult:
    views: Tensor  # [B, V, 4, S, S] RGBA in [0, 1], straight alpha
    noise: Tensor  # [B, V, C, h, w] the N each trajectory started from (float32, CPU)
    cameras: Cameras  # [B, V + 1] output views then the input view
    seeds: list  # the seed of each N


class MultiViewTeacher(abc.ABC):
    """Backends implement the abstract members; everything else is shared."""

    #: a short name stored with quadruples
    teacher_id: str = "teacher"
    #: where N and the clean input frame live (dd3g.student_inputs.SAMPLE_SPACES): a student takes it from here
    sample_space: str = "rgba"
    #: default sampler settings (docs/design.md: CFG 3 for tiny, 5 for ImageDream; 30 steps)
    default_guidance_scale: float = 3.0
    default_num_steps: int = 30

    # ------------------------------------------------------------------ backend hooks
    @property
    @abc.abstractmethod
    def layout(self) -> ViewLayout: ...

    @property
    @abc.abstractmethod
    def noise_shape(self) -> tuple:
        """One sample's N: (V, C, h, w)."""

    @property
    @abc.abstractmethod
    def image_size(self) -> int:
        """Pixel side of the decoded views."""

    @property
    @abc.abstractmethod
    def scheduler_config(self) -> dict:
        """The training scheduler's config (num_train_timesteps, betas, prediction_type...)."""

    @property
    @abc.abstractmethod
    def device(self) -> torch.device: ...

    @abc.abstractmethod
    def condition(self, images: Tensor) -> TeacherCondition:
        """images [B, 4, S, S] straight-alpha RGBA in [0, 1] -> the conditioning of both CFG branches."""

    @abc.abstractmethod
    def encode(self, images: Tensor) -> Tensor:
        """RGBA [..., 4, S, S] in [0, 1] -> samples [..., C, h, w] (identity-like in pixel space, a VAE in latent)."""

    @abc.abstractmethod
    def decode(self, samples: Tensor) -> Tensor:
        """samples [..., C, h, w] -> RGBA [..., 4, S, S] in [0, 1]."""

    @abc.abstractmethod
    def denoise(self, frames: Tensor, timesteps: Tensor, cameras: Cameras, context: Tensor) -> Tensor:
        """The raw network output for all frames.  frames [B, V+1, C, h, w], timesteps [B, V+1] -> [B, V+1, C, h, w]."""

    def phase1_unet(self, timestep: int):
        """The network that denoises at `timestep`: what a PEPD student's phase 1 starts from (PEPD.from_teacher)."""
        return self.unet

    def denoisers(self) -> list:
        """Every network `denoise` may run (what `compile` wraps)."""
        return [self.unet]

    def compile(self, mode: str = "default") -> None:
        """torch.compile each denoiser's forward in place. The modules stay as they are (weights, dtype, device), so
        nothing else changes; the ODE calls them with one batch shape per CFG batch, so each compiles once."""
        for network in self.denoisers():
            network.forward = torch.compile(network.forward, mode=mode)

    # ------------------------------------------------------------------ shared machinery
    def cameras(self, batch: int, elevation_deg=0.0, azimuth_offset_deg=0.0) -> Cameras:
        """Cameras [B, V+1] at the sample resolution (outputs rotated by the offset, input at azimuth 0)."""
        h = self.noise_shape[-1]
        elevation = torch.as_tensor(elevation_deg, dtype=torch.float32).expand(batch)
        offset = torch.as_tensor(azimuth_offset_deg, dtype=torch.float32).expand(batch)
        return self.layout.cameras(h, h, elevation_deg=elevation, azimuth_offset_deg=offset, include_input=True).to(self.device)

    def sampling_scheduler(self, num_steps: int) -> DDIMScheduler:
        """DDIM with eta = 0 and trailing spacing, so the first step starts from pure noise at t = T - 1."""
        scheduler = ddim_from_config(self.scheduler_config)
        scheduler.set_timesteps(num_steps, device=self.device)
        return scheduler

    def guided_output(self, x_t: Tensor, t: Tensor, cond: TeacherCondition, cameras: Cameras, guidance_scale: float) -> Tensor:
        """Classifier-free-guided network output for the V output views.  x_t [B, V, C, h, w], t [B]."""
        b, v = x_t.shape[:2]
        timesteps = torch.zeros(b, v + 1, device=x_t.device)
        timesteps[:, :v] = t.to(x_t.device, torch.float32)[:, None]  # the input frame stays clean (t = 0)
        if guidance_scale == 1.0:
            frames = torch.cat([x_t, cond.input_frame[:, None].to(x_t.dtype)], dim=1)
            return self.denoise(frames, timesteps, cameras, cond.context)[:, :v]
        # One batched call for both branches: [conditional; unconditional].
        frames = torch.cat([
            torch.cat([x_t, cond.input_frame[:, None].to(x_t.dtype)], dim=1),
            torch.cat([x_t, cond.null_input_frame[:, None].to(x_t.dtype)], dim=1),
        ])
        both_cameras = Cameras(torch.cat([cameras.viewmats] * 2), torch.cat([cameras.Ks] * 2), cameras.width, cameras.height)
        out = self.denoise(frames, timesteps.repeat(2, 1), both_cameras, torch.cat([cond.context, cond.null_context]))[:, :v]
        conditional, unconditional = out.chunk(2)
        return unconditional + guidance_scale * (conditional - unconditional)

    def to_epsilon(self, output: Tensor, x_t: Tensor, t: Tensor, scheduler) -> Tensor:
        """The network output as predicted noise, whatever the prediction type.  All [B, V, C, h, w]."""
        kind = self.scheduler_config.get("prediction_type", "epsilon")
        if kind == "epsilon":
            return output
        alpha_bar = scheduler.alphas_cumprod.to(x_t.device)[t.long()].view(-1, *([1] * (x_t.dim() - 1)))
        if kind == "v_prediction":  # v = sqrt(a) eps - sqrt(1 - a) x0  =>  eps = sqrt(a) v + sqrt(1 - a) x_t
            return alpha_bar.sqrt() * output + (1 - alpha_bar).sqrt() * x_t
        raise ValueError(f"unsupported prediction type {kind!r}")

    @torch.no_grad()
    def simulate(
        self,
        images: Tensor,  # [B, 4, S, S] RGBA input images
        seeds: Sequence[int],
        num_steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        elevation_deg=0.0,
        noise: Optional[Tensor] = None,  # [B, V, C, h, w]; drawn from the seeds when None
    ) -> SimulationResult:
        """The deterministic DDIM ODE (eta = 0) from seeded noise N to the teacher's RGBA views OI."""
        num_steps = num_steps or self.default_num_steps
        guidance_scale = self.default_guidance_scale if guidance_scale is None else guidance_scale
        b = images.shape[0]
        if len(seeds) != b:
            raise ValueError(f"need one seed per image: {len(seeds)} seeds for {b} images")
        if noise is None:
            noise = noise_from_seeds(self.noise_shape, seeds)  # drawn on the CPU: the same on any device
        cond = self.condition(images.to(self.device))
        cameras = self.cameras(b, elevation_deg)
        scheduler = self.sampling_scheduler(num_steps)
        x = noise.to(self.device) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            t_batch = t.expand(b)
            output = self.guided_output(x, t_batch, cond, cameras, guidance_scale)
            x = scheduler.step(output.float(), t, x.float(), eta=0.0).prev_sample
        return SimulationResult(self.decode(x).clamp(0, 1).float(), noise.float().cpu(), cameras, [int(s) for s in seeds])

    def verification_loss(
        self,
        renders: Tensor,  # [B, V, 4, S, S] RGBA renders of the student, differentiable
        cond: TeacherCondition,
        cameras: Cameras,  # [B, V + 1] the renders' cameras, input view last
        seeds: Sequence[int],  # one per sample: timestep and noise come from it
        t_range: tuple = (0.02, 0.98),
        guidance_scale: Optional[float] = None,
    ) -> Tensor:
        """Implicit verification, SDS form: 0.5 w(t) ||x - sg(x - (eps_hat - eps))||^2, averaged over elements and B.

        The gradient w.r.t. x is w(t) (eps_hat - eps) / numel: it pushes the renders along the teacher's score.
        Averaged like the explicit MSE terms (not summed per sample) so that one lambda means the same at any
        resolution, view count or batch size. No gradient flows through the teacher.
        """
        guidance_scale = self.default_guidance_scale if guidance_scale is None else guidance_scale
        scheduler_steps = self.scheduler_config.get("num_train_timesteps", 1000)
        x = self.encode(renders)  # [B, V, C, h, w]
        gens = [cpu_generator(s) for s in seeds]
        low, high = int(t_range[0] * scheduler_steps), int(t_range[1] * scheduler_steps)
        t = torch.tensor([int(torch.randint(low, high + 1, (1,), generator=g)) for g in gens], device=x.device)
        eps = torch.stack([torch.randn(x.shape[1:], generator=g) for g in gens]).to(x.device, x.dtype)
        scheduler = self.sampling_scheduler(1)
        alpha_bar = scheduler.alphas_cumprod.to(x.device)[t].view(-1, *([1] * (x.dim() - 1)))
        with torch.no_grad():
            x_t = alpha_bar.sqrt() * x.detach() + (1 - alpha_bar).sqrt() * eps
            output = self.guided_output(x_t, t, cond, cameras, guidance_scale)
            eps_hat = self.to_epsilon(output.float(), x_t.float(), t, scheduler).to(x.dtype)
            weight = 1 - alpha_bar  # w(t): DreamFusion's choice
            target = x.detach() - (eps_hat - eps)
        return (0.5 * weight * (x - target).square()).mean()


@torch.no_grad()
def camera_sensitivity(teacher, inputs, truth, elevation, timestep: int = 999, seed: int = 0) -> float:
    """Does the teacher read its cameras? Its one-step x0 prediction with the output cameras as rendered vs
    turned by 90 degrees: mean change / the mean difference between neighbouring true views. At the default
    t = 999 the noised frames carry no trace of the views, so only the input and the cameras can tell the views
    apart: a camera-blind model scores ~0, a camera-aware one a large fraction of 1 (its prediction from pure
    noise is a blurred expectation, so somewhat under 1)."""
    b = truth.shape[0]
    x0 = teacher.encode(truth.flatten(0, 1)).unflatten(0, truth.shape[:2])  # [B, V, C, h, w]
    scheduler = teacher.sampling_scheduler(1)
    alpha_bar = scheduler.alphas_cumprod[timestep].to(x0.device)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(x0.device)
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
    cond = teacher.condition(inputs)
    timesteps = torch.zeros(b, x0.shape[1] + 1, device=x0.device)
    timesteps[:, :-1] = timestep
    frames = torch.cat([x_t, cond.input_frame[:, None]], dim=1)
    predictions = []
    for offset in (0.0, 90.0):
        output = teacher.denoise(frames, timesteps, teacher.cameras(b, elevation, offset), cond.context)[:, :-1]
        eps_hat = teacher.to_epsilon(output, x_t, torch.full((b,), timestep, device=x0.device), scheduler)
        predictions.append((x_t - (1 - alpha_bar).sqrt() * eps_hat) / alpha_bar.sqrt())
    moved = (predictions[1] - predictions[0]).abs().mean()
    expected = (x0.roll(-1, dims=1) - x0).abs().mean()
    return float(moved / expected.clamp_min(1e-8))
