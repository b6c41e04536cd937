"""benchmarks/teacher_quality.py on real scans (--real) and flat colours (--colour-check), with a toy teacher."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks import teacher_quality
from helpers import toy_teacher_pipeline
from helpers import checker_quad_glb, two_quads_glb


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher")
    toy_teacher_pipeline(tokenizer_size=64).save_pretrained(folder)
    return folder


def test_real_scans_and_colour_check(tmp_path, teacher_dir):
    scans = tmp_path / "scans"
    scans.mkdir()
    checker_quad_glb(scans / "a_quad.glb", bump=True)
    two_quads_glb(scans / "b_two.glb")
    (scans / "c_broken.glb").write_bytes(b"not a mesh")
    out = tmp_path / "out"
    # Input size = the toy teacher's 16 px frames: the copy baseline's view 0 is then the truth at view 0 exactly.
    report = teacher_quality.main(["--teacher", str(teacher_dir), "--real", str(scans), "--colour-check", "--splits", "",
                                   "--steps", "2", "--input-size", "16", "--batch", "2", "--device", "cpu", "--out", str(out)])
    assert json.loads((out / "teacher_quality.json").read_text())["real"]["objects"] == 2
    real = report["real"]
    assert real["objects"] == 2 and set(real["skipped"]) == {"c_broken.glb"} and real["size"] == 16
    for label in ("teacher", "copy"):
        for metric in ("psnr", "ssim", "psnr_masked", "ssim_masked"):
            assert set(real[label][metric]) == {"copied_view", "imagined_views"}
    assert real["copy"]["psnr"]["copied_view"] > 60  # identical up to float rounding
    assert real["copy"]["psnr"]["imagined_views"] < 30  # the other cameras see other sides
    assert real["teacher"]["psnr"]["copied_view"] < 40  # an untrained toy does not copy its input
    assert set(real["per_object"]) == {"a_quad.glb", "b_two.glb"}
    assert 0 <= real["imagined_ahead_of_copy_psnr"] <= 2
    assert (out / "grid-real.png").exists()

    colours = report["colour_check"]
    assert set(colours) == {"yellow_disk", "cream_disk", "blue_disk", "red_ring", "green_ring"}
    for entry in colours.values():
        assert len(entry["input"]) == 3 and len(entry["copied_view"]) == 3 and len(entry["imagined_views"]) == 3
    # The input's mean colour over its own foreground is the flat colour it was made with.
    assert colours["yellow_disk"]["input"] == pytest.approx([167, 145, 21], abs=1.0)
    assert colours["green_ring"]["input"] == pytest.approx([40, 160, 60], abs=1.0)


def test_copy_baseline_is_the_teachers_input_frame_at_every_camera(teacher_dir):
    from dd3g.teachers.tiny import TinyTeacher

    teacher = TinyTeacher.from_pretrained(teacher_dir)
    images = torch.rand(2, 4, 32, 32)  # [B, 4, s, s]
    copy = teacher_quality.copy_baseline(teacher, images)  # [B, V, 4, 16, 16]
    assert copy.shape == (2, teacher.layout.num_views, 4, 16, 16)
    expected = torch.nn.functional.interpolate(images, size=(16, 16), mode="bilinear", antialias=True)
    for view in range(copy.shape[1]):
        assert torch.allclose(copy[:, view], expected.clamp(0, 1), atol=1e-5)


def test_mean_colour_is_alpha_weighted_over_the_mask():
    rgba = torch.zeros(4, 4, 4)
    rgba[:3, :, :2] = torch.tensor([1.0, 0.5, 0.0])[:, None, None]  # left half orange, opaque
    rgba[3, :, :2] = 1.0
    rgba[:3, :, 2:] = 1.0  # right half white but transparent: must not count
    assert teacher_quality.mean_colour(rgba, torch.ones(4, 4)) == pytest.approx([255.0, 127.5, 0.0])


def test_split_ceilings_mean_of_seeds_and_the_truths_own_consistency(tmp_path, teacher_dir):
    """--seed-mean K and --truth-consistency report beside a procedural split's figures; without them, nothing."""
    common = ["--teacher", str(teacher_dir), "--splits", "val", "--objects", "2", "--batch", "2", "--steps", "2",
              "--num-gaussians", "256", "--input-size", "16", "--fit-steps", "3", "--fit-gaussians", "64", "--device", "cpu"]
    val = teacher_quality.main(common + ["--seed-mean", "3", "--truth-consistency", "--out", str(tmp_path / "a")])["val"]
    assert val["imagined_psnr_mean_of_seeds"]["seeds"] == 3
    # An untrained toy's samples are mostly seed noise: their mean is closer to the truth than one of them.
    assert val["imagined_psnr_mean_of_seeds"]["psnr"] > val["psnr"]["imagined_views"] + 1.0
    assert 0 < val["truth_consistency_psnr_leave_one_out"] < 100
    plain = teacher_quality.main(common + ["--out", str(tmp_path / "b")])["val"]
    assert "imagined_psnr_mean_of_seeds" not in plain and "truth_consistency_psnr_leave_one_out" not in plain
    assert plain["psnr"] == val["psnr"]  # the ceilings change nothing of the figures themselves


def test_score_size_area_reduces_views_and_truth_alike():
    """--score-size: a 128-px teacher compared with a 64-px one where the smaller one's user would see it."""
    rgba = torch.zeros(1, 2, 4, 4, 4)  # [B, V, 4, S, S]
    rgba[:, :, :, :2, :2] = 1.0  # an opaque white quarter in each view
    small = teacher_quality.at_size(rgba, 2)  # [B, V, 4, 2, 2]
    assert small.shape == (1, 2, 4, 2, 2) and float(small[0, 0, 3, 0, 0]) == 1.0 and float(small[0, 0, 3, 1, 1]) == 0.0
    assert teacher_quality.at_size(rgba, None) is rgba and teacher_quality.at_size(rgba, 8) is rgba  # never enlarged
    # One black pixel that a 32-px teacher got wrong costs less once both are seen at 16 px: it is averaged in.
    truth = torch.ones(1, 2, 4, 32, 32)  # [B, V, 4, S, S] opaque white
    pred = truth.clone()
    pred[:, :, :3, 5, 5] = 0.0
    full, reduced = teacher_quality.scores(pred, truth), teacher_quality.scores(pred, truth, 16)
    assert float(reduced["psnr"].mean()) == pytest.approx(float(full["psnr"].mean()) + 10 * math.log10(4), abs=1e-3)
    with pytest.raises(SystemExit):
        teacher_quality.main(["--teacher", "x", "--score-size", "0", "--out", "y"])


def test_procedural_splits_report_the_copy_baseline_and_copy_only_skips_the_teacher(tmp_path, teacher_dir):
    """Each split has the copy of the input view beside the teacher; --copy-only gives that copy alone, unchanged."""
    common = ["--teacher", str(teacher_dir), "--splits", "val", "--objects", "2", "--batch", "2", "--steps", "2",
              "--num-gaussians", "256", "--input-size", "16", "--fit-steps", "0", "--device", "cpu"]
    val = teacher_quality.main(common + ["--out", str(tmp_path / "a")])["val"]
    copy = val["copy"]
    assert set(copy) == {"psnr", "ssim", "psnr_masked", "ssim_masked"}
    # At the input camera the copy is the truth (the input is rendered at the teacher's size); elsewhere it is not.
    assert copy["psnr"]["copied_view"] > 60 and copy["psnr"]["imagined_views"] < 30
    assert 0 <= val["imagined_ahead_of_copy_psnr"] <= 2
    alone = teacher_quality.main(common + ["--copy-only", "--out", str(tmp_path / "b")])
    assert alone["val"] == {"copy": copy, "objects": 2}
    assert "determinism" not in alone and not (tmp_path / "b" / "grid-val.png").exists()
    with pytest.raises(SystemExit):
        teacher_quality.main(common + ["--copy-only", "--colour-check", "--out", str(tmp_path / "c")])


def test_family_and_lighting_each_change_the_objects_scored(tmp_path, teacher_dir):
    """--family cylinder and --lighting unlit each reach the objects: the copy's score moves with either."""
    common = ["--teacher", str(teacher_dir), "--splits", "val", "--objects", "2", "--batch", "2", "--num-gaussians", "256",
              "--input-size", "16", "--copy-only", "--device", "cpu"]
    runs = {name: teacher_quality.main(common + flags + ["--out", str(tmp_path / name)])["val"]["copy"]["psnr"]["imagined_views"]
            for name, flags in {"default": [], "cylinder": ["--family", "cylinder"], "unlit": ["--lighting", "unlit"]}.items()}
    assert len(set(runs.values())) == 3  # each option changes what is scored
    with pytest.raises(SystemExit):
        teacher_quality.main(common + ["--family", "blob", "--out", str(tmp_path / "x")])


def test_guidance_scale_reaches_every_sample_and_defaults_to_the_stored_one(tmp_path, teacher_dir):
    """--guidance-scale S samples with S: the stored scale given explicitly reproduces the default run to the bit,
    another scale moves the teacher's views and leaves the copy baseline as it was."""
    common = ["--teacher", str(teacher_dir), "--splits", "val", "--objects", "2", "--batch", "2", "--steps", "2",
              "--num-gaussians", "256", "--input-size", "16", "--fit-steps", "0", "--colour-check", "--device", "cpu"]
    default = teacher_quality.main(common + ["--out", str(tmp_path / "default")])
    stored = default["guidance_scale"]
    same = teacher_quality.main(common + ["--guidance-scale", str(stored), "--out", str(tmp_path / "same")])
    other = teacher_quality.main(common + ["--guidance-scale", str(stored + 4), "--out", str(tmp_path / "other")])
    assert same["val"] == default["val"] and same["colour_check"] == default["colour_check"]
    assert other["guidance_scale"] == stored + 4
    assert other["val"]["psnr"] != default["val"]["psnr"]
    assert other["colour_check"]["yellow_disk"]["copied_view"] != default["colour_check"]["yellow_disk"]["copied_view"]
    assert other["val"]["copy"] == default["val"]["copy"]
    with pytest.raises(SystemExit):
        teacher_quality.main(common + ["--guidance-scale", "-1", "--out", str(tmp_path / "x")])
