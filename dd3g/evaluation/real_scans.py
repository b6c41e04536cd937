"""The real scans as an evaluation set: ground truth in the model's frame and the trivial predictions.

A scan (GLB, normalised by `dd3g.rendering.mesh_renderer.load_scan`) is rendered at the input view (azimuth 0,
elevation 0); that RGBA is what a model gets. The pipeline recentres and rescales its input (`dd3g.preprocess`),
so `solve_framing` finds the similarity (scale about the origin, shift in the input camera's image plane) that
moves the mesh into the frame the model was given, and `Scan.views` renders the truth there. `Scan` caches
every render as an 8-bit PNG keyed by the file's sha256, the render settings and the transform, so cached and
fresh runs score the same.

The trivial predictions a model must beat, each from the framed input [4, S, S]: the copy at every camera, the
copy mirrored behind the object, a card of Gaussians through the origin, and the silhouette revolved about the
vertical axis. `benchmarks/eval_real.py` scores a model beside them; `benchmarks/teacher_quality.py` renders the
truth at a teacher's views.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..cameras import Cameras, ViewLayout, orbit_cameras
from ..checksums import sha256_file
from ..gaussians import Gaussians
from ..preprocess import PreprocessConfig, composite_on, preprocess
from ..rendering import render
from ..rendering.mesh_renderer import Mesh, load_scan, render_mesh

BASELINES = ("copy", "mirror", "card", "revolve")
RENDER_VERSION = 2  # bump when the ground-truth renders change meaning (2: the model's frame)
REVOLVE_SEGMENTS = 64  # ring resolution of the revolved silhouette
REVOLVE_VERSION = 2  # in the revolve cache key (2: perspective-corrected rings)
IDENTITY = {"scale": 1.0, "shift": [0.0, 0.0]}  # the scan's own frame (e.g. for a teacher, which gets no recentring)
CARD_SIGMA_PX = 0.4  # card Gaussians' std in input pixels: crisp at the input camera, no gaps at oblique ones


def to_png(rgba: torch.Tensor, path: Path) -> None:
    """[4, H, W] in [0, 1] -> RGBA PNG."""
    array = (rgba.permute(1, 2, 0).clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)  # [H, W, 4]
    Image.fromarray(array, "RGBA").save(path)


def from_png(path: Path) -> torch.Tensor:
    """RGBA PNG -> [4, H, W] in [0, 1]."""
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGBA"), np.float32) / 255.0).permute(2, 0, 1)


def to_uint8(rgba: torch.Tensor) -> np.ndarray:
    """[4, H, W] in [0, 1] -> [H, W, 4] uint8 (what a user's PNG would be)."""
    return (rgba.permute(1, 2, 0).clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)


def cache_key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


# ------------------------------------------------------------------------------------------ the model's frame


def read_framing(checkpoint: Path, pipe=None) -> dict:
    """The pipeline's framing {image_size, foreground_ratio}: from the loaded pipeline, else the checkpoint's
    model_index.json (so --baselines-only needs no weights), else the preprocessing defaults."""
    if pipe is not None:
        return {"image_size": int(pipe.config.image_size), "foreground_ratio": float(pipe.config.foreground_ratio)}
    index = Path(checkpoint) / "model_index.json"
    config = json.loads(index.read_text()) if index.exists() else {}
    default = PreprocessConfig()
    return {"image_size": int(config.get("image_size", default.size)),
            "foreground_ratio": float(config.get("foreground_ratio", default.foreground_ratio))}


def frame_input(input_rgba: torch.Tensor, foreground_ratio: float) -> torch.Tensor:
    """The pipeline's recentring/rescaling of [4, S, S] at the same size S -> [4, S, S] (from the 8-bit image the
    pipeline gets). The model sees this at its own image_size; the same frame to within half a model pixel."""
    config = PreprocessConfig(size=input_rgba.shape[-1], foreground_ratio=foreground_ratio, remove_background="never")
    return preprocess(to_uint8(input_rgba), config).rgba


def alpha_box(alpha: torch.Tensor) -> tuple:
    """(left, top, right, bottom) pixel edges of alpha > 0 in 8 bits (the preprocessing's cut) of [H, W]."""
    inside = alpha > 0.5 / 255
    rows = torch.nonzero(inside.any(1))[:, 0]
    cols = torch.nonzero(inside.any(0))[:, 0]
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def projected_box(vertices: torch.Tensor, camera: Cameras) -> torch.Tensor:
    """Continuous pixel box (x0, y0, x1, y1) [4] of vertices [N, 3] seen by one camera [1]."""
    R, t, K = camera.viewmats[0, :3, :3], camera.viewmats[0, :3, 3], camera.Ks[0]
    cam = vertices.double() @ R.double().T + t.double()  # [N, 3] camera space
    x = K[0, 0] * cam[:, 0] / cam[:, 2] + K[0, 2]  # [N]
    y = K[1, 1] * cam[:, 1] / cam[:, 2] + K[1, 2]  # [N]
    return torch.stack([x.min(), y.min(), x.max(), y.max()])


def apply_similarity(vertices: torch.Tensor, transform: dict) -> torch.Tensor:
    """[N, 3] -> [N, 3]: scale about the origin, then shift in world X/Y (the input camera's image plane)."""
    shift = torch.tensor([transform["shift"][0], transform["shift"][1], 0.0], dtype=vertices.dtype)
    return vertices * transform["scale"] + shift


def solve_framing(mesh: Mesh, input_camera: Cameras, input_alpha: torch.Tensor, framed_alpha: torch.Tensor,
                  iterations: int = 100) -> dict:
    """The similarity that moves the mesh into the model's frame.

    input_alpha / framed_alpha [H, W]: the input view's alpha before and after the preprocessing. The
    preprocessing maps the input's pixel box onto the framed one (uniform scale k of the longer side); the
    mesh's continuous projected box must land where that map sends it. Perspective makes the projected box
    a non-linear function of (s, tx, ty), so a fixed-point iteration matches centre and longer side.
    """
    used = mesh.vertices[torch.unique(mesh.faces)].double()  # [N, 3] the vertices triangles use
    p0 = torch.tensor(alpha_box(input_alpha), dtype=torch.float64)  # [4] input box
    p1 = torch.tensor(alpha_box(framed_alpha), dtype=torch.float64)  # [4] framed box
    c0 = projected_box(used, input_camera)  # [4] continuous box before
    axis = 0 if (p0[2] - p0[0]) >= (p0[3] - p0[1]) else 1  # the preprocessing scales by the longer side
    k = (p1[2 + axis] - p1[axis]) / (p0[2 + axis] - p0[axis])
    target_centre = p1[:2] + k * ((c0[:2] + c0[2:]) / 2 - p0[:2])  # [2] (x, y) pixels
    target_length = k * (c0[2 + axis] - c0[axis])
    focal = float(input_camera.Ks[0, 0, 0])
    depth = float(input_camera.centers[0].norm())  # the origin's distance: pixels -> world at the image plane
    scale, shift = float(k), [0.0, 0.0]
    for _ in range(iterations):
        box = projected_box(apply_similarity(used, {"scale": scale, "shift": shift}), input_camera)
        scale *= float(target_length / (box[2 + axis] - box[axis]))
        box = projected_box(apply_similarity(used, {"scale": scale, "shift": shift}), input_camera)
        error = target_centre - (box[:2] + box[2:]) / 2  # [2] pixels
        # Image x is world +X, image y is world -Y at the input camera (azimuth 0 looks from +Z).
        shift = [shift[0] + float(error[0]) * depth / focal, shift[1] - float(error[1]) * depth / focal]
        if float(error.abs().max()) < 1e-4 and abs(float(target_length / (box[2 + axis] - box[axis])) - 1) < 1e-7:
            break
    return {"scale": scale, "shift": shift}


def transformed(mesh: Mesh, transform: dict) -> Mesh:
    return dataclasses.replace(mesh, vertices=apply_similarity(mesh.vertices.double(), transform).float())


# ------------------------------------------------------------------------------------------ ground truth (cached)


class Scan:
    """One scan's renders, each cached as 8-bit PNGs (cached and fresh runs score the same); the mesh is loaded
    only when something is missing."""

    def __init__(self, path: Path, cache: Path, layout: ViewLayout, framing: dict, size: int, supersample: int,
                 turntable_elevation: float = 0.0):
        self.path, self.cache, self.layout, self.framing = Path(path), Path(cache), layout, framing
        self.size, self.supersample, self.turntable_elevation = size, supersample, turntable_elevation
        self.sha = sha256_file(self.path)
        self._mesh = None
        self.settings = dict(size=size, supersample=supersample, radius=layout.radius, fov=layout.fov_deg,
                             version=RENDER_VERSION)

    @property
    def mesh(self) -> Mesh:
        if self._mesh is None:
            self._mesh = load_scan(self.path)
        return self._mesh

    def folder(self, *parts) -> Path:
        folder = self.cache / f"{self.path.stem}-{cache_key(self.sha, self.settings, *parts)}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def input_camera(self) -> Cameras:
        return orbit_cameras(torch.tensor([0.0]), torch.tensor([0.0]), self.size, self.size,
                             self.layout.radius, self.layout.fov_deg)

    def input_view(self) -> torch.Tensor:
        """The scan's input view in its own frame, what the pipeline gets: RGBA [4, S, S]."""
        file = self.folder("input") / "input.png"
        if not file.exists():
            to_png(render_mesh(self.mesh, self.input_camera(), supersample=self.supersample)[0], file)
        return from_png(file)

    def transform(self, input_rgba: torch.Tensor, framed: torch.Tensor) -> dict:
        file = self.folder("transform", self.framing) / "transform.json"
        if not file.exists():
            value = solve_framing(self.mesh, self.input_camera(), input_rgba[3], framed[3])
            file.write_text(json.dumps(value))
        return json.loads(file.read_text())

    def views(self, cameras: Cameras, names, transform: dict) -> torch.Tensor:
        """The truth in the model's frame at every camera: RGBA [V, 4, S, S]; the transform is in the key."""
        folder = self.folder("views", list(names), self.turntable_elevation, transform)
        files = [folder / f"{name}.png" for name in names]
        if not all(f.exists() for f in files):
            rgba = render_mesh(transformed(self.mesh, transform), cameras, supersample=self.supersample)
            for view, f in zip(rgba, files):
                to_png(view, f)
        return torch.stack([from_png(f) for f in files])

    def revolve_rgba(self, cameras: Cameras, names, framed: torch.Tensor) -> torch.Tensor:
        """The revolved silhouette's renders (the slowest trivial prediction), cached: straight RGBA [V, 4, S, S]."""
        digest = hashlib.sha256(to_uint8(framed).tobytes()).hexdigest()
        folder = self.folder("revolve", list(names), self.turntable_elevation, digest, REVOLVE_SEGMENTS, REVOLVE_VERSION)
        files = [folder / f"{name}.png" for name in names]
        if not all(f.exists() for f in files):
            mesh = revolve_mesh(framed, cameras[0:1], self.layout.radius)
            rgba = render_mesh(mesh, cameras, supersample=self.supersample)
            for view, f in zip(rgba, files):
                to_png(view, f)
        return torch.stack([from_png(f) for f in files])


# ------------------------------------------------------------------------------------------ trivial predictions


def wrapped_azimuth(azimuth: float) -> float:
    """Degrees -> [-180, 180)."""
    return (azimuth + 180.0) % 360.0 - 180.0


def copy_prediction(framed: torch.Tensor, num_views: int) -> torch.Tensor:
    """The framed input [4, S, S] on white at every camera -> [V, 3, S, S]."""
    return composite_on(framed)[None].expand(num_views, -1, -1, -1).clone()


def mirrored(image: torch.Tensor, azimuths) -> torch.Tensor:
    """image [C, S, S] at every camera, flipped left-right where the camera is behind the object (|azimuth| > 90)
    -> [V, C, S, S]."""
    return torch.stack([image.flip(-1) if abs(wrapped_azimuth(a)) > 90.0 else image for a in azimuths])


def mirror_prediction(framed: torch.Tensor, azimuths) -> torch.Tensor:
    """The copy, flipped left-right where the camera is behind the object -> [V, 3, S, S] on white."""
    return mirrored(composite_on(framed), azimuths)


def _plane_point(u: torch.Tensor, v: torch.Tensor, camera: Cameras, depth: float) -> tuple:
    """Pixel coordinates (u right, v down) of the input camera -> world (X, Y) on the plane through the origin."""
    K = camera.Ks[0]
    return (u - K[0, 2]) / K[0, 0] * depth, -(v - K[1, 2]) / K[1, 1] * depth


def card_gaussians(framed: torch.Tensor, input_camera: Cameras, depth: float) -> Gaussians:
    """The framed input's pixels [4, S, S] as flat Gaussians on the plane Z = 0 facing the input camera
    (azimuth 0 looks from +Z), one per pixel with any alpha: means [N, 3]."""
    rows, cols = torch.nonzero(framed[3] > 0.5 / 255, as_tuple=True)  # [N] each
    x, y = _plane_point(cols.float() + 0.5, rows.float() + 0.5, input_camera, depth)  # [N] each, world
    pitch = depth / float(input_camera.Ks[0, 0, 0])  # world size of one input pixel at the plane
    means = torch.stack([x, y, torch.zeros_like(x)], -1)  # [N, 3]
    scales = torch.tensor([CARD_SIGMA_PX * pitch, CARD_SIGMA_PX * pitch, 1e-4 * pitch]).expand(len(x), 3)  # [N, 3]
    rotations = torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(len(x), 4)  # [N, 4] identity
    return Gaussians.from_activated(means, scales, rotations, framed[3, rows, cols], framed[:3, rows, cols].T)


def card_render(framed: torch.Tensor, cameras: Cameras, depth: float):
    """[4, S, S] -> the card rendered on white at every camera: RenderOutput, rgb [V, 3, S, S], alpha [V, 1, S, S]."""
    with torch.no_grad():
        return render(card_gaussians(framed, cameras[0:1], depth), cameras, background=(1.0, 1.0, 1.0))


def card_prediction(framed: torch.Tensor, cameras: Cameras, depth: float) -> torch.Tensor:
    """[4, S, S] -> the card rendered on white at every camera [V, 3, S, S]."""
    return card_render(framed, cameras, depth).rgb.clamp(0, 1)


def revolve_mesh(framed: torch.Tensor, input_camera: Cameras, depth: float, segments: int = REVOLVE_SEGMENTS) -> Mesh:
    """The framed input's [4, S, S] silhouette revolved about the vertical axis through the origin.

    Row i's radius is half its alpha width (the sum of its alpha, in pixels, at the origin's image plane, then
    corrected for perspective); a ring sits at each row boundary (width: the mean of the rows it separates), with
    flat caps at both ends.
    A ring point at angle theta (X = r sin theta) takes the colour of the row's pixel at the same fraction of
    the row's alpha span, so front and back both show the input's colours.
    """
    size = framed.shape[-1]
    alpha, rgb = framed[3], framed[:3]  # [S, S], [3, S, S]
    width = alpha.sum(1)  # [S] alpha width per row, pixels
    rows = torch.nonzero(width > 0.5 / 255)[:, 0]
    top, bottom = int(rows[0]), int(rows[-1]) + 1  # rows [top, bottom)
    cols = torch.arange(size, dtype=torch.float32) + 0.5  # [S] pixel centres
    centre = (alpha * cols).sum(1) / width.clamp_min(1e-8)  # [S] alpha-weighted column per row
    pitch = depth / float(input_camera.Ks[0, 0, 0])
    theta = torch.arange(segments, dtype=torch.float32) * (2 * math.pi / segments)  # [K]
    boundaries = torch.arange(top, bottom + 1)  # [B] ring positions (pixel edges)
    above = (boundaries - 1).clamp(top, bottom - 1)  # [B] the row above each boundary (itself at the top)
    below = boundaries.clamp(top, bottom - 1)  # [B] the row below (itself at the bottom)
    half_width = (width[above] + width[below]) / 4 * pitch  # [B] half the mean width, world, at the plane
    _, plane_y = _plane_point(torch.zeros(()), boundaries.float(), input_camera, depth)  # [B] world Y at the plane
    # Perspective: a ring's outline is its near rim (height) and its tangent rays (width). Placed so both project
    # where the row is, the solid's silhouette is the input's from every camera at the input's elevation.
    radius = half_width * depth / torch.sqrt(depth**2 + half_width**2)  # [B] tangent rays through the row's ends
    ring_y = plane_y * (depth - radius) / depth  # [B] the near rim at the row's height
    ring = torch.stack([radius[:, None] * torch.sin(theta), ring_y[:, None].expand(-1, segments),
                        radius[:, None] * torch.cos(theta)], -1)  # [B, K, 3]
    # Colour: row `below` (row `above` for the last ring), column at the same fraction of the alpha span.
    colour_row = torch.where(boundaries < bottom, below, above)  # [B]
    half = width[colour_row] / 2  # [B] pixels
    column = (centre[colour_row][:, None] + half[:, None] * torch.sin(theta)).floor().long().clamp(0, size - 1)  # [B, K]
    ring_rgb = rgb[:, colour_row[:, None].expand(-1, segments), column].permute(1, 2, 0)  # [B, K, 3]
    count = len(boundaries)
    caps = torch.stack([torch.tensor([0.0, float(ring_y[0]), 0.0]), torch.tensor([0.0, float(ring_y[-1]), 0.0])])  # [2, 3]
    cap_rgb = torch.stack([rgb[:, top, int(centre[top])], rgb[:, bottom - 1, int(centre[bottom - 1])]])  # [2, 3]
    vertices = torch.cat([ring.reshape(-1, 3), caps])  # [B * K + 2, 3]
    colours = torch.cat([ring_rgb.reshape(-1, 3), cap_rgb])  # [B * K + 2, 3]
    b, k = torch.meshgrid(torch.arange(count - 1), torch.arange(segments), indexing="ij")  # [B - 1, K] each
    a0, a1 = b * segments + k, b * segments + (k + 1) % segments  # [B - 1, K] this ring
    b0, b1 = a0 + segments, a1 + segments  # [B - 1, K] the next ring down
    sides = torch.cat([torch.stack([a0, a1, b1], -1).reshape(-1, 3), torch.stack([a0, b1, b0], -1).reshape(-1, 3)])
    k = torch.arange(segments)
    last = (count - 1) * segments
    top_cap = torch.stack([torch.full_like(k, count * segments), (k + 1) % segments, k], -1)  # [K, 3]
    bottom_cap = torch.stack([torch.full_like(k, count * segments + 1), last + k, last + (k + 1) % segments], -1)
    faces = torch.cat([sides, top_cap, bottom_cap])  # [F, 3]
    return Mesh(vertices=vertices.float(), faces=faces.long(), face_uvs=torch.zeros(len(faces), 3, 2),
                face_colors=colours[faces].float(), face_texture=torch.full((len(faces),), -1, dtype=torch.long))


# ------------------------------------------------------------------------------------------ scoring and summaries
