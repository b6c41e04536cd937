"""benchmarks/teacher_shapes.py: the shape table sums resumed runs and shows what is missing as missing."""

import json

from benchmarks import teacher_shapes


def _write_log(path, runs):
    """runs: [[(step, elapsed_s), ...], ...], one list per run of train_teacher.py, as its log.jsonl rows (JsonlLog
    stamps each with its wall-clock time; the runs start 1,000 s apart)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, run in enumerate(runs):
        start = 1.7e9 + 1000.0 * k
        rows.append({"time": start + 5.0, "camera_sensitivity": 0.5, "step": run[0][0]})  # a sample-grid row: no elapsed_s
        rows += [{"time": start + elapsed, "step": step, "loss": 0.1, "elapsed_s": elapsed} for step, elapsed in run]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_training_time_sums_the_runs_of_a_resumed_chain(tmp_path):
    log = tmp_path / "wide" / "log.jsonl"
    _write_log(log, [[(50, 10.0), (100, 20.0)], [(150, 9.0), (200, 19.0), (250, 30.0)]])
    assert teacher_shapes.training_time(log) == (250, 50.0)
    _write_log(log, [[(50, 10.0), (100, 20.0)]])
    assert teacher_shapes.training_time(log) == (100, 20.0)
    # a short run followed by one whose first row's elapsed_s is already larger: still two runs
    _write_log(log, [[(10, 3.0)], [(60, 12.0), (110, 24.0)]])
    assert teacher_shapes.training_time(log) == (110, 27.0)


def test_rows_join_speed_and_scores_and_leave_a_missing_piece_as_a_dash(tmp_path):
    _write_log(tmp_path / "tiny" / "log.jsonl", [[(100, 25.0), (200, 50.0)], [(300, 20.0)]])
    (tmp_path / "tiny-step.json").write_text(json.dumps({
        "unet_parameters": 8_449_284, "full_over_model": 1.15,
        "full_step": {"tflop_per_s": 46.0}, "model_alone": {"tflop_per_s": 53.0}}))
    (tmp_path / "tiny-tq").mkdir()
    split = {"psnr": {"copied_view": 24.5, "imagined_views": 17.25}, "camera_sensitivity": 0.7}
    (tmp_path / "tiny-tq" / "teacher_quality.json").write_text(json.dumps({"val": split, "heldout": split}))
    _write_log(tmp_path / "small" / "log.jsonl", [[(80, 40.0)]])  # trained, not yet timed or scored

    rows = teacher_shapes.main([str(tmp_path), "tiny", "small", "absent", "--json", str(tmp_path / "summary.json")])
    tiny, small, absent = rows
    assert tiny["steps"] == 300 and tiny["train_s"] == 70.0 and abs(tiny["steps_per_s"] - 300 / 70) < 1e-9
    assert tiny["parameters"] == 8_449_284 and tiny["val"] == {"copied": 24.5, "imagined": 17.25, "sensitivity": 0.7}
    assert small["steps"] == 80 and "val" not in small and "parameters" not in small
    assert absent == {"shape": "absent"}
    assert json.loads((tmp_path / "summary.json").read_text()) == rows

    table = teacher_shapes.markdown(rows).splitlines()
    assert table[2].split("|")[1:-1] == [" tiny ", " 8.4M ", " 300 ", " 1.2 ", " 4.29 ", " 46.0 (1.15) ",
                                         " 24.50 / 17.25 / 0.70 ", " 24.50 / 17.25 / 0.70 "]
    assert table[3].split("|")[1:-1] == [" small ", " - ", " 80 ", " 0.7 ", " 2.00 ", " - ", " - ", " - "]
    assert table[4].count(" - ") == 7
