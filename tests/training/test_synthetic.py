"""The procedural world: determinism, normalisation, splits and the held-out family, sampling, renders."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training import synthetic
from training.synthetic import (
    HELDOUT_PRIMITIVE, OBJECT_RADIUS, PRIMITIVE_TYPES, SPLITS, _CLASSES, _Rng, _random_primitive, batch_objects,
    family_of_seed, make_object, render_views, split_seed,
)

N = 2048  # small objects keep the CPU tests fast (closedness does not depend on N: splats grow as N shrinks)


def _gaussian_fields(g):
    return [g.means, g.log_scales, g.quats, g.opacity_logits, g.sh_dc]


def test_same_seed_gives_identical_objects_and_different_seeds_differ():
    a, b = make_object(12345, N), make_object(12345, N)
    assert all(torch.equal(x, y) for x, y in zip(_gaussian_fields(a.gaussians), _gaussian_fields(b.gaussians)))
    assert a.primitives == b.primitives
    c = make_object(12346, N)
    assert not torch.equal(a.gaussians.means, c.gaussians.means)
    assert not torch.equal(a.gaussians.sh_dc, c.gaussians.sh_dc)
    # Global RNG state plays no part.
    torch.manual_seed(0)
    np.random.seed(0)
    d = make_object(12345, N)
    assert torch.equal(d.gaussians.means, a.gaussians.means)


@pytest.mark.parametrize("family", [None, "heldout", "box", "torus", "cone"])
def test_objects_fit_the_unit_sphere_and_are_centred(family):
    for seed in (1, 2, 3):
        g = make_object(seed, N, family).gaussians.validate()
        reach = g.means.norm(dim=-1) + 3 * g.scales.max(dim=-1).values
        assert reach.max() <= OBJECT_RADIUS + 1e-5
        assert reach.max() > 0.99 * OBJECT_RADIUS  # scaled to fill it
        centre = 0.5 * (g.means.min(0).values + g.means.max(0).values)
        assert centre.abs().max() < 1e-5
        # Flat, opaque splats: thin axis well below the tangent axes.
        assert torch.all(g.scales[:, 2] < 0.3 * g.scales[:, 0])
        assert torch.allclose(g.opacities, torch.tensor(0.95), atol=1e-4)


@pytest.mark.parametrize("count", [1000, 2048, 3001])
def test_exact_gaussian_count(count):
    obj = make_object(7, count)
    assert obj.gaussians.num_gaussians == count
    assert sum(p["num_gaussians"] for p in obj.primitives) == count


def test_splits_are_disjoint_and_indexable():
    names = sorted(SPLITS)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ra, rb = SPLITS[a], SPLITS[b]
            assert max(ra.start, rb.start) >= min(ra.stop, rb.stop), (a, b)
    assert split_seed("val", 0) == SPLITS["val"].start and split_seed("train", 5) == 5
    with pytest.raises(IndexError):
        split_seed("val", len(SPLITS["val"]))
    assert family_of_seed(split_seed("heldout", 3)) == "heldout"
    assert family_of_seed(split_seed("train", 3)) == family_of_seed(split_seed("val", 3)) == "standard"


def test_heldout_primitive_only_in_the_heldout_family():
    seeds = [split_seed("train", i) for i in (0, 1, 2, 3, 4, 5, 6, 7, 10**6, 10**8)] + [
        split_seed("val", i) for i in range(6)] + [split_seed("test", i) for i in range(4)]
    for seed in seeds:
        types = make_object(seed, 256).primitive_types
        assert HELDOUT_PRIMITIVE not in types, (seed, types)
    for i in range(10):
        obj = make_object(split_seed("heldout", i), 256)
        assert obj.family == "heldout"
        assert any(p["type"] == HELDOUT_PRIMITIVE and p["visible_fraction"] > 0.3 for p in obj.primitives)
    assert HELDOUT_PRIMITIVE in make_object(5, 256, family="heldout").primitive_types


def test_standard_family_composes_several_primitives_and_textures():
    objects = [make_object(s, 256) for s in range(16)]
    counts = [len(o.primitives) for o in objects]
    assert min(counts) >= 1 and max(counts) <= 4 and len(set(counts)) >= 3
    assert len({p["type"] for o in objects for p in o.primitives}) >= 5
    assert len({p["texture"]["kind"] for o in objects for p in o.primitives}) >= 4


@pytest.mark.parametrize("kind", PRIMITIVE_TYPES)
def test_primitive_samples_lie_on_the_surface_with_outward_normals(kind):
    prim = _random_primitive(kind, _Rng(3), 1.0)
    points, normals = prim.sample_local(_Rng(4), 4000)
    assert np.allclose(np.linalg.norm(normals, axis=1), 1.0)
    eps = 1e-3 * prim.size()
    # Just below the surface is inside, just above is outside (edges and corners may be ambiguous).
    assert prim.inside_local(points - eps * normals).mean() > 0.97
    assert (~prim.inside_local(points + eps * normals)).mean() > 0.97
    assert np.all(np.abs(points) <= prim.size() + 1e-9)


def test_sampling_is_area_uniform_on_curved_surfaces():
    n = 40000
    torus = _CLASSES["torus"](major=0.6, minor=0.2)
    points, _ = torus.sample_local(_Rng(0), n)
    outer = (np.hypot(points[:, 0], points[:, 2]) > 0.6).mean()
    assert abs(outer - (0.5 + 0.2 / (math.pi * 0.6))) < 0.01  # the outer half has more area
    cone = _CLASSES["cone"](bottom=0.5, top=0.0, half_height=0.5)
    points, normals = cone.sample_local(_Rng(1), n)
    lateral = np.abs(normals[:, 1]) < 0.999
    assert abs((points[lateral, 1] < 0).mean() - 0.75) < 0.01  # the wide half of a cone has 3/4 of its side


def test_batch_objects_stacks_the_single_objects():
    seeds = [3, 11, split_seed("heldout", 0)]
    batch = batch_objects(seeds, 512)
    assert tuple(batch.means.shape) == (3, 512, 3) and tuple(batch.sh_dc.shape) == (3, 512, 3)
    for i, seed in enumerate(seeds):
        assert torch.equal(batch.means[i], make_object(seed, 512).gaussians.means)


def _interior(mask: torch.Tensor, pixels: int = 2) -> torch.Tensor:
    """Pixels at least `pixels` inside the mask [V, H, W]."""
    k = 2 * pixels + 1
    return -F.max_pool2d(-mask[:, None].float(), k, 1, pixels)[:, 0] > 0.5


def test_renders_are_closed_surfaces_with_reasonable_coverage():
    g = batch_objects([0, 1], N, family="sphere")
    rgba = render_views(g, torch.tensor([0.0, 20.0]), torch.tensor([0.0, 30.0]), 64)
    assert tuple(rgba.shape) == (2, 5, 4, 64, 64)
    assert rgba.min() >= 0 and rgba.max() <= 1
    alpha = rgba[:, :, 3].flatten(0, 1)  # [B V, H, W]
    coverage = (alpha > 0.5).float().mean(dim=(1, 2))
    assert torch.all(coverage > 0.05) and torch.all(coverage < 0.7)
    inside = _interior(alpha > 0.5)
    assert inside.sum() > 500 and alpha[inside].min() > 0.95
    # The input view (last) is azimuth 0: the same camera as output 0 when the offset is 0.
    assert torch.allclose(rgba[0, -1], rgba[0, 0], atol=1e-5)
    assert tuple(render_views(g, 0.0, 0.0, 32, include_input=False).shape) == (2, 4, 4, 32, 32)


def test_textures_vary_colours_and_solid_objects_do_not():
    def interior_colour_std(texture):
        g = batch_objects([4], N, family="sphere", texture=texture, shading=False)
        rgba = render_views(g, 0.0, 0.0, 64, include_input=False)[0, :2]  # [2, 4, H, W]
        inside = _interior(rgba[:, 3] > 0.5)
        return rgba[:, :3].permute(1, 0, 2, 3)[:, inside].std(dim=1).max()

    assert interior_colour_std("checkers") > 0.05
    assert interior_colour_std("solid") < 0.02


def test_mixed_lighting_gives_each_seed_one_kind_and_keeps_its_shape_and_texture():
    kinds = [synthetic.light_kind_of_seed(synthetic.split_seed("train", i), "mixed") for i in range(600)]
    shares = {k: kinds.count(k) / len(kinds) for k in synthetic.LIGHT_KINDS}
    assert all(0.25 < share < 0.42 for share in shares.values()), shares
    assert synthetic.light_kind_of_seed(7, "baked") == "hard" and synthetic.light_kind_of_seed(7, "soft") == "soft"
    with pytest.raises(ValueError, match="unknown lighting"):
        synthetic.light_kind_of_seed(7, "neon")

    seed = 11
    hard, soft, unlit = (synthetic.make_object(seed, 512, lighting=k) for k in ("hard", "soft", "unlit"))
    flat = synthetic.make_object(seed, 512, shading=False)
    baked = synthetic.make_object(seed, 512)  # the default: the world before the option
    assert torch.equal(baked.gaussians.colors, hard.gaussians.colors)
    assert torch.equal(unlit.gaussians.colors, flat.gaussians.colors)  # unlit is the bare albedo
    for other in (soft, unlit):
        assert torch.equal(other.gaussians.means, hard.gaussians.means)
    # A soft light shades less: its colours lie between the hard light's and the albedo, and no channel gets darker
    # than under the hard light.
    assert (soft.gaussians.colors >= hard.gaussians.colors - 1e-6).all()
    assert (soft.gaussians.colors <= unlit.gaussians.colors + 1e-6).all()
    assert soft.light["ambient"] >= 0.75 and hard.light["ambient"] <= 0.6
    assert (unlit.light["kind"], unlit.light["baked"], soft.light["kind"]) == ("unlit", False, "soft")
    mixed = synthetic.make_object(seed, 512, lighting="mixed")
    expected = {"hard": hard, "soft": soft, "unlit": unlit}[synthetic.light_kind_of_seed(seed, "mixed")]
    assert torch.equal(mixed.gaussians.colors, expected.gaussians.colors)


def _high_frequency(colors: torch.Tensor, means: torch.Tensor) -> float:
    """Mean colour difference between each Gaussian and its nearest neighbour: how fine a texture's detail is."""
    distance = torch.cdist(means, means)
    distance.fill_diagonal_(float("inf"))
    return float((colors - colors[distance.argmin(dim=1)]).abs().sum(dim=1).mean())


def test_prints_replace_textures_only_where_drawn_and_carry_fine_many_coloured_detail():
    seeds = [split_seed("train", i) for i in range(40)]
    for seed in seeds[:6]:  # 0 is the world before: the same colours; a print leaves the shapes alone
        assert torch.equal(make_object(seed, 512, print_fraction=0.0).gaussians.sh_dc, make_object(seed, 512).gaussians.sh_dc)
        printed = make_object(seed, 512, texture="print", shading=False)
        assert torch.equal(printed.gaussians.means, make_object(seed, 512).gaussians.means)
        assert {p["texture"]["kind"] for p in printed.primitives} == {"print"}
        again = make_object(seed, 512, texture="print", shading=False)
        assert torch.equal(printed.gaussians.sh_dc, again.gaussians.sh_dc)
    # The body is printed for about print_fraction of the seeds, and a seed printed at 0.3 is printed at 0.6 too.
    bodies = {f: [make_object(s, 256, print_fraction=f).primitives[0]["texture"]["kind"] == "print" for s in seeds]
              for f in (0.3, 0.6)}
    assert 0.1 < np.mean(bodies[0.3]) < 0.5 and 0.4 < np.mean(bodies[0.6]) < 0.8
    assert all(b for a, b in zip(bodies[0.3], bodies[0.6]) if a)
    # Prints hold finer detail than the procedural kinds they replace, in more colours.
    fine, coarse, colours_printed, colours_plain = [], [], [], []
    for seed in seeds[:8]:
        for texture, sink, count in ((None, coarse, colours_plain), ("print", fine, colours_printed)):
            g = make_object(seed, N, texture=texture, shading=False).gaussians
            sink.append(_high_frequency(g.colors, g.means))
            count.append(len(torch.unique((g.colors * 16).floor(), dim=0)))
    assert np.mean(fine) > 1.5 * np.mean(coarse), (fine, coarse)
    assert np.median(colours_printed) > np.median(colours_plain)
    with pytest.raises(ValueError, match="print_fraction"):
        make_object(1, 256, print_fraction=1.5)


def test_batch_objects_made_by_several_processes_equal_those_made_by_one():
    seeds = [split_seed("train", i) for i in range(8)]
    one = batch_objects(seeds, 256, print_fraction=0.5, lighting="mixed")
    two = batch_objects(seeds, 256, print_fraction=0.5, lighting="mixed", workers=2)
    assert all(torch.equal(x, y) for x, y in zip(_gaussian_fields(one), _gaussian_fields(two)))
