import torch

from dd3g.cameras import ViewLayout
from dd3g.evaluation.fitting import fit_gaussians, initial_gaussians
from dd3g.gaussians import Gaussians
from dd3g.evaluation.metrics import psnr
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


def test_leave_one_out_psnr_tells_consistent_views_from_inconsistent_ones():
    from dd3g.evaluation.fitting import leave_one_out_psnr
    from training import synthetic

    cams = ViewLayout().cameras(16, 16, elevation_deg=torch.tensor([20.0, 20.0]))
    objects = synthetic.batch_objects([synthetic.split_seed("val", 0), synthetic.split_seed("val", 1)], 512)
    views = render(objects, cams, background=None).rgba()  # [2, 4, 4, 16, 16]: two objects, consistent
    mixed = views.clone()
    mixed[0, 2] = views[1, 0]  # object 0's back view replaced by another object's front view
    scores = leave_one_out_psnr(torch.cat([views[:1], mixed[:1]]), cams, steps=80, num_gaussians=256)  # [2, 4]
    assert scores.shape == (2, 4)
    # The replaced view is predicted badly from the others, and it spoils the fits that include it.
    assert scores[1, 2] < scores[0, 2] - 3
    assert scores[0].mean() > scores[1].mean()
