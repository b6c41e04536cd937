"""ImageDream's images have no alpha channel: alpha is estimated from each pixel's distance to the white background."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def alpha_from_white(rgb: Tensor, thresholds: tuple = (0.02, 0.08)) -> Tensor:
    """RGB on white [N, 3, H, W] in [0, 1] -> straight-alpha RGBA [N, 4, H, W] (the rule: dd3g.teachers.imagedream, "Alpha")."""
    distance = 1.0 - rgb.amin(dim=1, keepdim=True)  # [N, 1, H, W] how far from white
    distance = F.avg_pool2d(distance, 3, stride=1, padding=1, count_include_pad=False)  # smoothing
    low, high = thresholds
    alpha = ((distance - low) / (high - low)).clamp(0.0, 1.0)  # [N, 1, H, W]
    colour = (1.0 - (1.0 - rgb) / alpha.clamp_min(1e-3)).clamp(0.0, 1.0)  # un-composite from white
    colour = torch.where(alpha > 0, colour, rgb)
    return torch.cat([colour, alpha], dim=1)
