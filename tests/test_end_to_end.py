"""End-to-end runs on a few real MNIST images: the loops, the output folder, the CLI."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf
from tensorboard.compat.proto import event_pb2

from src import arc as arc_lib
from src import fixed_train, search
from src.configs import (ChildConfig, ControllerConfig, DataConfig, FixedTrainConfig, OptimConfig,
                         RunConfig, SearchConfig)
from tests.conftest import ROOT

def data_config(folders, **overrides):
    base = dict(train_dir=str(folders / "train"), valid_dir=str(folders / "valid"),
                test_dir=str(folders / "test"), channel=1, img_size=16, batch_size=12,
                eval_batch_size=12)
    base.update(overrides)
    return DataConfig(**base)


def child_config(**overrides):
    base = dict(num_layers=2, out_filters=4, keep_prob=0.9)
    base.update(overrides)
    return ChildConfig(**base)


def fixed_config(folders, output_dir, num_epochs, arc=arc_lib.DEFAULT_ARC):
    return FixedTrainConfig(
        arc=arc, data=data_config(folders), child=child_config(),
        optim=OptimConfig(lr_max=0.05, lr_min=0.001),
        run=RunConfig(output_dir=str(output_dir), num_epochs=num_epochs, log_every=2),
        flags={"test": True})


def read(path):
    with open(path) as f:
        return f.read()


def tensorboard_events(run_dir):
    """{tag: [(step, value)]} from a run's TensorBoard event files, read back as TFRecords
    with TensorBoard's Event proto; an image's value is its PNG width."""
    events = {}
    folder = os.path.join(run_dir, "tensorboard")
    for name in sorted(os.listdir(folder)):
        for record in tf.data.TFRecordDataset(os.path.join(folder, name)):
            event = event_pb2.Event.FromString(record.numpy())
            for value in event.summary.value:
                array = tf.make_ndarray(value.tensor)
                number = float(array) if array.ndim == 0 else int(array[0])  # image: [w, h, png...]
                events.setdefault(value.tag, []).append((event.step, number))
    return events


def test_fixed_run_trains_writes_everything_and_resumes(tiny_folders, tmp_path):
    out = tmp_path / "fixed"
    results = fixed_train.run(fixed_config(tiny_folders, out, num_epochs=4))
    assert results["epochs_done"] == 4
    assert 0.0 <= results["test_accuracy"] <= 1.0
    history = json.loads(read(out / "history.json"))["epochs"]
    # 16 steps on 48 images are too few for a loss that falls under every data order
    # (test_optim_and_steps shows the step learning); here: finite, and one per epoch.
    losses = [epoch["train_loss"] for epoch in history]
    assert len(losses) == 4 and all(0.0 < loss < 10.0 for loss in losses)
    log = read(out / "stdout")
    assert re.search(r"Model has \d+ params", log) and "Aux head uses" in log
    assert re.search(r"valid_accuracy: 0\.\d{4}", log) and re.search(r"test_accuracy: 0\.\d{4}", log)
    assert "ch_step=" in log and "|g|=" in log
    misclassified = read(out / "misclassified.csv").splitlines()
    assert misclassified[0] == "path,true_class,predicted_class"
    assert len(misclassified) - 1 == round((1 - results["test_accuracy"]) * 12)
    for picture in ("accuracy.png", "loss.png", "arc.png"):
        assert os.path.getsize(out / picture) > 0
    assert json.loads(read(out / "results.json"))["params"] == results["params"]
    events = tensorboard_events(out)
    # 48 images in batches of 12: 4 steps an epoch, 16 in 4 epochs.
    assert [step for step, _ in events["child/loss"]] == list(range(1, 17))
    for tag in ("child/accuracy", "child/learning_rate", "child/grad_norm"):
        assert len(events[tag]) == 16
    assert events["epoch/test_accuracy"][-1] == (4, pytest.approx(results["test_accuracy"]))
    assert [step for step, _ in events["epoch/valid_accuracy"]] == [1, 2, 3, 4]
    assert events["arc"][0][1] > 0

    # Rerunning with more epochs resumes at epoch 5; the earlier log is kept.
    results = fixed_train.run(fixed_config(tiny_folders, out, num_epochs=5))
    assert results["epochs_done"] == 5
    assert len(json.loads(read(out / "history.json"))["epochs"]) == 5
    log = read(out / "stdout")
    assert "Resumed from" in log and "at epoch 4" in log
    assert log.count("Model has") == 2


def test_zero_epochs_builds_counts_and_evaluates(tiny_folders, tmp_path):
    results = fixed_train.run(fixed_config(tiny_folders, tmp_path / "zero", num_epochs=0))
    assert results["epochs_done"] == 0 and results["params"] > 0
    assert results["valid_accuracy"] is not None
    assert not any(name.startswith("ckpt") for name in os.listdir(tmp_path / "zero" / "checkpoints")
                   ) if os.path.isdir(tmp_path / "zero" / "checkpoints") else True


def search_config(folders, output_dir, num_epochs):
    return SearchConfig(
        data=data_config(folders), child=child_config(),
        optim=OptimConfig(lr_max=0.05, lr_min=0.0005, l2_reg=1e-4),
        controller=ControllerConfig(train_steps=2, num_aggregate=2, num_lift_arcs=3,
                                    num_final_arcs=4),
        run=RunConfig(output_dir=str(output_dir), num_epochs=num_epochs, log_every=2),
        # What the search script would record: the data flags --from_search reads back.
        flags={"train_data_dir": str(folders / "train"), "val_data_dir": str(folders / "valid"),
               "test_data_dir": str(folders / "test"), "img_size": 16, "channel": 1})


def run_script(script, *args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_search_writes_best_arc_retrains_it_and_resumes(tiny_folders, tmp_path):
    out = tmp_path / "search"
    first = search.run(search_config(tiny_folders, out, num_epochs=1))
    best = read(out / "best_arc.txt").strip()
    arc_lib.parse_arc(best)  # one valid line of 40 ints
    assert best == first["best_arc"]
    assert first["final_selection"] is True
    history = json.loads(read(out / "arc_history.json"))
    assert len(history) == 3  # the policy's arcs of the one evaluation
    final = json.loads(read(out / "final_selection.json"))
    scores = {entry["arc"]: entry["selection_accuracy"] for entry in final["candidates"]}
    assert len(scores) == first["final_candidates"] <= 3 + 4
    assert all(entry["arc"] in scores for entry in history)  # every arc seen is a candidate
    assert first["best_arc_selection_accuracy"] == max(scores.values()) == scores[best]
    assert [entry["arc"] for entry in first["top_arcs"]][0] == best
    assert 0.0 <= first["best_arc_report_accuracy"] <= 1.0
    summary = read(out / "summary.md")
    assert best in summary and "--from_search" in summary and "best_arc.png" in summary
    log = read(out / "stdout")
    assert "Here are 10 architectures" in log and "ctrl_step=" in log and "valid_accuracy:" in log
    events = tensorboard_events(out)
    assert len(events["child/loss"]) == first["child_steps"]
    assert [step for step, _ in events["controller/reward"]] == [1, 2]  # 2 updates
    for tag in ("controller/baseline", "controller/entropy", "epoch/valid_accuracy",
                "epoch/controller_lift", "best_arc"):
        assert tag in events, tag
    assert events["epoch/controller_lift"][0][1] == pytest.approx(first["controller_lift"])

    # main_child_trainer.py retrains it from the search folder, on the search's data.
    retrain = run_script("main_child_trainer.py", "--from_search", str(out),
                         "--child_num_layers", "2", "--child_out_filters", "4", "--batch_size", "12",
                         "--num_epochs", "1", "--output_dir", str(tmp_path / "retrain"))
    assert retrain.returncode == 0, retrain.stderr[-2000:]
    assert json.loads(read(tmp_path / "retrain" / "results.json"))["arc"] == best

    # Resuming continues at epoch 2 with the baseline the first epoch ended with.
    second = search.run(search_config(tiny_folders, out, num_epochs=2))
    assert second["epochs_done"] == 2
    resumed = re.search(r"Resumed from .* at epoch (\d+), baseline (-?[\d.]+)", read(out / "stdout"))
    assert resumed and resumed.group(1) == "1"
    assert float(resumed.group(2)) == pytest.approx(first["baseline"], abs=1e-6)
    assert len(json.loads(read(out / "arc_history.json"))) == 2 * 3


@pytest.mark.parametrize("args, message", [
    (["--child_fixed_arc", "0 0 1"], "error: arc has 3 integers, expected 40"),
    (["--child_fixed_arc", arc_lib.DEFAULT_ARC.replace("1 2 1 3", "1 7 1 3", 1)], "op 7 must be"),
    (["--channel", "2"], "error: channel must be 1 (grey) or 3 (colour), got 2"),
    (["--train_data_dir", "/no/such/folder"], "/no/such/folder"),
    (["--child_num_reductions", "4"], "--child_num_reductions must be 2 or 3"),
    (["--child_lr_T_0", "0"], "--child_lr_T_0 must be >= 1"),
])
def test_bad_input_stops_with_one_line_and_exit_code_2(args, message, tmp_path):
    result = run_script("main_child_trainer.py", "--num_epochs", "0",
                        "--output_dir", str(tmp_path / "out"), *args)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last
    assert "Traceback" not in result.stderr


def test_class_mismatch_between_splits_is_reported(tiny_folders, tmp_path):
    valid = tmp_path / "valid"
    shutil.copytree(tiny_folders / "valid", valid)
    shutil.rmtree(valid / "2")
    result = run_script("main_controller_child_trainer.py", "--num_epochs", "0",
                        "--train_data_dir", str(tiny_folders / "train"), "--val_data_dir", str(valid),
                        "--test_data_dir", str(tiny_folders / "test"),
                        "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in result.stderr
