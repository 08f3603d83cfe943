"""Kill it anywhere, resume exactly, one run per folder, faults lose nothing.

The kill tests use failpoints (src/run_dir.py, ENAS_FAILPOINT): the run SIGKILLs
itself at a named point, then the same command reruns to the end.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from src import arc as arc_lib
from src import checkpoints, fixed_train, run_dir
from src.configs import OptimConfig
from src.run_dir import OutputDirError
from src.optim import NesterovSGD
from tests.conftest import ROOT, without_tf_startup_lines
from tests.test_end_to_end import fixed_config, read

TINY = ("--img_size", "16", "--batch_size", "12", "--child_num_layers", "1",
        "--child_out_filters", "4", "--log_every", "1", "--seed", "5")
SEARCH = ("--child_steps_per_epoch", "2", "--controller_train_steps", "2",
          "--controller_num_aggregate", "2", "--num_lift_arcs", "2", "--num_final_arcs", "2")


def data_flags(folders):
    return ("--train_data_dir", str(folders / "train"), "--val_data_dir", str(folders / "valid"),
            "--test_data_dir", str(folders / "test"))


def start(script, out, *args, failpoint=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop(run_dir.FAILPOINT_ENV, None)
    if failpoint:
        env[run_dir.FAILPOINT_ENV] = failpoint
    return subprocess.Popen([sys.executable, os.path.join(ROOT, script), *args,
                             "--output_dir", str(out)], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def run(script, out, *args, failpoint=None):
    process = start(script, out, *args, failpoint=failpoint)
    _, stderr = process.communicate(timeout=600)
    return process.returncode, stderr


def checkpointed_epoch(out) -> int:
    latest = tf.train.latest_checkpoint(str(out / "checkpoints"))
    return int(latest.rsplit("-", 1)[1]) if latest else 0


def assert_consistent(out, search: bool):
    """Every output file parses; each epoch is recorded once, none past the checkpoint;
    best_arc.txt names an arc scored in a checkpointed epoch, or a candidate of the final
    selection; results.json claims the final selection only once its files are there."""
    done = checkpointed_epoch(out)
    if os.path.exists(out / "history.json"):
        epochs = [e["epoch"] for e in json.loads(read(out / "history.json"))["epochs"]]
        assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) <= done
    results = json.loads(read(out / "results.json")) if os.path.exists(out / "results.json") else {}
    if search and os.path.exists(out / "best_arc.txt"):
        best = read(out / "best_arc.txt").strip()
        arc_lib.parse_arc(best)
        scored = json.loads(read(out / "arc_history.json"))
        final = (json.loads(read(out / "final_selection.json"))
                 if os.path.exists(out / "final_selection.json") else {"candidates": []})
        assert (any(e["arc"] == best and e["epoch"] <= done for e in scored)
                or best in [e["arc"] for e in final["candidates"]])
        if results.get("final_selection"):
            assert best == results["best_arc"] == final["best_arc"]


@pytest.mark.parametrize("script, extra, points, epochs", [
    ("main_controller_child_trainer.py", SEARCH,
     ["traced", "child_step@2", "controller_update", "before_checkpoint@2", "after_checkpoint",
      "replace best_arc.txt@2", "final_selection"], 3),
    ("main_child_trainer.py", (),
     ["child_step@3", "before_checkpoint@2", "after_checkpoint", "replace results.json@2"], 3),
])
def test_killed_anywhere_the_rerun_resumes_and_finishes(script, extra, points, epochs,
                                                        tiny_folders, tmp_path):
    out = tmp_path / "run"
    args = (*TINY, *data_flags(tiny_folders), *extra, "--num_epochs", str(epochs))
    search = script.startswith("main_controller")
    for point in points:
        before = checkpointed_epoch(out) if out.exists() else 0
        code, stderr = run(script, out, *args, failpoint=point)
        assert code == -signal.SIGKILL, f"{point}: {stderr[-1500:]}"
        assert_consistent(out, search)
        assert checkpointed_epoch(out) - before <= 2  # at most the epoch in progress is lost
    code, stderr = run(script, out, *args)
    assert code == 0, stderr[-2000:]
    assert_consistent(out, search)
    history = json.loads(read(out / "history.json"))["epochs"]
    assert [e["epoch"] for e in history] == list(range(1, epochs + 1))
    assert json.loads(read(out / "results.json"))["epochs_done"] == epochs
    assert not [name for name in os.listdir(out) if name.endswith(".tmp")]
    assert not os.path.exists(out / run_dir.LOCK_FILE)


@pytest.mark.parametrize("script, extra, same", [
    ("main_controller_child_trainer.py", SEARCH, ("best_arc.txt", "arc_history.json")),
    ("main_child_trainer.py", (), ("misclassified.csv",)),
])
def test_same_seed_runs_match_and_a_resumed_run_ends_as_an_uninterrupted_one(
        script, extra, same, tiny_folders, tmp_path):
    """--deterministic: two runs with the same seed write identical results, and so does
    a third one killed after epoch 2 and rerun."""
    args = (*TINY, *data_flags(tiny_folders), *extra, "--num_epochs", "4", "--deterministic")
    outs = [tmp_path / "a", tmp_path / "b", tmp_path / "resumed"]
    runs = [start(script, outs[0], *args), start(script, outs[1], *args),
            start(script, outs[2], *args, failpoint="after_checkpoint@2")]
    codes = [process.wait(timeout=600) for process in runs]
    assert codes == [0, 0, -signal.SIGKILL]
    code, stderr = run(script, outs[2], *args)
    assert code == 0, stderr[-2000:]
    for name in same:
        assert read(outs[0] / name) == read(outs[1] / name) == read(outs[2] / name), name
    results = [json.loads(read(out / "results.json")) for out in outs]
    key = "baseline" if "baseline" in results[0] else "test_accuracy"
    assert results[0][key] == results[1][key] == results[2][key]
    losses = [[e["train_loss"] for e in json.loads(read(out / "history.json"))["epochs"]]
              for out in outs]
    assert losses[0] == losses[1] == losses[2]


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_after_a_step_and_the_rerun_resumes(signum, code, tiny_folders, tmp_path):
    out = tmp_path / "run"
    args = (*TINY, *data_flags(tiny_folders), "--num_epochs", "30")
    process = start("main_child_trainer.py", out, *args)
    log = out / "stdout"
    deadline = time.time() + 300
    while not (log.exists() and "ch_step=" in read(log)):  # training has started
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.2)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == code
    assert without_tf_startup_lines(stderr)[-1].startswith(
        f"stopped by {signal.Signals(signum).name} after a finished step")
    assert not os.path.exists(out / run_dir.LOCK_FILE)
    rerun, stderr = run("main_child_trainer.py", out, *args[:-1], "1")
    assert rerun == 0, stderr[-2000:]


def test_a_diverging_loss_stops_with_exit_3_and_keeps_the_last_good_checkpoint(tiny_folders,
                                                                               tmp_path):
    out = tmp_path / "run"
    args = (*TINY, *data_flags(tiny_folders))
    assert run("main_child_trainer.py", out, *args, "--num_epochs", "1")[0] == 0
    checkpoint = out / "checkpoints" / "ckpt-1.index"
    saved = checkpoint.read_bytes()
    code, stderr = run("main_child_trainer.py", out, *args, "--num_epochs", "4",
                       "--child_lr_max", "1e30", "--child_grad_bound", "0")
    assert code == 3
    last = without_tf_startup_lines(stderr)[-1]
    assert last.startswith("error: the loss became") and "at epoch 2, step" in last
    assert "--child_lr_max" in last
    assert checkpointed_epoch(out) == 1 and checkpoint.read_bytes() == saved


def test_a_second_run_on_a_folder_in_use_exits_2_naming_the_holder(tiny_folders, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / run_dir.LOCK_FILE).write_text(f"{os.getpid()} {socket.gethostname()}\n")
    code, stderr = run("main_child_trainer.py", out, *TINY, *data_flags(tiny_folders),
                       "--num_epochs", "1")
    assert code == 2
    assert without_tf_startup_lines(stderr) == [
        f"error: {out} is in use by process {os.getpid()} on {socket.gethostname()} "
        f"(lock {out / run_dir.LOCK_FILE}); wait for it to end, or choose another --output_dir"]


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, capsys):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    (tmp_path / run_dir.LOCK_FILE).write_text(f"{dead_pid} {socket.gethostname()}\n")
    (tmp_path / ".results.json.abc.tmp").write_text("left by a killed run")
    with run_dir.RunLock(str(tmp_path)):
        assert read(tmp_path / run_dir.LOCK_FILE).split()[0] == str(os.getpid())
        assert not (tmp_path / ".results.json.abc.tmp").exists()
        with pytest.raises(OutputDirError, match=f"in use by process {os.getpid()}"):
            run_dir.RunLock(str(tmp_path)).__enter__()
    assert f"taking over the lock of process {dead_pid}" in capsys.readouterr().out
    assert not (tmp_path / run_dir.LOCK_FILE).exists()


def test_reset_refuses_a_folder_in_use(tmp_path):
    (tmp_path / run_dir.LOCK_FILE).write_text(f"{os.getpid()} {socket.gethostname()}\n")
    with pytest.raises(OutputDirError, match="in use"):
        run_dir.prepare_output_dir(str(tmp_path), reset=True)
    assert (tmp_path / run_dir.LOCK_FILE).exists()


def test_optimizer_state_saved_for_other_variables_is_refused(tmp_path):
    a, b = tf.Variable(tf.zeros([2]), name="a"), tf.Variable(tf.ones([2]), name="b")
    saved = NesterovSGD([a, b], OptimConfig())
    saved.accumulator.assign(tf.range(4, dtype=tf.float32))
    path = tf.train.Checkpoint(optimizer=saved).save(str(tmp_path / "ckpt"))
    # The same variables in another order: every shape matches, so it restores silently.
    reordered = NesterovSGD([b, a], OptimConfig())
    tf.train.Checkpoint(optimizer=reordered).restore(path).assert_existing_objects_matched()
    with pytest.raises(checkpoints.CheckpointMismatch,
                       match=r"variable 0 is b:0 \[2\] here, a:0 \[2\] in the checkpoint"):
        reordered.check_layout()
    same = NesterovSGD([a, b], OptimConfig())
    tf.train.Checkpoint(optimizer=same).restore(path).assert_existing_objects_matched()
    same.check_layout()
    np.testing.assert_array_equal(same.accumulator.numpy(), np.arange(4))


def test_a_corrupt_latest_checkpoint_falls_back_to_the_one_before(tiny_folders, tmp_path, capsys):
    out = tmp_path / "run"
    fixed_train.run(fixed_config(tiny_folders, out, num_epochs=2))
    data_file = next((out / "checkpoints").glob("ckpt-2.data-*"))
    data_file.write_bytes(data_file.read_bytes()[:100])  # truncated
    results = fixed_train.run(fixed_config(tiny_folders, out, num_epochs=3))
    log = capsys.readouterr().out
    assert "notice: skipping the unreadable checkpoint" in log and "ckpt-2" in log
    assert "at epoch 1" in log and results["epochs_done"] == 3
    assert [e["epoch"] for e in json.loads(read(out / "history.json"))["epochs"]] == [1, 2, 3]

    for data_file in (out / "checkpoints").glob("ckpt-*.data-*"):
        data_file.write_bytes(b"")
    with pytest.raises(OutputDirError, match="no readable checkpoint"):
        fixed_train.run(fixed_config(tiny_folders, out, num_epochs=4))


def test_a_failed_write_keeps_the_previous_files(tiny_folders, tmp_path, monkeypatch):
    out = tmp_path / "run"
    fixed_train.run(fixed_config(tiny_folders, out, num_epochs=1))
    before = read(out / "results.json")
    real_write = run_dir.write_bytes_atomic

    def disk_full(path, data):
        if path.endswith("results.json"):
            raise OSError(28, "No space left on device", path)
        real_write(path, data)

    monkeypatch.setattr(run_dir, "write_bytes_atomic", disk_full)
    with pytest.raises(OSError, match="No space left"):
        fixed_train.run(fixed_config(tiny_folders, out, num_epochs=2))
    assert read(out / "results.json") == before
    assert not [name for name in os.listdir(out) if name.endswith(".tmp")]


def test_a_failed_checkpoint_write_is_a_one_line_error(tmp_path, monkeypatch):
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(v=tf.Variable(1.0)),
                                         str(tmp_path), max_to_keep=3)
    checkpoints.save(manager, 1)

    def fail(**_):
        raise tf.errors.ResourceExhaustedError(None, None, "disk full\nmore detail")

    monkeypatch.setattr(manager, "save", fail)
    with pytest.raises(OutputDirError, match=r"cannot write checkpoint 2 in .*: disk full$"):
        checkpoints.save(manager, 2)
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-1")


@pytest.mark.parametrize("error, code, line", [
    (OSError(13, "Permission denied", "/out/results.json"), 2,
     "error: Permission denied: /out/results.json"),
    (OutputDirError("output path 'x' exists and is not a directory"), 2,
     "error: output path 'x' exists and is not a directory"),
])
def test_storage_errors_exit_2_with_one_line(error, code, line, capsys):
    import cli_common

    def failing_run():
        raise error

    with pytest.raises(SystemExit) as stopped:
        cli_common.run_or_exit(failing_run)
    assert stopped.value.code == code
    assert capsys.readouterr().err.strip().splitlines() == [line]


def test_a_checkpoint_this_code_cannot_read_is_refused(tmp_path):
    """A checkpoint without the objects this model saves (another layout, another
    model) is a CheckpointMismatch (one line at the command line), never half restored."""
    old = tf.train.Checkpoint(w=tf.Variable([1.0, 2.0]))
    tf.train.CheckpointManager(old, str(tmp_path / "checkpoints"), max_to_keep=3).save()
    w = tf.Variable([0.0, 0.0])
    new = tf.train.Checkpoint(w=w, records=checkpoints.JsonRecords({"epochs": []}))
    with pytest.raises(checkpoints.CheckpointMismatch, match="different model"):
        checkpoints.restore_or_start(new, str(tmp_path), "checkpoints")
    other = tf.train.Checkpoint(w=tf.Variable([0.0, 0.0, 0.0]))
    with pytest.raises(checkpoints.CheckpointMismatch):
        checkpoints.restore_or_start(other, str(tmp_path), "checkpoints")
