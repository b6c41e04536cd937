"""scripts/card_contact_sheet.py: the card's back-view seed spread tells a model that follows its seed from one
that gives every seed the same object."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from dd3g.testing import rgba_image, toy_pipeline
from scripts import card_contact_sheet


class SeedStandIn:
    """Wraps a pipeline: every seed gets seed 0's Gaussians (N-blind), or those with its colours moved by a pattern
    drawn from the seed (a model whose unseen sides follow N)."""

    def __init__(self, pipe, follows: bool):
        self.pipe, self.view_layout, self.follows = pipe, pipe.view_layout, follows

    def __call__(self, image, num_samples=1, seeds=None):
        one = self.pipe(image, num_samples=1, seeds=[0]).gaussians  # batch [1]
        fields = {f.name: getattr(one, f.name) for f in dataclasses.fields(one)}  # sh_rest may be None
        copies = {k: None if v is None else v.expand(num_samples, *v.shape[1:]).clone() for k, v in fields.items()}
        if self.follows:
            for i, seed in enumerate(seeds):
                pattern = torch.randn(copies["sh_dc"].shape[1:], generator=torch.Generator().manual_seed(seed))  # [N, 3]
                copies["sh_dc"][i] += pattern
        return SimpleNamespace(gaussians=type(one)(**copies))


def test_back_view_spread_is_zero_without_seed_use_and_positive_with_it(tmp_path):
    photo = tmp_path / "blob.png"
    rgba_image(48).save(photo)
    pipe = toy_pipeline()
    follows = card_contact_sheet.back_view_spread(SeedStandIn(pipe, follows=True), photo, seeds=3, size=32)
    blind = card_contact_sheet.back_view_spread(SeedStandIn(pipe, follows=False), photo, seeds=3, size=32)
    assert blind == pytest.approx(0.0, abs=1e-6)
    assert follows > 1e-3, follows


def test_one_seed_is_refused():
    with pytest.raises(SystemExit):
        card_contact_sheet.main(["--spread-seeds", "1"])
