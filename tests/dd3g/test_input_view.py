"""dd3g.input_view: the Gaussians the input camera sees take the photo's colours and, where the render is thinner
than the photo, more opacity; the geometry and every hidden Gaussian stay the student's."""

from __future__ import annotations

import torch

from dd3g.cameras import ViewLayout
from dd3g.gaussians import Gaussians
from dd3g.input_view import match_input_view
from dd3g.preprocess import composite_on
from dd3g.rendering import render
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
