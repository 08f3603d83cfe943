"""--deterministic: two runs with the same seed write identical results.

Each run is a process of its own: op determinism cannot be turned off again in a
process, and the two runs of a pair go side by side to halve the wait.
"""
import json
import os
import subprocess
import sys

from tests.conftest import ROOT

TINY = ("--img_size", "16", "--batch_size", "12", "--child_num_layers", "2",
        "--child_out_filters", "4", "--log_every", "100", "--seed", "3", "--deterministic")


def data_flags(folders):
    return ("--train_data_dir", str(folders / "train"), "--val_data_dir", str(folders / "valid"),
            "--test_data_dir", str(folders / "test"))


def run_twice(script, out_dirs, *args):
    """Runs the script into each folder at once; fails with the stderr of a failed run."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    runs = [subprocess.Popen([sys.executable, os.path.join(ROOT, script), *args,
                              "--output_dir", str(out)], cwd=ROOT, env=env, text=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for out in out_dirs]
    for run in runs:
        _, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, stderr[-2000:]


def read(path):
    with open(path) as f:
        return f.read()


def test_two_searches_with_the_same_seed_write_identical_arcs(tiny_folders, tmp_path):
    outs = [tmp_path / "a", tmp_path / "b"]
    run_twice("main_controller_child_trainer.py", outs, *TINY, *data_flags(tiny_folders),
              "--num_epochs", "2", "--child_steps_per_epoch", "2", "--controller_train_steps", "2",
              "--controller_num_aggregate", "2", "--num_lift_arcs", "1")
    a, b = outs
    assert read(a / "best_arc.txt") == read(b / "best_arc.txt")
    assert read(a / "arc_history.json") == read(b / "arc_history.json")
    assert len(json.loads(read(a / "arc_history.json"))) == 20
    results = [json.loads(read(out / "results.json")) for out in outs]
    assert results[0]["baseline"] == results[1]["baseline"] != 0.0


def test_two_retrains_with_the_same_seed_write_identical_results(tiny_folders, tmp_path):
    outs = [tmp_path / "a", tmp_path / "b"]
    run_twice("main_child_trainer.py", outs, *TINY, *data_flags(tiny_folders), "--num_epochs", "2")
    a, b = outs
    results = [json.loads(read(out / "results.json")) for out in outs]
    assert results[0]["test_accuracy"] == results[1]["test_accuracy"]
    assert read(a / "misclassified.csv") == read(b / "misclassified.csv")
    losses = [[e["train_loss"] for e in json.loads(read(out / "history.json"))["epochs"]]
              for out in outs]
    assert losses[0] == losses[1]
