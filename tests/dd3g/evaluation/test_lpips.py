"""LPIPS (AlexNet, v0.1 heads): parity with the numpy reference of scripts/convert_lpips.py, the metric's
basic properties, gradients, shapes, dtypes and loading errors. CPU, a few seconds; uses the shipped
hub/lpips-alex weights."""

import json
import shutil

import numpy as np
import pytest
import torch

from dd3g.evaluation.metrics import LPIPS, LPIPS_ALEX_CHANNELS, LPIPS_WEIGHTS_DIR, LPIPS_WEIGHTS_NAME, lpips
from helpers import REPO

REFERENCE = REPO / "tests" / "data" / "lpips_reference.npz"


def _conversion_script():
    """scripts/convert_lpips.py as a module: the test regenerates its exact image pairs."""
    import importlib.util

    path = REPO / "scripts" / "convert_lpips.py"
    spec = importlib.util.spec_from_file_location("convert_lpips", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


convert = _conversion_script()


def _tensor(img_u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img_u8).permute(2, 0, 1).float() / 255.0  # [3, H, W]


@pytest.fixture(scope="module")
def model():
    return LPIPS.from_pretrained()


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(REFERENCE, allow_pickle=False))


@pytest.fixture(scope="module")
def pairs(reference):
    specs = tuple(tuple(s) for s in json.loads(str(reference["specs"])))
    out = convert.reference_pairs(specs)
    assert [name for name, _, _ in out] == list(reference["names"])
    for (name, a, b), sha in zip(out, reference["images_sha256"]):
        assert convert.pair_sha256(a, b) == sha, f"{name}: the pair generator drifted from the npz"
    return [(name, _tensor(a), _tensor(b)) for name, a, b in out]


@pytest.fixture(scope="module")
def image(pairs):
    return pairs[0][1]  # smooth colour field, [3, 64, 64]


def test_matches_numpy_reference(model, pairs, reference):
    with torch.no_grad():
        ours = torch.stack([model(a, b) for _, a, b in pairs]).double().numpy()  # [P]
        layers = torch.stack([model.layer_distances(a, b) for _, a, b in pairs]).double().numpy()  # [P, 5]
    # Same float16-rounded weights: only float32 vs float64 arithmetic differs (measured 1.5e-7).
    np.testing.assert_allclose(ours, reference["lpips_fp16_weights"], rtol=1e-4, atol=2e-6)
    np.testing.assert_allclose(layers, reference["layers_fp16_weights"], rtol=1e-4, atol=2e-6)
    # Against the original float32 weights: the float16 storage error (measured max 1.1e-4 absolute).
    np.testing.assert_allclose(ours, reference["lpips_fp32_weights"], rtol=2e-2, atol=5e-4)
    assert (reference["lpips_fp32_weights"] > 0.01).all()


def test_identical_images_give_zero(model, pairs):
    x = torch.stack([pairs[0][1], pairs[2][1]])  # [2, 3, 64, 64]
    with torch.no_grad():
        assert model(x, x.clone()).abs().max().item() < 1e-7


def test_increases_with_noise(model, image):
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(image.shape, generator=gen)
    noisy = torch.stack([(image + s * noise).clamp(0, 1) for s in (0.02, 0.05, 0.1)])  # [3, 3, 64, 64]
    with torch.no_grad():
        d = model(noisy, image.expand_as(noisy))  # [3]
    assert 0 < d[0] < d[1] < d[2], d


def test_symmetric(model, pairs):
    a = torch.stack([p[1] for p in pairs[:5]])  # the 64 x 64 pairs, [5, 3, 64, 64]
    b = torch.stack([p[2] for p in pairs[:5]])
    with torch.no_grad():
        torch.testing.assert_close(model(a, b), model(b, a), rtol=1e-5, atol=1e-7)


def test_gradients_flow_to_the_prediction_only(model, pairs):
    _, target, noisy = pairs[2]  # discs on white: white regions included
    prediction = noisy.clone().requires_grad_(True)
    loss = lpips(prediction, target, model=model)
    loss.backward()
    assert prediction.grad is not None and torch.isfinite(prediction.grad).all()
    assert prediction.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())
    # A flat colour that makes every relu5 channel zero at some locations (zero-norm feature vectors)
    # still gives a finite gradient; so does plain white.
    for colour in ((0.85, 0.75, 0.80), (1.0, 1.0, 1.0)):
        flat = torch.tensor(colour).view(3, 1, 1).expand_as(target).clone().requires_grad_(True)
        lpips(flat, target, model=model).backward()
        assert torch.isfinite(flat.grad).all(), colour


def test_batch_shapes(model, pairs):
    a = torch.stack([p[1] for p in pairs[:4]]).view(2, 2, 3, 64, 64)
    b = torch.stack([p[2] for p in pairs[:4]]).view(2, 2, 3, 64, 64)
    with torch.no_grad():
        batched = model(a, b)  # [2, 2]
        single = torch.stack([model(p[1], p[2]) for p in pairs[:4]]).view(2, 2)
        assert batched.shape == (2, 2)
        assert model(pairs[0][1], pairs[0][2]).shape == ()  # [3, H, W] -> []
        assert model.layer_distances(a, b).shape == (2, 2, len(LPIPS_ALEX_CHANNELS))
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-7)


def test_convenience_function_uses_the_shipped_weights(model, pairs):
    _, a, b = pairs[1]
    with torch.no_grad():
        torch.testing.assert_close(lpips(a, b), model(a, b))


def test_dtype_follows_the_inputs(model, pairs):
    _, a, b = pairs[0]
    with torch.no_grad():
        d32 = model(a, b)
        d64 = model(a.double(), b.double())  # float32 module, float64 inputs: cast on the fly
        dbf = model(a.bfloat16(), b.bfloat16())
    assert d64.dtype == torch.float64 and dbf.dtype == torch.bfloat16
    torch.testing.assert_close(d64.float(), d32, rtol=1e-5, atol=1e-6)
    assert abs(dbf.float().item() - d32.item()) < 0.05 * d32.item()


def test_frozen(model):
    assert not any(p.requires_grad for p in model.parameters())
    model.train()
    assert not model.training
    assert all(float(h.weight.min()) >= 0 for h in model.heads)  # LPIPS heads are non-negative
    assert set(model.state_dict()) == {f"features.{i}.{p}" for i in (0, 3, 6, 8, 10) for p in ("weight", "bias")} | {
        f"heads.{i}.weight" for i in range(5)
    }


def test_input_errors(model, image):
    with pytest.raises(ValueError, match="at least 31"):
        model(image[:, :30], image[:, :30])
    with pytest.raises(ValueError, match="RGB"):
        model(image[:2], image[:2])
    with pytest.raises(ValueError, match="shapes differ"):
        model(image, image[:, :40])


def test_loading_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="convert_lpips.py"):
        LPIPS.from_pretrained(tmp_path)
    copy = tmp_path / LPIPS_WEIGHTS_NAME
    shutil.copy(LPIPS_WEIGHTS_DIR / LPIPS_WEIGHTS_NAME, copy)
    with open(copy, "r+b") as f:  # flip one byte of the last weight
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        LPIPS.from_pretrained(copy)
    LPIPS.from_pretrained(copy, expected_sha256=None)  # the check can be skipped
