"""Score DD3G on the real scans against exact mesh renders, beside trivial predictions, in the model's frame.

    python benchmarks/eval_real.py --objects ../shared/eval/real --out runs/eval-real [--checkpoint hub/dd3g-tiny]
    python benchmarks/eval_real.py --objects ../shared/eval/real --out runs/eval-real/baselines --baselines-only

For each GLB (sorted): load + normalise (dd3g.rendering.mesh_renderer: Z-up -> Y-up, bounding box centred, bounding
sphere radius 0.5) and render the input view (azimuth 0, elevation 0; the ViewLayout's radius and fov). That
RGBA is what the pipeline gets.

The model's frame. The pipeline recentres and rescales its input (dd3g.preprocess: the alpha box's longer side
becomes the pipeline's `foreground_ratio` of the side, centred), so its object lives in another frame than the
scan. The truth is moved into the frame the model was given: a similarity (scale s about the origin, then a
shift (tx, ty) in the input camera's image plane, i.e. world X/Y) chosen so that the transformed mesh's
projected box at the input camera has the centre and longer side the preprocessing gives the input's box
(solved on the mesh's vertices, so perspective is accounted for). The framed input (the pipeline's
preprocessing at this evaluation's size) and the truth's input render then share their alpha box to a pixel.
The transformed mesh is rendered at the input view, the 4 canonical views (azimuth 0/90/180/270, elevation 0)
and a turntable (azimuth k * 360/N, elevation --turntable-elevation). Renders are cached as PNGs under
OUT/cache/ (or --cache), keyed by the file's sha256, the render settings and the transform's values.

Predictions, all scored the same way (PSNR/SSIM/LPIPS on white full frame; PSNR/SSIM masked by true alpha > 0.5):
- model: the pipeline's Gaussians for the input view's RGBA (skipped with --baselines-only);
- copy: the framed input view put at every camera;
- mirror: the copy, mirrored left-right at cameras behind the object (|azimuth| > 90);
- card: the framed input's pixels as a plane of Gaussians through the origin facing the input camera;
- revolve: the framed input's silhouette revolved about the vertical axis (radius per image row = half the
  row's alpha width), coloured from the input's pixels, rendered as a mesh.
Novel views = every view except the input view and canonical azimuth 0 (the same camera). The summary gives
each prediction's means, the model against each trivial one, and on how many objects the model's novel-view
score beats the best trivial prediction's on that object (PSNR higher, LPIPS lower).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dd3g.cameras import Cameras, ViewLayout, orbit_cameras  # noqa: E402
from dd3g.gaussians import Gaussians  # noqa: E402
from dd3g.rendering.mesh_renderer import Mesh, composite, load_scan, render_mesh  # noqa: E402
from dd3g.evaluation.metrics import lpips, psnr, ssim  # noqa: E402
from dd3g.preprocess import PreprocessConfig, preprocess  # noqa: E402
from dd3g.rendering import render  # noqa: E402

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "hub" / "dd3g-tiny"
FRAME_NOTE = ("the truth is rendered in the model's frame: scaled about the origin and shifted in the input camera's "
              "image plane so that its input view's alpha box is where the pipeline's preprocessing (recentring, "
              "foreground_ratio) puts the input's; every prediction is scored against that")
METRICS = ("psnr", "ssim", "lpips", "psnr_masked", "ssim_masked")
BASELINES = ("copy", "mirror", "card", "revolve")
RENDER_VERSION = 2  # bump when the ground-truth renders change meaning (2: the model's frame)
REVOLVE_SEGMENTS = 64  # ring resolution of the revolved silhouette
REVOLVE_VERSION = 2  # in the revolve cache key (2: perspective-corrected rings)
IDENTITY = {"scale": 1.0, "shift": [0.0, 0.0]}  # the scan's own frame (e.g. for a teacher, which gets no recentring)
CARD_SIGMA_PX = 0.4  # card Gaussians' std in input pixels: crisp at the input camera, no gaps at oblique ones


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objects", type=Path, required=True, help="folder of .glb scans")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                   help="the pipeline; with --baselines-only only its framing (model_index.json) is read, if present")
    p.add_argument("--baselines-only", action="store_true", help="score the trivial predictions only (no model)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cache", type=Path, default=None,
                   help="render cache (default OUT/cache); share one between runs, e.g. the baselines' and a model's")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--turntable", type=int, default=8, help="turntable views (azimuth k * 360 / N)")
    p.add_argument("--turntable-elevation", type=float, default=15.0)
    p.add_argument("--supersample", type=int, default=2)
    p.add_argument("--grid-objects", type=int, default=4)
    return p.parse_args(argv)


def view_specs(turntable: int, turntable_elevation: float, layout: ViewLayout):
    """[(name, azimuth, elevation)]: input, canonical layout, turntable."""
    specs = [("input", 0.0, 0.0)]
    specs += [(f"canon_{int(round(a)):03d}", float(a), 0.0) for a in layout.azimuths().tolist()]
    specs += [(f"turn_{k * 360.0 / turntable:05.1f}", k * 360.0 / turntable, turntable_elevation) for k in range(turntable)]
    return specs


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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


def _key(*parts) -> str:
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

    def __init__(self, path: Path, args, layout: ViewLayout, framing: dict):
        self.path, self.args, self.layout, self.framing = path, args, layout, framing
        self.sha = file_sha256(path)
        self._mesh = None
        self.cache = args.cache if args.cache is not None else args.out / "cache"
        self.settings = dict(size=args.size, supersample=args.supersample, radius=layout.radius, fov=layout.fov_deg,
                             version=RENDER_VERSION)

    @property
    def mesh(self) -> Mesh:
        if self._mesh is None:
            self._mesh = load_scan(self.path)
        return self._mesh

    def folder(self, *parts) -> Path:
        folder = self.cache / f"{self.path.stem}-{_key(self.sha, self.settings, *parts)}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def input_camera(self) -> Cameras:
        return orbit_cameras(torch.tensor([0.0]), torch.tensor([0.0]), self.args.size, self.args.size,
                             self.layout.radius, self.layout.fov_deg)

    def input_view(self) -> torch.Tensor:
        """The scan's input view in its own frame, what the pipeline gets: RGBA [4, S, S]."""
        file = self.folder("input") / "input.png"
        if not file.exists():
            to_png(render_mesh(self.mesh, self.input_camera(), supersample=self.args.supersample)[0], file)
        return from_png(file)

    def transform(self, input_rgba: torch.Tensor, framed: torch.Tensor) -> dict:
        file = self.folder("transform", self.framing) / "transform.json"
        if not file.exists():
            value = solve_framing(self.mesh, self.input_camera(), input_rgba[3], framed[3])
            file.write_text(json.dumps(value))
        return json.loads(file.read_text())

    def views(self, cameras: Cameras, names, transform: dict) -> torch.Tensor:
        """The truth in the model's frame at every camera: RGBA [V, 4, S, S]; the transform is in the key."""
        folder = self.folder("views", list(names), self.args.turntable_elevation, transform)
        files = [folder / f"{name}.png" for name in names]
        if not all(f.exists() for f in files):
            rgba = render_mesh(transformed(self.mesh, transform), cameras, supersample=self.args.supersample)
            for view, f in zip(rgba, files):
                to_png(view, f)
        return torch.stack([from_png(f) for f in files])

    def revolve_views(self, cameras: Cameras, names, framed: torch.Tensor) -> torch.Tensor:
        """The revolved silhouette's renders (the slowest trivial prediction), cached: RGB [V, 3, S, S]."""
        digest = hashlib.sha256(to_uint8(framed).tobytes()).hexdigest()
        folder = self.folder("revolve", list(names), self.args.turntable_elevation, digest, REVOLVE_SEGMENTS, REVOLVE_VERSION)
        files = [folder / f"{name}.png" for name in names]
        if not all(f.exists() for f in files):
            mesh = revolve_mesh(framed, cameras[0:1], self.layout.radius)
            rgba = render_mesh(mesh, cameras, supersample=self.args.supersample)
            for view, f in zip(rgba, files):
                to_png(view, f)
        return composite(torch.stack([from_png(f) for f in files]))


# ------------------------------------------------------------------------------------------ trivial predictions


def wrapped_azimuth(azimuth: float) -> float:
    """Degrees -> [-180, 180)."""
    return (azimuth + 180.0) % 360.0 - 180.0


def copy_prediction(framed: torch.Tensor, num_views: int) -> torch.Tensor:
    """The framed input [4, S, S] on white at every camera -> [V, 3, S, S]."""
    return composite(framed)[None].expand(num_views, -1, -1, -1).clone()


def mirror_prediction(framed: torch.Tensor, azimuths) -> torch.Tensor:
    """The copy, flipped left-right where the camera is behind the object (|azimuth| > 90) -> [V, 3, S, S]."""
    rgb = composite(framed)  # [3, S, S]
    return torch.stack([rgb.flip(-1) if abs(wrapped_azimuth(a)) > 90.0 else rgb for a in azimuths])


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


def card_prediction(framed: torch.Tensor, cameras: Cameras, depth: float) -> torch.Tensor:
    """[4, S, S] -> the card rendered on white at every camera [V, 3, S, S]."""
    with torch.no_grad():
        out = render(card_gaussians(framed, cameras[0:1], depth), cameras, background=(1.0, 1.0, 1.0))
    return out.rgb.clamp(0, 1)


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


def score(pred_rgb: torch.Tensor, gt_rgba: torch.Tensor) -> dict:
    """pred_rgb [V, 3, H, W] on white, gt_rgba [V, 4, H, W] -> {metric: [V] list}."""
    gt_rgb = composite(gt_rgba)  # [V, 3, H, W]
    mask = (gt_rgba[:, 3:4] > 0.5).float()  # [V, 1, H, W]
    with torch.no_grad():
        values = dict(
            psnr=psnr(pred_rgb, gt_rgb), ssim=ssim(pred_rgb, gt_rgb), lpips=lpips(pred_rgb, gt_rgb),
            psnr_masked=psnr(pred_rgb, gt_rgb, mask), ssim_masked=ssim(pred_rgb, gt_rgb, mask),
        )
    empty = mask.flatten(1).sum(1) == 0  # e.g. a flat object seen edge-on: masked scores are undefined
    for key in ("psnr_masked", "ssim_masked"):
        values[key] = torch.where(empty, torch.full_like(values[key], float("nan")), values[key])
    return {k: [float(x) for x in v.reshape(-1)] for k, v in values.items()}


def _clean(value):
    """NaN (undefined masked score) -> None, so results.json stays strict JSON."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _nanmean(values) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def mean_over(views: dict, names) -> dict:
    """Mean per metric over views; views with an undefined (NaN) masked score are left out of that metric."""
    return {m: _nanmean([views[n][m] for n in names]) for m in METRICS}


def scored_entry(pred_rgb: torch.Tensor, gt: torch.Tensor, names, novel) -> dict:
    values = score(pred_rgb, gt)
    views = {n: {m: values[m][i] for m in METRICS} for i, n in enumerate(names)}
    return {"views": views, "input": views["input"], "novel": mean_over(views, novel)}


def count_wins(objects: dict, model: str = "model", baselines=BASELINES) -> dict:
    """On how many objects the model's novel-view score beats the best trivial prediction on that object.

    objects: {name: {prediction: {"novel": {metric: value}}}} (skipped objects have no predictions).
    """
    scored = [o for o in objects.values() if model in o]
    psnr_wins = sum(o[model]["novel"]["psnr"] > max(o[b]["novel"]["psnr"] for b in baselines) for o in scored)
    lpips_wins = sum(o[model]["novel"]["lpips"] < min(o[b]["novel"]["lpips"] for b in baselines) for o in scored)
    return {"psnr": int(psnr_wins), "lpips": int(lpips_wins), "objects": len(scored)}


def comparison(summary: dict, model: str = "model", baselines=BASELINES) -> dict:
    """The model's mean against each trivial prediction's, for PSNR and LPIPS at the input and novel views."""
    return {b: {f"{group}_{metric}": {"model": summary[model][group][metric], b: summary[b][group][metric]}
                for group in ("input", "novel") for metric in ("psnr", "lpips")} for b in baselines}


def bar_chart(rows, path: Path, label: str) -> None:
    """Per-object PSNR bars (input view and novel views), drawn with PIL (matplotlib is not a dependency)."""
    width, bar_h, gap, left = 760, 12, 8, 230
    height = 40 + len(rows) * (2 * bar_h + gap) + 20
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    top = max([30.0] + [max(r["input"]["psnr"], r["novel"]["psnr"]) for r in rows])
    scale = (width - left - 60) / top
    draw.text((10, 8), f"{label}: PSNR (dB), full frame on white: input view (blue), novel views (orange)", fill="black")
    y = 35
    for row in rows:
        draw.text((10, y + bar_h // 2), row["name"][:34], fill="black")
        for k, (key, colour) in enumerate((("input", (60, 110, 200)), ("novel", (230, 140, 40)))):
            value = row[key]["psnr"]
            y0 = y + k * bar_h
            draw.rectangle([left, y0, left + max(1, int(value * scale)), y0 + bar_h - 2], fill=colour)
            draw.text((left + int(value * scale) + 4, y0), f"{value:.1f}", fill="black")
        y += 2 * bar_h + gap
    image.save(path)


def grid_png(blocks, path: Path) -> None:
    """Per object a block of rows (ground truth, then each prediction), each row RGB [V, 3, H, W] on white."""
    rows = [torch.cat(list(row), -1) for block in blocks for row in block]  # each [3, H, V * W]
    if not rows:
        return
    image = torch.cat(rows, -2).permute(1, 2, 0).clamp(0, 1).numpy()  # [R * H, V * W, 3]
    Image.fromarray((image * 255 + 0.5).astype(np.uint8)).save(path)


def load_pipeline(checkpoint: Path):
    if not Path(checkpoint).exists():
        raise SystemExit(f"eval_real: checkpoint {checkpoint} does not exist (no shipped dd3g-tiny yet?); pass --checkpoint PATH")
    from dd3g.pipeline import DD3GPipeline

    return DD3GPipeline.from_pretrained(str(checkpoint))


def write_markdown(results: dict, path: Path) -> None:
    predictions, summary, objects = results["predictions"], results["mean"], results["objects"]
    lines = [f"# Real scans ({results['num_scored']} scored, {results['num_skipped']} skipped)", "",
             f"Checkpoint `{results['checkpoint']}`" + (" (framing only: --baselines-only)" if "model" not in predictions else "")
             + f", seed {results['seed']}, {results['size']} px, white background, framing {results['framing']}.",
             f"Note: {results['note']}.", "", "## Means", "",
             "| prediction | PSNR in | SSIM in | LPIPS in | PSNR novel | SSIM novel | LPIPS novel | PSNR novel (masked) |",
             "|---|---|---|---|---|---|---|---|"]
    for name in predictions:
        if name in summary:
            i, n = summary[name]["input"], summary[name]["novel"]
            lines.append(f"| {name} | {i['psnr']:.2f} | {i['ssim']:.3f} | {i['lpips']:.3f} | {n['psnr']:.2f} | "
                         f"{n['ssim']:.3f} | {n['lpips']:.3f} | {n['psnr_masked']:.2f} |")
    if "wins" in results:
        w = results["wins"]
        lines += ["", "## The model against each trivial prediction (means)", "",
                  "| trivial | PSNR in (model / it) | LPIPS in | PSNR novel | LPIPS novel |", "|---|---|---|---|---|"]
        for b, c in results["comparison"].items():
            cells = [f"{c[k]['model']:.2f} / {c[k][b]:.2f}" if "psnr" in k else f"{c[k]['model']:.3f} / {c[k][b]:.3f}"
                     for k in ("input_psnr", "input_lpips", "novel_psnr", "novel_lpips")]
            lines.append(f"| {b} | " + " | ".join(cells) + " |")
        lines += ["", f"The model beats the best trivial prediction at novel views on {w['psnr']} of {w['objects']} "
                  f"objects by PSNR and on {w['lpips']} of {w['objects']} by LPIPS."]
    lines += ["", "## Per object: novel-view PSNR / LPIPS", "", "| object | " + " | ".join(predictions) + " |",
              "|---|" + "---|" * len(predictions)]
    for name, o in objects.items():
        if "skipped" in o:
            lines.append(f"| {name} | skipped: {o['skipped']} |" + " |" * (len(predictions) - 1))
            continue
        lines.append(f"| {name} | " + " | ".join(f"{o[p]['novel']['psnr']:.2f} / {o[p]['novel']['lpips']:.3f}"
                                                  for p in predictions) + " |")
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> dict:
    args = parse_args(argv)
    files = sorted(p for p in Path(args.objects).iterdir() if p.suffix.lower() in (".glb", ".gltf"))
    if args.limit is not None:
        files = files[: args.limit]
    if not files:
        raise SystemExit(f"eval_real: no .glb files in {args.objects}")
    pipe = None if args.baselines_only else load_pipeline(args.checkpoint)
    framing = read_framing(args.checkpoint, pipe)
    layout = pipe.view_layout if pipe is not None else ViewLayout()
    args.out.mkdir(parents=True, exist_ok=True)
    specs = view_specs(args.turntable, args.turntable_elevation, layout)
    names = [s[0] for s in specs]
    azimuths = [s[1] for s in specs]
    cameras = orbit_cameras(torch.tensor(azimuths), torch.tensor([s[2] for s in specs]),
                            args.size, args.size, layout.radius, layout.fov_deg)  # [V]
    novel = [n for n in names if n not in ("input", "canon_000")]
    predictions = ([] if pipe is None else ["model"]) + list(BASELINES)
    objects, chart_rows, grid_blocks = {}, [], []
    for path in files:
        start = time.time()
        try:
            scan = Scan(path, args, layout, framing)
            input_rgba = scan.input_view()  # [4, S, S] the scan's own frame
            framed = frame_input(input_rgba, framing["foreground_ratio"])  # [4, S, S] the model's frame
            transform = scan.transform(input_rgba, framed)
            gt = scan.views(cameras, names, transform)  # [V, 4, S, S]
        except Exception as error:  # a broken or untextured file must not stop the run
            reason = f"{type(error).__name__}: {error}".splitlines()[0].replace(str(path), path.name)
            print(f"[eval_real] skipped {path.name}: {reason}", flush=True)
            objects[path.name] = {"skipped": reason}
            continue
        preds = {}  # name -> [V, 3, S, S] on white
        if pipe is not None:
            gaussians = pipe(to_uint8(input_rgba), seeds=[args.seed]).gaussians
            with torch.no_grad():
                out = render(gaussians, cameras, args.size, args.size, background=(1.0, 1.0, 1.0))
            preds["model"] = out.rgb.reshape(-1, len(names), 3, args.size, args.size)[0].clamp(0, 1)
        preds["copy"] = copy_prediction(framed, len(names))
        preds["mirror"] = mirror_prediction(framed, azimuths)
        preds["card"] = card_prediction(framed, cameras, layout.radius)
        preds["revolve"] = scan.revolve_views(cameras, names, framed)
        entry = {p: scored_entry(preds[p], gt, names, novel) for p in predictions}
        entry["transform"] = transform
        entry["seconds"] = round(time.time() - start, 3)
        objects[path.name] = entry
        chart_rows.append({"name": path.stem, "input": entry[predictions[0]]["input"], "novel": entry[predictions[0]]["novel"]})
        if len(grid_blocks) < args.grid_objects:
            pick = [names.index(n) for n in ["input"] + [n for n in names if n.startswith("canon_")][1:]]
            grid_blocks.append([composite(gt[pick])] + [preds[p][pick] for p in predictions])
        print(f"[eval_real] {path.name}: novel PSNR " + " ".join(f"{p} {entry[p]['novel']['psnr']:.2f}" for p in predictions)
              + f" (scale {transform['scale']:.3f}, {entry['seconds']:.1f}s)", flush=True)
    scored = [o for o in objects.values() if "skipped" not in o]
    summary = {p: {k: {m: _nanmean([o[p][k][m] for o in scored]) for m in METRICS} for k in ("input", "novel")}
               for p in predictions} if scored else {}
    results = {
        "checkpoint": str(args.checkpoint), "baselines_only": bool(args.baselines_only), "seed": args.seed,
        "size": args.size, "supersample": args.supersample, "framing": framing, "predictions": predictions,
        "views": [{"name": n, "azimuth": a, "elevation": e} for n, a, e in specs], "novel_views": novel,
        "radius": layout.radius, "fov_deg": layout.fov_deg, "note": FRAME_NOTE,
        "num_scored": len(scored), "num_skipped": len(objects) - len(scored), "mean": summary, "objects": objects,
    }
    if pipe is not None and scored:
        results["comparison"] = comparison(summary)
        results["wins"] = count_wins(objects)
    (args.out / "results.json").write_text(json.dumps(_clean(results), indent=2, allow_nan=False))
    write_markdown(results, args.out / "results.md")
    if chart_rows:
        bar_chart(chart_rows, args.out / "psnr_per_object.png", predictions[0])
    grid_png(grid_blocks, args.out / "grid.png")
    print(f"[eval_real] wrote {args.out / 'results.json'} ({len(scored)} scored, {len(objects) - len(scored)} skipped)")
    return results


if __name__ == "__main__":
    main()
