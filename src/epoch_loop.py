"""The epoch loop both training loops run: steps with a progress bar, log lines and
TensorBoard figures, stopped by a non-finite loss or, at a step boundary, by a signal."""
from __future__ import annotations

import signal
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from src import reporting, run_dir
from src.summaries import RunSummaries

StepFn = Callable[[tf.Tensor, tf.Tensor], Dict[str, tf.Tensor]]


class NonFiniteLoss(RuntimeError):
    """The loss or the gradient norm became NaN or infinite."""


class StopRequested(Exception):
    """SIGTERM or SIGINT arrived; raised at the next step boundary."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """While entered, SIGTERM and SIGINT let the current step finish: the next check()
    raises StopRequested. A second signal interrupts at once. Outside the main thread
    (where no handler can be installed) it never stops anything."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous: Dict[int, object] = {}

    def _request_stop(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._request_stop)
                              for signum in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous, self.signum = {}, None

    def check(self) -> None:
        if self.signum is not None:
            raise StopRequested(self.signum)


def first_non_finite(figures: np.ndarray) -> Optional[int]:
    """Index of the first row of figures [steps, 2] (loss, gradient norm) holding a NaN
    or an infinity, else None."""
    bad = np.flatnonzero(~np.isfinite(figures).all(axis=1))
    return int(bad[0]) if len(bad) else None


def non_finite_error(loss: float, grad_norm: float, epoch: int, step: int) -> NonFiniteLoss:
    return NonFiniteLoss(f"the loss became {loss} (gradient norm {grad_norm}) at epoch "
                         f"{epoch + 1}, step {step}; nothing of it was checkpointed. A lower "
                         "--child_lr_max usually helps")


class StepFigures:
    """The figures of the steps since the last read, kept as tensors: read back to the
    host (one sync) every log_every steps and at the epoch's end, not after every step."""

    def __init__(self):
        self.pending: List[Tuple[int, Dict[str, tf.Tensor], int]] = []

    def add(self, step: int, metrics: Dict[str, tf.Tensor], batch) -> None:
        self.pending.append((step, metrics, batch))

    def read(self) -> List[Tuple[int, float, float, int, int]]:
        """(step, loss, grad_norm, correct, batch size) of each pending step, in order."""
        if not self.pending:
            return []
        keys = ("loss", "grad_norm", "correct")
        values = np.asarray(tf.stack([tf.stack([tf.cast(m[k], tf.float32) for k in keys])
                                      for _, m, _ in self.pending]))  # [steps, 3]
        batches = [int(m["count"]) if "count" in m else batch for _, m, batch in self.pending]
        rows = [(step, float(loss), float(norm), int(correct), size) for (step, _, _), (loss, norm, correct), size
                in zip(self.pending, values, batches)]
        self.pending = []
        return rows


def train_one_epoch(step_fn: StepFn, batches, num_batches: int, epoch: int, lr: float,
                    step: tf.Variable, log_every: int, start: float, desc: str,
                    check_stop: Callable[[], None],
                    summaries: Optional[RunSummaries] = None) -> Dict[str, float]:
    """Runs step_fn(images, labels) -> {loss, grad_norm, correct} over one epoch with a
    progress bar, a log line every log_every steps (global step counter `step`) and,
    given summaries, each step's figures in TensorBoard. The figures are read back every
    log_every steps (the authors' log cadence); a NaN or infinite loss among them stops
    the run with NonFiniteLoss naming the step where it happened, before any checkpoint.
    Stops after a step where check_stop raises (StopSignals.check).

    Returns the epoch's mean training loss and accuracy."""
    losses, correct, seen = [], 0, 0
    figures = StepFigures()
    step_now = int(step)

    def read_figures(bar) -> None:
        nonlocal correct, seen
        rows = figures.read()
        first_bad = first_non_finite(np.array([[loss, norm] for _, loss, norm, _, _ in rows]).reshape(-1, 2))
        if first_bad is not None:
            bad_step, loss, norm, _, _ = rows[first_bad]
            raise non_finite_error(loss, norm, epoch, bad_step)
        for at, loss, norm, batch_correct, batch in rows:
            losses.append(loss)
            correct += batch_correct
            seen += batch
            if summaries is not None:
                summaries.scalars({"child/loss": loss, "child/learning_rate": lr,
                                   "child/accuracy": batch_correct / batch,
                                   "child/grad_norm": norm}, at)
        if rows:
            at, loss, norm, batch_correct, batch = rows[-1]
            bar.write(reporting.format_train_line(
                epoch + 1, at, loss, lr, norm, batch_correct, batch,
                (time.time() - start) / 60, bar.eta()))
            bar.update(0, loss=loss)

    with reporting.ProgressBar(num_batches, desc=desc) as bar:
        for images, labels in batches:
            metrics = step_fn(images, labels)
            step.assign_add(1)
            step_now += 1
            # A distributed batch has no shape here: distributed steps count it.
            figures.add(step_now, metrics, None if "count" in metrics else int(labels.shape[0]))
            if step_now % log_every == 0:
                read_figures(bar)
            bar.update()
            run_dir.failpoint("child_step")
            check_stop()
        read_figures(bar)
    return {"train_loss": float(np.mean(losses)) if losses else float("nan"),
            "train_accuracy": correct / max(1, seen)}
