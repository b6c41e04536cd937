"""benchmarks/simulate_throughput.py (the ODE speed goal of issue 16) at toy size on the CPU."""

import json

import torch

from benchmarks import simulate_throughput


def test_channels_last_teacher_samples_the_same_views(tmp_path):
    """The "after" layout is a speed change only: NHWC convolution weights give the views of the plain teacher."""
    teacher = simulate_throughput.build_teacher("imagedream-tiny", torch.device("cpu"), torch.float32, tmp_path)
    images = torch.rand(2, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        plain = teacher.simulate(images, [0, 1], num_steps=2).views  # [2, 4, 4, S, S]
        simulate_throughput.to_channels_last(teacher)
        assert teacher.unet.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
        nhwc = teacher.simulate(images, [0, 1], num_steps=2).views
    assert plain.shape == nhwc.shape and plain.std() > 0
    assert torch.allclose(plain, nhwc, atol=1e-4)


def test_rows_say_how_they_were_measured(tmp_path, capsys):
    simulate_throughput.main(["--teacher", "imagedream-tiny", "--device", "cpu", "--dtype", "fp32", "--batches", "1",
                              "--steps", "6", "--repeats", "2", "--channels-last", "--sdpa-backend", "math",
                              "--inductor", "coordinate_descent_tuning=True",
                              "--json", str(tmp_path / "rows.json")])
    (row,) = json.loads((tmp_path / "rows.json").read_text())
    assert row["channels_last"] is True and row["cudnn_benchmark"] is False and row["quadruples_per_s"] > 0
    assert row["step_ms"] > 0  # a 6-step ODE costs more than a 2-step one
    assert row["sdpa_backend"] == "math" and row["inductor"] == ["coordinate_descent_tuning=True"]


def test_an_unknown_inductor_option_is_refused_before_the_teacher_loads(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit):
        simulate_throughput.main(["--teacher", "imagedream-tiny", "--device", "cpu", "--workdir", str(tmp_path),
                                  "--inductor", "no_such_option=1"])
    assert "unknown inductor option 'no_such_option'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # no checkpoint was written
