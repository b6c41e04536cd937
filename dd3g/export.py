"""Exports of one object's Gaussians: a coloured GLB mesh and a turntable MP4.

Both keep the project's world convention (docs/design.md section 4: right-handed, +Y up). glTF is +Y up as
well, so the mesh is written without any axis swap and opens the right way up in viewers.

Mesh extraction (``gaussians_to_mesh``):

1. A regular grid of ``resolution^3`` voxel centres spans ``[-bound, bound]^3`` (endpoints included).
2. Every Gaussian contributes ``alpha_i(x) = min(0.99, o_i * exp(-0.5 d^T Sigma_i^-1 d))``, the same
   per-Gaussian alpha the renderer composites, but only inside its 3-sigma ellipsoid; the work is done
   by chunks of Gaussians (sorted by size) over a small voxel stencil that covers the chunk's largest
   3-sigma box (capped at ``max_stencil_radius`` voxels per side).
3. The alphas combine as the renderer combines them, ``1 - prod_i (1 - alpha_i)``: the grid stores the
   optical depth ``sum_i -log(1 - alpha_i)`` and ``level`` (an accumulated opacity, 0.5 by default) becomes
   the iso value ``-log(1 - level)``. So the surface sits where the Gaussians together cover half of
   what is behind them, the same place a render's alpha edge falls.
4. Colours: a second grid accumulates ``alpha_i * rgb_i`` next to ``alpha_i``; a vertex colour is the
   ratio of the two, each sampled trilinearly at the vertex (so empty voxels do not darken the edge).
5. ``skimage.measure.marching_cubes``; vertices back to world coordinates; faces wound so normals
   point outward; components smaller than ``min_component_fraction`` of the faces are dropped.
"""

from __future__ import annotations

import math
import os
from typing import Optional

import numpy as np
import torch

from .cameras import DEFAULT_FOV_DEG, DEFAULT_RADIUS, orbit_cameras
from .files import replacing, write_atomically
from .gaussians import Gaussians, PathLike
from .rendering import WHITE, render
from .rendering.torch_splatter import quats_to_rotmats

__all__ = ["OUTPUT_FORMATS", "EmptyMeshError", "encode_h264", "gaussians_to_mesh", "save_as", "save_glb", "save_turntable_mp4",
           "turntable_frames"]

_ALPHA_MAX = 0.99  # one Gaussian never makes a voxel fully opaque (keeps -log(1 - alpha) finite)
_SIGMA_CUTOFF = 3.0  # each Gaussian is splatted inside its 3-sigma ellipsoid only
_CHUNK_ELEMENTS = 1 << 22  # Gaussians x stencil voxels per chunk (bounds the temporary memory)


class EmptyMeshError(ValueError):
    """No voxel reaches the iso level: the Gaussians are (nearly) transparent or outside the grid."""


def _require_single(g: Gaussians, what: str) -> None:
    if len(g.batch_shape):
        raise ValueError(f"{what} takes one object (unbatched Gaussians [N, ...]), got batch shape {tuple(g.batch_shape)}")


def _splat_to_grid(g: Gaussians, resolution: int, bound: float, max_stencil_radius: int):
    """Splat every Gaussian into its 3-sigma voxel neighbourhood.

    Returns the optical-depth grid [R, R, R], the colour sums [R, R, R, 3] (sum alpha * rgb) and the
    weights [R, R, R] (sum alpha), float32 on g's device, plus the voxel spacing h.
    """
    device = g.device
    res = resolution
    h = 2.0 * bound / (res - 1)  # voxel spacing; voxel i sits at -bound + i * h
    g = g.detach().to(device, torch.float32)
    means = g.means  # [N, 3]
    # A Gaussian thinner than a voxel would fall between voxel centres: give it at least half a voxel.
    scales = g.scales.clamp_min(0.5 * h)  # [N, 3]
    rot = quats_to_rotmats(g.quats)  # [N, 3, 3], columns = principal axes
    opac = g.opacities  # [N]
    colors = g.colors.clamp(0, 1)  # [N, 3]

    # Axis-aligned half-extent of the 3-sigma ellipsoid: 3 * sqrt(Sigma_kk), Sigma = R S^2 R^T.
    half = _SIGMA_CUTOFF * torch.sqrt(((rot * scales[:, None, :]) ** 2).sum(-1))  # [N, 3] world units
    # Keep only Gaussians that can matter: not invisible, and with a 3-sigma box overlapping the grid.
    keep = (opac > 1.0 / 255) & ((means.abs() - half) < bound + h).all(-1)
    idx = torch.nonzero(keep)[:, 0]
    radius_vox = torch.ceil(half[idx] / h).amax(-1).clamp(1, max_stencil_radius).long()  # [M] cubic stencils
    radius_vox, perm = torch.sort(radius_vox)  # small stencils first, so a chunk shares one stencil size
    order = idx[perm]

    # A = Sigma^-1 = R diag(1 / s^2) R^T, in the 6 independent entries used below.
    inv_cov = (rot / scales[:, None, :] ** 2) @ rot.transpose(-1, -2)  # [N, 3, 3]
    centre_vox = torch.round((means + bound) / h).long()  # [N, 3] nearest voxel (may lie outside the grid)
    # e = (centre voxel's position) - mean, so a voxel at stencil offset o sits at mean + e + h * o.
    e = centre_vox.float() * h - bound - means  # [N, 3]
    a_e = (inv_cov @ e[:, :, None])[..., 0]  # [N, 3]
    # d^T A d with d = e + h o is  h^2 o^T A o + 2 h o^T A e + e^T A e: one matmul of per-Gaussian
    # coefficients [N, 10] with per-offset monomials [S, 10].
    coef = torch.stack(
        [inv_cov[:, 0, 0], inv_cov[:, 1, 1], inv_cov[:, 2, 2], inv_cov[:, 0, 1], inv_cov[:, 0, 2], inv_cov[:, 1, 2],
         a_e[:, 0], a_e[:, 1], a_e[:, 2], (e * a_e).sum(-1)], dim=-1)  # [N, 10]
    strides = torch.tensor([res * res, res, 1], device=device)
    centre_flat = (centre_vox * strides).sum(-1)  # [N] (meaningless when outside; masked below)

    # Channels: optical depth, alpha, alpha * r, alpha * g, alpha * b.
    acc = torch.zeros(res ** 3, 5, dtype=torch.float32, device=device)
    start = 0
    while start < order.numel():
        # One chunk = Gaussians of the same stencil radius, as many as fit the memory budget.
        r = int(radius_vox[start])
        run = int((radius_vox[start:] == r).sum())
        count = max(1, min(run, _CHUNK_ELEMENTS // (2 * r + 1) ** 3))
        sel = order[start:start + count]  # [C]
        start += count

        ar = torch.arange(-r, r + 1, device=device)
        off = torch.stack(torch.meshgrid(ar, ar, ar, indexing="ij"), -1).reshape(-1, 3)  # [S, 3]
        o = off.float()
        monomials = torch.cat([
            h * h * o * o,
            2 * h * h * torch.stack([o[:, 0] * o[:, 1], o[:, 0] * o[:, 2], o[:, 1] * o[:, 2]], -1),
            2 * h * o, torch.ones_like(o[:, :1]),
        ], dim=-1)  # [S, 10]
        maha = coef[sel] @ monomials.T  # [C, S] = d^T Sigma^-1 d
        mask = maha <= _SIGMA_CUTOFF ** 2
        cv = centre_vox[sel]  # [C, 3]
        if bool(((cv - r) < 0).any() or ((cv + r) >= res).any()):  # some stencils poke out of the grid
            for k in range(3):
                pos = cv[:, k:k + 1] + off[None, :, k]  # [C, S]
                mask &= (pos >= 0) & (pos < res)
        hit = torch.nonzero(mask.reshape(-1))[:, 0]  # [K]
        ci, si = hit // off.shape[0], hit % off.shape[0]
        gi = sel[ci]  # [K] Gaussian of each hit
        alpha = (opac[gi] * torch.exp(-0.5 * maha.reshape(-1)[hit])).clamp_max(_ALPHA_MAX)  # [K]
        flat = centre_flat[gi] + (off * strides).sum(-1)[si]  # [K]
        values = torch.cat([-torch.log1p(-alpha)[:, None], alpha[:, None], alpha[:, None] * colors[gi]], -1)
        acc.index_add_(0, flat, values)

    acc = acc.view(res, res, res, 5)
    return acc[..., 0], acc[..., 2:], acc[..., 1], h


def gaussians_to_mesh(
    g: Gaussians,
    resolution: int = 96,
    level: float = 0.5,
    bound: float = 0.6,
    max_stencil_radius: int = 16,
    min_component_fraction: float = 0.01,
):
    """A vertex-coloured triangle mesh of one object's Gaussians (``trimesh.Trimesh``, +Y up, world units).

    resolution: voxels per side of the grid over ``[-bound, bound]^3`` (the object lives in the unit sphere
    of radius 0.5, so the default bound 0.6 leaves a margin). The default 96 (12.6 mm voxels) costs 0.4x the
    splatting of 128 and keeps all the detail the tiny model's Gaussians carry (benchmarks/export_time.py). level: the accumulated opacity in (0, 1) at
    which the surface sits (see the module docstring). max_stencil_radius: at most this many voxels either
    side of a Gaussian's centre (larger Gaussians are clipped). min_component_fraction: connected pieces
    with fewer faces than this fraction of the whole are removed (0 keeps everything).
    Raises EmptyMeshError (a ValueError) when no surface exists, e.g. all Gaussians transparent.
    """
    import trimesh
    from scipy.ndimage import map_coordinates
    from skimage.measure import marching_cubes

    _require_single(g, "gaussians_to_mesh")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level is an accumulated opacity in (0, 1), got {level}")
    if resolution < 8:
        raise ValueError(f"resolution must be >= 8, got {resolution}")
    g.validate()
    density, color_sum, weight, h = _splat_to_grid(g, int(resolution), float(bound), int(max_stencil_radius))
    iso = -math.log1p(-level)  # optical depth where 1 - exp(-depth) = level
    density = density.cpu().numpy()
    peak = float(density.max()) if density.size else 0.0
    if not peak > iso:
        raise EmptyMeshError(
            f"no surface: the Gaussians' accumulated opacity never reaches {level} inside [-{bound}, {bound}]^3 "
            f"(max {1 - math.exp(-peak):.3g}); are they all transparent or outside the grid?"
        )
    # Pad with empty voxels so surfaces touching the grid's faces still close.
    padded = np.pad(density, 1)
    verts, faces, _, _ = marching_cubes(padded, level=iso, spacing=(h, h, h))
    grid_coords = verts / h - 1.0  # [V, 3] fractional voxel indices of the unpadded grid (x, y, z)
    verts = (grid_coords * h - bound).astype(np.float32)  # world coordinates, axes kept (+Y up)

    # Vertex colours: trilinear samples of sum(alpha * rgb) and sum(alpha), then their ratio.
    coords = grid_coords.T  # [3, V]
    cs = color_sum.cpu().numpy()
    w = map_coordinates(weight.cpu().numpy(), coords, order=1, mode="nearest")  # [V]
    rgb = np.stack([map_coordinates(cs[..., c], coords, order=1, mode="nearest") for c in range(3)], -1)
    rgb = rgb / np.maximum(w, 1e-8)[:, None]
    rgba = np.concatenate([np.clip(np.round(rgb * 255), 0, 255), np.full((len(verts), 1), 255)], -1).astype(np.uint8)

    mesh = trimesh.Trimesh(vertices=verts, faces=faces, vertex_colors=rgba, process=False)
    if min_component_fraction > 0 and len(mesh.faces):
        labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(mesh.faces))
        sizes = np.bincount(labels)
        mesh.update_faces(sizes[labels] >= min_component_fraction * len(mesh.faces))
        mesh.remove_unreferenced_vertices()
    if mesh.volume < 0:  # marching cubes' winding depends on the gradient direction: make normals point out
        mesh.invert()
    return mesh


def save_glb(g: Gaussians, path: PathLike, **mesh_kwargs) -> str:
    """Extract the mesh (``gaussians_to_mesh(g, **mesh_kwargs)``) and write it as binary glTF. Atomic."""
    mesh = gaussians_to_mesh(g, **mesh_kwargs)
    data = mesh.export(file_type="glb")
    write_atomically(path, [data])
    return os.fspath(path)


@torch.no_grad()
def turntable_frames(
    g: Gaussians,
    num_frames: int = 24,
    size: int = 256,
    elevation_deg: float = 15.0,
    radius: float = DEFAULT_RADIUS,
    fov_deg: float = DEFAULT_FOV_DEG,
    views_per_batch: Optional[int] = None,
) -> np.ndarray:
    """Renders on white from ``num_frames`` azimuths evenly spread over a full turn (frame 0 = azimuth 0).

    ``views_per_batch`` (default: all frames at once) bounds how many views one render call takes; on a CPU
    one call for all frames is ~20% faster than calls of 4 (the splatter's tile chunks pad less), and the
    splatter bounds its own memory by chunks either way. Returns uint8 [T, size, size, 3].
    """
    _require_single(g, "turntable_frames")
    if num_frames < 1 or size < 1:
        raise ValueError(f"num_frames and size must be positive, got {num_frames} and {size}")
    g = g.detach()
    azimuths = torch.arange(num_frames, dtype=torch.float32) * (360.0 / num_frames)  # [T]
    frames = []
    for chunk in azimuths.split(views_per_batch or num_frames):
        cams = orbit_cameras(chunk, torch.full_like(chunk, float(elevation_deg)), size, size, radius, fov_deg)
        rgb = render(g, cams, size, size, background=WHITE).rgb  # [V, 3, H, W]
        frames.append((rgb.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu())
    return torch.cat(frames).numpy()


def encode_h264(frames: np.ndarray, path: str, fps: int) -> None:
    """uint8 frames [T, H, W, 3] -> an H.264 MP4 at ``path`` (yuv420p, faststart), by piping raw RGB into ffmpeg.

    ffmpeg is started here rather than through imageio's writer: that one passes ``preexec_fn=os.setpgrp`` to
    Popen, and running Python code between fork and exec can hang the child for good when other threads hold
    locks at the fork (the app encodes while it serves; imageio-ffmpeg issue #58). Without a preexec_fn, Popen
    forks and execs in C. Raises RuntimeError with ffmpeg's own message if it fails.
    """
    import subprocess

    import imageio_ffmpeg

    _, height, width, _ = frames.shape
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{width}x{height}", "-r", str(fps), "-i", "-", "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p",
               "-movflags", "+faststart", path]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, errors = process.communicate(np.ascontiguousarray(frames).tobytes())
    except BaseException:
        process.kill()
        process.wait()
        raise
    if process.returncode != 0:
        message = " ".join(errors.decode(errors="replace").split())[-300:]
        raise RuntimeError(f"ffmpeg could not encode the video (exit {process.returncode}): {message}")


def save_turntable_mp4(
    g: Gaussians,
    path: PathLike,
    num_frames: int = 24,
    size: int = 256,
    fps: int = 12,
    elevation_deg: float = 15.0,
    radius: float = DEFAULT_RADIUS,
    fov_deg: float = DEFAULT_FOV_DEG,
    frames: Optional[np.ndarray] = None,
) -> str:
    """A turntable video (H.264, yuv420p, so browsers play it), encoded by imageio-ffmpeg's ffmpeg binary. Atomic.

    ``size`` must be even (yuv420p halves the chroma resolution). ``frames`` (uint8 [T, H, W, 3]) skips the
    rendering and writes those instead.
    """
    if frames is None:
        if size % 2:
            raise ValueError(f"the video size must be even for yuv420p H.264, got {size}")
        frames = turntable_frames(g, num_frames, size, elevation_deg, radius, fov_deg)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"frame height and width must be even for yuv420p H.264, got {frames.shape[1:3]}")
    path = os.fspath(path)
    # The temp file keeps the .mp4 suffix so ffmpeg picks the MP4 container; ffmpeg truncates it in place,
    # so the video keeps its umask-respecting mode.
    with replacing(path, suffix=".tmp.mp4") as tmp:
        encode_h264(frames, tmp, fps)
    return path


#: What `save_as` writes, by file extension: the CLI's --format values and the app's downloads.
OUTPUT_FORMATS = ("ply", "splat", "glb", "mp4")


def save_as(g: Gaussians, path: PathLike, glb_resolution: Optional[int] = None) -> str:
    """Write one object in the format its file name ends with: .ply (standard 3DGS), .splat (web viewers), .glb
    (marching-cubes mesh; `glb_resolution` sets its grid) or .mp4 (turntable). Atomic; returns the path.

    The one place the CLI and the app turn a format into a writer. Raises ValueError for another extension and
    EmptyMeshError for a .glb of an object too transparent to mesh.
    """
    fmt = os.path.splitext(os.fspath(path))[1].lower().lstrip(".")
    if fmt == "ply":
        return g.save_ply(path)
    if fmt == "splat":
        return g.save_splat(path)
    if fmt == "glb":
        return save_glb(g, path, **({} if glb_resolution is None else {"resolution": glb_resolution}))
    if fmt == "mp4":
        return save_turntable_mp4(g, path)
    raise ValueError(f"cannot write {os.fspath(path)!r}: unknown output format {fmt!r}; available: {', '.join(OUTPUT_FORMATS)}")
