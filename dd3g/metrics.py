"""Image quality metrics on [0, 1] images, channels first: PSNR and SSIM (LPIPS joins with the distillation work).

All take [..., C, H, W] tensors and return one value per image ([...]); an optional mask [..., 1, H, W]
restricts PSNR to the masked pixels and SSIM to windows centred on them ("masked" scores).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def psnr(prediction: Tensor, target: Tensor, mask: Optional[Tensor] = None, max_value: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB.  [..., C, H, W] -> [...]"""
    error = (prediction - target).square()
    if mask is None:
        mse = error.flatten(-3).mean(-1)
    else:
        weight = mask.expand_as(error)
        mse = (error * weight).flatten(-3).sum(-1) / weight.flatten(-3).sum(-1).clamp_min(1e-8)
    return 10 * torch.log10(max_value**2 / mse.clamp_min(1e-12))


def _gaussian_window(size: int, sigma: float, device, dtype) -> Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()  # [size]


def ssim(prediction: Tensor, target: Tensor, mask: Optional[Tensor] = None, window: int = 11, sigma: float = 1.5, max_value: float = 1.0) -> Tensor:
    """Structural similarity (Wang et al. 2004: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03), channel mean.

    Windows are evaluated only where they fit inside the image (no padding), as scikit-image does.
    [..., C, H, W] -> [...]
    """
    lead = prediction.shape[:-3]
    c, h, w = prediction.shape[-3:]
    x = prediction.reshape(-1, c, h, w).double()
    y = target.reshape(-1, c, h, w).double()
    g = _gaussian_window(window, sigma, x.device, x.dtype)
    kernel_h = g.view(1, 1, 1, window).expand(c, 1, 1, window)
    kernel_v = g.view(1, 1, window, 1).expand(c, 1, window, 1)

    def blur(z: Tensor) -> Tensor:  # separable Gaussian, valid region only
        return F.conv2d(F.conv2d(z, kernel_h, groups=c), kernel_v, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * max_value) ** 2, (0.03 * max_value) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))  # [N, C, h', w']
    if mask is None:
        value = ssim_map.mean(dim=(-3, -2, -1))
    else:
        crop = (window - 1) // 2
        m = mask.reshape(-1, 1, h, w).double()[..., crop : h - crop, crop : w - crop].expand_as(ssim_map)
        value = (ssim_map * m).sum(dim=(-3, -2, -1)) / m.sum(dim=(-3, -2, -1)).clamp_min(1e-8)
    return value.to(prediction.dtype).reshape(lead)
