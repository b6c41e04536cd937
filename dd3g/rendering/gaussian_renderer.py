"""One render function for the whole project: gsplat on CUDA, the PyTorch splatter everywhere else.

Both backends take the same activated Gaussians and OpenCV cameras and give the same pixels (parity is
tested on CUDA); each converts to its native layout here, at the edge. Outputs are channels-first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence, Union

import torch
from torch import Tensor

from ..cameras import Cameras
from ..gaussians import Gaussians
from .torch_splatter import splat

Background = Union[None, float, Sequence[float], Tensor]
Backend = Literal["auto", "torch", "gsplat"]
WHITE = (1.0, 1.0, 1.0)


@dataclass
class RenderOutput:
    rgb: Tensor  # [..., V, 3, H, W] composited on the background
    alpha: Tensor  # [..., V, 1, H, W]
    depth: Tensor  # [..., V, 1, H, W] expected camera z of the visible Gaussians, 0 where empty

    def rgba(self) -> Tensor:
        """Straight-alpha RGBA, as the project's images are (valid for renders made with background=None).

        Returns [..., V, 4, H, W].
        """
        return torch.cat([self.rgb / self.alpha.clamp_min(1e-6), self.alpha], dim=-3).clamp(0, 1)


def gsplat_available() -> bool:
    try:
        import gsplat  # noqa: F401
    except Exception:
        return False
    return True


def resolve_backend(device: torch.device, backend: Backend = "auto") -> str:
    if backend == "auto":
        return "gsplat" if device.type == "cuda" and gsplat_available() else "torch"
    if backend == "gsplat" and device.type != "cuda":
        # gsplat would try to compile CUDA code for CPU tensors and fail obscurely.
        raise ValueError("the gsplat backend needs CUDA tensors; use backend='torch' on this device")
    if backend not in ("torch", "gsplat"):
        raise ValueError(f"unknown render backend {backend!r}: expected 'auto', 'torch' or 'gsplat'")
    return backend


def _background_tensor(background: Background, lead: torch.Size, num_views: int, device, dtype) -> Tensor | None:
    """The background as [*lead, V, 3], or None for no background (black, premultiplied)."""
    if background is None:
        return None
    bg = torch.as_tensor(background, dtype=dtype, device=device)
    if bg.ndim == 0:
        bg = bg.expand(3)
    if bg.shape[-1] != 3:
        raise ValueError(f"background must be RGB (3 values), got shape {tuple(bg.shape)}")
    return bg.expand(tuple(lead) + (num_views, 3))


def render(
    gaussians: Gaussians,
    cameras: Cameras,
    width: int | None = None,
    height: int | None = None,
    background: Background = WHITE,
    backend: Backend = "auto",
) -> RenderOutput:
    """Render Gaussians [..., N] from cameras [..., V] (leading dims broadcast) at width x height.

    width/height default to the cameras' own; other sizes rescale the intrinsics. `background` is an RGB
    triple (white by default) or None to get premultiplied colour over black. Differentiable.
    """
    width = cameras.width if width is None else int(width)
    height = cameras.height if height is None else int(height)
    if width < 1 or height < 1:
        raise ValueError(f"render size must be positive, got {width}x{height}")
    if (width, height) != (cameras.width, cameras.height):
        cameras = cameras.resized(width, height)
    device = gaussians.means.device
    cameras = cameras.to(device, torch.float32)
    lead = torch.broadcast_shapes(gaussians.batch_shape, cameras.shape[:-1])
    num_views = cameras.shape[-1]

    # Activated parameters in float32 (both backends rasterize in fp32), broadcast over the leading dims.
    def expand(x: Tensor, trailing: int) -> Tensor:
        return x.float().expand(tuple(lead) + tuple(x.shape[-trailing:]))

    means = expand(gaussians.means, 2)  # [*lead, N, 3]
    quats = expand(gaussians.quats, 2)  # [*lead, N, 4]
    scales = expand(gaussians.scales, 2)  # [*lead, N, 3]
    opacities = expand(gaussians.opacities, 1)  # [*lead, N]
    colors = expand(gaussians.colors, 2)  # [*lead, N, 3]
    viewmats = cameras.viewmats.expand(tuple(lead) + (num_views, 4, 4))
    Ks = cameras.Ks.expand(tuple(lead) + (num_views, 3, 3))
    bg = _background_tensor(background, lead, num_views, device, torch.float32)  # [*lead, V, 3] or None

    if resolve_backend(device, backend) == "gsplat":
        rgb, alpha, depth = _render_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height, bg)
    else:
        # One image per (batch element, view): repeat each batch element's Gaussians for its views.
        batch = math.prod(lead)

        def per_image(x: Tensor) -> Tensor:  # [*lead, ...] -> [batch * V, ...]
            trailing = x.shape[len(lead):]
            return x.reshape((batch, 1) + trailing).expand((batch, num_views) + trailing).reshape((batch * num_views,) + trailing)

        rgb, alpha, depth = splat(
            per_image(means), per_image(quats), per_image(scales), per_image(opacities), per_image(colors),
            viewmats.reshape(-1, 4, 4), Ks.reshape(-1, 3, 3), width, height,
            None if bg is None else bg.reshape(-1, 3),
        )  # [I, H, W, C] each
        rgb, alpha, depth = (x.reshape(tuple(lead) + (num_views, height, width, -1)) for x in (rgb, alpha, depth))

    def channels_first(x: Tensor) -> Tensor:  # [..., H, W, C] -> [..., C, H, W]
        return x.movedim(-1, -3)

    return RenderOutput(channels_first(rgb), channels_first(alpha), channels_first(depth))


def _render_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height, backgrounds):
    """gsplat's CUDA rasterizer with the same settings as the torch splatter. Channels-last outputs."""
    from gsplat import rasterization  # lazy: it JIT-compiles its kernels on first use

    colors_out, alphas, _ = rasterization(
        means.contiguous(), quats.contiguous(), scales.contiguous(), opacities.contiguous(), colors.contiguous(),
        viewmats.contiguous(), Ks.contiguous(), width, height,
        near_plane=0.01, eps2d=0.3, packed=False, render_mode="RGB+ED", rasterize_mode="classic",
        backgrounds=None if backgrounds is None else backgrounds.contiguous(),
    )  # [*lead, V, H, W, 4], [*lead, V, H, W, 1]
    return colors_out[..., :3], alphas, colors_out[..., 3:]
