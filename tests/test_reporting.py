"""Tests for src/run_dir.py and src/reporting.py (fast, no TensorFlow)."""
import io
import os
import random
import subprocess
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
    """A terminal as far as tqdm can tell; remembers each write to check how it starts."""

    def __init__(self):
        super().__init__()
        self.writes = []

    def isatty(self):
        return True

    def write(self, text):
        self.writes.append(text)
        return super().write(text)


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class CountingFloat:
    """A postfix value that counts how often it is turned into a number (a tensor would sync)."""

    def __init__(self, value):
        self.value, self.calls = value, 0

    def __float__(self):
        self.calls += 1
        return self.value


def test_progress_bar_is_silent_on_a_non_tty():
    stream, loss = io.StringIO(), CountingFloat(0.5)
    bar = reporting.ProgressBar(100, "epoch 1", stream=stream)
    for _ in range(100):
        bar.update(loss=loss)
    bar.close()
    assert stream.getvalue() == ""
    assert loss.calls == 0  # nothing drawn, nothing formatted


def test_progress_bar_eta_works_on_a_non_tty():
    clock = FakeClock()
    bar = reporting.ProgressBar(100, stream=io.StringIO(), clock=clock)
    assert bar.eta() == "?"
    for _ in range(25):
        clock.now += 1.0  # one step per second: 75 steps left = 75 s
        bar.update()
    assert bar.eta() == "1m15s"


def test_progress_bar_draws_on_a_tty():
    stream, loss = FakeTTY(), CountingFloat(0.123456)
    bar = reporting.ProgressBar(100, "epoch 1", stream=stream)
    for _ in range(25):
        bar.update(loss=loss)
    assert "\n" not in stream.getvalue()  # redrawn in place
    bar.close()
    last_line = stream.getvalue().split("\r")[-1]
    assert last_line.startswith("epoch 1:") and "25/100" in last_line and "loss=0.1235" in last_line
    assert last_line.endswith("\n")
    assert 1 <= loss.calls < 25  # formatted when drawn, not at every step


def test_progress_bar_writes_only_carriage_return_led_text():
    stream = FakeTTY()
    with reporting.ProgressBar(10, "x", stream=stream) as bar:
        bar.update(3, loss=0.5)
    assert stream.writes and all(text.startswith("\r") for text in stream.writes if text)


def test_progress_bar_leave_false_blanks_the_line():
    stream = FakeTTY()
    with reporting.ProgressBar(10, "gone", stream=stream, leave=False) as bar:
        bar.update(3)
    assert "\n" not in stream.getvalue() and stream.getvalue().split("\r")[-1].strip() == ""


def test_progress_bar_write_keeps_message_off_the_bar_line():
    stream = FakeTTY()
    with reporting.ProgressBar(10, "epoch 1", stream=stream) as bar:
        bar.update(5)
        bar.write("step 5 loss 0.1", file=stream)
    # What is left visible on each line is what follows its last '\r'.
    visible = [line.split("\r")[-1] for line in stream.getvalue().split("\n")]
    assert "step 5 loss 0.1" in visible
    assert "5/10" in stream.getvalue().split("step 5 loss 0.1")[1]  # the bar is drawn again below


def test_progress_bar_write_goes_to_stdout(capsys):
    with reporting.ProgressBar(10, stream=FakeTTY()) as bar:
        bar.write("step 5 loss 0.1")
    assert capsys.readouterr().out == "step 5 loss 0.1\n"


def test_progress_bar_without_total_counts_steps():
    stream = FakeTTY()
    bar = reporting.ProgressBar(0, stream=stream)
    bar.update(7)
    bar.close()
    assert "7step" in stream.getvalue() and "%" not in stream.getvalue()


def test_tee_logs_lines_but_not_the_bar_drawn_on_a_terminal(tmp_path, monkeypatch):
    terminal = FakeTTY()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(sys, "stderr", terminal)
    with Tee(str(tmp_path)):
        bar = reporting.ProgressBar(4, "epoch 1")  # stream=None: sys.stderr, the Tee
        for step in range(4):
            bar.write(f"step {step}")
            bar.update(loss=0.5)
        bar.close()
    assert (tmp_path / "stdout").read_text() == "step 0\nstep 1\nstep 2\nstep 3\n"
    assert "4/4" in terminal.getvalue() and "loss=0.5" in terminal.getvalue()


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
    images = np.zeros((200, 8, 8), np.uint8)
    shapes = {}
    for shown, wrong in (("capped", 200), ("64", 64), ("all", 200)):
        path = tmp_path / f"{shown}.png"
        max_images = 200 if shown == "all" else 64
        assert reporting.save_misclassified_grid(str(path), images[:wrong], [0] * wrong, [1] * wrong, NAMES,
                                                 max_images=max_images)
        shapes[shown] = cv2.imread(str(path)).shape
    assert shapes["capped"] == shapes["64"]  # 8 rows of 8, not 200 images
    assert shapes["all"][0] > shapes["64"][0]


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
    assert np.array_equal(image, cv2.imread(str(tmp_path / "arc.png")))  # BGR, as in the file


def test_save_arc_picture_colours_edges_by_op(tmp_path):
    def count(image, bgr):
        return int((image == bgr).all(axis=2).sum())

    dimgray, tab_red = (105, 105, 105), (40, 39, 214)  # identity, max_pool_3x3 (BGR)
    identity = reporting.save_arc_picture(ALL_IDENTITY * 2, str(tmp_path / "identity.png"))
    max_pool = reporting.save_arc_picture([0, 3, 1, 3] * NUM_CELLS * 2, str(tmp_path / "max.png"))
    assert count(identity, dimgray) > 10 * count(identity, tab_red)  # red: the legend's line only
    assert count(max_pool, tab_red) > 10 * count(max_pool, dimgray)


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


def test_save_curves_returns_the_picture_at_its_size(tmp_path):
    path = tmp_path / "curves.png"
    image = reporting.save_curves(str(path), {"loss": [(1, 2.0), (2, 1.0)]}, "title")
    assert image.shape == (540, 960, 3)
    assert np.array_equal(image, cv2.imread(str(path)))


def test_save_curves_draws_each_series_in_its_own_colour(tmp_path):
    image = reporting.save_curves(str(tmp_path / "curves.png"),
                                  {"a": [(0, 0.0), (1, 1.0)], "b": [(0, 1.0), (1, 0.0)]}, "title")
    blue = (image[..., 0] == 180) & (image[..., 1] == 119) & (image[..., 2] == 31)  # tab:blue
    orange = (image[..., 0] == 14) & (image[..., 1] == 127) & (image[..., 2] == 255)  # tab:orange
    assert blue.sum() > 500 and orange.sum() > 500


def test_draw_curves_with_only_gaps_says_no_data():
    with_data = reporting.draw_curves({"loss": [(0, 1.0), (1, 2.0)]}, "t")
    without = reporting.draw_curves({"loss": [(0, float("nan"))]}, "t")
    assert with_data.shape == without.shape and not np.array_equal(with_data, without)


def test_drawing_writes_nothing_to_stderr(tmp_path):
    # A fresh process: matplotlib's import and first drawings included; a class
    # name in a script DejaVu Sans lacks must not warn either.
    script = (
        "import numpy as np\n"
        "from src import reporting\n"
        "from src.arc import DEFAULT_ARC\n"
        f"out = {str(tmp_path)!r}\n"
        "reporting.save_arc_picture(DEFAULT_ARC, out + '/arc.png')\n"
        "reporting.save_curves(out + '/curves.png', {'a': [(0, 1.0)], 'b': []}, 't', ylabel='y')\n"
        "reporting.save_misclassified_grid(out + '/grid.png', np.zeros((2, 8, 8)), [0, 1], [1, 0],"
        " ['\u732b', 'dog'])\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stderr == ""
    assert sorted(os.listdir(tmp_path)) == ["arc.png", "curves.png", "grid.png"]
