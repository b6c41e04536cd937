"""dd3g.input_view: the Gaussians the input camera sees take the photo's colours and, where the render is thinner
than the photo, more opacity; the geometry and every hidden Gaussian stay the student's."""

from __future__ import annotations

import pytest
import torch

from dd3g.cameras import ViewLayout
from dd3g.gaussians import Gaussians
from dd3g.input_view import match_input_view, photo_surface
from dd3g.preprocess import composite_on
from dd3g.rendering import render
from dd3g.rendering.torch_splatter import quats_to_rotmats
from dd3g.testing import toy_pipeline
from helpers import REPO

SIZE = 32


def photo() -> torch.Tensor:
    """[1, 4, S, S]: a green disc of radius S/4 in the middle, transparent around it."""
    yy, xx = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
    inside = ((xx - SIZE / 2) ** 2 + (yy - SIZE / 2) ** 2 < (SIZE / 4) ** 2).float()
    return torch.stack([0.1 * inside, 0.8 * inside, 0.2 * inside, inside])[None]


def three_gaussians(opacity: float = 0.99) -> Gaussians:
    """A front and a back Gaussian on the input camera's axis (it looks from +Z), and one far off to the side."""
    means = torch.tensor([[[0.0, 0.0, 0.3], [0.0, 0.0, -0.3], [0.6, 0.0, 0.0]]])  # [1, 3, 3]
    scales = torch.full((1, 3, 3), 0.12)
    rotations = torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(1, 3, 4)
    colours = torch.tensor([[[0.9, 0.1, 0.1], [0.1, 0.1, 0.9], [0.5, 0.5, 0.5]]])
    return Gaussians.from_activated(means, scales, rotations, torch.full((1, 3), opacity), colours)


def test_the_seen_gaussian_takes_the_photo_colour_the_hidden_and_the_outside_ones_keep_their_own():
    camera = ViewLayout(radius=2.0, fov_deg=40.0).input_camera(SIZE, SIZE)
    before = three_gaussians()
    after = match_input_view(before, photo(), camera)
    torch.testing.assert_close(after.colors[0, 0], torch.tensor([0.1, 0.8, 0.2]), atol=1e-4, rtol=0)  # the photo's
    torch.testing.assert_close(after.colors[0, 1], before.colors[0, 1])  # behind the front one: untouched
    torch.testing.assert_close(after.colors[0, 2], before.colors[0, 2])  # outside the silhouette: untouched
    for name in ("means", "log_scales", "quats", "opacity_logits"):  # opaque enough already: only colours change
        torch.testing.assert_close(getattr(after, name), getattr(before, name))


def test_a_thin_render_under_an_opaque_photo_is_made_as_opaque_as_the_photo_and_nothing_else_is():
    camera = ViewLayout(radius=2.0, fov_deg=40.0).input_camera(SIZE, SIZE)
    before = three_gaussians(opacity=0.3)  # the student's splats on real photos: partly transparent
    after = match_input_view(before, photo(), camera)
    centre = SIZE // 2

    def coverage(g):  # the input view's alpha at the disc's centre
        return float(render(g, camera, SIZE, SIZE, background=None).alpha[0, 0, 0, centre, centre])

    assert coverage(before) < 0.5
    assert coverage(after) > 0.85  # the photo is opaque there (only the seen front one is raised; 0.3 -> ~0.87)
    assert float(after.opacities[0, 0]) > 0.8  # the front Gaussian carries it (from 0.3)
    torch.testing.assert_close(after.opacity_logits[0, 1:], before.opacity_logits[0, 1:])  # hidden, outside: as they were
    for name in ("means", "log_scales", "quats"):  # the geometry is the student's
        torch.testing.assert_close(getattr(after, name), getattr(before, name))
    transparent = photo()
    transparent[:, 3] = 0  # a photo with nothing opaque asks for nothing
    torch.testing.assert_close(match_input_view(before, transparent, camera).opacity_logits, before.opacity_logits)


def test_the_shipped_pipeline_input_view_is_closer_to_the_photo_and_the_raw_student_is_one_flag_away():
    from dd3g.pipeline import DD3GPipeline

    pipe = DD3GPipeline.from_pretrained()
    pipe.register_to_config(photo_surface_size=0)  # match_input_view alone (the photo surface: tests below)
    ratios = []
    for example in ("test-0.png", "heldout-0.png"):
        image = REPO / "examples" / example
        pipe.register_to_config(match_input_view=True)
        matched = pipe(image, seeds=[3]).gaussians
        pipe.register_to_config(match_input_view=False)
        raw = pipe(image, seeds=[3]).gaussians
        torch.testing.assert_close(matched.means, raw.means)  # geometry is the student's
        framed = pipe.prepare_image(image).rgba  # [4, S, S] what the student got
        size = framed.shape[-1]
        camera = pipe.view_layout.input_camera(size, size)
        truth = composite_on(framed)  # [3, S, S] on white

        def error(g):
            return float(((render(g, camera, background=(1.0, 1.0, 1.0)).rgb[0, 0] - truth) ** 2).mean())

        ratios.append(error(matched) / error(raw))
    assert max(ratios) < 1.0 and sum(ratios) / len(ratios) < 0.9, ratios  # measured 0.96 and 0.76


def test_the_setting_travels_with_the_checkpoint(tmp_path):
    from dd3g.pipeline import DD3GPipeline

    pipe = toy_pipeline()
    pipe.register_to_config(match_input_view=False)
    pipe.save_pretrained(tmp_path / "raw")
    assert DD3GPipeline.from_pretrained(tmp_path / "raw").config.match_input_view is False
    toy_pipeline().save_pretrained(tmp_path / "default")
    assert DD3GPipeline.from_pretrained(tmp_path / "default").config.match_input_view is True


def test_a_gaussian_on_the_silhouette_takes_the_photo_colour_not_that_of_the_transparent_pixels_beside_it():
    """A transparent pixel's colour is undefined (preprocess writes white there): sampling it premultiplied keeps
    it out of the colour a Gaussian on the photo's edge takes."""
    camera = ViewLayout(radius=2.0, fov_deg=40.0).input_camera(SIZE, SIZE)
    # Centre at x = 23.9 px, between the last pixel inside the disc (23.5) and the first outside (24.5), at z = 0.3.
    x = 7.9 * 1.7 / float(camera.Ks.reshape(3, 3)[0, 0])
    edge = Gaussians.from_activated(torch.tensor([[[x, 0.0, 0.3]]]), torch.full((1, 1, 3), 0.03),
                                    torch.tensor([[[1.0, 0.0, 0.0, 0.0]]]), torch.full((1, 1), 0.99), torch.tensor([[[0.9, 0.1, 0.1]]]))
    transparent = photo()[:, 3:] == 0
    on_white = torch.cat([torch.where(transparent, torch.ones(1, 3, SIZE, SIZE), photo()[:, :3]), photo()[:, 3:]], dim=1)
    colours = [match_input_view(edge, image, camera).colors[0, 0] for image in (photo(), on_white)]
    for colour in colours:
        torch.testing.assert_close(colour, torch.tensor([0.1, 0.8, 0.2]), atol=1e-4, rtol=0)


def tilted_plane(count: int = 40, half: float = 0.5, slope: float = 0.4, right_edge: float = 0.5) -> Gaussians:
    """A grid of small opaque grey Gaussians on the plane z = slope * x (turned toward +x), x in [-half, right_edge]."""
    xs = torch.linspace(-half, half, count)
    y, x = torch.meshgrid(xs, xs, indexing="ij")
    keep = x.flatten() <= right_edge
    means = torch.stack([x.flatten(), y.flatten(), slope * x.flatten()], -1)[keep][None]  # [1, N, 3]
    n = means.shape[1]
    return Gaussians.from_activated(means, torch.full((1, n, 3), 0.02), torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(1, n, 4),
                                    torch.full((1, n), 0.99), torch.full((1, n, 3), 0.5))


def striped_photo(size: int) -> torch.Tensor:
    """[1, 4, S, S]: a disc of radius S/3 with red stripes four pixels wide (detail the grey Gaussians do not have)."""
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    inside = ((xx - size / 2) ** 2 + (yy - size / 2) ** 2 < (size / 3) ** 2).float()
    red = ((xx // 4) % 2).float()
    return torch.stack([red * inside, 0.2 * inside, 0.2 * inside, inside])[None]


def test_the_photo_surface_lays_one_surfel_per_opaque_pixel_on_the_students_surface_facing_along_it():
    size, slope = 48, 0.4
    camera = ViewLayout(radius=2.0, fov_deg=40.0).input_camera(size, size)
    plane, image = tilted_plane(slope=slope), striped_photo(size)
    out = photo_surface(plane, image, camera)
    opaque = int((image[0, 3] > 1 / 255).sum())
    assert out.num_gaussians == plane.num_gaussians + opaque
    torch.testing.assert_close(out.means[:, : plane.num_gaussians], plane.means)  # the student's are kept as they were
    surfels = out[0].select(torch.arange(plane.num_gaussians, out.num_gaussians))
    x, y, z = surfels.means.unbind(-1)
    # On the plane, lifted toward the camera by 0.02 (the grid's splats are 0.02 thick).
    assert float((z - slope * x - 0.02).abs().max()) < 0.03
    normals = quats_to_rotmats(surfels.quats)[..., 2]  # [M, 3] the thin axis
    plane_normal = torch.nn.functional.normalize(torch.tensor([-slope, 0.0, 1.0]), dim=0)
    assert float((normals @ plane_normal).abs().min()) > 0.95
    assert float(surfels.scales[:, 2].max()) < 0.25 * float(surfels.scales[:, :2].min())  # flat: a tenth of a pixel thick
    torch.testing.assert_close(surfels.opacities, torch.full_like(surfels.opacities, 0.99))  # the photo is opaque

    inside = image[0, 3] > 0.5  # [S, S] (outside the disc the grey plane shows in both)

    def error(g):  # the input view against the photo inside the disc
        return float(((render(g, camera, background=(1.0, 1.0, 1.0)).rgb[0, 0] - image[0, :3])[:, inside] ** 2).mean())

    assert error(out) < 0.3 * error(plane)  # the stripes are there now (measured 0.028 against 0.143)


def test_where_the_student_left_a_hole_the_surface_continues_from_its_neighbours_and_a_batch_pads_with_nothing():
    size, slope = 32, 0.4
    camera = ViewLayout(radius=2.0, fov_deg=40.0).input_camera(size, size)
    half_plane = tilted_plane(slope=slope, right_edge=0.0)  # nothing right of x = 0
    images = torch.cat([striped_photo(size), striped_photo(size)])
    images[1, 3, :, : size // 2] = 0  # the second photo: only its right half is opaque
    out = photo_surface(Gaussians.stack([half_plane[0], half_plane[0]]), images, camera)
    counts = [int((images[i, 3] > 1 / 255).sum()) for i in range(2)]
    assert out.num_gaussians == half_plane.num_gaussians + max(counts)
    first = out[0].select(torch.arange(half_plane.num_gaussians, out.num_gaussians))
    x, z = first.means[:, 0], first.means[:, 2]
    right = x > 0.05
    assert bool(right.any()) and bool(torch.isfinite(first.means).all())
    assert float(z[right].min()) > -0.03 and float(z[right].max()) < 0.07  # continued from the edge at x = 0 (z = 0, + the lift)
    second = out[1].select(torch.arange(half_plane.num_gaussians, out.num_gaussians))
    assert int((second.opacities > 0.5).sum()) == counts[1]
    assert float(second.opacities.sort(descending=True).values[counts[1]:].max()) < 1e-3  # padding: transparent


def test_the_pipeline_adds_the_photo_surface_at_its_own_size_and_the_setting_travels_with_the_checkpoint(tmp_path):
    from dd3g.checkpoint_config import CheckpointError
    from dd3g.pipeline import DD3GPipeline
    from dd3g.testing import rgba_image

    pipe = toy_pipeline()
    image = rgba_image(size=96)
    plain = pipe(image, seeds=[0]).gaussians
    pipe.register_to_config(photo_surface_size=128)
    prepared = pipe.prepare_image(image)
    assert prepared.rgba.shape[-1] == 64 and prepared.detail_rgba.shape[-1] == 128  # the student's size, the surface's
    surfaced = pipe(image, seeds=[0]).gaussians
    opaque = int((prepared.detail_rgba[3] > 1 / 255).sum())
    assert surfaced.num_gaussians == plain.num_gaussians + opaque
    torch.testing.assert_close(surfaced.means[:, : plain.num_gaussians], plain.means)  # the student's, as before
    camera = pipe.view_layout.input_camera(128, 128)
    truth = composite_on(prepared.detail_rgba)

    def error(g):  # the input view at the surface's size against the photo
        return float(((render(g, camera, background=(1.0, 1.0, 1.0)).rgb[0, 0] - truth) ** 2).mean())

    assert error(surfaced) < 0.5 * error(plain)
    pipe.save_pretrained(tmp_path / "surfaced")
    assert DD3GPipeline.from_pretrained(tmp_path / "surfaced").config.photo_surface_size == 128
    index = tmp_path / "surfaced" / "model_index.json"
    index.write_text(index.read_text().replace('"photo_surface_size": 128', '"photo_surface_size": -4'))
    with pytest.raises(CheckpointError, match="photo_surface_size"):
        DD3GPipeline.from_pretrained(tmp_path / "surfaced")


def test_a_student_that_shows_nothing_gets_the_photo_at_the_origins_depth():
    size = 24
    camera = ViewLayout(radius=2.0, fov_deg=40.0).input_camera(size, size)
    nothing = Gaussians.from_activated(torch.zeros(1, 1, 3), torch.full((1, 1, 3), 0.01), torch.tensor([[[1.0, 0.0, 0.0, 0.0]]]),
                                       torch.full((1, 1), 1e-4), torch.zeros(1, 1, 3))  # covers no pixel
    out = photo_surface(nothing, striped_photo(size), camera, lift=0.0)
    z = out.means[0, 1:, 2]  # the surfels: on the plane through the origin that faces the camera (world z = 0)
    assert float(z.abs().max()) < 1e-4
