import math
import os

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from dd3g.cameras import orbit_cameras
from dd3g.gaussians import OPACITY_LOGIT_BOUND, SH_C0, Gaussians
from dd3g.rendering import render

STANDARD_NAMES = (
    ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
)


def random_gaussians(n=64, batch=(), sh_rest_k=None, seed=0) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*batch, n, *shape, generator=gen)  # noqa: E731
    return Gaussians(
        means=r(3) * 0.3,
        log_scales=r(3) - 4.0,
        quats=r(4),
        opacity_logits=torch.randn(*batch, n, generator=gen) * 3,
        sh_dc=r(3),
        sh_rest=None if sh_rest_k is None else r(sh_rest_k, 3) * 0.1,
    )


def assert_same(a: Gaussians, b: Gaussians):
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh_dc"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    if a.sh_rest is None:
        assert b.sh_rest is None
    else:
        assert torch.equal(a.sh_rest, b.sh_rest)


def write_foreign_ply(path, columns: dict, fmt_text=False):
    """A PLY as another tool might write it: any property set/order, via plyfile."""
    n = len(next(iter(columns.values())))
    arr = np.empty(n, dtype=[(k, v.dtype.str) for k, v in columns.items()])
    for k, v in columns.items():
        arr[k] = v
    PlyData([PlyElement.describe(arr, "vertex")], text=fmt_text).write(str(path))


# ---------------------------------------------------------------------------- PLY


@pytest.mark.parametrize("k", [None, 3, 15])
def test_ply_round_trip_is_bit_exact(tmp_path, k):
    g = random_gaussians(n=257, sh_rest_k=k)
    path = tmp_path / "g.ply"
    g.save_ply(path)
    assert_same(g, Gaussians.load_ply(path))


def test_ply_layout_is_standard_3dgs(tmp_path):
    g = random_gaussians(n=10)
    path = tmp_path / "g.ply"
    g.save_ply(path)
    ply = PlyData.read(str(path))
    assert not ply.text and ply.byte_order == "<"
    assert [el.name for el in ply.elements] == ["vertex"]
    vertex = ply["vertex"]
    assert [p.name for p in vertex.properties] == STANDARD_NAMES
    assert all(vertex.data.dtype[name] == np.dtype("<f4") for name in STANDARD_NAMES)
    raw = path.read_bytes()
    header = raw[: raw.index(b"end_header\n") + len(b"end_header\n")]
    assert header.startswith(b"ply\nformat binary_little_endian 1.0\nelement vertex 10\n")
    assert b"\r" not in header
    assert len(raw) == len(header) + 10 * 17 * 4
    # Raw values, rot_0 = w, normals zero.
    np.testing.assert_array_equal(vertex["rot_0"], g.quats[:, 0].numpy())
    np.testing.assert_array_equal(vertex["opacity"], g.opacity_logits.numpy())
    np.testing.assert_array_equal(vertex["scale_2"], g.log_scales[:, 2].numpy())
    np.testing.assert_array_equal(vertex["y"], g.means[:, 1].numpy())
    assert not np.any(vertex["nx"]) and not np.any(vertex["nz"])


def test_f_rest_is_channel_major(tmp_path):
    n, k = 5, 3
    sh_rest = torch.arange(n * k * 3, dtype=torch.float32).reshape(n, k, 3)  # [N, K, 3]
    g = random_gaussians(n=n)
    g.sh_rest = sh_rest
    g.save_ply(tmp_path / "g.ply")
    vertex = PlyData.read(str(tmp_path / "g.ply"))["vertex"]
    names = [p.name for p in vertex.properties]
    assert names == STANDARD_NAMES[:9] + [f"f_rest_{i}" for i in range(9)] + STANDARD_NAMES[9:]
    for c in range(3):
        for j in range(k):
            np.testing.assert_array_equal(vertex[f"f_rest_{c * k + j}"], sh_rest[:, j, c].numpy())


def test_reads_foreign_ply_without_normals_with_extras(tmp_path):
    g = random_gaussians(n=20, sh_rest_k=3)
    cols = {
        "opacity": g.opacity_logits.numpy(),  # different order, no normals
        "x": g.means[:, 0].numpy(), "y": g.means[:, 1].numpy(), "z": g.means[:, 2].numpy(),
        "red": np.zeros(20, np.uint8),  # extra property
        **{f"rot_{i}": g.quats[:, i].numpy() for i in range(4)},
        **{f"scale_{i}": g.log_scales[:, i].numpy().astype(np.float64) for i in range(3)},  # doubles
        **{f"f_dc_{i}": g.sh_dc[:, i].numpy() for i in range(3)},
        **{f"f_rest_{c * 3 + j}": g.sh_rest[:, j, c].numpy() for c in range(3) for j in range(3)},
    }
    write_foreign_ply(tmp_path / "foreign.ply", cols)
    assert_same(g, Gaussians.load_ply(tmp_path / "foreign.ply"))
    # ASCII PLY too (same values up to printing precision).
    write_foreign_ply(tmp_path / "ascii.ply", cols, fmt_text=True)
    h = Gaussians.load_ply(tmp_path / "ascii.ply")
    torch.testing.assert_close(h.means, g.means)


def test_ply_missing_property_is_rejected(tmp_path):
    cols = {name: np.zeros(4, np.float32) for name in STANDARD_NAMES if name not in ("opacity", "rot_3")}
    write_foreign_ply(tmp_path / "bad.ply", cols)
    with pytest.raises(ValueError, match=r"opacity, rot_3"):
        Gaussians.load_ply(tmp_path / "bad.ply")


def test_non_ply_and_truncated_files_are_rejected(tmp_path):
    (tmp_path / "text.ply").write_text("hello, this is not a ply file\n")
    with pytest.raises(ValueError, match="not a PLY"):
        Gaussians.load_ply(tmp_path / "text.ply")
    random_gaussians(n=100).save_ply(tmp_path / "full.ply")
    raw = (tmp_path / "full.ply").read_bytes()
    (tmp_path / "cut.ply").write_bytes(raw[:-10])
    with pytest.raises(ValueError, match="truncated"):
        Gaussians.load_ply(tmp_path / "cut.ply")
    (tmp_path / "cut_header.ply").write_bytes(raw[:40])
    with pytest.raises(ValueError, match="truncated"):
        Gaussians.load_ply(tmp_path / "cut_header.ply")


def test_save_ply_refuses_nan_and_writes_nothing(tmp_path):
    g = random_gaussians(n=8)
    g.means[3, 1] = float("nan")
    g.means[5, 0] = float("inf")
    with pytest.raises(ValueError, match=r"means has 2 non-finite"):
        g.save_ply(tmp_path / "g.ply")
    assert os.listdir(tmp_path) == []
    # An existing file is left untouched, not half-overwritten.
    good = random_gaussians(n=8, seed=1)
    good.save_ply(tmp_path / "g.ply")
    before = (tmp_path / "g.ply").read_bytes()
    with pytest.raises(ValueError):
        g.save_ply(tmp_path / "g.ply")
    assert (tmp_path / "g.ply").read_bytes() == before
    assert os.listdir(tmp_path) == ["g.ply"]


def test_save_ply_refuses_batched(tmp_path):
    with pytest.raises(ValueError, match="unbatched"):
        random_gaussians(n=8, batch=(2,)).save_ply(tmp_path / "g.ply")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------- activations


def test_activated_properties_match_formulas():
    g = random_gaussians(n=32)
    torch.testing.assert_close(g.scales, torch.exp(g.log_scales))
    torch.testing.assert_close(g.rotations, g.quats / g.quats.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(g.rotations.norm(dim=-1), torch.ones(32))
    torch.testing.assert_close(g.opacities, 1 / (1 + torch.exp(-g.opacity_logits)))
    expected = 0.5 + SH_C0 * g.sh_dc
    torch.testing.assert_close(g.colors, expected.clamp_min(0))
    assert (expected < 0).any() and (g.colors >= 0).all()


def test_from_activated_inverts_activations():
    g = random_gaussians(n=32)
    h = Gaussians.from_activated(g.means, g.scales, g.rotations, g.opacities, g.colors)
    torch.testing.assert_close(h.log_scales, g.log_scales, atol=1e-5, rtol=1e-5)
    # Compare opacities, not logits: float32 sigmoid loses the logit's precision near 0 and 1.
    torch.testing.assert_close(h.opacities, g.opacities, atol=1e-6, rtol=1e-5)
    moderate = g.opacity_logits.abs() < 5
    torch.testing.assert_close(h.opacity_logits[moderate], g.opacity_logits[moderate], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(h.rotations, g.rotations)
    unclamped = (0.5 + SH_C0 * g.sh_dc) >= 0
    torch.testing.assert_close(h.sh_dc[unclamped], g.sh_dc[unclamped], atol=1e-5, rtol=1e-5)


def test_saturated_opacity_and_zero_scale_stay_finite(tmp_path):
    n = 4
    g = Gaussians.from_activated(
        means=torch.zeros(n, 3),
        scales=torch.tensor([[0.0, 1e-3, 1.0]]).expand(n, 3),
        rotations=torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4),
        opacities=torch.tensor([0.0, 1.0, 0.5, 1.0]),
        colors=torch.full((n, 3), 0.5),
    )
    assert torch.isfinite(g.opacity_logits).all() and torch.isfinite(g.log_scales).all()
    assert g.opacity_logits[1] > 10 and g.opacity_logits[0] < -10
    g.validate()
    # Logits set directly to +-inf are clamped at construction.
    h = Gaussians(g.means, g.log_scales, g.quats, torch.tensor([math.inf, -math.inf, 0, 40.0]), g.sh_dc)
    assert h.opacity_logits.tolist() == [OPACITY_LOGIT_BOUND, -OPACITY_LOGIT_BOUND, 0.0, OPACITY_LOGIT_BOUND]
    for obj, name in ((g, "a.ply"), (h, "b.ply")):
        obj.save_ply(tmp_path / name)
        data = PlyData.read(str(tmp_path / name))["vertex"].data
        assert all(np.isfinite(data[p]).all() for p in data.dtype.names)


def test_validate_names_bad_field():
    g = random_gaussians(n=8)
    g.quats = g.quats[:, :3]
    with pytest.raises(ValueError, match="quats"):
        g.validate()
    g = random_gaussians(n=8)
    g.sh_dc[0, 0] = float("nan")
    with pytest.raises(ValueError, match="sh_dc has 1 non-finite"):
        g.validate()
    g = random_gaussians(n=8)
    g.opacity_logits = g.opacity_logits[:5]
    with pytest.raises(ValueError, match="opacity_logits"):
        g.validate()


def test_to_numpy_gives_activated_float32():
    g = random_gaussians(n=16).to(dtype=torch.float64)
    out = g.to_numpy()
    assert sorted(out) == ["colors", "means", "opacities", "rotations", "scales"]
    assert all(v.dtype == np.float32 for v in out.values())
    assert out["opacities"].shape == (16,) and out["rotations"].shape == (16, 4)
    np.testing.assert_allclose(out["scales"], g.scales.numpy(), rtol=1e-6)
    np.testing.assert_allclose(out["colors"], g.colors.numpy(), rtol=1e-6)


# ---------------------------------------------------------------------------- .splat


def test_splat_round_trip(tmp_path):
    n = 300
    g = random_gaussians(n=n)
    g.save_splat(tmp_path / "g.splat")
    assert (tmp_path / "g.splat").stat().st_size == 32 * n
    h = Gaussians.load_splat(tmp_path / "g.splat")
    # Rows are written sorted by descending opacity * volume; positions are exact float32.
    order = torch.argsort(g.opacities * g.scales.prod(-1), descending=True, stable=True)
    ref = g.select(order)
    assert torch.equal(h.means, ref.means)
    torch.testing.assert_close(h.scales, ref.scales, rtol=1e-6, atol=0)
    assert (h.colors - ref.colors.clamp(0, 1)).abs().max() <= 1 / 255
    assert (h.opacities - ref.opacities).abs().max() <= 1 / 255 + 1e-6
    assert (h.quats - ref.rotations).abs().max() <= 1 / 128 + 1e-6


def test_splat_refuses_bad_size(tmp_path):
    (tmp_path / "bad.splat").write_bytes(b"\0" * 33)
    with pytest.raises(ValueError, match="multiple of 32"):
        Gaussians.load_splat(tmp_path / "bad.splat")


# ---------------------------------------------------------------------------- prune, batching


def test_prune_threshold_and_max_count():
    logits = torch.logit(torch.tensor([0.9, 0.001, 0.5, 0.95, 0.2, 0.004, 0.5]))
    g = random_gaussians(n=7)
    g.opacity_logits = logits
    kept = g.prune(min_opacity=0.005)
    assert kept.num_gaussians == 5
    assert torch.equal(kept.means, g.means[[0, 2, 3, 4, 6]])  # original order kept
    top = g.prune(min_opacity=0.005, max_count=3)
    assert torch.equal(top.means, g.means[[0, 2, 3]])  # 0.95, 0.9 and the first 0.5
    assert g.prune(min_opacity=0.0, max_count=0).num_gaussians == 0
    assert g.prune(min_opacity=0.99).num_gaussians == 0
    with pytest.raises(ValueError, match="unbatched"):
        random_gaussians(n=7, batch=(2,)).prune()


def test_visible_drops_only_what_no_render_shows():
    # Half the splats just under 1/255 (a pixel-aligned student's background pixels), some just over it.
    torch.manual_seed(0)
    g = random_gaussians(n=64)
    opacities = torch.where(torch.arange(64) % 2 == 0, torch.tensor(0.0038), torch.rand(64) * 0.9 + 0.0041)
    g.opacity_logits = torch.logit(opacities)
    g.log_scales = torch.full_like(g.log_scales, -1.5)  # large splats: the faint ones would cover many pixels
    shown = g.visible()
    assert shown.num_gaussians == 32 and torch.equal(shown.means, g.means[1::2])
    cameras = orbit_cameras(torch.tensor([0.0, 90.0, 200.0]), torch.tensor([10.0, 0.0, -20.0]), 48, 48, 2.0, 40.0)
    before, after = render(g, cameras, backend="torch"), render(shown, cameras, backend="torch")
    torch.testing.assert_close(after.rgb, before.rgb, atol=0, rtol=0)
    torch.testing.assert_close(after.alpha, before.alpha, atol=0, rtol=0)
    # A splat just over the line is drawn: dropping it would change the picture.
    g.opacity_logits = torch.logit(torch.full((64,), 0.0041))
    assert g.visible().num_gaussians == 64
    assert render(g.select(torch.arange(32)), cameras, backend="torch").alpha.sum() < render(g, cameras, backend="torch").alpha.sum()


def test_batching_indexing_stack_cat():
    a, b = random_gaussians(n=10, seed=1, sh_rest_k=3), random_gaussians(n=10, seed=2, sh_rest_k=3)
    batch = Gaussians.stack([a, b])
    assert batch.batch_shape == (2,) and batch.num_gaussians == 10
    assert batch.opacity_logits.shape == (2, 10) and batch.sh_rest.shape == (2, 10, 3, 3)
    assert_same(batch[1], b)
    assert batch[0].batch_shape == ()
    assert batch[1:].batch_shape == (1,)
    with pytest.raises(IndexError):
        a[0]
    joined = Gaussians.cat([batch, batch[[1, 0]]])
    assert joined.batch_shape == (2,) and joined.num_gaussians == 20
    assert_same(joined[0].select(torch.arange(10, 20)), b)
    assert torch.equal(joined.opacity_logits[1, :10], b.opacity_logits)
    nested = Gaussians.stack([batch, batch, batch])
    assert nested.batch_shape == (3, 2) and nested.flatten_batch().batch_shape == (6,)
    assert_same(nested[2, 0], a)
    with pytest.raises(ValueError, match="sh_rest"):
        Gaussians.stack([a, random_gaussians(n=10)])
    with pytest.raises(ValueError, match="batch shapes"):
        Gaussians.cat([a, batch])


def test_to_and_detach():
    g = random_gaussians(n=6)
    g.means.requires_grad_(True)
    d = g.detach()
    assert not d.means.requires_grad and d.means.data_ptr() == g.means.data_ptr()
    h = g.to(dtype=torch.float64)
    assert h.dtype == torch.float64 and h.opacity_logits.dtype == torch.float64
    assert h.device == torch.device("cpu")
    # Activated properties stay differentiable w.r.t. the raw parameters.
    log_scales = g.log_scales.clone().requires_grad_(True)
    Gaussians(g.means, log_scales, g.quats, g.opacity_logits, g.sh_dc).scales.sum().backward()
    torch.testing.assert_close(log_scales.grad, torch.exp(g.log_scales))


def test_rotation_about_y_moves_means_and_turns_splats():
    import math

    from dd3g.rendering.torch_splatter import covariances

    g = Gaussians.from_activated(
        torch.tensor([[[0.3, 0.1, 0.0]], [[0.3, 0.1, 0.0]]]), torch.tensor([[[0.2, 0.01, 0.01]]]).expand(2, 1, 3),
        torch.tensor([[[1.0, 0.0, 0.0, 0.0]]]).expand(2, 1, 4), torch.full((2, 1), 0.5), torch.full((2, 1, 3), 0.5),
    )
    turned = g.rotated_about_y(torch.tensor([math.pi / 2, 0.0]))
    # +X turns to -Z for a quarter turn counter-clockwise seen from above (right-handed, about +Y).
    assert torch.allclose(turned.means[0, 0], torch.tensor([0.0, 0.1, -0.3]), atol=1e-6)
    assert torch.equal(turned.means[1], g.means[1])
    # The long axis of the splat turns with it: covariance R S S^T R^T with the same rotation.
    cov = covariances(turned.quats[0, 0], turned.scales[0, 0])
    assert torch.allclose(torch.diagonal(cov), torch.tensor([1e-4, 1e-4, 0.04]), atol=1e-6)
