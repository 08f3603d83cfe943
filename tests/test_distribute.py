"""--strategy mirrored over 2 logical CPU devices and multi_worker as 2 local processes:
tiny retrains and searches, the 1-device equivalence of the first step, resume, and a
dead worker. Every distributed run is a subprocess (logical devices and collectives are
configured before TensorFlow starts)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from tests.test_end_to_end import read, tensorboard_events
from tests.test_quiet_logs import noisy_lines

TINY = ("--img_size", "16", "--batch_size", "12", "--child_num_layers", "1",
        "--child_out_filters", "4", "--log_every", "1", "--num_epochs", "1")
SEARCH = ("--child_steps_per_epoch", "2", "--controller_train_steps", "1",
          "--controller_num_aggregate", "3", "--num_lift_arcs", "2", "--num_final_arcs", "2")
# Deterministic steps: dropout and drop-path draw different masks on 2 replicas than on 1.
NO_DROPOUT = ("--child_keep_prob", "1", "--child_drop_path_keep_prob", "1")
RETRAIN, SEARCH_SCRIPT = "main_child_trainer.py", "main_controller_child_trainer.py"


def data_flags(folders):
    return ("--train_data_dir", str(folders / "train"), "--val_data_dir", str(folders / "valid"),
            "--test_data_dir", str(folders / "test"))


def start(script, folders, out, *args, devices=1, env=None):
    """An entry script on `devices` logical CPU devices, as a process."""
    env = dict(os.environ if env is None else env)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the user's log level: the script's own
    command = [sys.executable, os.path.join(ROOT, "tests", "launch_on_cpus.py"), str(devices),
               script, *TINY, *data_flags(folders), "--output_dir", str(out), *args]
    return subprocess.Popen(command, cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(process, timeout=900):
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr[-3000:]
    return stdout, stderr


def first_step_loss(out):
    return tensorboard_events(out)["child/loss"][0]


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(script, folders, out, tmp_path, *args):
    """Two workers on 127.0.0.1, each with its TF_CONFIG and its own TMPDIR (to see that
    worker 1's temporary folder is removed)."""
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes = []
    for index in range(2):
        tmp = tmp_path / f"tmp{index}"
        tmp.mkdir(exist_ok=True)
        env = dict(os.environ, TMPDIR=str(tmp), TF_CONFIG=json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}))
        processes.append(start(script, folders, out, "--strategy", "multi_worker", *args, env=env))
    return processes


def test_mirrored_retrain_matches_one_device_and_resumes(tiny_folders, tmp_path):
    # Sync BN: per-replica BN would normalise each half batch with its own statistics,
    # a different function from 1-device BN over the whole batch.
    args = (*NO_DROPOUT, "--sync_batch_norm")
    one = start(RETRAIN, tiny_folders, tmp_path / "one", *args)
    finish(one)
    two = start(RETRAIN, tiny_folders, tmp_path / "two", "--strategy", "mirrored", *args, devices=2)
    stdout, stderr = finish(two)
    assert "Strategy: mirrored, 2 replicas, 6 images each per step" in stdout
    assert noisy_lines(stderr) == []
    step, loss = first_step_loss(tmp_path / "two")
    assert step == 1 and loss == pytest.approx(first_step_loss(tmp_path / "one")[1], abs=1e-4)
    assert json.loads(read(tmp_path / "two" / "results.json"))["epochs_done"] == 1

    # Resumes under the strategy (per-replica BN this time: the same variables).
    resumed = start(RETRAIN, tiny_folders, tmp_path / "two", "--strategy", "mirrored",
                    "--num_epochs", "2", devices=2)
    stdout, _ = finish(resumed)
    assert "Resumed from" in stdout and "at epoch 1" in stdout
    results = json.loads(read(tmp_path / "two" / "results.json"))
    assert results["epochs_done"] == 2 and 0.0 <= results["test_accuracy"] <= 1.0


def test_mirrored_search(tiny_folders, tmp_path):
    out = tmp_path / "search"
    stdout, _ = finish(start(SEARCH_SCRIPT, tiny_folders, out, "--strategy", "mirrored",
                             *SEARCH, devices=2))
    assert "Strategy: mirrored, 2 replicas" in stdout and "ctrl_step=1" in stdout
    results = json.loads(read(out / "results.json"))
    assert results["epochs_done"] == 1 and results["child_steps"] == 2
    assert len(json.loads(read(out / "arc_history.json"))) == 2  # --num_lift_arcs
    assert results["final_selection"] is True


@pytest.mark.parametrize("script, args", [(RETRAIN, ()), (SEARCH_SCRIPT, SEARCH)],
                         ids=["retrain", "search"])
def test_multi_worker_runs_only_the_chief_writes_and_it_resumes(script, args, tiny_folders, tmp_path):
    out = tmp_path / "out"
    processes = start_workers(script, tiny_folders, out, tmp_path, "--collective_timeout_s",
                              "600", *args)
    outputs = [finish(process) for process in processes]
    for stdout, _ in outputs:
        assert "Strategy: multi_worker, 2 replicas" in stdout
    assert json.loads(read(out / "results.json"))["epochs_done"] == 1
    assert os.listdir(out / "checkpoints")
    # Worker 1 wrote into a temporary folder of its own, and removed it.
    assert [name for name in os.listdir(tmp_path / "tmp1") if name.startswith("enas_worker")] == []
    if script == RETRAIN:  # both workers resume from the chief's checkpoint
        processes = start_workers(script, tiny_folders, out, tmp_path, "--collective_timeout_s",
                                  "600", *args, "--num_epochs", "2")
        outputs = [finish(process) for process in processes]
        for stdout, _ in outputs:
            assert "Resumed from" in stdout and "at epoch 1" in stdout
        assert json.loads(read(out / "results.json"))["epochs_done"] == 2


def test_a_dead_worker_stops_the_other_with_one_line(tiny_folders, tmp_path):
    timeout = 20
    chief, other = start_workers(RETRAIN, tiny_folders, tmp_path / "out", tmp_path,
                                 "--num_epochs", "100", "--collective_timeout_s", str(timeout))
    deadline = time.time() + 600
    while not (tmp_path / "out" / "checkpoints").is_dir():  # training runs: an epoch is done
        assert time.time() < deadline and chief.poll() is None, "the run did not start"
        time.sleep(1)
    other.send_signal(signal.SIGKILL)
    other.wait()
    _, stderr = chief.communicate(timeout=timeout + 300)
    assert chief.returncode == 4, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: another worker died or stopped answering")


def test_multi_worker_without_tf_config_is_a_one_line_error(tiny_folders, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    process = start(RETRAIN, tiny_folders, tmp_path / "out", "--strategy", "multi_worker", env=env)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 2
    assert stderr.strip().splitlines()[-1].startswith(
        "error: --strategy multi_worker needs the TF_CONFIG environment variable")


@pytest.mark.parametrize("value, message", [
    ("not json", "TF_CONFIG is not valid"),
    ('{"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}}',
     "cluster.worker must be a non-empty list"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
     "task worker 1 is not in the cluster"),
])
def test_bad_tf_config_is_named(value, message, monkeypatch):
    from src import distribute
    from src.configs import ConfigError
    monkeypatch.setenv("TF_CONFIG", value)
    with pytest.raises(ConfigError, match=message):
        distribute.read_tf_config()


def test_devices_this_machine_lacks_are_named():
    from src import distribute
    from src.configs import ConfigError
    distribute.check_devices(["/cpu:0"])
    with pytest.raises(ConfigError, match="no device '/gpu:7' here"):
        distribute.check_devices(["/gpu:7"])
