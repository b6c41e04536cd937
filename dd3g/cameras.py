"""Cameras in the project's one convention (docs/design.md section 4).

World: right-handed, +Y up, the object centred at the origin inside the unit sphere.
Orbit cameras look at the origin: azimuth 0 looks from +Z, azimuth grows counter-clockwise seen from
above (so azimuth 90 sits on +X), elevation > 0 is above the equator.
Matrices: OpenCV world-to-camera `viewmats` (x right, y down, z forward) and pixel intrinsics `Ks`,
exactly what gsplat takes; pixel (row i, column j) has its centre at (j + 0.5, i + 0.5).
View layout: the input view is azimuth 0; the outputs sit at azimuth 0/90/180/270 relative to it at the
same elevation, ordered by azimuth; the teacher's frames are those 4 views plus the input view as a 5th.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

import torch
from torch import Tensor

DEFAULT_RADIUS = 2.0
DEFAULT_FOV_DEG = 40.0
DEFAULT_NUM_VIEWS = 4

AngleLike = Union[float, Sequence[float], Tensor]


@dataclass
class Cameras:
    """A batch of pinhole cameras for images of one size."""

    viewmats: Tensor  # [..., V, 4, 4] OpenCV world-to-camera
    Ks: Tensor  # [..., V, 3, 3] pixel intrinsics for width x height
    width: int
    height: int

    def __post_init__(self):
        if self.viewmats.shape[-2:] != (4, 4) or self.Ks.shape[-2:] != (3, 3):
            raise ValueError(
                f"Cameras needs viewmats [..., V, 4, 4] and Ks [..., V, 3, 3], got "
                f"{tuple(self.viewmats.shape)} and {tuple(self.Ks.shape)}"
            )
        if self.viewmats.shape[:-2] != self.Ks.shape[:-2]:
            raise ValueError(
                f"viewmats {tuple(self.viewmats.shape)} and Ks {tuple(self.Ks.shape)} disagree on batch/view dims"
            )

    @property
    def shape(self) -> torch.Size:
        """Leading dims, views last: [..., V]."""
        return self.viewmats.shape[:-2]

    @property
    def device(self) -> torch.device:
        return self.viewmats.device

    def to(self, device=None, dtype=None) -> "Cameras":
        return Cameras(self.viewmats.to(device, dtype), self.Ks.to(device, dtype), self.width, self.height)

    def __getitem__(self, index) -> "Cameras":
        return Cameras(self.viewmats[index], self.Ks[index], self.width, self.height)

    def expand(self, *leading: int) -> "Cameras":
        """Broadcast to new leading dims, e.g. cameras [V] -> [B, V]."""
        shape = tuple(leading) + tuple(self.shape)
        return Cameras(self.viewmats.expand(shape + (4, 4)), self.Ks.expand(shape + (3, 3)), self.width, self.height)

    def resized(self, width: int, height: int) -> "Cameras":
        """Same cameras for another image size (intrinsics scale with the pixel grid)."""
        scale = torch.tensor([width / self.width, height / self.height, 1.0], dtype=self.Ks.dtype, device=self.device)
        return Cameras(self.viewmats, self.Ks * scale[:, None], width, height)

    @property
    def centers(self) -> Tensor:
        """Camera positions in world space.  # [..., V, 3]"""
        rotation = self.viewmats[..., :3, :3]  # [..., V, 3, 3]
        translation = self.viewmats[..., :3, 3]  # [..., V, 3]
        return -(rotation.transpose(-1, -2) @ translation[..., None])[..., 0]

    def pixel_rays(self) -> tuple[Tensor, Tensor]:
        """World-space ray origins and unit directions through every pixel centre.

        Returns origins [..., V, H, W, 3] and directions [..., V, H, W, 3].
        """
        dtype, device = self.viewmats.dtype, self.device
        cols = torch.arange(self.width, dtype=dtype, device=device) + 0.5  # [W]
        rows = torch.arange(self.height, dtype=dtype, device=device) + 0.5  # [H]
        v, u = torch.meshgrid(rows, cols, indexing="ij")  # [H, W] each
        fx, fy = self.Ks[..., 0, 0], self.Ks[..., 1, 1]  # [..., V]
        cx, cy = self.Ks[..., 0, 2], self.Ks[..., 1, 2]  # [..., V]
        x = (u - cx[..., None, None]) / fx[..., None, None]  # [..., V, H, W]
        y = (v - cy[..., None, None]) / fy[..., None, None]  # [..., V, H, W]
        dirs_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # [..., V, H, W, 3]
        cam_to_world = self.viewmats[..., :3, :3].transpose(-1, -2)  # [..., V, 3, 3]
        dirs = torch.einsum("...ij,...hwj->...hwi", cam_to_world, dirs_cam)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True)
        origins = self.centers[..., None, None, :].expand_as(dirs)
        return origins, dirs

    def plucker_rays(self) -> Tensor:
        """Per-pixel Plücker coordinates (direction, origin x direction), channels first.

        Returns [..., V, 6, H, W]; the moment does not depend on where along the ray the origin sits.
        """
        origins, dirs = self.pixel_rays()  # [..., V, H, W, 3] each
        moments = torch.cross(origins, dirs, dim=-1)
        return torch.cat([dirs, moments], dim=-1).movedim(-1, -3)


def _as_tensor(value: AngleLike, dtype=torch.float32) -> Tensor:
    if isinstance(value, Tensor):
        return value.to(dtype)
    return torch.as_tensor(value, dtype=dtype)


def look_at_viewmats(eyes: Tensor, targets: Tensor | None = None) -> Tensor:
    """OpenCV world-to-camera matrices for cameras at `eyes` looking at `targets`, world +Y up.

    eyes: [..., 3]; targets: [..., 3] (origin by default). Returns [..., 4, 4].
    """
    if targets is None:
        targets = torch.zeros_like(eyes)
    forward = targets - eyes  # [..., 3] camera +z
    forward = forward / forward.norm(dim=-1, keepdim=True)
    world_up = torch.tensor([0.0, 1.0, 0.0], dtype=eyes.dtype, device=eyes.device).expand_as(forward)
    right = torch.cross(forward, world_up, dim=-1)  # camera +x
    # Looking straight up or down: any horizontal right vector works; keep azimuth 0's (+X).
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    fallback = torch.tensor([1.0, 0.0, 0.0], dtype=eyes.dtype, device=eyes.device).expand_as(right)
    right = torch.where(degenerate, fallback, right)
    right = right / right.norm(dim=-1, keepdim=True)
    down = torch.cross(forward, right, dim=-1)  # camera +y
    rotation = torch.stack([right, down, forward], dim=-2)  # [..., 3, 3] rows = camera axes in world
    viewmats = torch.zeros(eyes.shape[:-1] + (4, 4), dtype=eyes.dtype, device=eyes.device)
    viewmats[..., :3, :3] = rotation
    viewmats[..., :3, 3] = -(rotation @ eyes[..., None])[..., 0]
    viewmats[..., 3, 3] = 1.0
    return viewmats


def orbit_positions(azimuth_deg: AngleLike, elevation_deg: AngleLike, radius: float = DEFAULT_RADIUS) -> Tensor:
    """World positions on the orbit sphere.  Inputs broadcast; returns [..., 3]."""
    azimuth = torch.deg2rad(_as_tensor(azimuth_deg))
    elevation = torch.deg2rad(_as_tensor(elevation_deg))
    azimuth, elevation = torch.broadcast_tensors(azimuth, elevation)
    return radius * torch.stack(
        [torch.sin(azimuth) * torch.cos(elevation), torch.sin(elevation), torch.cos(azimuth) * torch.cos(elevation)],
        dim=-1,
    )


def intrinsics(width: int, height: int, fov_deg: float = DEFAULT_FOV_DEG, dtype=torch.float32) -> Tensor:
    """Pinhole intrinsics with the given *vertical* field of view, square pixels, centred.  Returns [3, 3]."""
    focal = 0.5 * height / math.tan(math.radians(fov_deg) / 2)
    return torch.tensor([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]], dtype=dtype)


def orbit_cameras(
    azimuth_deg: AngleLike,
    elevation_deg: AngleLike,
    width: int,
    height: int,
    radius: float = DEFAULT_RADIUS,
    fov_deg: float = DEFAULT_FOV_DEG,
) -> Cameras:
    """Cameras on the orbit sphere looking at the origin. Azimuth/elevation broadcast to [..., V]."""
    eyes = orbit_positions(azimuth_deg, elevation_deg, radius)  # [..., V, 3]
    viewmats = look_at_viewmats(eyes)  # [..., V, 4, 4]
    Ks = intrinsics(width, height, fov_deg).expand(viewmats.shape[:-2] + (3, 3)).clone()
    return Cameras(viewmats, Ks, width, height)


@dataclass(frozen=True)
class ViewLayout:
    """The canonical multi-view layout shared by teacher and student (values are stored in configs)."""

    num_views: int = DEFAULT_NUM_VIEWS
    radius: float = DEFAULT_RADIUS
    fov_deg: float = DEFAULT_FOV_DEG

    def azimuths(self, azimuth_offset_deg: AngleLike = 0.0) -> Tensor:
        """Output-view azimuths, input view at 0, evenly spaced and ordered.  Returns [..., V]."""
        base = torch.arange(self.num_views, dtype=torch.float32) * (360.0 / self.num_views)  # [V]
        return base + _as_tensor(azimuth_offset_deg)[..., None]

    def cameras(
        self,
        width: int,
        height: int,
        elevation_deg: AngleLike = 0.0,
        azimuth_offset_deg: AngleLike = 0.0,
        include_input: bool = False,
    ) -> Cameras:
        """Cameras of the output views (and the input view appended as the last frame).

        elevation_deg / azimuth_offset_deg may be scalars or [B] tensors; the result is [V(+1)] or [B, V(+1)].
        The offset rotates the output views only: the input view stays at azimuth 0, which is what
        verification at cameras outside the canonical layout needs.
        """
        elevation = _as_tensor(elevation_deg)
        offset = _as_tensor(azimuth_offset_deg)
        elevation, offset = torch.broadcast_tensors(elevation, offset)
        azimuths = self.azimuths(offset)  # [..., V]
        if include_input:
            azimuths = torch.cat([azimuths, torch.zeros_like(azimuths[..., :1])], dim=-1)
        elevations = elevation[..., None].expand_as(azimuths)
        return orbit_cameras(azimuths, elevations, width, height, self.radius, self.fov_deg)

    def input_camera(self, width: int, height: int, elevation_deg: AngleLike = 0.0) -> Cameras:
        """The input view alone: azimuth 0 at the given elevation.  Shape [..., 1]."""
        elevation = _as_tensor(elevation_deg)[..., None]
        return orbit_cameras(torch.zeros_like(elevation), elevation, width, height, self.radius, self.fov_deg)
