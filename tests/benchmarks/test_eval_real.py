"""benchmarks/eval_real.py: the model's frame, the trivial predictions, the win count, and a run end to end on
synthetic scans with a toy pipeline."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from benchmarks import eval_real
from dd3g.evaluation import real_scans
from dd3g.cameras import orbit_cameras
from dd3g.preprocess import composite_on
from dd3g.rendering.mesh_renderer import load_scan, render_mesh
from dd3g.evaluation.metrics import psnr
from dd3g.teachers.tiny import TinyMVDMPipeline
from helpers import toy_pipeline, toy_teacher_pipeline
from helpers import checker_quad_glb, two_quads_glb

SIZE = 64


def cameras_at(azimuths, elevation=0.0):
    return orbit_cameras(torch.tensor(azimuths, dtype=torch.float32), torch.full((len(azimuths),), elevation), SIZE, SIZE)


def framed_scan(path, ratio):
    """(mesh, input view [4, S, S], framed input [4, S, S]) of one synthetic scan."""
    mesh = load_scan(path)
    input_rgba = render_mesh(mesh, cameras_at([0.0]))[0]
    return mesh, input_rgba, real_scans.frame_input(input_rgba, ratio)


@pytest.mark.parametrize("maker,ratio", [(checker_quad_glb, 0.57), (two_quads_glb, 0.85), (two_quads_glb, 0.3)])
def test_truth_moved_into_the_models_frame_matches_the_preprocessing(tmp_path, maker, ratio):
    # two_quads has depth (a near and a far quad), so perspective matters; the bumped quad is off-centre.
    kwargs = {"bump": True} if maker is checker_quad_glb else {}
    mesh, input_rgba, framed = framed_scan(maker(tmp_path / "scan.glb", **kwargs), ratio)
    before = real_scans.alpha_box(input_rgba[3])
    target = real_scans.alpha_box(framed[3])
    assert max(abs(a - b) for a, b in zip(before, target)) > 3  # the preprocessing really moved it
    transform = real_scans.solve_framing(mesh, cameras_at([0.0]), input_rgba[3], framed[3])
    after = render_mesh(real_scans.transformed(mesh, transform), cameras_at([0.0]))[0]
    assert max(abs(a - b) for a, b in zip(real_scans.alpha_box(after[3]), target)) <= 2


def test_copy_and_mirror(tmp_path):
    _, _, framed = framed_scan(checker_quad_glb(tmp_path / "scan.glb", bump=True), 0.6)
    azimuths = [0.0, 90.0, 180.0, 270.0, 135.0, -100.0]
    copy = real_scans.copy_prediction(framed, len(azimuths))
    assert torch.equal(copy[0], composite_on(framed))  # the framed input, exactly
    mirror = real_scans.mirror_prediction(framed, azimuths)
    for view, azimuth in enumerate(azimuths):
        behind = abs(real_scans.wrapped_azimuth(azimuth)) > 90
        expected = composite_on(framed).flip(-1) if behind else composite_on(framed)
        assert torch.equal(mirror[view], expected), azimuth
    assert not torch.equal(mirror[2], copy[2])  # the checker is not symmetric: the flip shows


def test_silhouette_iou_counts_the_shared_pixels_of_both_silhouettes():
    truth = torch.zeros(3, 1, 8, 8)
    truth[:, :, 2:6, 2:6] = 1  # 16 pixels
    same, shifted, empty = truth.clone(), truth.roll(2, dims=-1), torch.zeros_like(truth)
    prediction = torch.stack([same[0], shifted[1], empty[2]])  # [3, 1, 8, 8]
    iou = eval_real.silhouette_iou(prediction, truth)
    assert iou[0] == 1 and iou[1] == pytest.approx(8 / 24) and iou[2] == 0  # a see-through prediction scores 0
    assert math.isnan(float(eval_real.silhouette_iou(empty[:1], empty[:1])[0]))  # nothing on either side: undefined
    half = truth * 0.4  # a silhouette that lets 60 % of the background through is not counted as covering
    assert float(eval_real.silhouette_iou(half[:1], truth[:1])[0]) == 0


def test_card_reproduces_the_input_at_the_input_camera(tmp_path):
    _, _, framed = framed_scan(checker_quad_glb(tmp_path / "scan.glb", bump=True), 0.6)
    card = real_scans.card_prediction(framed, cameras_at([0.0, 90.0, 180.0]), 2.0)  # [3, 3, S, S]
    # Pixel-sized splats blur the checker's hard colour edges a little (the real scans: ~35 dB).
    assert float(psnr(card[0], composite_on(framed))) > 24
    assert float(psnr(card[0], composite_on(framed))) > float(psnr(torch.ones_like(card[0]), composite_on(framed))) + 12
    assert float((1 - card[1]).abs().mean()) < 0.05  # edge-on: a card is (nearly) invisible
    # From behind the card shows the input mirrored (same plane, seen from the other side).
    assert float(psnr(card[2], composite_on(framed).flip(-1))) > 24


def test_revolved_silhouette_has_the_inputs_height_and_width(tmp_path):
    _, _, framed = framed_scan(checker_quad_glb(tmp_path / "scan.glb"), 0.6)
    cams = cameras_at([0.0, 90.0])
    mesh = real_scans.revolve_mesh(framed, cams[0:1], 2.0)
    views = render_mesh(mesh, cams)  # [2, 4, S, S]
    left, top, right, bottom = real_scans.alpha_box(framed[3])
    for view in views:
        view_left, view_top, view_right, view_bottom = real_scans.alpha_box(view[3])
        assert abs((view_bottom - view_top) - (bottom - top)) <= 2
        assert abs((view_right - view_left) - (right - left)) <= 0.1 * (right - left) + 2
    # Coloured from the input: the front view's mean colour over the object is the input's.
    inside = (views[0, 3] > 0.99) & (framed[3] > 0.99)
    assert torch.allclose(views[0, :3, inside].mean(1), framed[:3, inside].mean(1), atol=0.06)


def test_win_count_on_fabricated_scores():
    def entry(psnr_value, lpips_value):
        return {"novel": {"psnr": psnr_value, "lpips": lpips_value}}

    base = {"copy": entry(18.0, 0.20), "mirror": entry(18.5, 0.19), "card": entry(15.0, 0.30), "revolve": entry(19.0, 0.18)}
    objects = {
        "a": {**base, "model": entry(19.5, 0.17)},  # beats the best on both
        "b": {**base, "model": entry(18.9, 0.10)},  # beats copy/mirror by PSNR but not revolve; best by LPIPS
        "c": {**base, "model": entry(25.0, 0.185)},  # best by PSNR; LPIPS behind revolve
        "d": {"skipped": "broken"},
    }
    assert eval_real.count_wins(objects) == {"psnr": 2, "lpips": 2, "objects": 3}


def test_eval_real_end_to_end(tmp_path):
    objects = tmp_path / "objects"
    objects.mkdir()
    checker_quad_glb(objects / "a_quad.glb", bump=True)
    two_quads_glb(objects / "b_two.glb")
    (objects / "c_broken.glb").write_bytes(np.random.default_rng(0).bytes(500))
    checkpoint = tmp_path / "ckpt"
    toy_pipeline().save_pretrained(checkpoint)
    out, cache = tmp_path / "out", tmp_path / "cache"
    common = ["--objects", str(objects), "--size", "64", "--turntable", "2", "--cache", str(cache), "--ceilings", "16", "32"]
    args = common + ["--checkpoint", str(checkpoint), "--out", str(out)]
    results = eval_real.main(args)

    results = json.loads((out / "results.json").read_text())
    assert results["num_scored"] == 2 and results["num_skipped"] == 1
    assert results["predictions"] == ["model", "copy", "mirror", "card", "revolve"]
    assert results["framing"] == {"image_size": 64, "foreground_ratio": 0.85}
    assert "skipped" in results["objects"]["c_broken.glb"] and results["objects"]["c_broken.glb"]["skipped"]
    for name in ("a_quad.glb", "b_two.glb"):
        entry = results["objects"][name]
        assert entry["transform"]["scale"] > 0
        for prediction in results["predictions"]:
            assert set(entry[prediction]["views"]) == {"input", "canon_000", "canon_090", "canon_180", "canon_270",
                                                        "turn_000.0", "turn_180.0"}
            for group in ("input", "novel"):
                assert all(math.isfinite(v) for v in entry[prediction][group].values())
        # The copy at the input camera is the framed input and the truth is in that frame: a close match (64 px,
        # hard checker edges).
        assert entry["copy"]["input"]["psnr"] > 20  # unframed truth: below 12
        assert entry["copy"]["input"]["silhouette_iou"] > 0.9  # its silhouette is the truth's there
        assert 0 <= entry["model"]["novel"]["silhouette_iou"] <= 1
    assert results["wins"]["objects"] == 2 and 0 <= results["wins"]["psnr"] <= 2
    assert set(results["comparison"]) == {"copy", "mirror", "card", "revolve"}
    # The ceilings: the truth through fewer pixels loses detail, more of it at 16 px than at 32; references only,
    # never a trivial prediction the model must beat.
    assert results["references"] == ["truth_16px", "truth_32px"]
    coarse, fine = results["mean"]["truth_16px"]["novel"], results["mean"]["truth_32px"]["novel"]
    assert 10 < coarse["psnr"] < fine["psnr"] < 60 and fine["lpips"] < coarse["lpips"]
    assert fine["silhouette_iou"] > 0.8
    assert "Ceilings of resolution" in (out / "results.md").read_text()
    assert "model's frame" in results["note"]
    markdown = (out / "results.md").read_text()
    assert "c_broken.glb" in markdown and "revolve" in markdown and "beats the best trivial" in markdown
    assert "silhouette IoU" in markdown and "brightness in / novel" in markdown
    assert (out / "grid.png").exists() and (out / "psnr_per_object.png").exists()
    # Per scan: the input view, the transform, the framed truth (7 views) and the revolved silhouette (7 views).
    assert len(list(cache.rglob("*.png"))) == 2 * (1 + 7 + 7) and len(list(cache.rglob("transform.json"))) == 2

    # --baselines-only: no model, the same baseline figures, read from the shared cache (no new renders).
    stamp = {p: p.stat().st_mtime_ns for p in cache.rglob("*.png")}
    base_out = tmp_path / "base"
    eval_real.main(common + ["--checkpoint", str(checkpoint), "--out", str(base_out), "--baselines-only"])
    base = json.loads((base_out / "results.json").read_text())
    assert base["predictions"] == ["copy", "mirror", "card", "revolve"] and "wins" not in base
    for prediction in base["predictions"]:
        for group in ("input", "novel"):
            assert base["mean"][prediction][group] == pytest.approx(results["mean"][prediction][group])
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.png")} == stamp

    # Another framing moves the truth: new transform, new cache entries.
    eval_real.main(common + ["--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "o2"), "--baselines-only"])
    assert len(list(cache.rglob("transform.json"))) == 4


def test_a_ceiling_at_or_above_the_evaluation_size_is_refused(tmp_path):
    objects = tmp_path / "objects"
    objects.mkdir()
    checker_quad_glb(objects / "a.glb")
    with pytest.raises(SystemExit, match="--ceilings"):
        eval_real.main(["--objects", str(objects), "--size", "64", "--out", str(tmp_path / "o"), "--baselines-only",
                        "--ceilings", "64"])


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    objects = tmp_path / "objects"
    objects.mkdir()
    checker_quad_glb(objects / "a.glb")
    with pytest.raises(SystemExit, match="does not exist"):
        eval_real.main(["--objects", str(objects), "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])


def test_the_teacher_is_scored_at_its_own_views_beside_the_others(tmp_path, monkeypatch):
    objects = tmp_path / "objects"
    objects.mkdir()
    checker_quad_glb(objects / "a_quad.glb", bump=True)
    two_quads_glb(objects / "b_two.glb")
    checkpoint, teacher = tmp_path / "ckpt", tmp_path / "teacher"
    toy_pipeline().save_pretrained(checkpoint)
    toy_teacher_pipeline(tokenizer_size=64).save_pretrained(teacher)
    common = ["--objects", str(objects), "--size", "64", "--turntable", "2", "--cache", str(tmp_path / "cache"), "--ceilings",
              "--checkpoint", str(checkpoint), "--teacher", str(teacher)]
    results = eval_real.main(common + ["--out", str(tmp_path / "out")])
    canonical = ["canon_090", "canon_180", "canon_270"]
    assert results["canonical_novel_views"] == canonical
    assert list(results["canonical_mean"]) == ["teacher", "model", "copy", "mirror", "card", "revolve"]
    for entry in results["objects"].values():
        assert set(entry["teacher"]["views"]) == {"canon_000", *canonical}
        for prediction in ("teacher", "copy"):  # each prediction's canonical mean is over those 3 views only
            views = entry[prediction]["views"]
            assert entry["canonical"][prediction]["lpips"] == pytest.approx(sum(views[v]["lpips"] for v in canonical) / 3)
    assert "The teacher `" in (tmp_path / "out" / "results.md").read_text()

    # A teacher whose views are the copy of its input scores exactly as the copy does, and never beats it.
    monkeypatch.setattr(eval_real, "teacher_views", lambda teacher, framed, seed, size: (
        real_scans.copy_prediction(framed, 4), framed[3:].expand(4, -1, -1, -1)))
    copied = eval_real.main(common + ["--out", str(tmp_path / "copied")])
    assert copied["canonical_mean"]["teacher"] == pytest.approx(copied["canonical_mean"]["copy"])
    assert copied["teacher_wins"] == {"psnr": 0, "lpips": 0, "objects": 2}


def test_a_folder_that_is_no_teacher_is_a_clear_error(tmp_path):
    objects = tmp_path / "objects"
    objects.mkdir()
    checker_quad_glb(objects / "a.glb")
    with pytest.raises(SystemExit, match="--teacher"):
        eval_real.main(["--objects", str(objects), "--baselines-only", "--teacher", str(tmp_path), "--out", str(tmp_path / "o")])
    toy = toy_teacher_pipeline(tokenizer_size=64)  # a teacher whose cameras are not the ones scored: refused, not misread
    TinyMVDMPipeline(toy.unet, toy.image_encoder, toy.scheduler, radius=2.5).save_pretrained(tmp_path / "far")
    with pytest.raises(SystemExit, match="not the canonical cameras"):
        eval_real.main(["--objects", str(objects), "--baselines-only", "--teacher", str(tmp_path / "far"), "--out", str(tmp_path / "o")])


def test_brightness_bias_is_the_mean_luminance_difference_where_both_silhouettes_cover():
    truth = torch.ones(2, 4, 8, 8) * 0.6
    truth[:, 3] = 0
    truth[:, 3, 2:6, 2:6] = 1  # a grey square on an empty (white) background
    alpha = truth[:, 3:4].clone()  # [2, 1, 8, 8] the prediction covers what the truth does
    on_white = composite_on(truth)  # [2, 3, 8, 8]
    darker = on_white.clone()
    darker[0, :, 2:6, 2:6] -= 0.2  # view 0 darker inside the silhouette by 51/255
    darker[1, :, :2] = 0  # view 1 differs only outside it: not counted
    bias = eval_real.brightness_bias(darker, truth, alpha)
    assert float(bias[0]) == pytest.approx(-51, abs=1e-3) and float(bias[1]) == pytest.approx(0, abs=1e-4)
    tinted = on_white.clone()
    tinted[:, 2, 2:6, 2:6] += 0.2  # blue alone weighs 0.114 of luminance
    assert float(eval_real.brightness_bias(tinted, truth, alpha)[0]) == pytest.approx(0.114 * 51, abs=1e-3)
    # A prediction that covers half the object shows white over the other half: a shape error, left out here
    half = alpha.clone()
    half[:, :, :, 4:] = 0
    missing = on_white.clone()
    missing[:, :, 2:6, 4:6] = 1
    assert float(eval_real.brightness_bias(missing, truth, half)[0]) == pytest.approx(0, abs=1e-4)
    assert math.isnan(float(eval_real.brightness_bias(on_white, truth, torch.zeros_like(alpha))[0]))  # nothing shared
