"""benchmarks/student_step.py at toy size on the CPU: both steps timed, the student's FLOPs counted once, the full
step trains the student, and the model-alone step's loss is distill's."""

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import student_step
from helpers import toy_teacher_pipeline
from training import distill


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("student-step") / "teacher"
    toy_teacher_pipeline(tokenizer_size=64).save_pretrained(folder)
    return folder


def _flags(teacher_dir, *extra):
    return ["--tiny-test", "--teacher", str(teacher_dir), "--device", "cpu", "--steps", "2", "--warmup", "1", *extra]


@pytest.fixture(scope="module")
def bench(teacher_dir):
    return student_step.build(student_step.parse_args(_flags(teacher_dir)))


def test_report_times_both_steps_and_counts_one_student_forward_backward(teacher_dir, bench, tmp_path):
    student_step.main(_flags(teacher_dir, "--json", str(tmp_path / "r.json")))
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["batch_size"] == 2 and report["lpips"] and report["seed_deviation_weight"] == 2 and report["input_view_weight"] == 1
    for name in ("model_alone", "full_step"):
        assert report[name]["ms"] > 0 and report[name]["tflop_per_s"] > 0
        assert report[name]["samples_per_s"] == pytest.approx(2e3 / report[name]["ms"])
    assert report["full_over_model"] == pytest.approx(report["full_step"]["ms"] / report["model_alone"]["ms"])
    # Independently: the student's forward on the same prepared batch, and a backward through every output.
    inputs = bench.fixed
    with FlopCounterMode(display=False) as counter:
        g = bench.student(inputs["noise"], inputs["frame"], inputs["cameras"], inputs["tokens"]).gaussians
        sum(t.sum() for t in (g.means, g.log_scales, g.quats, g.opacity_logits, g.sh_dc)).backward()
    assert report["student_forward_backward_tflop"] > 0
    assert report["student_forward_backward_tflop"] * 1e12 == pytest.approx(counter.get_total_flops(), rel=1e-9)


@pytest.mark.parametrize("step", ["full_step", "model_step"])
def test_each_step_trains_the_student(bench, step):
    before = [p.detach().clone() for p in bench.student.parameters()]
    getattr(bench, step)()
    moved = [not torch.equal(a, p) for a, p in zip(before, bench.student.parameters())]
    assert sum(moved) > 0.9 * len(moved)  # AdamW moves every weight that has a gradient


def test_model_alone_loss_is_distills_on_the_same_batch(bench):
    batch = bench.data.batch([0, 1])  # two seeds of one image: the seed-deviation term is live
    assert batch["image_ids"].tolist() == [0, 0] and batch["image"].shape == (2, 4, 32, 32)
    with torch.no_grad():
        losses, _, _ = distill.distillation_step(bench.student, bench.teacher, bench.inputs_builder, batch, bench.dargs, 0, [0, 1], bench.lpips)
        ours = student_step.model_loss(bench.student, student_step.prepare(batch, bench.inputs_builder, bench.device),
                                       bench.dargs, bench.lpips)
    assert {"lpips", "seed_deviation", "input_view"} <= set(losses) and "verification" not in losses
    assert float(losses["seed_deviation"]) > 0 and float(losses["input_view"]) > 0
    assert float(ours) == pytest.approx(float(losses["total"]), rel=1e-6)
