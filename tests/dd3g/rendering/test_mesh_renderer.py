"""The exact mesh rasterizer used as ground truth for the real-scan evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from dd3g.cameras import intrinsics, orbit_cameras
from dd3g.rendering.mesh_renderer import load_scan, render_mesh
from helpers import checker_quad_glb, two_quads_glb



def front(size):
    return orbit_cameras(torch.tensor([0.0]), torch.tensor([0.0]), size, size)


def test_normalisation_and_z_up(tmp_path):
    mesh = load_scan(checker_quad_glb(tmp_path / "quad.glb", bump=True, offset=(3.0, 5.0, 7.0)))
    v = mesh.vertices
    lo, hi = v.min(0).values, v.max(0).values
    assert torch.allclose((lo + hi) / 2, torch.zeros(3), atol=1e-5)
    assert v.norm(dim=1).max().item() == pytest.approx(0.5, abs=1e-5)
    # The spike's apex (file +Z) is the topmost point (world +Y); the quad lies in the world x-y plane.
    spike_apex = v[mesh.faces[mesh.face_texture == -1].reshape(-1)]
    assert spike_apex[:, 1].max().item() == pytest.approx(hi[1].item(), abs=1e-6)
    quad = v[mesh.faces[mesh.face_texture == 0].reshape(-1)]
    assert torch.allclose(quad[:, 2], quad[:1, 2].expand(len(quad)), atol=1e-6)


def test_checker_orientation_and_coverage(tmp_path):
    mesh = load_scan(checker_quad_glb(tmp_path / "quad.glb"))
    size = 64
    rgba = render_mesh(mesh, front(size), size, size)
    assert rgba.shape == (1, 4, size, size)
    img = rgba[0]
    c, q = size // 2, size // 8  # sample well inside each quadrant of the projected square
    expected = {(c - q, c - q): (1, 0, 0), (c - q, c + q): (0, 1, 0), (c + q, c - q): (0, 0, 1), (c + q, c + q): (1, 1, 1)}
    for (row, col), colour in expected.items():
        assert img[3, row, col].item() == 1.0
        assert torch.allclose(img[:3, row, col], torch.tensor(colour, dtype=torch.float32), atol=0.02), (row, col, img[:3, row, col])
    # Coverage = projected square's area: half side 0.5 / sqrt(2) at distance 2.
    focal = intrinsics(size, size)[0, 0].item()
    side = 2 * focal * (0.5 / math.sqrt(2)) / 2.0
    assert img[3].sum().item() == pytest.approx(side * side, rel=0.02)
    # Supersampling gives soft edges; supersample=1 a hard mask with the same area.
    assert ((img[3] > 0) & (img[3] < 1)).any()
    hard = render_mesh(mesh, front(size), size, size, supersample=1)[0, 3]
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    lo, hi = size / 2 - side / 2, size / 2 + side / 2  # exact: pixel centres inside the projected square
    inside = sum(1 for j in range(size) if lo <= j + 0.5 <= hi)
    assert hard.sum().item() == inside * inside


def test_depth_test_near_occludes_far(tmp_path):
    mesh = load_scan(two_quads_glb(tmp_path / "two.glb"))
    size = 48
    img = render_mesh(mesh, front(size), size, size)[0]
    c = size // 2
    assert torch.allclose(img[:3, c, c], torch.tensor([1.0, 0.0, 0.0]), atol=1e-3)  # near red wins
    # Outside the red quad but inside the blue one: blue.
    col = c + int(0.35 * size / 2)
    assert img[2, c, col].item() > 0.99 and img[0, c, col].item() < 0.01
    # From behind (azimuth 180) only blue is visible at the centre.
    back = orbit_cameras(torch.tensor([180.0]), torch.tensor([0.0]), size, size)
    assert torch.allclose(render_mesh(mesh, back, size, size)[0, :3, c, c], torch.tensor([0.0, 0.0, 1.0]), atol=1e-3)


def test_untextured_uncoloured_raises(tmp_path):
    path = tmp_path / "plain.glb"
    trimesh.Scene(trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [0, 0, 1]], [[0, 1, 2]])).export(path)
    with pytest.raises(ValueError, match="has no texture or colours"):
        load_scan(path)


def test_broken_file_raises_value_error(tmp_path):
    path = tmp_path / "broken.glb"
    path.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(ValueError):
        load_scan(path)
