"""Flat coloured inputs (disks and rings, no shading) and the mean colour that comes back: whether a model
keeps its input's colour (`benchmarks/teacher_quality.py --colour-check`, `benchmarks/student_colour.py`)."""

from __future__ import annotations

import torch


def coloured_shapes(size: int, supersample: int = 4) -> dict:
    """Flat coloured disks and rings, antialiased: {name: ((r, g, b) in 0-255, RGBA [4, size, size])}."""
    shapes = {"yellow_disk": ((167, 145, 21), 0.0), "cream_disk": ((170, 163, 138), 0.0), "blue_disk": ((29, 44, 146), 0.0),
              "red_ring": ((200, 40, 40), 0.55), "green_ring": ((40, 160, 60), 0.55)}
    big = size * supersample
    coords = (torch.arange(big, dtype=torch.float32) + 0.5) / big - 0.5  # [big] in (-0.5, 0.5)
    radius = torch.sqrt(coords[:, None] ** 2 + coords[None, :] ** 2)  # [big, big]
    out = {}
    for name, (rgb, inner) in shapes.items():
        inside = ((radius < 0.32) & (radius >= 0.32 * inner)).float()[None, None]  # [1, 1, big, big]
        alpha = torch.nn.functional.avg_pool2d(inside, supersample)[0]  # [1, size, size] covered fraction
        colour = torch.tensor(rgb, dtype=torch.float32)[:, None, None].expand(3, size, size) / 255  # [3, size, size]
        out[name] = (rgb, torch.cat([colour, alpha]))
    return out


def mean_colour(rgba: torch.Tensor, mask: torch.Tensor) -> list:
    """Alpha-weighted mean straight RGB of rgba [4, H, W] over mask [H, W], in 0-255."""
    weight = rgba[3] * mask  # [H, W]
    return [round(float((rgba[c] * weight).sum() / weight.sum().clamp_min(1e-8)) * 255, 1) for c in range(3)]
