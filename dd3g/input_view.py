"""Holding the student's Gaussians to the one view whose truth is known: the input photo at the input camera.

`match_input_view` does two things, from renders at the input camera:
* colour: the Gaussians the input camera sees take the photo's colour at their centre's pixel. A Gaussian counts
  as seen when its centre lies in front of the rendered surface there (camera z within `depth_tolerance` of the
  alpha-normalised expected depth), the render covers that pixel at least a little and the photo is opaque there;
* coverage: where the photo is opaque but the render lets the background through (the student's splats come out
  partly transparent on real photos), the seen Gaussians' opacities are raised together, o -> 1 - (1 - o)^k, with
  k chosen per pixel so that the pixel's coverage becomes the photo's (at most `max_opacity_power`). Nothing is
  made more transparent and nothing is removed.
Hidden Gaussians (the back of the object) keep the student's colours and opacities, so what the student imagined
for the unseen sides, and how that follows the noise, is left as it was.

It runs once after the student's forward pass (two renders at the input camera and gathers; on the 2-core CPU the
shipped pipeline's RGBA file -> PLY goes from 281 to 543 ms). Measured on the 30 real scans with the shipped student
(hub/dd3g-tiny/README.md has the figures), the input view rose from 18.63 dB (the student alone) to 19.94 with the
colours and to 20.90 with the coverage as well; the novel views from 16.95 to 17.25 and 17.42 dB (23.57 and 19.17
since the input frame is black where the photo is transparent, as in training). `DD3GPipeline` applies it unless
`match_input_view=False`.

`photo_surface` then lays the photo itself on the student's surface: one flat Gaussian (a surfel) per opaque pixel
of the photo at `DD3GPipeline(photo_surface_size=...)` pixels (256 in exported pipelines; the student sees 128),
at the depth the student's render has there, lying in that surface and a little in front of the student's own
splats. The student's Gaussians are one per pixel of 64-px frames and its unseen sides are 64-px guesses; the
surfels carry the photo's own detail to every view that sees the front, on the student's relief. The unseen sides
stay the student's, so what follows the noise is unchanged. Measured on the 30 real scans (hub/dd3g-tiny/README.md).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from .cameras import Cameras
from .gaussians import SH_C0, Gaussians
from .rendering import render
from .rendering.torch_splatter import rotmats_to_quats


def _sample(image: Tensor, pixels: Tensor) -> Tensor:
    """Bilinear samples of image [B, C, S, S] at pixel coordinates pixels [B, N, 2] (x right, y down) -> [B, C, N]."""
    size = image.shape[-1]
    grid = (pixels / size * 2 - 1)[:, None]  # [B, 1, N, 2] in grid_sample's [-1, 1], pixel centres at +0.5
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)[:, :, 0]


def _raised(opacity_logits: Tensor, power: Tensor) -> Tensor:
    """Logits of 1 - (1 - o)^power, computed in log space (log(1 - o) = -softplus(logit)). Both [B, N]."""
    transparency = -power * F.softplus(opacity_logits)  # [B, N] log((1 - o)^power)
    return torch.log(-torch.expm1(transparency)) - transparency


@torch.no_grad()
def match_input_view(gaussians: Gaussians, rgba: Tensor, camera: Cameras, depth_tolerance: float = 0.05,
                     min_alpha: float = 0.5, min_coverage: float = 0.02, max_opacity_power: float = 16.0) -> Gaussians:
    """Seen Gaussians take the photo's colours and, where the render is thinner than the photo, more opacity;
    everything else is the student's.

    gaussians [B, N]; rgba [B, 4, S, S] the input photo as the student got it (straight alpha in [0, 1]); camera
    [B, 1] or [1] the input camera at S x S. Returns new Gaussians [B, N] (colours and opacities change; means,
    scales and rotations do not). `min_alpha`: the photo counts as opaque above it; `min_coverage`: below this
    coverage a pixel has no surface to speak of and is left alone (raising a far tail's opacity would grow a blob).

    Not done here, though tried: removing the Gaussians whose centre falls outside the photo's silhouette. It added
    0.15 dB at the input view on 8 real scans, and a PLY with most Gaussians made fully transparent is one that
    gradio's 3D viewer at times never draws (the app's browser test hung on it).
    """
    size = rgba.shape[-1]
    rgba = rgba.to(gaussians.means.device, gaussians.means.dtype)
    camera = camera.to(gaussians.means.device)
    out = render(gaussians, camera, size, size, background=None)
    coverage = out.alpha.reshape(-1, 1, size, size)  # [B, 1, S, S]
    # Raising every (1 - o) along a ray to the power k turns the pixel's transmittance T into T^k:
    # k = log(1 - target) / log(1 - coverage) brings the coverage to the photo's alpha (capped below 1).
    target = rgba[:, 3:].clamp(max=0.98)  # [B, 1, S, S]
    power = (torch.log1p(-target) / torch.log1p(-coverage.clamp(1e-4, 0.98))).clamp(1.0, max_opacity_power)  # [B, 1, S, S]
    viewmats = camera.viewmats.reshape(-1, 4, 4)  # [B or 1, 4, 4]
    Ks = camera.Ks.reshape(-1, 3, 3)  # [B or 1, 3, 3]
    in_camera = gaussians.means @ viewmats[:, :3, :3].transpose(1, 2) + viewmats[:, None, :3, 3]  # [B, N, 3]
    z = in_camera[..., 2].clamp_min(1e-6)  # [B, N]
    pixels = torch.stack([Ks[:, None, 0, 0] * in_camera[..., 0] / z + Ks[:, None, 0, 2],
                          Ks[:, None, 1, 1] * in_camera[..., 1] / z + Ks[:, None, 1, 2]], -1)  # [B, N, 2]
    # Sampled premultiplied and divided back: a transparent pixel's colour is undefined (preprocess writes white
    # there), and straight colours interpolated across the silhouette would pull the edge Gaussians toward it.
    photo = _sample(torch.cat([rgba[:, :3] * rgba[:, 3:], rgba[:, 3:]], dim=1), pixels)  # [B, 4, N] premultiplied
    photo = torch.cat([(photo[:, :3] / photo[:, 3:].clamp_min(1e-6)).clamp(0, 1), photo[:, 3:]], dim=1)  # [B, 4, N] straight
    candidate = (_sample(coverage, pixels)[:, 0] > min_coverage) & (photo[:, 3] > min_alpha) & (in_camera[..., 2] > 0)  # [B, N]
    k = torch.where(candidate, _sample(power, pixels)[:, 0], torch.ones_like(z))  # [B, N]
    # Where the render is thin its expected depth lies behind the front surface, so the surface is read from a
    # render with every candidate made as opaque as asked; only those then in front of it are seen.
    thickened = dataclasses.replace(gaussians, opacity_logits=_raised(gaussians.opacity_logits, k))
    solid = render(thickened, camera, size, size, background=None)
    surface = solid.depth.reshape(-1, 1, size, size)  # [B, 1, S, S] expected camera z (the renderer divides by the alpha)
    seen = candidate & (z <= _sample(surface, pixels)[:, 0] + depth_tolerance)  # [B, N]
    sh_dc = torch.where(seen[..., None], (photo[:, :3].transpose(1, 2) - 0.5) / SH_C0, gaussians.sh_dc)  # [B, N, 3]
    sh_rest = gaussians.sh_rest  # [B, N, K, 3] or None: a seen Gaussian's colour is the photo's from every side
    if sh_rest is not None:
        sh_rest = torch.where(seen[..., None, None], torch.zeros_like(sh_rest), sh_rest)
    opacity_logits = torch.where(seen, thickened.opacity_logits, gaussians.opacity_logits)
    return dataclasses.replace(gaussians, sh_dc=sh_dc, sh_rest=sh_rest, opacity_logits=opacity_logits)


def _fill_holes(values: Tensor, valid: Tensor, wanted: Tensor, default: Tensor, max_iterations: int = 256) -> Tensor:
    """values [B, 1, S, S] known where valid [B, 1, S, S]; spread into the wanted pixels by repeated 3 x 3 means of
    the known neighbours (a pixel becomes known once any neighbour is). Pixels no known value reaches take the mean
    of the known ones, or, in an image with nothing valid, default [B, 1, 1, 1]."""
    values, known = values * valid, valid.float()
    for _ in range(max_iterations):
        if bool((known.bool() | ~wanted).all()):
            break
        total = F.avg_pool2d(values, 3, 1, 1, count_include_pad=False)  # [B, 1, S, S]
        weight = F.avg_pool2d(known, 3, 1, 1, count_include_pad=False)  # [B, 1, S, S]
        grow = (known == 0) & (weight > 0)
        values = torch.where(grow, total / weight.clamp_min(1e-8), values)
        known = torch.where(grow, torch.ones_like(known), known)
    count = known.sum((1, 2, 3), keepdim=True)  # [B, 1, 1, 1]
    fallback = torch.where(count > 0, (values * known).sum((1, 2, 3), keepdim=True) / count.clamp_min(1), default)  # [B, 1, 1, 1]
    return torch.where(known > 0, values, fallback.expand_as(values))


def _tangent(points: Tensor, dim: int) -> Tensor:
    """Per-pixel step of points [B, 3, S, S] to the next pixel along image dim (-1: x, -2: y), from whichever
    neighbour is nearer in 3D, so a surfel at a depth edge follows its own side of it. -> [B, 3, S, S]"""
    forward = points.roll(-1, dim) - points
    backward = points - points.roll(1, dim)
    size = points.shape[dim]
    index = torch.arange(size, device=points.device)
    first, last = (index == 0), (index == size - 1)  # roll wraps around: the border pixels use their one neighbour
    shape = [1, 1, size, 1] if dim == -2 else [1, 1, 1, size]
    first, last = first.reshape(shape), last.reshape(shape)
    use_backward = last | (~first & (backward.norm(dim=1, keepdim=True) < forward.norm(dim=1, keepdim=True)))
    return torch.where(use_backward, backward, forward)


@torch.no_grad()
def photo_surface(gaussians: Gaussians, photo: Tensor, camera: Cameras, min_alpha: float = 1.0 / 255.0,
                  min_coverage: float = 0.3, footprint: float = 0.5, max_stretch: float = 4.0, lift: float = 0.02) -> Gaussians:
    """The photo's opaque pixels as flat Gaussians (surfels) laid on the student's surface, added to its Gaussians.

    gaussians [B, N]; photo [B, 4, D, D] the input photo in the student's framing, at any side D (the sharper the
    better: the student's own Gaussians are one per 64-px frame pixel); camera [B, 1] or [1] the input camera at
    D x D. Returns Gaussians [B, N + M]: M = the most opaque pixels (alpha > min_alpha) of any image, the others
    padded with fully transparent surfels.

    Each pixel's depth is the student's expected depth at the input camera where its render covers more than
    `min_coverage`, and spread in from the nearest such pixels elsewhere; the surfel lies in the surface there,
    its two axes `footprint` times the 3D step to the neighbouring pixels (at most `max_stretch` pixel widths, so
    a depth edge does not become a long streak), a tenth of a pixel thick, with the photo's colour and alpha.
    `lift` moves every surfel that far toward the camera (world units): the expected depth lies inside the student's
    front splats, and a surfel level with them shows only half its detail (on 10 real scans lift 0.02 against 0: input
    view LPIPS 0.061 against 0.075). From the input camera the result looks
    like the photo at D pixels; from elsewhere the front keeps the photo's detail on the student's relief, and the
    sides and back it does not reach are the student's."""
    batch, size = photo.shape[0], photo.shape[-1]
    device, dtype = gaussians.means.device, gaussians.means.dtype
    photo = photo.to(device, dtype)
    camera = camera.to(device)
    alpha = photo[:, 3:]  # [B, 1, D, D]
    out = render(gaussians, camera, size, size, background=None)
    coverage = out.alpha.reshape(batch, 1, size, size)  # [B, 1, D, D]
    depth = out.depth.reshape(batch, 1, size, size)  # [B, 1, D, D] expected camera z (already divided by the alpha)
    wanted = alpha > min_alpha
    viewmats = camera.viewmats.reshape(-1, 4, 4).expand(batch, 4, 4)  # [B, 4, 4]
    # Where the student shows nothing at all, the photo stands at the origin's depth (the camera's distance to it).
    origin_depth = viewmats[:, :3, 3].norm(dim=-1).reshape(batch, 1, 1, 1)  # [B, 1, 1, 1]
    z = _fill_holes(depth, coverage > min_coverage, wanted, origin_depth) - lift  # [B, 1, D, D]
    # Back-projected here, not through Cameras.pixel_rays: tried, a sample's output then moved with its batch (by 0.0036
    # in a CI run of distill_quality's batch-position check): a surfel's orientation follows the nearer of two nearly
    # equal neighbours, so rounding that differs between batch sizes can turn it.
    Ks = camera.Ks.reshape(-1, 3, 3).expand(batch, 3, 3)  # [B, 3, 3]
    centres = torch.arange(size, device=device, dtype=dtype) + 0.5  # [D] pixel centres
    u, v = centres[None, None, None, :], centres[None, None, :, None]  # [1, 1, 1, D], [1, 1, D, 1]
    x = (u - Ks[:, 0, 2].reshape(-1, 1, 1, 1)) / Ks[:, 0, 0].reshape(-1, 1, 1, 1) * z  # [B, 1, D, D] camera x
    y = (v - Ks[:, 1, 2].reshape(-1, 1, 1, 1)) / Ks[:, 1, 1].reshape(-1, 1, 1, 1) * z  # [B, 1, D, D] camera y
    in_camera = torch.cat([x, y, z], 1)  # [B, 3, D, D]
    rotation, translation = viewmats[:, :3, :3], viewmats[:, :3, 3]  # [B, 3, 3], [B, 3]
    points = torch.einsum("bji,bjhw->bihw", rotation, in_camera - translation[:, :, None, None])  # [B, 3, D, D] world
    pitch = z / Ks[:, 0, 0].reshape(-1, 1, 1, 1)  # [B, 1, D, D] one pixel's width at that depth

    def axis(dim: int) -> Tensor:  # [B, 3, D, D] the step to the next pixel, stretched at most max_stretch pitches
        step = _tangent(points, dim)
        length = step.norm(dim=1, keepdim=True)
        return step * (length.clamp(min=pitch, max=max_stretch * pitch) / length.clamp_min(1e-12))

    along_x, along_y = axis(-1), axis(-2)
    first = F.normalize(along_x, dim=1)  # [B, 3, D, D]
    normal = F.normalize(torch.cross(along_x, along_y, dim=1), dim=1)  # [B, 3, D, D]
    second = torch.cross(normal, first, dim=1)  # [B, 3, D, D] unit, in the surface
    scales = torch.cat([footprint * along_x.norm(dim=1, keepdim=True),
                        footprint * (along_y * second).sum(1, keepdim=True).abs().clamp_min(pitch),
                        0.1 * pitch], 1)  # [B, 3, D, D]
    rotations = rotmats_to_quats(torch.stack([first, second, normal], -1).permute(0, 2, 3, 1, 4))  # [B, D, D, 4]

    colours = photo[:, :3].clamp(0, 1)  # [B, 3, D, D] straight; only pixels with alpha > min_alpha are used
    count = int(wanted.flatten(1).sum(1).max())
    order = torch.argsort(wanted.flatten(1).to(torch.uint8), dim=1, descending=True, stable=True)[:, :count]  # [B, M] opaque first

    def pick(field: Tensor) -> Tensor:  # [B, C, D, D] -> [B, M, C]
        flat = field.flatten(2).transpose(1, 2)  # [B, D*D, C]
        return torch.gather(flat, 1, order[..., None].expand(-1, -1, flat.shape[-1]))

    opacities = pick(torch.where(wanted, alpha, torch.zeros_like(alpha)))[..., 0].clamp(max=0.99)  # [B, M]
    surfels = Gaussians.from_activated(pick(points), pick(scales), pick(rotations.permute(0, 3, 1, 2)), opacities, pick(colours),
                                       None if gaussians.sh_rest is None else
                                       gaussians.sh_rest.new_zeros(batch, count, *gaussians.sh_rest.shape[-2:]))
    return Gaussians.cat([gaussians, surfels])
