"""Renderers: Gaussians through gsplat on CUDA or the readable PyTorch splatter elsewhere (one `render`
function for both), and an exact textured-mesh rasterizer that makes the real scans' ground truth."""

from .gaussian_renderer import WHITE, RenderOutput, gsplat_available, render, resolve_backend

__all__ = ["WHITE", "RenderOutput", "gsplat_available", "render", "resolve_backend"]
