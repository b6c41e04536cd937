"""benchmarks/eval_real.py end to end on synthetic scans with a toy pipeline."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import toy_pipeline
from tests.test_mesh_render import checker_quad_glb, two_quads_glb

ROOT = Path(__file__).resolve().parents[1]


def load_eval_module():
    spec = importlib.util.spec_from_file_location("eval_real", ROOT / "benchmarks" / "eval_real.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_eval_real_end_to_end(tmp_path):
    objects = tmp_path / "objects"
    objects.mkdir()
    checker_quad_glb(objects / "a_quad.glb", bump=True)
    two_quads_glb(objects / "b_two.glb")
    (objects / "c_broken.glb").write_bytes(np.random.default_rng(0).bytes(500))
    checkpoint = tmp_path / "ckpt"
    toy_pipeline().save_pretrained(checkpoint)
    out = tmp_path / "out"
    args = ["--objects", str(objects), "--checkpoint", str(checkpoint), "--out", str(out), "--size", "64", "--turntable", "2"]
    eval_real = load_eval_module()
    eval_real.main(args)

    results = json.loads((out / "results.json").read_text())
    assert results["num_scored"] == 2 and results["num_skipped"] == 1
    assert "skipped" in results["objects"]["c_broken.glb"] and results["objects"]["c_broken.glb"]["skipped"]
    for name in ("a_quad.glb", "b_two.glb"):
        entry = results["objects"][name]
        assert set(entry["views"]) == {"input", "canon_000", "canon_090", "canon_180", "canon_270", "turn_000.0", "turn_180.0"}
        for group in ("input", "novel"):
            assert all(math.isfinite(v) for v in entry[group].values())
    assert "recentres" in results["note"]
    assert (out / "results.md").exists() and "c_broken.glb" in (out / "results.md").read_text()
    assert (out / "grid.png").exists() and (out / "psnr_per_object.png").exists()
    cached = sorted(p.name for p in (out / "cache").rglob("*.png"))
    assert len(cached) == 2 * 7

    # A second run reads the cached ground truth and scores identically.
    eval_real.main(args)
    again = json.loads((out / "results.json").read_text())
    for group in ("input", "novel"):
        assert again["mean"][group] == pytest.approx(results["mean"][group])


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    objects = tmp_path / "objects"
    objects.mkdir()
    checker_quad_glb(objects / "a.glb")
    with pytest.raises(SystemExit, match="does not exist"):
        load_eval_module().main(["--objects", str(objects), "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
