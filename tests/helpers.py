"""What several test files share: the repository root, ImageDream's camera convention, small scan files, a
served app. The tiny random models and inputs live in `dd3g.testing` (the benchmarks use them too)."""

from __future__ import annotations

import contextlib
import math
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from dd3g.testing import (  # noqa: F401  (re-exported: the tests import them from here)
    TOY_UNET,
    randomize_zero_layers,
    rgba_image,
    toy_pipeline,
    toy_student,
    toy_teacher_pipeline,
)

# Texture quadrants (PIL row 0 = top): top-left red, top-right green, bottom-left blue, bottom-right white.
CHECKER = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 255]]], np.uint8)
REPO = Path(__file__).resolve().parents[1]  # the repository root, wherever a test file sits below tests/


def imagedream_camera(elevation_deg: float, azimuth_deg: float) -> np.ndarray:
    """ImageDream/MVDream's get_camera for one view (blender_coord=True), written out here in numpy."""
    el, az = math.radians(elevation_deg), math.radians(azimuth_deg)
    position = np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
    forward = -position / np.linalg.norm(position)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, up, -forward], axis=1)
    c2w[:3, 3] = position
    flip_yz = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=float)
    return (flip_yz @ c2w).reshape(16)


def app_client(url: str, **kwargs):
    """gradio_client.Client (quiet) for an app these tests serve on plain http://127.0.0.1.

    No TLS is involved, so ssl_verify=False changes nothing but this: httpx otherwise builds an SSL context (parsing
    the CA bundle, ~50 ms on the 2-core machine) for every request, ~15 of them in one generation with its files."""
    from gradio_client import Client

    assert url.startswith("http://127.0.0.1:"), url
    return Client(url, verbose=False, ssl_verify=False, **kwargs)


@contextlib.contextmanager
def serve(pipe, **settings):
    """app.py's demo around `pipe` on its own port (for settings the shared test server must not have): (url, demo)."""
    import app

    settings = app.AppSettings(**{"video_frames": 2, "video_size": 32, "uploads_per_minute": 10_000, **settings})
    demo = app.build_demo(pipe, settings)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app.launch(demo, host="127.0.0.1", port=port, block=False, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", demo
    finally:
        demo.close()
        demo.dd3g_app.close()


@contextlib.contextmanager
def started(command, **popen_kwargs):
    """A process started now and waited for later, so that the test can do its own work meanwhile: yields
    wait(timeout=300) -> CompletedProcess (text stdout and stderr; the same one on every call). Killed if it still
    runs when the block ends.

    A `python -m dd3g`, `python app.py` or torchrun spends most of its time importing torch and diffusers on one core;
    on a 2-core machine the other core can do the test's own part of the work (or another such process)."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen_kwargs)
    done = []

    def wait(timeout: float = 300) -> subprocess.CompletedProcess:
        if not done:
            out, err = proc.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
        return done[0]

    try:
        yield wait
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def set_up_with_the_module(name: str):
    """An autouse fixture that sets the module fixture `name` up with the module's first test, if a test selected in
    that module uses it. For fixtures that start processes (`started`): they run beside the module's other tests
    instead of inside the one that waits for them. Assign it to a module-level name to use it."""

    @pytest.fixture(scope="module", autouse=True, name=f"{name}_set_up_with_the_module")
    def early(request):
        if any(name in item.fixturenames for item in request.session.items if item.module is request.module):
            request.getfixturevalue(name)

    return early


def checker_quad_glb(path, bump: bool = False, offset=(0.0, 0.0, 0.0)):
    """A 2x2 square in the file's x-z plane (Z-up file: it stands upright, facing -Y, i.e. the front),
    textured so the image's top row is at the file's +Z. Optionally a small spike at +Z's top edge."""
    vertices = np.array([[-1, 0, -1], [1, 0, -1], [1, 0, 1], [-1, 0, 1]], float) + np.asarray(offset)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float)  # trimesh convention: v up
    texture = Image.fromarray(CHECKER, "RGB").resize((8, 8), Image.NEAREST)
    mesh = trimesh.Trimesh(vertices, faces, visual=trimesh.visual.TextureVisuals(uv=uv, image=texture), process=False)
    scene = trimesh.Scene()
    scene.add_geometry(mesh, geom_name="quad")
    if bump:  # a coloured sliver above the quad (file +Z), tiny enough not to change the frame much
        spike = trimesh.Trimesh(np.array([[0, 0.01, 1], [0.02, 0.01, 1], [0.01, 0.01, 1.3]]) + np.asarray(offset), [[0, 1, 2]], process=False)
        spike.visual = trimesh.visual.ColorVisuals(spike, vertex_colors=np.tile([10, 200, 10, 255], (3, 1)))
        scene.add_geometry(spike, geom_name="spike")
    scene.export(path)
    return path


def two_quads_glb(path):
    """A near red quad in front (file -Y is the front) of a larger far blue one, placed by a node transform."""
    red = trimesh.Trimesh([[-0.5, 0, -0.5], [0.5, 0, -0.5], [0.5, 0, 0.5], [-0.5, 0, 0.5]], [[0, 1, 2], [0, 2, 3]], process=False)
    red.visual = trimesh.visual.ColorVisuals(red, vertex_colors=np.tile([255, 0, 0, 255], (4, 1)))
    blue = trimesh.Trimesh([[-1, 0, -1], [1, 0, -1], [1, 0, 1], [-1, 0, 1]], [[0, 1, 2], [0, 2, 3]], process=False)
    blue.visual = trimesh.visual.ColorVisuals(blue, vertex_colors=np.tile([0, 0, 255, 255], (4, 1)))
    scene = trimesh.Scene()
    # Blue is pushed back (+Y in the file, i.e. away from the front camera) by its node transform.
    scene.add_geometry(blue, geom_name="blue", transform=trimesh.transformations.translation_matrix([0, 0.3, 0]))
    scene.add_geometry(red, geom_name="red")
    scene.export(path)
    return path
