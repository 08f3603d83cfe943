"""The output directory of a run: creation, resumption, logging and safe writes.

The rule is to never lose data: a directory is only deleted when the caller
asks for it (reset=True), logs are appended to, and files are replaced
atomically so that a run killed mid-write leaves the previous version intact.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from typing import Any, Optional, TextIO

CHECKPOINT_DIR = "checkpoints"
RESULTS_FILE = "results.json"
STDOUT_FILE = "stdout"


class OutputDirError(ValueError):
    """The output directory cannot be used; the message says why in one line."""


def has_previous_run(path: str) -> bool:
    """True if `path` holds results.json or a checkpoint under checkpoints/."""
    if os.path.isfile(os.path.join(path, RESULTS_FILE)):
        return True
    checkpoint_dir = os.path.join(path, CHECKPOINT_DIR)
    if not os.path.isdir(checkpoint_dir):
        return False
    # tf.train.CheckpointManager writes a `checkpoint` index file next to
    # ckpt-N.index / ckpt-N.data-*; either one means there is something to resume.
    return any(name == "checkpoint" or name.endswith(".index")
               for name in os.listdir(checkpoint_dir))


def prepare_output_dir(path: str, reset: bool) -> bool:
    """Creates `path` (and its parents); returns True if it held a previous run.

    With reset=True an existing directory is deleted first, so the result is
    then always False. Raises OutputDirError if `path` is not a directory.
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputDirError(f"output path {path!r} exists and is not a directory")
    if reset and os.path.isdir(path):
        if os.path.islink(path):
            # rmtree refuses symlinks; deleting their target is not ours to decide.
            raise OutputDirError(f"output path {path!r} is a symlink; remove it yourself to reset")
        print(f"reset: deleting the previous output directory {path}")
        shutil.rmtree(path)
    os.makedirs(path, exist_ok=True)
    return has_previous_run(path)


class _TeeStream:
    """A text stream that writes to `primary` and copies the text into `log_file`."""

    def __init__(self, primary: TextIO, log_file: TextIO):
        self._primary = primary
        self._log_file = log_file

    def write(self, text: str) -> int:
        written = self._primary.write(text)
        # Writes starting with '\r' are progress-bar redraws: they only make
        # sense on a terminal and would fill the log file with noise.
        if not text.startswith("\r"):
            self._log_file.write(text)
        return written

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self._primary.flush()
        self._log_file.flush()

    def isatty(self) -> bool:
        # Report the terminal's answer so progress bars still draw on it.
        return self._primary.isatty()

    def __getattr__(self, name: str) -> Any:
        # encoding, fileno, errors, ...: whatever the terminal stream says.
        return getattr(self._primary, name)


class Tee:
    """Copies everything printed to sys.stdout and sys.stderr into <output_dir>/stdout.

    The file is opened in append mode (a resumed run adds to the log of the
    first) and line-buffered, so it can be followed with `tail -f`.
    Output written by C++ code straight to file descriptors is not captured.
    """

    def __init__(self, output_dir: str, filename: str = STDOUT_FILE):
        self.path = os.path.join(output_dir, filename)
        self._log_file: Optional[TextIO] = None
        self._saved_streams = None

    def __enter__(self) -> "Tee":
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self._log_file = open(self.path, "a", encoding="utf-8", buffering=1)
        self._saved_streams = (sys.stdout, sys.stderr)
        sys.stdout = _TeeStream(sys.stdout, self._log_file)
        sys.stderr = _TeeStream(sys.stderr, self._log_file)
        return self

    def __exit__(self, *exc_info) -> None:
        sys.stdout, sys.stderr = self._saved_streams
        self._log_file.close()
        self._log_file = None


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Writes `data` to `path` through a temporary file in the same directory.

    os.replace is atomic within a file system, so readers (and a run killed
    mid-write) see either the old file or the new one, never half of one.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp_path = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    # os.open with 0o666 honours the umask, unlike tempfile's private 0o600.
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as tmp_file:
            tmp_file.write(data)
            tmp_file.flush()
            os.fsync(tmp_file.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def write_text_atomic(path: str, text: str) -> None:
    """Atomically writes UTF-8 `text` to `path`."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str, obj: Any) -> None:
    """Atomically writes `obj` as JSON (indent=2, sorted keys); numpy values become plain ones."""
    # Serialise first: an unserialisable object must not leave a temp file behind.
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"
    write_text_atomic(path, text)


def _json_default(value: Any) -> Any:
    """Converts numpy scalars and arrays (and tensors with .numpy()) for json.dumps."""
    if hasattr(value, "numpy"):
        value = value.numpy()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"object of type {type(value).__name__} is not JSON serializable")


def up_to_epoch(records: list, epoch: int) -> list:
    """The records (dicts with an "epoch") of epochs 1..epoch."""
    return [record for record in records if record["epoch"] <= epoch]


def read_json(path: str, default: Any = None) -> Any:
    """The JSON content of `path`, or `default` if the file does not exist."""
    if not os.path.exists(path):
        return default
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            # Never fall back to `default` here: the caller would overwrite the file.
            raise OutputDirError(f"{path} is not valid JSON: {e}") from None
