"""src/harness.py and the signal handling of src/epoch_loop.py, in-process (the launched
kill, resume, lock and signal tests are in test_reliability.py)."""
import os
import signal

import pytest
import tensorflow as tf

from src import checkpoints, harness, run_dir
from src.configs import RunConfig
from src.epoch_loop import StopRequested, StopSignals


def test_a_signal_waits_for_the_step_boundary_and_the_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        stop.check()  # nothing asked yet
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(StopRequested) as raised:
            stop.check()
        assert raised.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
    with StopSignals() as again:  # nothing carried over from the last run
        again.check()


def test_a_second_signal_interrupts_at_once():
    with StopSignals():
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_evaluation_comes_every_n_epochs_and_after_the_last(tmp_path):
    run = harness.Run(RunConfig(output_dir=str(tmp_path), num_epochs=7, eval_every_epochs=3),
                      tf.distribute.get_strategy(), str(tmp_path), StopSignals())
    assert [epoch + 1 for epoch in range(7) if run.evaluates_after(epoch)] == [3, 6, 7]


def test_an_open_run_holds_the_lock_logs_and_checkpoints_its_records(tmp_path, capsys):
    out = tmp_path / "run"
    config = RunConfig(output_dir=str(out), num_epochs=2)
    weight, epoch = tf.Variable(1.0), tf.Variable(0, dtype=tf.int64)
    empty = {"epochs": [], "wall_time_s": 0.0}
    records = checkpoints.JsonRecords(empty)
    with harness.open_run(config, {"seed": 3}) as run:
        assert (out / run_dir.LOCK_FILE).exists()
        manager, restored = run.restore(tf.train.Checkpoint(w=weight, epoch=epoch, records=records))
        assert restored is None
        weight.assign(2.0)
        run.checkpoint_epoch(manager, epoch, records, {"epochs": [{"epoch": 1}], "wall_time_s": 1.0}, 1)
        print("epoch one done")
    assert not (out / run_dir.LOCK_FILE).exists()
    assert not (out / "tensorboard").exists()  # no writer made, no event file
    log = (out / run_dir.STDOUT_FILE).read_text()
    assert "--seed=3" in log and "epoch one done" in log
    capsys.readouterr()

    weight.assign(0.0), epoch.assign(0)
    records = checkpoints.JsonRecords(empty)
    with harness.open_run(config, {}) as run:
        _, restored = run.restore(tf.train.Checkpoint(w=weight, epoch=epoch, records=records))
        assert restored.endswith("ckpt-1") and float(weight) == 2.0 and int(epoch) == 1
        restored_records = harness.restored_records(records, dict(empty, arc_history=[]))
        assert restored_records == {"epochs": [{"epoch": 1}], "wall_time_s": 1.0, "arc_history": []}
