"""benchmarks/student_colour.py: the colour check tells a model that keeps the input's colours from one that does not."""

import math
from types import SimpleNamespace

import torch

from benchmarks import student_colour
from dd3g.gaussians import SH_C0, Gaussians
from helpers import toy_pipeline


class CardPipeline:
    """A stand-in model: the reframed input as a card of Gaussians through the origin, facing the input camera,
    in the input's colours (faithful) or mid grey (not)."""

    def __init__(self, faithful: bool):
        self.real = toy_pipeline()
        self.view_layout, self.faithful = self.real.view_layout, faithful

    def prepare_image(self, image):
        return self.real.prepare_image(image)

    def __call__(self, image, num_samples=1, seeds=None):
        rgba = self.prepare_image(image).rgba  # [4, S, S]
        size = rgba.shape[-1]
        origins, dirs = self.view_layout.input_camera(size, size, 0.0).pixel_rays()  # [1, S, S, 3] each
        depth = -origins[..., 2] / dirs[..., 2]  # [1, S, S] where each ray meets the plane z = 0
        means = (origins + depth[..., None] * dirs).reshape(-1, 3)  # [S*S, 3]
        rgb = rgba[:3].permute(1, 2, 0).reshape(-1, 3) if self.faithful else torch.full((size * size, 3), 0.5)
        alpha = rgba[3].reshape(-1).clamp(1e-4, 1 - 1e-4)
        pixel = 2 * float(depth.mean()) * math.tan(math.radians(self.view_layout.fov_deg) / 2) / size
        card = Gaussians(means=means, log_scales=torch.full_like(means, math.log(0.6 * pixel)),
                         quats=torch.tensor([[1.0, 0, 0, 0]]).expand(len(means), 4), opacity_logits=torch.logit(alpha),
                         sh_dc=(rgb - 0.5) / SH_C0)
        return SimpleNamespace(gaussians=Gaussians(*(t[None].expand(num_samples, *t.shape) for t in (
            card.means, card.log_scales, card.quats, card.opacity_logits, card.sh_dc))))


def test_a_faithful_card_passes_the_colour_check_and_a_grey_one_fails():
    faithful = student_colour.colour_check(CardPipeline(faithful=True), size=64, seeds=(0,))
    grey = student_colour.colour_check(CardPipeline(faithful=False), size=64, seeds=(0,))
    for name in ("yellow_disk", "blue_disk", "cream_disk", "red_ring"):
        assert faithful[name]["max_abs_diff"] < 6, faithful[name]
        assert grey[name]["max_abs_diff"] > 40, grey[name]
        assert all(abs(c - 127.5) < 3 for c in grey[name]["input_view"][0])
