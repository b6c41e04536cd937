"""Exact, unlit rendering of textured triangle meshes on the CPU (ground truth for the real-scan eval).

`load_scan(path)` reads a glTF/GLB scene with trimesh, bakes the scene-graph transforms into one
triangle soup and applies the project's real-scan convention (docs/design.md section 4): rotate -90 degrees
about X (the files are Z-up, the world is +Y up), centre on the bounding-box centre, and scale so the
bounding sphere (largest vertex distance from that centre) has radius 0.5.

`render_mesh(mesh, cameras, width, height)` is a z-buffer rasterizer written in torch:
- vertices go through the same OpenCV world-to-camera `viewmats` and pixel `Ks` as the Gaussian renderer,
  and pixel (row i, column j) samples the point (j + 0.5, i + 0.5), so both renderers see identical views;
- triangles are rasterized in chunks (sorted by screen-space bounding-box size so each chunk enumerates
  a tight candidate grid); each candidate pixel centre gets screen-space barycentrics from edge
  functions, is kept when it lies inside (all >= 0), and is depth-tested against a per-pixel z-buffer
  (`scatter_reduce(amin)`), with perspective-correct barycentrics for interpolation;
- colour = bilinear texture lookup (repeat wrapping, texel centres at +0.5) of the perspective-correct UV,
  times the interpolated per-corner colour (vertex colours / material base colour for untextured parts,
  1 for textured parts). Unlit: the scans' textures are baked albedo.
- anti-aliasing: `supersample=2` (default) renders at 2x the resolution and box-filters down, so edges
  get fractional alpha like the Gaussian renders; `supersample=1` gives a hard 0/1 alpha.
Output: straight-alpha RGBA [V, 4, H, W] in [0, 1]; alpha is the covered fraction of the pixel, colour the
average over the covered sub-samples (0 where nothing is covered).

Texture orientation: glTF puts the UV origin at the image's top-left; trimesh flips v on import (OpenGL
convention, v up), so a texel row is (1 - v) * height with the image's row 0 at the top.
The scans' materials carry `baseColorFactor` 0.4 (a leftover of their OBJ conversion); where a texture
exists the factor is ignored because the README states the textures are the unlit albedo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List

import numpy as np
import torch
from torch import Tensor

from ..cameras import Cameras

TARGET_RADIUS = 0.5
NEAR = 1e-3
# Rasterizer work per chunk: triangles x candidate pixels of their (shared) bounding-box grid.
_CHUNK_BUDGET = 1 << 21


@dataclass
class Mesh:
    """A triangle soup with per-corner UVs/colours and a texture index per face."""

    vertices: Tensor  # [N, 3] float32, world (+Y up, normalised)
    faces: Tensor  # [F, 3] int64
    face_uvs: Tensor  # [F, 3, 2] float32, trimesh UV convention (v up)
    face_colors: Tensor  # [F, 3, 3] float32 in [0, 1], multiplies the texture
    face_texture: Tensor  # [F] int64, index into textures or -1 for none
    textures: List[Tensor] = field(default_factory=list)  # each [h, w, 3] float32 in [0, 1], row 0 at the top

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])


# ----------------------------------------------------------------------------------------------- loading

Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])  # rotation by -90 degrees about X


def _image_to_array(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def _geometry_appearance(geometry, name: str, path) -> tuple:
    """(face_uvs [F,3,2] or None, face_colors [F,3,3], texture [h,w,3] or None) of one trimesh geometry."""
    faces = np.asarray(geometry.faces)
    num_faces = len(faces)
    visual = geometry.visual
    white = np.ones((num_faces, 3, 3), np.float32)
    if getattr(visual, "kind", None) == "texture":
        material = getattr(visual, "material", None)
        image = None
        if material is not None:
            image = getattr(material, "baseColorTexture", None)
            if image is None:
                image = getattr(material, "image", None)
        uv = getattr(visual, "uv", None)
        if image is not None and uv is not None and len(uv) == len(geometry.vertices):
            face_uvs = np.asarray(uv, np.float32)[faces]
            return face_uvs, white, _image_to_array(image)
        factor = None
        if material is not None:
            factor = getattr(material, "baseColorFactor", None)
            if factor is None:
                factor = getattr(material, "main_color", None)
        if factor is not None:
            rgb = np.asarray(factor, np.float32)[:3]
            rgb = rgb / 255.0 if rgb.max() > 1.0 or np.asarray(factor).dtype == np.uint8 else rgb
            return None, np.broadcast_to(rgb, (num_faces, 3, 3)).copy(), None
    elif getattr(visual, "kind", None) == "vertex":
        colors = np.asarray(visual.vertex_colors, np.float32)[:, :3] / 255.0
        return None, colors[faces], None
    elif getattr(visual, "kind", None) == "face":
        colors = np.asarray(visual.face_colors, np.float32)[:, :3] / 255.0
        return None, np.repeat(colors[:, None], 3, axis=1), None
    raise ValueError(f"{os.fspath(path)}: geometry {name!r} has no texture or colours")


def load_scan(path, target_radius: float = TARGET_RADIUS) -> Mesh:
    """Load a GLB/glTF scan (Z-up) as a normalised +Y-up Mesh (see the module docstring)."""
    import trimesh

    try:
        scene = trimesh.load(os.fspath(path), force="scene")
    except Exception as error:  # trimesh raises many kinds on corrupt files
        raise ValueError(f"{os.fspath(path)}: cannot read as a mesh ({type(error).__name__}: {error})") from error
    vertices, faces, face_uvs, face_colors, face_texture, textures = [], [], [], [], [], []
    offset = 0
    for node in scene.graph.nodes_geometry:
        transform, geometry_name = scene.graph[node]
        geometry = scene.geometry[geometry_name]
        if not isinstance(geometry, trimesh.Trimesh) or len(geometry.faces) == 0:
            continue
        uvs, colors, texture = _geometry_appearance(geometry, geometry_name, path)
        verts = trimesh.transformations.transform_points(np.asarray(geometry.vertices, np.float64), transform)
        f = np.asarray(geometry.faces, np.int64)
        vertices.append(verts)
        faces.append(f + offset)
        offset += len(verts)
        face_uvs.append(uvs if uvs is not None else np.zeros((len(f), 3, 2), np.float32))
        face_colors.append(colors)
        if texture is not None:
            textures.append(torch.from_numpy(np.ascontiguousarray(texture)))
            face_texture.append(np.full(len(f), len(textures) - 1, np.int64))
        else:
            face_texture.append(np.full(len(f), -1, np.int64))
    if not vertices:
        raise ValueError(f"{os.fspath(path)}: no triangles in the file")
    verts = np.concatenate(vertices) @ Z_UP_TO_Y_UP.T
    used = np.unique(np.concatenate(faces))  # normalise on the vertices that triangles use
    lo, hi = verts[used].min(0), verts[used].max(0)
    centre = (lo + hi) / 2
    verts = verts - centre
    radius = np.linalg.norm(verts[used], axis=1).max()
    if not np.isfinite(radius) or radius <= 0:
        raise ValueError(f"{os.fspath(path)}: degenerate geometry (zero or non-finite extent)")
    verts = verts * (target_radius / radius)
    return Mesh(
        vertices=torch.from_numpy(verts.astype(np.float32)),
        faces=torch.from_numpy(np.concatenate(faces)),
        face_uvs=torch.from_numpy(np.concatenate(face_uvs).astype(np.float32)),
        face_colors=torch.from_numpy(np.concatenate(face_colors).astype(np.float32)),
        face_texture=torch.from_numpy(np.concatenate(face_texture)),
        textures=textures,
    )


# --------------------------------------------------------------------------------------------- rendering


def _sample_texture(texture: Tensor, uv: Tensor) -> Tensor:
    """Bilinear lookup with repeat wrapping. texture [h, w, 3], uv [P, 2] (v up) -> [P, 3]."""
    h, w = texture.shape[:2]
    x = torch.remainder(uv[:, 0], 1.0) * w - 0.5
    y = torch.remainder(1.0 - uv[:, 1], 1.0) * h - 0.5
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0, y0 = x0.long(), y0.long()
    x0w, x1w = torch.remainder(x0, w), torch.remainder(x0 + 1, w)
    y0w, y1w = torch.remainder(y0, h), torch.remainder(y0 + 1, h)
    flat = texture.reshape(-1, 3)
    c00, c01 = flat[y0w * w + x0w], flat[y0w * w + x1w]
    c10, c11 = flat[y1w * w + x0w], flat[y1w * w + x1w]
    return (c00 * (1 - fx) + c01 * fx) * (1 - fy) + (c10 * (1 - fx) + c11 * fx) * fy


def _rasterize(screen: Tensor, inv_z: Tensor, width: int, height: int):
    """Z-buffer rasterization of projected triangles.

    screen [F, 3, 2] pixel coordinates, inv_z [F, 3] (1 / camera z, > 0 for kept faces).
    Returns face index [H*W] (-1 empty) and perspective-correct barycentrics [H*W, 3].
    """
    num_pixels = width * height
    depth = torch.full((num_pixels,), float("inf"))
    face_id = torch.full((num_pixels,), -1, dtype=torch.long)
    bary = torch.zeros(num_pixels, 3)
    if screen.shape[0] == 0:
        return face_id, bary
    lo = screen.amin(1)  # [F, 2]
    hi = screen.amax(1)
    # Pixel-centre index ranges: centres c + 0.5 with lo <= c + 0.5 <= hi.
    c_lo = torch.ceil(lo - 0.5).clamp_min(0)
    c_hi = torch.minimum(torch.floor(hi - 0.5), torch.tensor([width - 1.0, height - 1.0]))
    extent = (c_hi - c_lo + 1).clamp_min(0)  # [F, 2]
    keep = (extent > 0).all(1)
    # Signed area; back faces are kept (scans are not always consistently wound), degenerate ones dropped.
    e1, e2 = screen[:, 1] - screen[:, 0], screen[:, 2] - screen[:, 0]
    area = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    keep &= area.abs() > 1e-12
    index = torch.nonzero(keep)[:, 0]
    if index.numel() == 0:
        return face_id, bary
    cells = (extent[index, 0] * extent[index, 1]).long()
    order = torch.argsort(cells)
    index, cells = index[order], cells[order]
    ew_all, eh_all = extent[index, 0].long(), extent[index, 1].long()
    start = 0
    total = index.numel()
    while start < total:
        # Grow the chunk while triangles x (max width x max height) stays within budget.
        max_cells = int(cells[min(total - 1, start + 63)].item())
        count = max(1, min(total - start, _CHUNK_BUDGET // max(1, max_cells)))
        stop = start + count
        chunk = index[start:stop]
        gw, gh = int(ew_all[start:stop].max()), int(eh_all[start:stop].max())
        tri = screen[chunk]  # [T, 3, 2]
        iz = inv_z[chunk]  # [T, 3]
        oy, ox = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        px = c_lo[chunk, 0:1] + ox.reshape(1, -1)  # [T, G]
        py = c_lo[chunk, 1:2] + oy.reshape(1, -1)
        valid = (px <= c_hi[chunk, 0:1]) & (py <= c_hi[chunk, 1:2])
        sx, sy = px + 0.5, py + 0.5
        x0, y0 = tri[:, 0, 0:1], tri[:, 0, 1:2]
        x1, y1 = tri[:, 1, 0:1], tri[:, 1, 1:2]
        x2, y2 = tri[:, 2, 0:1], tri[:, 2, 1:2]
        a = area[chunk][:, None]
        w0 = ((x1 - sx) * (y2 - sy) - (y1 - sy) * (x2 - sx)) / a
        w1 = ((x2 - sx) * (y0 - sy) - (y2 - sy) * (x0 - sx)) / a
        w2 = 1.0 - w0 - w1
        inside = valid & (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
        t_idx, g_idx = torch.nonzero(inside, as_tuple=True)
        if t_idx.numel():
            b = torch.stack([w0[t_idx, g_idx], w1[t_idx, g_idx], w2[t_idx, g_idx]], 1)  # screen-space
            pz = b * iz[t_idx]  # [P, 3]
            inv_depth = pz.sum(1)
            frag_depth = 1.0 / inv_depth
            pix = (py[t_idx, g_idx] * width + px[t_idx, g_idx]).long()
            depth.scatter_reduce_(0, pix, frag_depth, reduce="amin")
            win = frag_depth <= depth[pix]
            face_id[pix[win]] = chunk[t_idx[win]]
            bary[pix[win]] = pz[win] / inv_depth[win, None]
        start = stop
    return face_id, bary


def render_mesh(mesh: Mesh, cameras: Cameras, width: int | None = None, height: int | None = None,
                supersample: int = 2) -> Tensor:
    """Render the mesh from cameras [V] -> straight-alpha RGBA [V, 4, H, W] (see the module docstring)."""
    width = cameras.width if width is None else int(width)
    height = cameras.height if height is None else int(height)
    if (width, height) != (cameras.width, cameras.height):
        cameras = cameras.resized(width, height)
    if cameras.viewmats.dim() != 3:
        raise ValueError(f"render_mesh takes cameras [V], got batch shape {tuple(cameras.shape)}")
    s = int(supersample)
    if s < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    cameras = cameras.to("cpu", torch.float32).resized(width * s, height * s)
    big_w, big_h = width * s, height * s
    corners = mesh.vertices[mesh.faces]  # [F, 3, 3]
    outputs = []
    with torch.no_grad():
        for view in range(cameras.viewmats.shape[0]):
            R, t = cameras.viewmats[view, :3, :3], cameras.viewmats[view, :3, 3]
            K = cameras.Ks[view]
            cam = corners @ R.T + t  # [F, 3, 3] camera space
            z = cam[..., 2]
            front = (z > NEAR).all(1)  # objects sit well inside the orbit: near-clipping by culling suffices
            faces_kept = torch.nonzero(front)[:, 0]
            cam, z = cam[faces_kept], z[faces_kept]
            screen = torch.stack([K[0, 0] * cam[..., 0] / z + K[0, 2], K[1, 1] * cam[..., 1] / z + K[1, 2]], -1)
            face_local, bary = _rasterize(screen, 1.0 / z, big_w, big_h)
            covered = face_local >= 0
            rgb = torch.zeros(big_w * big_h, 3)
            if covered.any():
                faces = faces_kept[face_local[covered]]
                b = bary[covered]  # [P, 3]
                color = (mesh.face_colors[faces] * b[..., None]).sum(1)  # [P, 3]
                texture_ids = mesh.face_texture[faces]
                uv = (mesh.face_uvs[faces] * b[..., None]).sum(1)  # [P, 2]
                for k, texture in enumerate(mesh.textures):
                    sel = texture_ids == k
                    if sel.any():
                        color[sel] = color[sel] * _sample_texture(texture, uv[sel])
                rgb[covered] = color
            alpha = covered.float().reshape(1, big_h, big_w)
            rgb = rgb.T.reshape(3, big_h, big_w)
            if s > 1:
                alpha = torch.nn.functional.avg_pool2d(alpha[None], s)[0]
                premult = torch.nn.functional.avg_pool2d(rgb[None], s)[0]  # rgb is 0 where uncovered
                rgb = premult / alpha.clamp_min(1e-8)
            outputs.append(torch.cat([rgb, alpha], 0).clamp(0, 1))
    return torch.stack(outputs)
