import torch

from dd3g.cameras import ViewLayout
from dd3g.fitting import fit_gaussians, initial_gaussians
from dd3g.gaussians import Gaussians
from dd3g.metrics import psnr
from dd3g.rendering import render


def test_fitting_reproduces_the_views_it_saw():
    torch.manual_seed(0)
    n = 12
    target = Gaussians((torch.rand(1, n, 3) - 0.5) * 0.5, torch.log(torch.rand(1, n, 3) * 0.05 + 0.05), torch.randn(1, n, 4), torch.full((1, n), 3.0), torch.randn(1, n, 3))
    cams = ViewLayout().cameras(16, 16, elevation_deg=torch.tensor([15.0]))
    views = render(target, cams, background=None).rgba()  # [1, 4, 4, 16, 16]
    before = psnr(render(initial_gaussians(1, 256), cams).rgb, render(target, cams).rgb)
    fit = fit_gaussians(views, cams, num_gaussians=256, steps=120, lr=0.02)
    after = psnr(render(fit, cams).rgb, render(target, cams).rgb)
    assert (after > before + 8).all() and (after > 24).all()
