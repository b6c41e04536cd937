import math

import torch

from dd3g.cameras import Cameras, ViewLayout, look_at_viewmats, orbit_cameras, orbit_positions
from dd3g.gaussians import Gaussians
from dd3g.rendering import render


def _project(cameras: Cameras, points: torch.Tensor) -> torch.Tensor:
    """Pixel coordinates of world points.  cameras [V], points [P, 3] -> [V, P, 2]"""
    cam = torch.einsum("vij,pj->vpi", cameras.viewmats[:, :3, :3], points) + cameras.viewmats[:, None, :3, 3]
    uv = torch.einsum("vij,vpj->vpi", cameras.Ks, cam)
    return uv[..., :2] / uv[..., 2:]


def test_orbit_positions_follow_the_convention():
    # Azimuth 0 looks from +Z, azimuth 90 sits on +X (counter-clockwise seen from above), elevation up is +Y.
    pos = orbit_positions([0.0, 90.0, 180.0, 270.0, 0.0], [0.0, 0.0, 0.0, 0.0, 90.0], radius=2.0)
    expected = torch.tensor([[0, 0, 2], [2, 0, 0], [0, 0, -2], [-2, 0, 0], [0, 2, 0]], dtype=torch.float32)
    assert torch.allclose(pos, expected, atol=1e-6)


def test_viewmats_are_opencv_look_at():
    cams = orbit_cameras([0.0, 37.0, 250.0], [0.0, 25.0, -10.0], 64, 64)
    rotation = cams.viewmats[:, :3, :3]
    assert torch.allclose(rotation @ rotation.transpose(-1, -2), torch.eye(3).expand(3, 3, 3), atol=1e-6)
    assert torch.allclose(torch.linalg.det(rotation), torch.ones(3), atol=1e-6)  # right-handed
    # The origin is straight ahead (camera +z) at the orbit radius, and projects to the image centre.
    origin_cam = cams.viewmats[:, :3, 3]
    assert torch.allclose(origin_cam, torch.tensor([0.0, 0.0, 2.0]).expand(3, 3), atol=1e-6)
    assert torch.allclose(_project(cams, torch.zeros(1, 3)), torch.full((3, 1, 2), 32.0), atol=1e-4)
    assert torch.allclose(cams.centers, orbit_positions([0.0, 37.0, 250.0], [0.0, 25.0, -10.0]), atol=1e-5)
    # Camera +y (image down) points against world up for any non-vertical camera.
    assert (rotation[:, 1, 1] < 0).all()


def test_straight_down_camera_is_finite():
    vm = look_at_viewmats(torch.tensor([[0.0, 2.0, 0.0]]))
    assert torch.isfinite(vm).all()
    assert torch.allclose(vm[0, :3, :3] @ vm[0, :3, :3].T, torch.eye(3), atol=1e-6)


def test_intrinsics_give_the_vertical_field_of_view():
    cams = orbit_cameras(0.0, 0.0, 96, 64, fov_deg=40.0)
    K = cams.Ks
    assert math.isclose(2 * math.degrees(math.atan(0.5 * 64 / K[1, 1].item())), 40.0, rel_tol=1e-5)
    assert K[0, 0] == K[1, 1] and K[0, 2] == 48 and K[1, 2] == 32
    half = cams.resized(48, 32)
    assert torch.allclose(half.Ks, K * torch.tensor([[0.5], [0.5], [1.0]]))


def test_asymmetric_object_pins_azimuth_elevation_and_up():
    """Red blob on +X, green on +Y (top), blue on +Z (front): where each shows up in the image pins the
    azimuth direction, elevation sign and up axis, through the real renderer."""
    points = torch.tensor([[0.4, 0.0, 0.0], [0.0, 0.4, 0.0], [0.0, 0.0, 0.4]])
    colors = torch.eye(3)
    g = Gaussians.from_activated(
        points, torch.full((3, 3), 0.06), torch.tensor([[1.0, 0, 0, 0]]).expand(3, 4),
        torch.full((3,), 0.99), colors,
    )
    size = 64

    def centroid(image: torch.Tensor, channel: int) -> torch.Tensor:  # image [3, H, W] over black
        others = [c for c in range(3) if c != channel]
        weight = (image[channel] - image[others].max(0).values).clamp_min(0)
        rows, cols = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
        return torch.stack([(weight * cols).sum(), (weight * rows).sum()]) / weight.sum()  # (x, y)

    cams = orbit_cameras([0.0, 90.0, 0.0], [0.0, 0.0, 45.0], size, size)
    images = render(g, cams, background=None).rgb  # [3, 3, H, W]
    front, right, above = images
    c = size / 2
    # From the front (+Z): +X is on the right, +Y is up (smaller row), the front blob is central.
    red, green, blue = (centroid(front, k) for k in range(3))
    assert red[0] > c + 5 and abs(red[1] - c) < 1
    assert green[1] < c - 5 and abs(green[0] - c) < 1
    assert abs(blue[0] - c) < 1 and abs(blue[1] - c) < 1
    # Azimuth 90 (camera on +X): counter-clockwise from above puts the +Z blob on the left.
    blue_from_right = centroid(right, 2)
    assert blue_from_right[0] < c - 5
    # Elevation 45 (camera above): the top blob still above centre, the front blob now below it.
    assert centroid(above, 1)[1] < c - 3
    assert centroid(above, 2)[1] > c + 3


def test_view_layout_orders_views_and_appends_input():
    layout = ViewLayout()
    cams = layout.cameras(32, 32, elevation_deg=torch.tensor([0.0, 20.0]), azimuth_offset_deg=torch.tensor([0.0, 30.0]), include_input=True)
    assert cams.shape == (2, 5)
    expected = torch.stack([
        orbit_positions([0.0, 90.0, 180.0, 270.0, 0.0], 0.0),
        orbit_positions([30.0, 120.0, 210.0, 300.0, 0.0], 20.0),
    ])
    assert torch.allclose(cams.centers, expected, atol=1e-5)
    # The first output view of the canonical layout is the input view itself.
    assert torch.allclose(cams.viewmats[0, 0], cams.viewmats[0, 4])


def test_plucker_rays():
    cams = orbit_cameras([0.0, 123.0], [10.0, -5.0], 16, 12)
    rays = cams.plucker_rays()  # [2, 6, 12, 16]
    assert rays.shape == (2, 6, 12, 16)
    dirs, moments = rays[:, :3], rays[:, 3:]
    assert torch.allclose(dirs.norm(dim=1), torch.ones(2, 12, 16), atol=1e-5)
    assert torch.allclose((dirs * moments).sum(1), torch.zeros(2, 12, 16), atol=1e-5)  # d . m = 0
    # The moment is the same for any point on the ray: origin + 3 d gives the same coordinates.
    origins, d = cams.pixel_rays()
    assert torch.allclose(torch.cross(origins + 3 * d, d, dim=-1).movedim(-1, 1), moments, atol=1e-5)
    # Rays through pixel centres hit the points that project to those pixel centres.
    for v in range(2):
        point = origins[v, 5, 7] + 1.7 * d[v, 5, 7]
        uv = _project(cams[v : v + 1], point[None])
        assert torch.allclose(uv[0, 0], torch.tensor([7.5, 5.5]), atol=1e-3)
