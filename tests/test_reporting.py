"""Tests for src/run_dir.py and src/reporting.py (fast, no TensorFlow)."""
import io
import os
import random
import sys

import cv2
import numpy as np
import pytest

from src import reporting
from src.arc import DEFAULT_ARC, NUM_CELLS, ArcError, random_arc
from src.run_dir import (OutputDirError, Tee, prepare_output_dir, read_json, write_json_atomic,
                         write_text_atomic)

# ---------------------------------------------------------------------------
# run_dir


def test_prepare_output_dir_creates_parents(tmp_path):
    path = tmp_path / "a" / "b" / "run"
    assert prepare_output_dir(str(path), reset=False) is False
    assert path.is_dir()


def test_prepare_output_dir_reports_results_json(tmp_path):
    (tmp_path / "results.json").write_text("{}")
    assert prepare_output_dir(str(tmp_path), reset=False) is True


def test_prepare_output_dir_reports_checkpoint(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    assert prepare_output_dir(str(tmp_path), reset=False) is False  # empty folder: nothing to resume
    (tmp_path / "checkpoints" / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"')
    assert prepare_output_dir(str(tmp_path), reset=False) is True


def test_prepare_output_dir_keeps_data_without_reset(tmp_path):
    keep = tmp_path / "notes.txt"
    keep.write_text("precious")
    prepare_output_dir(str(tmp_path), reset=False)
    assert keep.read_text() == "precious"


def test_prepare_output_dir_deletes_with_reset(tmp_path, capsys):
    run = tmp_path / "run"
    prepare_output_dir(str(run), reset=False)
    (run / "results.json").write_text("{}")
    assert prepare_output_dir(str(run), reset=True) is False
    assert run.is_dir() and not os.listdir(run)
    assert "delet" in capsys.readouterr().out


def test_prepare_output_dir_refuses_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(OutputDirError, match="not a directory"):
        prepare_output_dir(str(path), reset=True)
    assert path.read_text() == "x"


def test_tee_appends_across_runs_and_restores_streams(tmp_path, capsys):
    stdout_before, stderr_before = sys.stdout, sys.stderr
    with Tee(str(tmp_path)):
        print("first run")
        print("an error", file=sys.stderr)
        # Line-buffered: the file is current while the run goes on.
        assert "first run" in (tmp_path / "stdout").read_text()
    assert sys.stdout is stdout_before and sys.stderr is stderr_before
    with Tee(str(tmp_path)):
        print("second run")
    log = (tmp_path / "stdout").read_text()
    assert log == "first run\nan error\nsecond run\n"
    captured = capsys.readouterr()
    assert "first run" in captured.out and "an error" in captured.err


def test_tee_keeps_progress_redraws_out_of_the_file(tmp_path):
    with Tee(str(tmp_path)):
        sys.stderr.write("\r 50% [####....]")
        print("log line")
    assert (tmp_path / "stdout").read_text() == "log line\n"


def test_write_json_atomic_is_readable_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "results.json"
    write_json_atomic(str(path), {"b": 1, "a": [1.5, "x"], "n": np.float32(0.25), "v": np.arange(2)})
    write_json_atomic(str(path), {"b": 2, "a": [1.5, "x"], "n": np.float32(0.25), "v": np.arange(2)})
    assert os.listdir(tmp_path) == ["results.json"]
    assert read_json(str(path)) == {"a": [1.5, "x"], "b": 2, "n": 0.25, "v": [0, 1]}
    text = path.read_text()
    assert text.index('"a"') < text.index('"b"') and '\n  "a"' in text  # sorted, indent=2


def test_write_json_atomic_failure_keeps_old_file(tmp_path):
    path = tmp_path / "results.json"
    write_json_atomic(str(path), {"ok": True})
    with pytest.raises(TypeError):
        write_json_atomic(str(path), {"bad": object()})
    assert read_json(str(path)) == {"ok": True}
    assert os.listdir(tmp_path) == ["results.json"]


def test_write_text_atomic_and_read_json_default(tmp_path):
    write_text_atomic(str(tmp_path / "a.txt"), "hello\n")
    assert (tmp_path / "a.txt").read_text() == "hello\n"
    assert read_json(str(tmp_path / "missing.json"), default={"x": 1}) == {"x": 1}
    assert read_json(str(tmp_path / "missing.json")) is None
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json"):
        read_json(str(tmp_path / "broken.json"), default={})


# ---------------------------------------------------------------------------
# ProgressBar and durations


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (12.2, "12s"), (59.6, "1m00s"), (185, "3m05s"), (3720, "1h02m"), (90000, "25h00m"),
    (float("nan"), "?"), (None, "?"), (-1, "?")])
def test_format_duration(seconds, text):
    assert reporting.format_duration(seconds) == text


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_progress_bar_is_silent_on_a_non_tty():
    stream = io.StringIO()
    bar = reporting.ProgressBar(100, "epoch 1", stream=stream)
    for _ in range(100):
        bar.update(loss=0.5)
    bar.close()
    assert stream.getvalue() == ""


def test_progress_bar_draws_on_a_tty_with_eta(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    stream, clock = FakeTTY(), FakeClock()
    bar = reporting.ProgressBar(100, "epoch 1", stream=stream, clock=clock)
    for _ in range(25):
        clock.now += 1.0  # one step per second: 75 steps left = 75 s
        bar.update(loss=0.123456)
    lines = stream.getvalue().split("\r")[1:]
    last = lines[-1]
    assert "25/100" in last and "eta 1m15s" in last and "elapsed 25s" in last
    assert "loss=0.1235" in last and "1.0 step/s" in last
    assert "\n" not in stream.getvalue()
    bar.close()
    assert stream.getvalue().endswith("\n")


def test_progress_bar_keeps_numbers_on_a_narrow_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "70")
    stream, clock = FakeTTY(), FakeClock()
    bar = reporting.ProgressBar(100, "epoch 12", stream=stream, clock=clock)
    clock.now += 1
    bar.update(loss=0.25)
    last = stream.getvalue().split("\r")[-1]
    assert len(last) <= 69 and "#" not in last and "loss=0.25" in last


def test_progress_bar_redraws_at_most_five_times_a_second():
    stream, clock = FakeTTY(), FakeClock()
    bar = reporting.ProgressBar(1000, stream=stream, clock=clock)
    for _ in range(1000):
        clock.now += 0.001  # 1000 steps in one second
        bar.update()
    assert stream.getvalue().count("\r") <= 1 + 5 + 1  # initial draw + ~5 per second


def test_progress_bar_blanks_leftovers_of_longer_lines():
    stream, clock = FakeTTY(), FakeClock()
    bar = reporting.ProgressBar(10, stream=stream, clock=clock)
    clock.now += 1
    bar.update(note="a long postfix value")
    clock.now += 1
    bar.update(note="x")
    first, second = stream.getvalue().split("\r")[-2:]
    assert len(second) >= len(first)


def test_progress_bar_write_keeps_message_off_the_bar_line(capsys):
    stream, clock = FakeTTY(), FakeClock()
    with reporting.ProgressBar(10, stream=stream, clock=clock) as bar:
        bar.write("step 5 loss 0.1")
    assert capsys.readouterr().out == "step 5 loss 0.1\n"


def test_progress_bar_without_total_counts_steps():
    stream, clock = FakeTTY(), FakeClock()
    bar = reporting.ProgressBar(0, stream=stream, clock=clock)
    clock.now += 1
    bar.update(7)
    assert "7 steps" in stream.getvalue()


# ---------------------------------------------------------------------------
# Misclassified examples

NAMES = ["cat", "dog", "bird"]


def test_write_misclassified_lists_only_wrong_rows(tmp_path):
    path = tmp_path / "misclassified.csv"
    paths = ["a.png", b"b.png", "c.png", "d.png"]
    count = reporting.write_misclassified(str(path), paths, np.array([0, 1, 2, 1]), [0, 2, 1, 1], NAMES)
    assert count == 2
    assert path.read_text().splitlines() == [
        "path,true_class,predicted_class", "b.png,dog,bird", "c.png,bird,dog"]


def test_write_misclassified_with_none_wrong_writes_the_header(tmp_path):
    path = tmp_path / "misclassified.csv"
    assert reporting.write_misclassified(str(path), ["a"], [1], [1], NAMES) == 0
    assert path.read_text() == "path,true_class,predicted_class\n"


@pytest.mark.parametrize("shape, dtype", [
    ((6, 28, 28), np.uint8), ((6, 28, 28, 1), np.float32), ((6, 32, 32, 3), np.uint8),
    ((6, 100, 80, 3), np.float32)])
def test_save_misclassified_grid(tmp_path, shape, dtype):
    images = np.random.default_rng(0).random(shape)
    images = (images * 255).astype(np.uint8) if dtype == np.uint8 else images.astype(dtype)
    path = tmp_path / "grid.png"
    assert reporting.save_misclassified_grid(str(path), images, [0, 1, 2, 0, 1, 2], [1, 1, 0, 0, 2, 2], NAMES)
    grid = cv2.imread(str(path))
    assert grid is not None and grid.shape[0] >= 64 and grid.shape[1] >= 3 * 64


def test_save_misclassified_grid_keeps_rgb_colours(tmp_path):
    images = np.zeros((1, 8, 8, 3), np.uint8)
    images[..., 0] = 255  # pure red in RGB
    path = tmp_path / "grid.png"
    reporting.save_misclassified_grid(str(path), images, [0], [1], NAMES)
    grid = cv2.imread(str(path))
    reds = (grid[..., 2] == 255) & (grid[..., 1] == 0) & (grid[..., 0] == 0)
    assert reds.sum() >= 64 * 64  # upscaled to at least 64 px, still red after BGR


def test_save_misclassified_grid_without_errors_writes_nothing(tmp_path):
    path = tmp_path / "grid.png"
    assert not reporting.save_misclassified_grid(str(path), np.zeros((2, 8, 8)), [1, 2], [1, 2], NAMES)
    assert not path.exists()


def test_save_misclassified_grid_caps_the_count(tmp_path):
    path = tmp_path / "grid.png"
    images = np.zeros((200, 8, 8), np.uint8)
    assert reporting.save_misclassified_grid(str(path), images, [0] * 200, [1] * 200, NAMES, max_images=64)
    grid = cv2.imread(str(path))
    assert grid.shape[0] < 9 * (64 + 30) + 40  # 8 rows of 8, not 200 images


# ---------------------------------------------------------------------------
# Cell pictures


def test_save_arc_picture(tmp_path):
    path = tmp_path / "arc.png"
    reporting.save_arc_picture(DEFAULT_ARC, str(path))
    image = cv2.imread(str(path))
    assert image is not None
    height, width = image.shape[:2]
    assert 1200 <= width <= 1600 and 600 <= height <= 800
    assert (image < 250).any(axis=2).mean() > 0.02  # something is drawn


def test_save_arc_picture_accepts_int_sequences(tmp_path):
    arc = [int(v) for v in DEFAULT_ARC.split()]
    image = reporting.save_arc_picture(arc, str(tmp_path / "arc.png"))
    assert image.dtype == np.uint8 and image.shape[2] == 3


def test_save_arc_picture_rejects_bad_arcs(tmp_path):
    with pytest.raises(ArcError):
        reporting.save_arc_picture([0] * 39, str(tmp_path / "arc.png"))  # wrong length
    with pytest.raises(ArcError):
        reporting.save_arc_picture([0, 5] + [0] * 38, str(tmp_path / "arc.png"))  # op 5
    assert not (tmp_path / "arc.png").exists()


ALL_IDENTITY = [0, 4, 1, 4] * NUM_CELLS
# Node k reads k - 1 and k - 2: every id but the last node is used.
EVERY_ID_USED = [v for k in range(2, NUM_CELLS + 2) for v in (k - 2, 0, k - 1, 1)]


@pytest.mark.parametrize("cell", [ALL_IDENTITY, EVERY_ID_USED, [0, 3, 0, 2] * NUM_CELLS,
                                  [0, 0, 1, 1], [1, 2, 0, 3, 2, 4, 2, 4]])
def test_draw_cell_handles_wirings(cell):
    image = reporting.draw_cell(cell, "cell")
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert (image < 250).any()


def test_draw_cell_every_random_wiring():
    rng = random.Random(0)
    for _ in range(30):
        arc = random_arc(rng)
        assert reporting.draw_cell(arc[:4 * NUM_CELLS], "normal").shape[0] > 0


def test_draw_cell_rejects_bad_cells():
    with pytest.raises(ArcError):
        reporting.draw_cell([2, 0, 0, 0], "bad id")
    with pytest.raises(ArcError):
        reporting.draw_cell([0, 0, 1], "bad length")


# ---------------------------------------------------------------------------
# Curves


@pytest.mark.parametrize("series", [
    {"valid_acc": [(1, 0.5), (2, 0.6), (3, 0.65)], "test_acc": [(1, 0.48), (2, 0.59), (3, 0.66)]},
    {"loss": [(1, 2.3)]},
    {"loss": []},
    {},
    {"flat": [(0, 1.0), (5, 1.0)], "nan": [(0, float("nan")), (1, 2.0), (2, float("inf")), (3, 1.0)]},
    {"big": [(e, 1e6 * e) for e in range(200)], "negative": [(e, -0.001 * e) for e in range(200)]},
])
def test_save_curves_writes_a_readable_png(tmp_path, series):
    path = tmp_path / "curves.png"
    reporting.save_curves(str(path), series, "title", ylabel="value")
    image = cv2.imread(str(path))
    assert image is not None and image.shape[0] > 100 and (image < 250).any()


def test_nice_ticks_are_round_and_cover_the_range():
    ticks = reporting._nice_ticks(0.47, 0.91, max_ticks=7)
    assert ticks[0] <= 0.47 and ticks[-1] >= 0.91 and len(ticks) <= 8
    assert [reporting._tick_text(t, ticks[1] - ticks[0]) for t in ticks[:2]] == ["0.4", "0.5"]
