import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from dd3g.evaluation.metrics import psnr, ssim


@pytest.fixture()
def pair():
    gen = torch.Generator().manual_seed(0)
    base = torch.rand(2, 3, 40, 48, generator=gen)
    noisy = (base + 0.1 * torch.randn(base.shape, generator=gen)).clamp(0, 1)
    return noisy, base


def test_psnr_matches_scikit_image(pair):
    pred, target = pair
    ours = psnr(pred, target)
    for i in range(2):
        ref = peak_signal_noise_ratio(target[i].numpy(), pred[i].numpy(), data_range=1.0)
        assert abs(ours[i].item() - ref) < 1e-3
    assert psnr(target, target)[0] > 100  # identical images: capped, finite


def test_ssim_matches_scikit_image(pair):
    pred, target = pair
    ours = ssim(pred, target)
    for i in range(2):
        ref = structural_similarity(
            target[i].permute(1, 2, 0).numpy(), pred[i].permute(1, 2, 0).numpy(), channel_axis=2,
            data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        )
        assert abs(ours[i].item() - ref) < 1e-4
    assert torch.allclose(ssim(target, target), torch.ones(2), atol=1e-6)


def test_masks_restrict_the_score(pair):
    pred, target = pair
    pred = pred.clone()
    mask = torch.zeros(2, 1, 40, 48)
    mask[..., :, :24] = 1
    pred[..., :, :24] = target[..., :, :24]  # perfect on the masked half
    assert (psnr(pred, target, mask) > 100).all()
    assert (psnr(pred, target) < 40).all()
    assert (ssim(pred, target, mask) > ssim(pred, target)).all()
