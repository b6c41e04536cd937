"""GLB mesh and turntable MP4 exports of one object's Gaussians."""

import os
import stat

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
import trimesh

from dd3g.export import EmptyMeshError, gaussians_to_mesh, save_glb, save_turntable_mp4, turntable_frames
from dd3g.gaussians import Gaussians

RED, BLUE = (0.9, 0.1, 0.1), (0.1, 0.1, 0.9)
TOP, BOTTOM = (0.05, 0.2, 0.0), (-0.05, -0.2, 0.0)


def ball(centre, color, n=300, radius=0.12, scale=0.025, opacity=0.9, seed=0):
    """n Gaussians filling a sphere, all of one colour."""
    gen = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=-1)
    distance = radius * torch.rand(n, 1, generator=gen) ** (1 / 3)
    means = torch.tensor(centre) + direction * distance
    return Gaussians.from_activated(
        means=means,
        scales=torch.full((n, 3), scale) * torch.exp(0.2 * torch.randn(n, 3, generator=gen)),
        rotations=torch.randn(n, 4, generator=gen),
        opacities=torch.full((n,), opacity),
        colors=torch.tensor(color).expand(n, 3).clone(),
    )


@pytest.fixture(scope="module")
def two_balls():
    """Red on top (+Y), blue below: asymmetric, so a flipped export shows."""
    return Gaussians.cat([ball(TOP, RED, seed=1), ball(BOTTOM, BLUE, seed=2)])


def load_single_mesh(path) -> trimesh.Trimesh:
    """The one mesh of a GLB, with its scene transform applied (trimesh may return a Scene or a Trimesh)."""
    loaded = trimesh.load(path)
    if isinstance(loaded, trimesh.Trimesh):
        return loaded
    nodes = loaded.graph.nodes_geometry
    assert len(nodes) == 1
    transform, name = loaded.graph[nodes[0]]
    return loaded.geometry[name].copy().apply_transform(transform)


def test_glb_opens_coloured_and_upright(two_balls, tmp_path):
    path = tmp_path / "object.glb"
    assert save_glb(two_balls, path, resolution=48) == str(path)
    assert not [p for p in tmp_path.iterdir() if p.name != "object.glb"]  # no temp file left behind
    mesh = load_single_mesh(path)
    assert len(mesh.faces) > 100
    assert mesh.visual.kind == "vertex"
    colors = np.asarray(mesh.visual.vertex_colors)  # [V, 4] uint8
    assert colors.shape == (len(mesh.vertices), 4) and colors.dtype == np.uint8
    red = (colors[:, 0] > 150) & (colors[:, 2] < 100)
    blue = (colors[:, 2] > 150) & (colors[:, 0] < 100)
    assert red.sum() > 0.3 * len(colors) and blue.sum() > 0.3 * len(colors)
    y = mesh.vertices[:, 1]
    assert y[red].min() > 0.0 > y[blue].max()  # red above, blue below: +Y up kept, colours in place
    # The surface lies inside the Gaussians' 3-sigma box.
    means, reach = two_balls.means, 3 * two_balls.scales.max()
    lo, hi = (means.min(0).values - reach).numpy(), (means.max(0).values + reach).numpy()
    assert (mesh.bounds[0] >= lo).all() and (mesh.bounds[1] <= hi).all()
    assert mesh.is_watertight and mesh.volume > 0  # outward normals


def test_mesh_surface_sits_near_the_balls_edge(two_balls):
    mesh = gaussians_to_mesh(two_balls, resolution=48)
    top = mesh.vertices[mesh.vertices[:, 1] > 0]
    distance = np.linalg.norm(top - np.array(TOP), axis=-1)
    # Radius 0.12 filled with Gaussians of sigma ~0.025: the half-opacity surface lies a little outside.
    assert 0.1 < np.median(distance) < 0.2


def test_transparent_object_is_a_clear_error(two_balls, tmp_path):
    clear = Gaussians.from_activated(two_balls.means, two_balls.scales, two_balls.rotations,
                                     torch.full_like(two_balls.opacities, 1e-3), two_balls.colors)
    with pytest.raises(ValueError, match="all transparent") as info:
        save_glb(clear, tmp_path / "clear.glb", resolution=32)
    assert isinstance(info.value, EmptyMeshError)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="unbatched"):
        gaussians_to_mesh(Gaussians.stack([two_balls, two_balls]), resolution=32)


def test_turntable_mp4_reads_back(two_balls, tmp_path):
    frames = turntable_frames(two_balls, num_frames=6, size=64)
    assert frames.shape == (6, 64, 64, 3) and frames.dtype == np.uint8
    path = tmp_path / "turn.mp4"
    assert save_turntable_mp4(two_balls, path, num_frames=6, size=64, frames=frames) == str(path)
    assert [p.name for p in tmp_path.iterdir()] == ["turn.mp4"]
    reader = imageio.get_reader(path, format="FFMPEG")
    try:
        video = np.stack([frame for frame in reader.iter_data()])  # len(reader) is inf: no list()
    finally:
        reader.close()
    assert video.shape == (6, 64, 64, 3)
    first = video[0].astype(int)
    assert (first < 200).any(axis=-1).mean() > 0.02  # not a blank white frame
    assert np.abs(first - frames[0]).mean() < 10  # what was rendered (to H.264 loss)
    rows = np.arange(64)[:, None].repeat(64, 1)
    red = (first[..., 0] > 150) & (first[..., 2] < 100)
    blue = (first[..., 2] > 150) & (first[..., 0] < 100)
    assert red.any() and blue.any() and rows[red].mean() < rows[blue].mean()  # red on top in the video too


def test_mp4_needs_an_even_size(two_balls, tmp_path):
    with pytest.raises(ValueError, match="even"):
        save_turntable_mp4(two_balls, tmp_path / "odd.mp4", num_frames=2, size=63)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_get_the_usual_modes(two_balls, tmp_path, umask):
    """Every writer gives its file mode 0666 less the umask (a temp file's 0600 must not survive the rename)."""
    previous = os.umask(umask)
    try:
        paths = [
            two_balls.save_ply(tmp_path / "object.ply"),
            two_balls.save_splat(tmp_path / "object.splat"),
            save_glb(two_balls, tmp_path / "object.glb", resolution=32),
            save_turntable_mp4(two_balls, tmp_path / "object.mp4", num_frames=2, size=32),
        ]
    finally:
        os.umask(previous)
    assert {oct(stat.S_IMODE(os.stat(p).st_mode)) for p in paths} == {oct(0o666 & ~umask)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["object.glb", "object.mp4", "object.ply", "object.splat"]


def test_ffmpeg_is_started_without_python_code_between_fork_and_exec(two_balls, tmp_path, monkeypatch):
    """A preexec_fn (imageio's writer passes os.setpgrp) runs Python in the forked child, which can hang for good
    when the app's other threads hold locks at the fork: the encoder must start ffmpeg without one."""
    import subprocess

    calls = []
    real_popen = subprocess.Popen

    def recording_popen(*args, **kwargs):
        calls.append(kwargs)
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", recording_popen)
    frames = turntable_frames(two_balls, 2, 32)
    save_turntable_mp4(two_balls, tmp_path / "turn.mp4", frames=frames)
    assert len(calls) == 1 and calls[0].get("preexec_fn") is None


def test_an_ffmpeg_failure_is_one_clear_error_and_leaves_nothing(two_balls, tmp_path):
    frames = turntable_frames(two_balls, 2, 32)
    target = tmp_path / "turn.mp4"
    target.write_bytes(b"the previous video")
    with pytest.raises(RuntimeError, match="ffmpeg could not encode the video"):
        save_turntable_mp4(two_balls, target, frames=frames, fps=0)  # ffmpeg refuses a zero frame rate
    assert [p.name for p in tmp_path.iterdir()] == ["turn.mp4"] and target.read_bytes() == b"the previous video"
