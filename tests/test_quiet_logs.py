"""Tiny search and retrain runs print no warnings: stderr holds nothing that reads
WARNING or looks like a TensorFlow E/W log line, apart from TensorFlow's start-up
lines (printed on import, whatever the code does). The search covers shared-child
training, the controller phase and the evaluation; the retrain the fixed child."""
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# Printed on import by each of TensorFlow's libraries (with an I-line about oneDNN).
STARTUP_LINE = ("WARNING: All log messages before absl::InitializeLog() is called are written "
                "to STDERR")
NOISE = re.compile(r"WARNING|^[EW]\d{4} ")


def noisy_lines(stderr: str):
    """The lines of stderr that warn or log an error, the start-up line excepted."""
    return [line for line in stderr.splitlines() if NOISE.search(line) and line != STARTUP_LINE]


def run_cli(script, folders, output_dir, *args):
    """Runs a CLI script on the tiny folders with the log level a user gets (the script's)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    command = [sys.executable, os.path.join(ROOT, script), "--output_dir", str(output_dir),
               "--train_data_dir", str(folders / "train"), "--val_data_dir", str(folders / "valid"),
               "--test_data_dir", str(folders / "test"), "--img_size", "16", "--batch_size", "16",
               "--child_num_layers", "2", "--child_out_filters", "4", "--num_epochs", "1", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_noisy_lines_keeps_warnings_and_drops_startup_lines():
    stderr = "\n".join([
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1795896882.074627    2801 port.cc:153] oneDNN custom operations are on. ...",
        "WARNING:tensorflow:5 out of the last 145 calls to <bound method ...> triggered retracing",
        "W1128 20:14:48.507725 139781359369088 backprop.py:875] The dtype of the watched tensor",
        "E0000 00:00:1795896912.662643    2801 util.cc:131] oneDNN supports DT_INT32 only ...",
        "epoch 1 child: 100%|####| 3/3",
    ])
    assert [line[:8] for line in noisy_lines(stderr)] == ["WARNING:", "W1128 20", "E0000 00"]


@pytest.mark.parametrize("script, args", [
    ("main_controller_child_trainer.py", ["--child_steps_per_epoch", "2",
                                          "--controller_train_steps", "1",
                                          "--controller_num_aggregate", "2",
                                          "--num_lift_arcs", "2", "--num_final_arcs", "2"]),
    ("main_child_trainer.py", []),
], ids=["search", "retrain"])
def test_tiny_run_prints_no_warning(script, args, tiny_folders, tmp_path):
    result = run_cli(script, tiny_folders, tmp_path / "out", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert noisy_lines(result.stderr) == []
