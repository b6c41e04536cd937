"""Fit 3D Gaussians to a few posed RGBA views by gradient descent (per-sample optimisation, batched).

Used as a yardstick: how consistent are a teacher's views (fit 3, score the held-out 4th), and what a
per-sample 3DGS can reach on the teacher's outputs (the ceiling the student is compared with).
A fixed number of Gaussians, no densification: enough at 64-256 px for objects inside the unit sphere.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cameras import Cameras
from ..gaussians import Gaussians
from ..randomness import generator
from ..rendering import render


def initial_gaussians(batch: int, num: int, seed: int = 0, radius: float = 0.45, device="cpu") -> Gaussians:
    """Small grey splats spread uniformly through a ball.  [B, N]"""
    gen = generator(seed)
    direction = torch.randn(batch, num, 3, generator=gen)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    means = direction * radius * torch.rand(batch, num, 1, generator=gen) ** (1 / 3)
    log_scales = torch.full((batch, num, 3), math.log(0.02))
    quats = torch.zeros(batch, num, 4)
    quats[..., 0] = 1
    return Gaussians(means, log_scales, quats, torch.full((batch, num), -2.0), torch.zeros(batch, num, 3)).to(device)


def fit_gaussians(
    views: Tensor,  # [B, V, 4, S, S] straight-alpha RGBA targets
    cameras: Cameras,  # [B, V]
    num_gaussians: int = 4096,
    steps: int = 500,
    lr: float = 0.01,
    seed: int = 0,
    alpha_weight: float = 1.0,
) -> Gaussians:
    """Optimise raw Gaussian parameters so their renders match the views (RGB on white + alpha, L1 + L2)."""
    b = views.shape[0]
    size = views.shape[-1]
    device = views.device
    g = initial_gaussians(b, num_gaussians, seed, device=device)
    params = {name: getattr(g, name).clone().requires_grad_() for name in ("means", "log_scales", "quats", "opacity_logits", "sh_dc")}
    groups = [
        {"params": [params["means"]], "lr": lr * 0.2},
        {"params": [params["log_scales"]], "lr": lr * 0.5},
        {"params": [params["quats"]], "lr": lr * 0.1},
        {"params": [params["opacity_logits"]], "lr": lr * 5},
        {"params": [params["sh_dc"]], "lr": lr * 2.5},
    ]
    optimizer = torch.optim.Adam(groups)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps, eta_min=lr * 0.01)
    target_rgb = views[:, :, :3] * views[:, :, 3:] + (1 - views[:, :, 3:])  # on white
    target_alpha = views[:, :, 3:]
    for _ in range(steps):
        out = render(Gaussians(**params), cameras, size, size)  # white background
        loss = F.l1_loss(out.rgb, target_rgb) + F.mse_loss(out.rgb, target_rgb)
        loss = loss + alpha_weight * F.mse_loss(out.alpha, target_alpha)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            params["log_scales"].clamp_(math.log(1e-3), math.log(0.2))
            params["means"].clamp_(-0.6, 0.6)
    return Gaussians(**{k: v.detach() for k, v in params.items()})


def leave_one_out_psnr(views: Tensor, cameras: Cameras, steps: int = 400, num_gaussians: int = 4096) -> Tensor:
    """Multi-view consistency of a set of views: for each view, a 3DGS fitted to the others, scored on it.

    views [B, V, 4, S, S] straight-alpha RGBA, cameras [B, V] -> PSNR on white [B, V]. Views that agree on one
    3D object score high; the same score bounds what any 3D generator can reach against these views.
    """
    from .metrics import psnr

    num_views, size = views.shape[1], views.shape[-1]
    target = views[:, :, :3] * views[:, :, 3:] + (1 - views[:, :, 3:])  # on white
    scores = []
    for leave in range(num_views):
        keep = [v for v in range(num_views) if v != leave]
        with torch.enable_grad():
            fit = fit_gaussians(views[:, keep], cameras[:, keep], num_gaussians=num_gaussians, steps=steps)
        with torch.no_grad():
            pred = render(fit, cameras[:, leave : leave + 1], size, size).rgb[:, 0]
        scores.append(psnr(pred, target[:, leave]))
    return torch.stack(scores, dim=1)
