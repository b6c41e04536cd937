"""The shipped hub/dd3g-tiny: it is what loads by default, and it reconstructs the object it is shown.

CPU, ~20 s. The thresholds are far below what the model scores (hub/dd3g-tiny/README.md) and far above what an
empty or untrained model gets, so they catch broken weights, a wrong default or a preprocessing mismatch.
"""


import pytest
import torch
import torch.nn.functional as F

from dd3g.__main__ import main
from dd3g.gaussians import Gaussians
from dd3g.evaluation.metrics import psnr
from dd3g.pipeline import DEFAULT_CHECKPOINT, DD3GPipeline
from dd3g.preprocess import composite_on, preprocess
from dd3g.rendering import render
from helpers import REPO

EXAMPLES = sorted((REPO / "examples").glob("*.png"))


@pytest.fixture(scope="module")
def pipe():
    return DD3GPipeline.from_pretrained()  # no argument: the shipped model


@pytest.fixture(scope="module")
def objects(pipe):
    """{example: what the shipped pipeline makes of it with seed 0}, made once for the tests that read them."""
    return {path: pipe(str(path), seeds=[0]).gaussians for path in EXAMPLES}


def test_the_default_is_the_shipped_model_in_float32_on_cpu(pipe):
    assert DEFAULT_CHECKPOINT.name == "dd3g-tiny" and (DEFAULT_CHECKPOINT / "model_index.json").is_file()
    assert pipe.student.dtype == torch.float32  # stored fp16, computed in fp32 on a CPU
    size = pipe.student.config.unet_config["sample_size"]
    assert size == 128 and pipe.student.num_gaussians == 4 * size * size  # pixel-aligned: one per pixel of its 4 views


@torch.no_grad()
def test_front_view_reproduces_the_input(pipe, objects):
    """Rendered from the input camera, the object must look like the input: colour (PSNR on white, against an
    all-white render as the floor) and silhouette (alpha IoU)."""
    gains, ious = [], []
    for path in EXAMPLES:
        source = preprocess(path, pipe.preprocess_config).rgba[None]  # [1, 4, S, S]
        gaussians = objects[path]
        cams = pipe.view_layout.cameras(64, 64, elevation_deg=torch.zeros(1))
        front = render(gaussians.to(dtype=torch.float32), cams, background=None).rgba()[:, 0]  # [1, 4, 64, 64]
        truth = F.interpolate(source, size=(64, 64), mode="bilinear", antialias=True)
        score = psnr(composite_on(front), composite_on(truth)).item()
        empty = psnr(torch.ones_like(truth[:, :3]), composite_on(truth)).item()
        gains.append(score - empty)
        predicted, true = front[:, 3] > 0.5, truth[:, 3] > 0.5
        ious.append(((predicted & true).sum() / (predicted | true).sum()).item())
    assert len(gains) >= 4
    assert sum(gains) / len(gains) > 4.0, gains  # measured ~7 dB over the empty render
    assert sum(ious) / len(ious) > 0.6, ious  # measured ~0.78


def test_cli_without_checkpoint_uses_it(tmp_path, pipe, objects):
    out = tmp_path / "out"
    assert main([str(EXAMPLES[0]), "--out", str(out), "--format", "ply"]) == 0
    written = Gaussians.load_ply(next(out.glob("*.ply")))
    # The model makes the student's Gaussians, then the photo surface's: one per opaque pixel of the photo at 256 px.
    assert pipe.config.photo_surface_size == 256
    surface = int((pipe.prepare_image(EXAMPLES[0]).detail_rgba[3] > 1 / 255).sum())
    served = objects[EXAMPLES[0]][0]  # the library's object for that image and seed
    assert served.num_gaussians == pipe.student.num_gaussians + surface
    # The file holds those a renderer draws: every surfel (opaque photo pixels) and the student's visible ones, not
    # the student's background pixels.
    assert written.num_gaussians == served.visible().num_gaussians
    assert surface < written.num_gaussians < served.num_gaussians
    torch.testing.assert_close(written.means, served.visible().means, atol=1e-5, rtol=1e-5)
