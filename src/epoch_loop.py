"""The epoch loop both training loops run: steps with a progress bar, log lines and
TensorBoard figures, stopped by a non-finite loss or, at a step boundary, by a signal."""
from __future__ import annotations

import math
import signal
import threading
import time
from typing import Callable, Dict, Optional

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


def check_finite(loss: float, grad_norm: float, epoch: int, step: int) -> None:
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        raise NonFiniteLoss(f"the loss became {loss} (gradient norm {grad_norm}) at epoch "
                            f"{epoch + 1}, step {step}; nothing of it was checkpointed. A lower "
                            "--child_lr_max usually helps")


def train_one_epoch(step_fn: StepFn, batches, num_batches: int, epoch: int, lr: float,
                    step: tf.Variable, log_every: int, start: float, desc: str,
                    check_stop: Callable[[], None],
                    summaries: Optional[RunSummaries] = None) -> Dict[str, float]:
    """Runs step_fn(images, labels) -> {loss, grad_norm, correct} over one epoch with a
    progress bar, a log line every log_every steps (global step counter `step`) and,
    given summaries, the step's figures in TensorBoard. Stops with NonFiniteLoss on a
    NaN or infinite loss, and after a step where check_stop raises (StopSignals.check).

    Returns the epoch's mean training loss and accuracy."""
    losses, correct, seen = [], 0, 0
    with reporting.ProgressBar(num_batches, desc=desc) as bar:
        for images, labels in batches:
            metrics = step_fn(images, labels)
            step.assign_add(1)
            # One read of each figure per step: every int()/float() of a tensor is a host sync.
            # A distributed batch has no shape here: distributed steps count it.
            step_now = int(step)
            batch = int(metrics["count"]) if "count" in metrics else int(labels.shape[0])
            losses.append(float(metrics["loss"]))  # also waits for the step to finish
            grad_norm, batch_correct = float(metrics["grad_norm"]), int(metrics["correct"])
            check_finite(losses[-1], grad_norm, epoch, step_now)
            correct += batch_correct
            seen += batch
            if summaries is not None:
                summaries.scalars({"child/loss": losses[-1], "child/learning_rate": lr,
                                   "child/accuracy": batch_correct / batch,
                                   "child/grad_norm": grad_norm}, step_now)
            if step_now % log_every == 0:
                bar.write(reporting.format_train_line(
                    epoch + 1, step_now, losses[-1], lr, grad_norm, batch_correct, batch,
                    (time.time() - start) / 60, bar.eta()))
            bar.update(loss=losses[-1])
            run_dir.failpoint("child_step")
            check_stop()
    return {"train_loss": float(np.mean(losses)) if losses else float("nan"),
            "train_accuracy": correct / max(1, seen)}
