"""TensorBoard event files of a run, under OUTPUT_DIR/tensorboard/.

    tensorboard --logdir output

Tags are grouped by the counter on their x axis: `child/*` by child step,
`controller/*` by controller update, `epoch/*` and the pictures by epoch.
A resumed run appends new event files to the same folder.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional

import tensorflow as tf

TENSORBOARD_DIR = "tensorboard"


class RunSummaries:
    """One event-file writer for a run; use as a context manager to close it."""

    def __init__(self, output_dir: str):
        self.log_dir = os.path.join(output_dir, TENSORBOARD_DIR)
        self._writer = tf.summary.create_file_writer(self.log_dir)

    def scalars(self, values: Mapping[str, Optional[float]], step: int) -> None:
        """Writes each value under its tag; None values are skipped."""
        with self._writer.as_default(step=int(step)):
            for tag, value in values.items():
                if value is not None:
                    tf.summary.scalar(tag, float(value))

    def png(self, tag: str, path: str, step: int) -> None:
        """Writes the PNG file at `path` as an image summary."""
        image = tf.io.decode_png(tf.io.read_file(path))[tf.newaxis]  # [1, H, W, C]
        with self._writer.as_default(step=int(step)):
            tf.summary.image(tag, image)

    def flush(self) -> None:
        self._writer.flush()

    def __enter__(self) -> "RunSummaries":
        return self

    def close(self) -> None:
        self._writer.close()

    def __exit__(self, *exc) -> None:
        self.close()
