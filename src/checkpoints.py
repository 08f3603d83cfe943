"""What a run checkpoints, how it resumes, and what it does with a bad checkpoint.

The checkpoint is the run's single source of truth: it also holds the epoch
records (history, scored arcs), so the files a run writes after each checkpoint
(history.json, best_arc.txt, results.json, ...) can always be rewritten from it.
A run killed anywhere resumes from its last complete checkpoint and rewrites
those files first.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional, Sequence, Tuple

import tensorflow as tf

from src.distribute import PEER_ERRORS
from src.run_dir import OutputDirError

MAX_TO_KEEP = 3
# Restoring a truncated or missing file raises these (IndexError: "Read less bytes than
# requested", from TensorFlow's reader); anything else is another model.
_CORRUPT = (tf.errors.DataLossError, tf.errors.NotFoundError, tf.errors.OutOfRangeError, IndexError)


class CheckpointMismatch(ValueError):
    """The output folder's checkpoint does not fit the model built from these flags."""


class JsonRecords(tf.Module):
    """A JSON document saved inside the checkpoint."""

    def __init__(self, default: Any):
        super().__init__(name="records")
        self.text = tf.Variable(json.dumps(default), dtype=tf.string, trainable=False)

    def get(self) -> Any:
        return json.loads(self.text.numpy().decode("utf-8"))

    def set(self, value: Any) -> None:
        self.text.assign(json.dumps(value))


def restore_or_start(checkpoint: tf.train.Checkpoint, output_dir: str, checkpoint_subdir: str,
                     optimizers: Sequence = (), save_dir: Optional[str] = None
                     ) -> Tuple[tf.train.CheckpointManager, Optional[str]]:
    """(a manager for output_dir/checkpoint_subdir, the checkpoint restored or None).

    Restores the latest checkpoint if any (the caller prints where it resumed); a
    truncated or corrupt one is skipped, with a notice, for the one before it. Each
    optimizer's layout is checked after restoring. Given save_dir (a multi-worker
    run's other workers), the returned manager saves to save_dir/checkpoint_subdir."""
    manager = tf.train.CheckpointManager(checkpoint, os.path.join(output_dir, checkpoint_subdir),
                                         max_to_keep=MAX_TO_KEEP)
    if save_dir is not None:
        restored = _restore_latest(checkpoint, manager, output_dir, optimizers)
        return tf.train.CheckpointManager(checkpoint, os.path.join(save_dir, checkpoint_subdir),
                                          max_to_keep=1), restored
    return manager, _restore_latest(checkpoint, manager, output_dir, optimizers)


def _restore_latest(checkpoint, manager, output_dir, optimizers) -> Optional[str]:
    """The latest readable checkpoint restored (its path), or None at a fresh start."""
    candidates = list(reversed(manager.checkpoints))
    for path in candidates:
        try:
            _restore(checkpoint, path)
        except _CORRUPT as error:
            reason = getattr(error, "message", None) or str(error)
            print(f"notice: skipping the unreadable checkpoint {path} ({reason.splitlines()[0]})")
            continue
        except (AssertionError, ValueError, tf.errors.InvalidArgumentError):
            raise CheckpointMismatch(
                f"{output_dir} holds checkpoints of a different model (other flags?); choose "
                "another --output_dir or pass --reset_output_dir") from None
        for optimizer in optimizers:
            optimizer.check_layout()
        return path
    if candidates:
        raise OutputDirError(f"no readable checkpoint in {manager.directory}; move it away or "
                             "pass --reset_output_dir to start again")
    return None


def _restore(checkpoint: tf.train.Checkpoint, path: str) -> None:
    """Restores everything or fails: a checkpoint lacking any object of this model (other
    flags, or a layout this version does not write) is refused by the caller."""
    checkpoint.restore(path).assert_existing_objects_matched()


def save(manager: tf.train.CheckpointManager, number: int) -> None:
    """Saves checkpoint `number`; a storage failure becomes a one-line OutputDirError (the
    previous checkpoints stay as they were)."""
    try:
        manager.save(checkpoint_number=number)
    except PEER_ERRORS:
        raise  # a multi-worker save's collectives lost a peer: not a storage failure
    except tf.errors.OpError as error:
        raise OutputDirError(f"cannot write checkpoint {number} in {manager.directory}: "
                             f"{error.message.splitlines()[0]}") from None
