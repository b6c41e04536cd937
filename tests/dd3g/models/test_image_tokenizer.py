"""The frozen EfficientNet-Lite0 image tokenizer: shapes, parity with the original network, frozenness,
save/load and loading errors. CPU, a few seconds; uses the shipped hub/efficientnet-lite0 weights."""

import hashlib
import shutil

import numpy as np
import pytest
import torch
from helpers import REPO

from dd3g.models.image_tokenizer import (
    DEFAULT_WEIGHTS_DIR,
    TOKEN_STAGES,
    WEIGHTS_NAME,
    EfficientNetLite0Tokenizer,
)

REFERENCE = REPO / "tests" / "data" / "efficientnet_lite0_reference.npz"

# Expected token grids at 224 px: (tokens, channels).
SHAPES_224 = {
    "stage1": (112 * 112, 16),
    "stage2": (56 * 56, 24),
    "stage3": (28 * 28, 40),
    "stage4": (14 * 14, 80),
    "stage5": (14 * 14, 112),
    "stage6": (7 * 7, 192),
    "stage7": (7 * 7, 320),
    "head": (7 * 7, 1280),
}


def _conversion_script():
    """scripts/convert_efficientnet_lite0.py as a module: the test uses its exact reference images."""
    import importlib.util

    path = REPO / "scripts" / "convert_efficientnet_lite0.py"
    spec = importlib.util.spec_from_file_location("convert_efficientnet_lite0", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference_images = _conversion_script().reference_images


@pytest.fixture(scope="module")
def tokenizer():
    return EfficientNetLite0Tokenizer.from_imagenet()


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(REFERENCE, allow_pickle=False))


@pytest.fixture(scope="module")
def images(reference):
    u8 = reference_images()  # [3, 224, 224, 3]
    assert hashlib.sha256(u8.tobytes()).hexdigest() == str(reference["images_sha256"]), (
        "reference_images() drifted from the conversion script's copy"
    )
    return torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255.0  # [3, 3, 224, 224]


def test_shipped_weights_are_small_and_loaded_in_float32(tokenizer):
    size = (DEFAULT_WEIGHTS_DIR / WEIGHTS_NAME).stat().st_size
    assert size <= 15 * 2**20
    assert tokenizer.dtype == torch.float32
    assert sum(p.numel() for p in tokenizer.parameters()) == 4_652_008
    assert tokenizer.config.image_size == 224 and tokenizer.config.token_stage == "stage5"


@pytest.mark.parametrize("stage", TOKEN_STAGES)
def test_token_shapes(stage):
    tok = EfficientNetLite0Tokenizer.from_imagenet(token_stage=stage)
    n, c = SHAPES_224[stage]
    assert (tok.num_tokens, tok.token_dim) == (n, c)
    with torch.no_grad():
        out = tok(torch.rand(2, 3, 96, 160))  # any input size is resized to 224
    assert out.shape == (2, n, c)
    assert torch.isfinite(out).all()


def test_default_tokens_are_the_stage5_map_row_major(tokenizer, images):
    with torch.no_grad():
        tokens = tokenizer(images)  # [3, 196, 112]
        fmap = tokenizer.feature_maps(images)["stage5"]  # [3, 112, 14, 14]
    assert tokens.shape == (3, 196, 112)
    assert torch.equal(tokens[:, 3 * 14 + 5], fmap[:, :, 3, 5])


def test_image_size_changes_the_grid():
    tok = EfficientNetLite0Tokenizer.from_imagenet(image_size=128, token_stage="stage5")
    assert tok.token_grid == (8, 8)
    with torch.no_grad():
        assert tok(torch.rand(1, 3, 64, 64)).shape == (1, 64, 112)


def test_reproduces_the_original_network(tokenizer, images, reference):
    """Logits and per-stage channel means of the original network (efficientnet-lite-pytorch, fp32
    weights) on the synthetic images, within the error of our float16 weights."""
    with torch.no_grad():
        logits = tokenizer.classify(images)  # [3, 1000]
        maps = tokenizer.feature_maps(images, upto="head")
    ref_idx = torch.from_numpy(reference["top5_indices"])  # [3, 5]
    ref_val = torch.from_numpy(reference["top5_logits"])  # [3, 5]
    assert torch.equal(logits.argmax(-1), ref_idx[:, 0])
    for ours, ref in zip(logits.topk(5).indices.tolist(), ref_idx.tolist()):
        assert set(ours) == set(ref)
    torch.testing.assert_close(logits.gather(1, ref_idx), ref_val, atol=0.08, rtol=0)
    ref_logits = torch.from_numpy(reference["logits"].astype(np.float32))  # [3, 1000]
    torch.testing.assert_close(logits, ref_logits, atol=0.1, rtol=0)
    for name in TOKEN_STAGES:
        ref_mean = torch.from_numpy(reference[f"mean_{name}"].astype(np.float32))  # [3, C]
        torch.testing.assert_close(maps[name].mean(dim=(2, 3)), ref_mean, atol=0.1, rtol=0.01, msg=name)


def test_frozen_and_always_eval(tokenizer, images):
    assert not any(p.requires_grad for p in tokenizer.parameters())
    with torch.no_grad():
        before = tokenizer(images)
    running_mean = tokenizer.stem.bn.running_mean.clone()
    try:
        assert tokenizer.train() is tokenizer
        assert not any(m.training for m in tokenizer.modules())
        with torch.no_grad():
            during = tokenizer(images)
    finally:
        tokenizer.eval()
    assert torch.equal(before, during)
    assert torch.equal(tokenizer.stem.bn.running_mean, running_mean)


def test_gradients_reach_the_input_only(tokenizer):
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    tokenizer(x).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in tokenizer.parameters())


def test_bad_inputs_are_rejected(tokenizer):
    with pytest.raises(ValueError, match="white"):
        tokenizer(torch.rand(1, 4, 64, 64))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        tokenizer(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="float"):
        tokenizer(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="token_stage"):
        EfficientNetLite0Tokenizer(token_stage="stage9")


def test_save_pretrained_round_trip(tokenizer, images, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = EfficientNetLite0Tokenizer.from_pretrained(tmp_path)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        assert torch.equal(loaded(images), tokenizer(images))
    # A float32 re-save is not the shipped file: from_imagenet refuses it unless told not to check.
    with pytest.raises(ValueError, match="sha256 mismatch"):
        EfficientNetLite0Tokenizer.from_imagenet(tmp_path)
    unchecked = EfficientNetLite0Tokenizer.from_imagenet(tmp_path, expected_sha256=None)
    with torch.no_grad():
        assert torch.equal(unchecked(images), tokenizer(images))


def test_missing_weights_say_how_to_make_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="convert_efficientnet_lite0.py"):
        EfficientNetLite0Tokenizer.from_imagenet(tmp_path / "absent")


def test_corrupt_weights_are_refused(tmp_path):
    folder = tmp_path / "efficientnet-lite0"
    shutil.copytree(DEFAULT_WEIGHTS_DIR, folder)
    weights = folder / WEIGHTS_NAME
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte in the last tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="convert_efficientnet_lite0.py"):
        EfficientNetLite0Tokenizer.from_imagenet(folder)
    with pytest.raises(ValueError, match="sha256 mismatch"):
        EfficientNetLite0Tokenizer.from_imagenet(DEFAULT_WEIGHTS_DIR, expected_sha256="0" * 64)
