"""What every run shares, search or retrain: the strategy, the output folder and its
lock, the log, signals, TensorBoard, restore, and the checkpoint at the end of each
epoch with the epoch records in it.

A loop opens a run (open_run), builds its models, restores (Run.restore), and after
each epoch checkpoints (Run.checkpoint_epoch) before rewriting its files from the
records: so a run killed anywhere resumes from its last checkpoint and rewrites the
same files. The loops keep only what differs: their state, epoch body and evaluation.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import random
import shutil
import tempfile
import time
from typing import Any, Callable, Dict, Iterable, Iterator, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from src import budget, checkpoints, distribute, reporting, run_dir
from src.configs import RunConfig
from src.epoch_loop import StopSignals
from src.summaries import RunSummaries

HISTORY_FILE = "history.json"


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seeds Python's, NumPy's and TensorFlow's global generators (initialisation,
    dropout, drop-path); data order, augmentation and the arc samplers take `seed`
    from the configs. `deterministic` also makes every op deterministic, for good:
    TensorFlow has no way to turn that off again in the process."""
    random.seed(seed)
    np.random.seed(seed)
    tf.random.set_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


@dataclasses.dataclass
class Run:
    """An open run. `config` is this worker's: in a multi-worker run the workers other
    than the chief write into a temporary folder and restore from `restore_dir`, the
    chief's."""
    config: RunConfig
    strategy: tf.distribute.Strategy
    restore_dir: str
    stop: StopSignals
    _summaries: Optional[RunSummaries] = None

    @property
    def output_dir(self) -> str:
        return self.config.output_dir

    @property
    def summaries(self) -> RunSummaries:
        """TensorBoard's writer, made at first use (after the data loaded: a run stopped
        by bad data leaves no event file)."""
        if self._summaries is None:
            self._summaries = RunSummaries(self.output_dir)
        return self._summaries

    def restore(self, checkpoint: tf.train.Checkpoint, optimizers: Sequence = ()
                ) -> Tuple[tf.train.CheckpointManager, Optional[str]]:
        """(the manager that saves this run's checkpoints, the path restored or None)."""
        return checkpoints.restore_or_start(
            checkpoint, self.restore_dir, run_dir.CHECKPOINT_DIR, optimizers=optimizers,
            save_dir=None if self.restore_dir == self.output_dir else self.output_dir)

    def evaluates_after(self, epoch: int) -> bool:
        """Whether the 0-based `epoch` ends with an evaluation: every
        eval_every_epochs, and always the last."""
        done = epoch + 1
        return done % self.config.eval_every_epochs == 0 or done == self.config.num_epochs

    def checkpoint_epoch(self, manager: tf.train.CheckpointManager, epoch_var: tf.Variable,
                         records: checkpoints.JsonRecords, values: Dict, epochs_done: int) -> None:
        """Saves the epoch's checkpoint: the counter and the records go in with the
        weights, so the files written after it can always be rewritten from it."""
        epoch_var.assign(epochs_done)
        records.set(values)
        run_dir.failpoint("before_checkpoint")
        checkpoints.save(manager, epochs_done)
        run_dir.failpoint("after_checkpoint")

    def epoch_scalars(self, record: Mapping, keys: Sequence[str], epochs_done: int) -> None:
        """The epoch's figures in TensorBoard (those the record lacks are skipped)."""
        self.summaries.scalars({f"epoch/{key}": record.get(key) for key in keys}, epochs_done)


def restored_records(records: checkpoints.JsonRecords, empty: Dict) -> Dict:
    """The epoch records of the restored checkpoint (`empty` at a fresh start), with
    every key of `empty`."""
    return dict(copy.deepcopy(empty), **records.get())


@contextlib.contextmanager
def weights_kept(checkpoint: tf.train.Checkpoint) -> Iterator[float]:
    """Runs the block (steps that measure the time of training) and then puts back
    everything `checkpoint` holds: weights, BN statistics, optimizer state, the dropout
    generator. Yields the seconds writing that checkpoint took (a checkpoint's cost)."""
    folder = tempfile.mkdtemp(prefix="enas-measure-")
    try:
        started = time.time()
        path = checkpoint.write(os.path.join(folder, "before"))
        yield time.time() - started
        checkpoint.read(path).assert_existing_objects_matched()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def time_each(items: Iterable, call: Callable[[Any], Any]) -> Tuple[float, float]:
    """(seconds of call(the first item): a compiled function's first call traces or
    instantiates it; mean seconds of call(item) over the others, or the first's if there
    are none). call must wait for its result (read a value back to the host)."""
    times = []
    for item in items:
        started = time.time()
        call(item)
        times.append(time.time() - started)
    return times[0], float(np.mean(times[1:] or times))


def time_train_steps(step: Callable[[Any, Any], Dict], strategy: tf.distribute.Strategy,
                     train_data, count: int) -> Tuple[float, float]:
    """time_each of step(images, labels) -> {"loss", ...} over the first count + 1
    batches of epoch 1 (train_data: data.TrainBatches); the caller puts the weights back
    (weights_kept)."""
    batches = distribute.distribute_batches(strategy, train_data.epoch(0, steps=count + 1))
    return time_each(batches, lambda batch: float(step(*batch)["loss"]))  # float(): waits


def seconds_writing(write: Callable[[str], Any]) -> float:
    """Seconds of write(folder), into a temporary folder deleted afterwards (the cost of
    a run's files or export, for a budget)."""
    folder = tempfile.mkdtemp(prefix="enas-files-")
    try:
        started = time.time()
        write(folder)
        return time.time() - started
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def follow_budget(run: Run, config, plan: Optional[budget.BudgetPlan], records: Dict):
    """`config` (a loop's: with .run and .optim) as the --budget_minutes plan sets it
    (None: unchanged): its epochs and cosine period, also in the Run's config (its
    evaluates_after reads num_epochs), and the plan in records["budget_plan"], so the
    checkpoint keeps it (src/budget.py)."""
    if plan is None:
        return config
    run_config, optim_config = budget.apply_plan(config.run, config.optim, plan)
    run.config = run_config
    records["budget_plan"] = plan.to_json()
    return dataclasses.replace(config, run=run_config, optim=optim_config)


def write_history(output_dir: str, history: Dict) -> None:
    run_dir.write_json_atomic(os.path.join(output_dir, HISTORY_FILE), history)


@contextlib.contextmanager
def open_run(run_config: RunConfig, flags: Mapping,
             check_folder: Optional[Callable[[str], None]] = None) -> Iterator[Run]:
    """Builds the strategy, prepares the output folder (deleted first only under
    --reset_output_dir, and only by the chief), calls check_folder(output_dir), then
    holds the folder's lock, copies the log into it, lets SIGTERM and SIGINT stop at a
    step boundary, turns a dead peer's failure into WorkerLost, prints the flags and
    closes TensorBoard's writer at the end. A --budget_minutes run's clock starts at
    run_config.started_at (the entry scripts: the process's start), else here."""
    run_config = dataclasses.replace(run_config, started_at=run_config.started_at or time.time())
    strategy = distribute.build_strategy(run_config)
    chief = distribute.is_chief(strategy)
    worker_config, restore_dir = distribute.worker_run_config(run_config, chief)
    out = worker_config.output_dir
    try:
        run_dir.prepare_output_dir(out, run_config.reset_output_dir and chief)
        if check_folder is not None:
            check_folder(out)
        with run_dir.RunLock(out), run_dir.Tee(out), StopSignals() as stop, \
                distribute.peer_failures(strategy, run_config.collective_timeout_s):
            print(reporting.format_flags(flags))
            run = Run(worker_config, strategy, restore_dir or out, stop)
            try:
                yield run
            finally:
                if run._summaries is not None:
                    run._summaries.close()
    finally:
        distribute.remove_worker_dir(out, chief)
