"""Distillation at toy size on the CPU: it learns from quadruples, resumes exactly, exports a loadable pipeline."""

import json

import pytest
import torch
from safetensors.torch import load_file

from dd3g.models.image_tokenizer import EfficientNetLite0Tokenizer
from dd3g.models.mv_unet import MultiViewUNet
from dd3g.pipeline import DD3GPipeline
from dd3g.teachers.tiny import TinyMVDMPipeline, training_scheduler
from tests.helpers import TOY_UNET, randomize_zero_layers, rgba_image
from training import build_corpus, distill, simulate


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    torch.manual_seed(0)
    unet = MultiViewUNet(**TOY_UNET)
    randomize_zero_layers(unet)
    TinyMVDMPipeline(unet.eval(), EfficientNetLite0Tokenizer.from_imagenet(image_size=64), training_scheduler()).save_pretrained(root / "teacher")
    build_corpus.main(["--source", "procedural", "--num-images", "2", "--size", "32", "--num-gaussians", "256", "--out", str(root / "corpus"), "--no-progress"])
    simulate.main(["--teacher", str(root / "teacher"), "--corpus", str(root / "corpus"), "--out", str(root / "quadruples"),
                   "--seeds-per-image", "2", "--steps", "2", "--batch-size", "2", "--no-progress"])
    return root


def _run(world, out, *extra):
    return distill.main(["--tiny-test", "--teacher", str(world / "teacher"), "--quadruples", str(world / "quadruples"),
                         "--output-dir", str(out), "--checkpoint-every", "2", "--log-every", "1", "--sample-every", "1000",
                         "--verification-weight", "1.0", "--verification-k0", "0.0", "--verification-tau", "0.01", *extra])


def _losses(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_killed_distillation_resumes_exactly(world, tmp_path):
    straight, chunked = tmp_path / "straight", tmp_path / "chunked"
    assert _run(world, straight, "--max-steps", "4") == 4
    assert _run(world, chunked, "--max-steps", "4", "--stop-after", "2") == 2
    assert _run(world, chunked, "--max-steps", "4", "--resume", "latest") == 4
    a = load_file(straight / "checkpoints" / "step-0000004" / "model.safetensors")
    b = load_file(chunked / "checkpoints" / "step-0000004" / "model.safetensors")
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    assert [r["total"] for r in _losses(chunked)] == pytest.approx([r["total"] for r in _losses(straight)], rel=1e-5)  # same samples; float sums may reorder
    record = _losses(straight)[-1]
    assert {"rgb", "alpha", "lpips", "verification"} <= set(record)  # every term of the joint objective ran
    assert record["verification_weight"] > 0.99


def test_verification_ramp_and_ablations():
    args = distill.parse_args(["--teacher", "t", "--quadruples", "q", "--output-dir", "o", "--max-steps", "1000"])
    weights = [distill.verification_weight(args, k) for k in (0, 300, 1000)]
    assert weights[0] < 0.01 * args.verification_weight and abs(weights[1] - 0.5 * args.verification_weight) < 1e-9
    assert weights[2] > 0.99 * args.verification_weight
    assert distill.verification_t_range(args, 0) == (0.02, 0.98) and distill.verification_t_range(args, 1000) == (0.02, 0.5)
    off = distill.parse_args(["--teacher", "t", "--quadruples", "q", "--output-dir", "o", "--no-verification"])
    assert distill.verification_weight(off, 10**6) == 0.0


def test_fresh_noise_ablation_and_export(world, tmp_path):
    assert _run(world, tmp_path / "fresh", "--max-steps", "2", "--fresh-noise", "--no-verification", "--export", str(tmp_path / "pipe")) == 2
    pipe = DD3GPipeline.from_pretrained(tmp_path / "pipe")
    out = pipe(rgba_image(), seeds=[0]).gaussians
    assert out.num_gaussians == pipe.student.num_gaussians and torch.isfinite(out.means).all()
    assert "verification" not in _losses(tmp_path / "fresh")[-1]
