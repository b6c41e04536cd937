"""benchmarks/autotune_report.py: inductor's autotune listings -> what the picks save over one forward."""

from collections import Counter

import pytest
import torch

from benchmarks import autotune_report as report

# Inductor's format (torch 2.11 on an H200), cut to 3 choices a shape; the last block was cut off by a killed run.
LOG = """\
E1203 15:33:15.609000 3695 torch/_inductor/select_algorithm.py:3924] [0/0] Ignoring this choice.
Autotune Choices Stats:
{"num_choices": 22, "num_triton_choices": 20, "best_kernel": "triton_mm_1501", "best_time": 0.0276}
AUTOTUNE addmm(1280x5120, 1280x640, 640x5120)
strides: [0, 1], [640, 1], [1, 640]
dtypes: torch.bfloat16, torch.bfloat16, torch.bfloat16
  triton_mm_1501 0.0276 ms 100.0% ACC_TYPE='tl.float32', BLOCK_K=32, num_stages=3, num_warps=4
  bias_addmm 0.0400 ms 69.0% 
  triton_mm_1508 0.0500 ms 55.2% ACC_TYPE='tl.float32', BLOCK_K=32, num_stages=3, num_warps=8
SingleProcess AUTOTUNE benchmarking takes 11.1316 seconds and 0.0004 seconds precompiling for 22 choices
AUTOTUNE convolution(5x640x16x16, 640x640x3x3)
strides: [163840, 1, 10240, 640], [5760, 1, 1920, 640]
dtypes: torch.bfloat16, torch.bfloat16
  triton_convolution2d_1858 0.0300 ms 100.0% ALLOW_TF32=False, BLOCK_K=128
  triton_convolution2d_1852 0.0350 ms 85.7% ALLOW_TF32=False, BLOCK_K=64
SingleProcess AUTOTUNE benchmarking takes 6.5917 seconds and 0.0004 seconds precompiling for 18 choices
AUTOTUNE mm(196x1024, 1024x640)
strides: [1024, 1], [1, 1024]
"""


def test_parse_autotune_log_reads_each_tuned_shape_and_drops_a_cut_off_one():
    tuned = report.parse_autotune_log(LOG)
    assert [t.op for t in tuned] == ["addmm", "convolution"]
    addmm, conv = tuned
    assert addmm.inputs == [(1280, 5120), (1280, 640), (640, 5120)]
    assert addmm.key == ("mm", (1280, 640), (640, 5120))  # the bias is not part of the shape
    assert addmm.choices == [("triton_mm", 0.0276), ("bias_addmm", 0.04), ("triton_mm", 0.05)]
    assert (addmm.pick_ms, addmm.library_ms) == (0.0276, 0.04)
    assert conv.key == ("conv", (5, 640, 16, 16), (640, 640, 3, 3))
    assert conv.library_ms is None  # cuDNN slower than every listed choice


def test_counting_sees_linear_and_conv_as_aten_runs_them_and_a_1x1_conv_as_its_matmul():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 4, 1), torch.nn.Flatten(2), torch.nn.Linear(16, 5))
    uses, aliases = report.count_matmul_conv_shapes(model, torch.rand(2, 3, 4, 4))
    conv1x1 = ("conv", (2, 8, 4, 4), (4, 8, 1, 1))
    assert uses == Counter({("conv", (2, 3, 4, 4), (8, 3, 3, 3)): 1, conv1x1: 1,
                            ("mm", (32, 8), (8, 4)): 1,  # the 1x1 conv as [N*H*W, C] @ [C, C_out]
                            ("mm", (8, 16), (16, 5)): 1})  # Linear on [2, 4, 16]: addmm over the flattened rows
    assert aliases == {conv1x1: ("mm", (32, 8), (8, 4))}


def test_estimate_sums_saving_times_uses_bounds_unlisted_libraries_and_lists_untuned_shapes_once():
    addmm, conv = report.parse_autotune_log(LOG)
    conv1x1, its_mm = ("conv", (5, 64, 8, 8), (32, 64, 1, 1)), ("mm", (320, 64), (64, 32))
    uses = Counter({addmm.key: 4, conv.key: 3, conv1x1: 2, its_mm: 2, ("bmm", (5, 4, 4), (5, 4, 4)): 1})
    result = report.estimate_savings([addmm, conv], uses, {conv1x1: its_mm})
    assert result["saving_ms"] == pytest.approx((0.04 - 0.0276) * 4)
    assert result["saving_lower_bound_more_ms"] == pytest.approx((0.035 - 0.03) * 3)  # the 2nd listed is the bound
    assert result["shapes"][0]["shape"] == "mm(1280x640, 640x5120)"  # largest saving first
    # the untuned 1x1 convolution is listed under its own key, not again as the matmul it becomes
    assert result["untuned"] == [{"shape": "conv(5x64x8x8, 32x64x1x1)", "uses": 2}, {"shape": "bmm(5x4x4, 5x4x4)", "uses": 1}]
    # once its matmul is tuned, the convolution is not untuned any more, and a later listing of a shape wins
    retuned = report.TunedShape("mm", [(320, 64), (64, 32)], [("triton_mm", 0.01), ("mm", 0.02)])
    faster = report.TunedShape("addmm", addmm.inputs, [("triton_mm", 0.02), ("bias_addmm", 0.04)])
    again = report.estimate_savings([addmm, conv, retuned, faster], uses, {conv1x1: its_mm})
    assert [u["shape"] for u in again["untuned"]] == ["bmm(5x4x4, 5x4x4)"]
    assert again["saving_ms"] == pytest.approx((0.04 - 0.02) * 4 + (0.02 - 0.01) * 2)


def test_cli_refuses_logs_without_listings_before_building_a_model(tmp_path, capsys):
    log = tmp_path / "latency-before.log"
    log.write_text("| base | NVIDIA H200 | tokenizer + student, bf16 | 1 | reduce-overhead | 9.01 | 9.01 |\n")
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(log), str(tmp_path / "missing.log")])
    assert exit_info.value.code == 2 and "no such log" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        report.main([str(log)])
    assert "no AUTOTUNE listings" in capsys.readouterr().err
