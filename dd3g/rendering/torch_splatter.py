"""A readable, differentiable 3D Gaussian splatter in plain PyTorch (the CPU path of `dd3g.rendering`).

It follows gsplat 1.5's "classic" rasterizer step by step so that both give the same pixels:

1. Projection (EWA): camera-space mean and covariance, the perspective Jacobian with gsplat's clamping of
   off-screen points (1.3x the half field of view), a 0.3-pixel low-pass added to the 2D covariance
   (`eps2d`), near/far culling.
2. Extent: an opacity-aware box, `min(3.33, sqrt(2 ln(255 opacity)))` standard deviations per axis
   (beyond it a fragment's alpha is below 1/255 and would be skipped anyway), culled if off the image.
3. Tiles: each Gaussian is listed in the tiles its box touches, sorted front to back by camera z
   (gsplat's 16x16 tiles, refined to 8x8 tiles by the exact footprint: see `intersect_tiles`).
4. Compositing per pixel: alpha = min(0.999, opacity * exp(-power)); fragments with alpha < 1/255 (or a
   negative power) are skipped; front-to-back accumulation stops before the fragment that would take
   the transmittance to 1e-4 or below.

Step 4 is vectorised per tile: every pixel of a tile against every Gaussian in the tile's list, with the
transmittance as a cumulative product. Tiles are processed in chunks of similar list length to bound memory.
Everything is ordinary autograd: gradients flow to means, quaternions, scales, opacities and colours.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

ALPHA_THRESHOLD = 1.0 / 255.0  # fragments below this are skipped
MAX_ALPHA = 0.999  # one fragment never makes a pixel fully opaque
TRANSMITTANCE_STOP = 1e-4  # a pixel is done once its transmittance would drop to this
MAX_EXTENT_SIGMA = 3.33  # gsplat's box extent in standard deviations
GSPLAT_TILE_SIZE = 16  # gsplat's tiles decide which pixels a Gaussian may reach
TILE_SIZE = 8  # our compositing tiles (a divisor of gsplat's)


def quats_to_rotmats(quats: Tensor) -> Tensor:
    """Rotation matrices from (unnormalised) wxyz quaternions.  quats [..., 4] -> [..., 3, 3]"""
    w, x, y, z = torch.unbind(quats / quats.norm(dim=-1, keepdim=True), dim=-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(quats.shape[:-1] + (3, 3))


def rotmats_to_quats(rotmats: Tensor) -> Tensor:
    """Unit wxyz quaternions (w >= 0) from rotation matrices, the inverse of `quats_to_rotmats`.  [..., 3, 3] -> [..., 4]

    Each of the four candidate components is read from the diagonal; the largest is the well-conditioned one to
    divide by (Shepperd's method), so no branch is taken per element."""
    m = rotmats
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    squares = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)  # [..., 4] 4 q_i^2
    pick = squares.argmax(-1, keepdim=True)  # [..., 1]
    # Row i: 4 q_i (w, x, y, z), exact when q_i is the largest component.
    rows = torch.stack([
        torch.stack([squares[..., 0], m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
        torch.stack([m[..., 2, 1] - m[..., 1, 2], squares[..., 1], m[..., 1, 0] + m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0]], -1),
        torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] + m[..., 0, 1], squares[..., 2], m[..., 2, 1] + m[..., 1, 2]], -1),
        torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 2, 1] + m[..., 1, 2], squares[..., 3]], -1),
    ], -2)  # [..., 4, 4]
    quats = torch.gather(rows, -2, pick[..., None].expand(*pick.shape[:-1], 1, 4))[..., 0, :]  # [..., 4]
    quats = quats / quats.norm(dim=-1, keepdim=True)
    return torch.where(quats[..., :1] < 0, -quats, quats)


def covariances(quats: Tensor, scales: Tensor) -> Tensor:
    """World-space 3D covariances R S S^T R^T.  quats [..., 4], scales [..., 3] -> [..., 3, 3]"""
    m = quats_to_rotmats(quats) * scales[..., None, :]  # R @ diag(s)
    return m @ m.transpose(-1, -2)


def project(
    means: Tensor,  # [I, N, 3] world positions
    covars: Tensor,  # [I, N, 3, 3] world covariances
    opacities: Tensor,  # [I, N]
    viewmats: Tensor,  # [I, 4, 4]
    Ks: Tensor,  # [I, 3, 3]
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
):
    """EWA projection of every Gaussian into every image (I images, each with its own N Gaussians).

    Returns means2d [I, N, 2], conics [I, N, 3] (the inverse 2D covariance's a, b, c), depths [I, N],
    radii [I, N, 2] (gsplat's integer box half-sizes in pixels; 0 = culled) and footprints [I, N, 2]
    (the exact half-sizes of the region where alpha can reach 1/255, never larger than needed).
    """
    rotation = viewmats[:, None, :3, :3]  # [I, 1, 3, 3]
    means_cam = (rotation @ means[..., None])[..., 0] + viewmats[:, None, :3, 3]  # [I, N, 3]
    covars_cam = rotation @ covars @ rotation.transpose(-1, -2)  # [I, N, 3, 3]
    x, y, z = means_cam.unbind(-1)  # [I, N] each
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [I, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]  # [I, 1]

    in_depth = (z >= near_plane) & (z <= far_plane)  # [I, N]
    z_safe = torch.where(in_depth, z, torch.ones_like(z))  # keeps culled points finite
    # Points far outside the view would get a huge Jacobian: clamp their direction to 1.3x the half fov.
    tan_fov_x, tan_fov_y = 0.5 * width / fx, 0.5 * height / fy
    tx = z_safe * torch.minimum((width - cx) / fx + 0.3 * tan_fov_x, torch.maximum(-(cx / fx + 0.3 * tan_fov_x), x / z_safe))
    ty = z_safe * torch.minimum((height - cy) / fy + 0.3 * tan_fov_y, torch.maximum(-(cy / fy + 0.3 * tan_fov_y), y / z_safe))
    zeros = torch.zeros_like(z_safe)
    jacobian = torch.stack(
        [fx / z_safe, zeros, -fx * tx / z_safe**2, zeros, fy / z_safe, -fy * ty / z_safe**2], dim=-1
    ).reshape(z.shape + (2, 3))  # [I, N, 2, 3]
    cov2d = jacobian @ covars_cam @ jacobian.transpose(-1, -2)  # [I, N, 2, 2]
    a = cov2d[..., 0, 0] + eps2d  # the low-pass filter: every splat covers at least ~a pixel
    b = cov2d[..., 0, 1]
    c = cov2d[..., 1, 1] + eps2d
    det = a * c - b * b  # [I, N]
    valid = in_depth & (det > 0)
    det_safe = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)  # [I, N, 3]
    means2d = torch.stack([fx * x / z_safe + cx, fy * y / z_safe + cy], dim=-1)  # [I, N, 2]

    with torch.no_grad():  # the box is bookkeeping, never differentiated
        valid = valid & (opacities >= ALPHA_THRESHOLD)
        extent = torch.clamp(
            torch.sqrt(2.0 * torch.log(opacities.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD)), max=MAX_EXTENT_SIGMA
        )  # [I, N]
        radius_x = torch.ceil(extent * torch.sqrt(a.clamp_min(0)))
        radius_y = torch.ceil(extent * torch.sqrt(c.clamp_min(0)))
        valid = valid & ((radius_x > 0) | (radius_y > 0))
        mx, my = means2d[..., 0], means2d[..., 1]
        on_image = (mx + radius_x > 0) & (mx - radius_x < width) & (my + radius_y > 0) & (my - radius_y < height)
        valid = valid & on_image
        radii = torch.stack([radius_x, radius_y], dim=-1) * valid[..., None]  # [I, N, 2]
        # Beyond |dx| = sqrt(2 ln(255 opacity) cov_xx) the exponent alone keeps alpha under 1/255.
        level = 2.0 * torch.log(opacities.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD)  # [I, N]
        footprints = torch.stack([torch.sqrt(level * a.clamp_min(0)), torch.sqrt(level * c.clamp_min(0))], dim=-1)
    return means2d, conics, z, radii.to(torch.int32), footprints


def intersect_tiles(
    means2d: Tensor,  # [I, N, 2]
    radii: Tensor,  # [I, N, 2] gsplat's boxes
    footprints: Tensor,  # [I, N, 2] exact alpha >= 1/255 half-sizes
    depths: Tensor,  # [I, N]
    width: int,
    height: int,
):
    """List (image, tile, gaussian) intersections sorted by image, tile, then depth.

    gsplat lists a Gaussian in every 16x16 tile its box touches. Here tiles are 8x8 (4x fewer pixel
    pairs to evaluate at the edges of a footprint): a Gaussian is listed in the 8x8 tiles that lie inside
    gsplat's 16x16 range *and* touch its exact footprint. Pixels this drops could only get alpha < 1/255,
    which the compositor skips anyway, so the pixels are the same as gsplat's.
    Returns tile_keys [M] (image * tiles_per_image + tile) and flat_ids [M] (image * N + gaussian).
    """
    num_images, num_gaussians = depths.shape
    ratio = GSPLAT_TILE_SIZE // TILE_SIZE
    tiles_x, tiles_y = math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)
    centre = means2d.detach()  # [I, N, 2] pixels
    radii_f = radii.to(centre.dtype)
    limit16 = torch.tensor([math.ceil(width / GSPLAT_TILE_SIZE), math.ceil(height / GSPLAT_TILE_SIZE)], device=centre.device)
    lo = torch.floor(centre / GSPLAT_TILE_SIZE - radii_f / GSPLAT_TILE_SIZE).clamp_min(0)  # gsplat's range, inclusive
    hi = torch.ceil(centre / GSPLAT_TILE_SIZE + radii_f / GSPLAT_TILE_SIZE).clamp_min(0)  # exclusive
    lo = torch.minimum(lo.long(), limit16) * ratio  # in 8x8 tiles
    hi = torch.minimum(hi.long(), limit16) * ratio
    margin = 0.5  # pixels, against rounding at the footprint's edge
    lo = torch.maximum(lo, torch.floor((centre - footprints - margin) / TILE_SIZE).long())
    hi = torch.minimum(hi, torch.ceil((centre + footprints + margin) / TILE_SIZE).long())
    limit = torch.tensor([tiles_x, tiles_y], device=centre.device)
    hi = torch.minimum(hi, limit)
    span = (hi - lo).clamp_min(0) * (radii > 0).all(-1, keepdim=True)  # [I, N, 2]
    counts = (span[..., 0] * span[..., 1]).flatten()  # [I*N]
    flat_ids = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)  # [M]
    # Position of each intersection within its Gaussian's range -> (column, row) of the tile.
    starts = torch.cumsum(counts, 0) - counts
    local = torch.arange(flat_ids.numel(), device=counts.device) - starts[flat_ids]  # [M]
    span_x = span[..., 0].flatten()[flat_ids].clamp_min(1)
    tile_col = lo[..., 0].flatten()[flat_ids] + local % span_x
    tile_row = lo[..., 1].flatten()[flat_ids] + local // span_x
    image_ids = flat_ids // num_gaussians
    tile_keys = image_ids * (tiles_x * tiles_y) + tile_row * tiles_x + tile_col  # [M]
    # Sort by depth, then (stably) by tile: front-to-back inside every tile.
    order = torch.argsort(depths.detach().flatten()[flat_ids], stable=True)
    tile_keys, flat_ids = tile_keys[order], flat_ids[order]
    order = torch.argsort(tile_keys, stable=True)
    return tile_keys[order], flat_ids[order]


def rasterize(
    means2d: Tensor,  # [I, N, 2]
    conics: Tensor,  # [I, N, 3]
    opacities: Tensor,  # [I, N]
    features: Tensor,  # [I, N, D] colours (and any extra channel, e.g. depth)
    tile_keys: Tensor,  # [M] sorted
    flat_ids: Tensor,  # [M]
    width: int,
    height: int,
    tile_size: int = TILE_SIZE,
    chunk_elements: int = 1 << 22,
):
    """Front-to-back alpha compositing of the listed Gaussians.

    Returns features [I, H, W, D] (accumulated, no background) and alphas [I, H, W, 1].
    """
    num_images, _, num_channels = features.shape
    device, dtype = features.device, features.dtype
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    pixels_per_tile = tile_size * tile_size
    flat_means2d, flat_conics = means2d.reshape(-1, 2), conics.reshape(-1, 3)
    flat_opacities, flat_features = opacities.reshape(-1), features.reshape(-1, num_channels)

    tiles, counts = torch.unique_consecutive(tile_keys, return_counts=True)  # [T] non-empty tiles
    starts = torch.cumsum(counts, 0) - counts
    # Pixel-centre offsets inside a tile.  [P, 2]
    local = torch.arange(tile_size, device=device, dtype=dtype) + 0.5
    local_y, local_x = torch.meshgrid(local, local, indexing="ij")
    local_xy = torch.stack([local_x.flatten(), local_y.flatten()], dim=-1)

    out_features = torch.zeros(num_images * tiles_y * tiles_x, pixels_per_tile, num_channels, device=device, dtype=dtype)
    out_alphas = torch.zeros(num_images * tiles_y * tiles_x, pixels_per_tile, device=device, dtype=dtype)
    # Chunks of tiles with similar list lengths keep the padded [tiles, pixels, K] tensors small.
    by_length = torch.argsort(counts, descending=True)
    counts_sorted = counts[by_length].tolist()
    begin = 0
    while begin < len(counts_sorted):
        longest = counts_sorted[begin]
        num = max(1, min(len(counts_sorted) - begin, chunk_elements // (pixels_per_tile * longest)))
        chunk = by_length[begin : begin + num]  # [Tc]
        begin += num

        slot = torch.arange(longest, device=device)  # [K]
        present = slot[None, :] < counts[chunk][:, None]  # [Tc, K]
        ids = flat_ids[(starts[chunk][:, None] + slot[None, :]).clamp_max(flat_ids.numel() - 1)]  # [Tc, K]
        tile_in_image = tiles[chunk] % (tiles_x * tiles_y)
        origin = torch.stack([tile_in_image % tiles_x, tile_in_image // tiles_x], dim=-1).to(dtype) * tile_size
        pixel_xy = origin[:, None, :] + local_xy[None]  # [Tc, P, 2]

        mean = flat_means2d[ids]  # [Tc, K, 2]
        dx = mean[:, None, :, 0] - pixel_xy[:, :, None, 0]  # [Tc, P, K]
        dy = mean[:, None, :, 1] - pixel_xy[:, :, None, 1]  # [Tc, P, K]
        conic = flat_conics[ids][:, None]  # [Tc, 1, K, 3]
        # The Gaussian's exponent, >= 0 inside: 0.5 * (a dx^2 + c dy^2) + b dx dy
        power = 0.5 * (conic[..., 0] * dx * dx + conic[..., 2] * dy * dy) + conic[..., 1] * dx * dy
        alpha = torch.clamp_max(flat_opacities[ids][:, None] * torch.exp(-power), MAX_ALPHA)  # [Tc, P, K]
        keep = (power >= 0) & (alpha >= ALPHA_THRESHOLD) & present[:, None, :]
        alpha = alpha * keep
        transmittance_after = torch.cumprod(1.0 - alpha, dim=-1)  # [Tc, P, K]
        # A pixel stops before the fragment that would leave transmittance <= 1e-4 (gsplat's rule).
        alive = transmittance_after > TRANSMITTANCE_STOP
        transmittance_before = torch.cat(
            [torch.ones_like(transmittance_after[..., :1]), transmittance_after[..., :-1]], dim=-1
        )
        weights = alpha * transmittance_before * alive  # [Tc, P, K]
        out_features[tiles[chunk]] = torch.einsum("tpk,tkd->tpd", weights, flat_features[ids])
        out_alphas[tiles[chunk]] = weights.sum(-1)

    # Tiles back into images, cropping the padding of a partial last tile row/column.
    def untile(x: Tensor) -> Tensor:  # [I*Ty*Tx, P, D] -> [I, H, W, D]
        x = x.reshape(num_images, tiles_y, tiles_x, tile_size, tile_size, -1).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(num_images, tiles_y * tile_size, tiles_x * tile_size, -1)[:, :height, :width]

    return untile(out_features), untile(out_alphas[..., None])


def splat(
    means: Tensor,  # [I, N, 3]
    quats: Tensor,  # [I, N, 4] wxyz, any norm
    scales: Tensor,  # [I, N, 3] activated (positive)
    opacities: Tensor,  # [I, N] activated, in [0, 1]
    colors: Tensor,  # [I, N, 3]
    viewmats: Tensor,  # [I, 4, 4]
    Ks: Tensor,  # [I, 3, 3]
    width: int,
    height: int,
    backgrounds: Tensor | None = None,  # [I, 3]
    eps2d: float = 0.3,
    near_plane: float = 0.01,
):
    """Render I images, image i from its own Gaussians means[i] with camera i.

    Returns rgb [I, H, W, 3], alpha [I, H, W, 1] and expected depth [I, H, W, 1] (0 where empty),
    matching `gsplat.rasterization(..., render_mode="RGB+ED", packed=False)`.
    """
    covars = covariances(quats, scales)  # [I, N, 3, 3]
    means2d, conics, depths, radii, footprints = project(
        means, covars, opacities, viewmats, Ks, width, height, eps2d, near_plane
    )
    tile_keys, flat_ids = intersect_tiles(means2d, radii, footprints, depths, width, height)
    features = torch.cat([colors, depths[..., None]], dim=-1)  # [I, N, 4]: depth rides as a 4th channel
    accumulated, alphas = rasterize(means2d, conics, opacities, features, tile_keys, flat_ids, width, height)
    rgb = accumulated[..., :3]
    depth = accumulated[..., 3:] / alphas.clamp_min(1e-10)
    if backgrounds is not None:
        rgb = rgb + (1.0 - alphas) * backgrounds[:, None, None, :]
    return rgb, alphas, depth
