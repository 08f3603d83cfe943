"""The output directory of a run: creation, resumption, logging and safe writes.

The rule is to never lose data: a directory is only deleted when the caller
asks for it (reset=True), logs are appended to, and files are replaced
atomically so that a run killed mid-write leaves the previous version intact.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import uuid
from typing import Any, Optional, TextIO, Tuple

CHECKPOINT_DIR = "checkpoints"
RESULTS_FILE = "results.json"
STDOUT_FILE = "stdout"
LOCK_FILE = ".lock"
# Test hook: "NAME" or "NAME@N" kills the process at the N-th (default first) failpoint(NAME).
FAILPOINT_ENV = "ENAS_FAILPOINT"
_failpoint_hits: dict = {}


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
        check_not_in_use(path)  # never delete the folder of a live run
        if os.path.islink(path):
            # rmtree refuses symlinks; deleting their target is not ours to decide.
            raise OutputDirError(f"output path {path!r} is a symlink; remove it yourself to reset")
        print(f"reset: deleting the previous output directory {path}")
        shutil.rmtree(path)
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{uuid.uuid4().hex}")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as error:
        raise OutputDirError(f"cannot write to the output folder {path}: {error.strerror}") from None
    return has_previous_run(path)


def remove_temp_files(path: str) -> None:
    """Deletes the temporary files of atomic writes that a killed run left behind."""
    for name in os.listdir(path):
        if name.startswith(".") and name.endswith(".tmp"):
            os.remove(os.path.join(path, name))


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
        failpoint(f"replace {os.path.basename(path)}")
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


class RunLock:
    """One run per output folder: OUTPUT_DIR/.lock holds the pid and host of its run.

    It is created atomically (O_EXCL). A lock whose process is gone (same host, pid not
    alive) is taken over with a notice; a live one stops this run with OutputDirError.
    Holding it, the run deletes temporary files that a killed run left behind.
    """

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, LOCK_FILE)
        self._held = False

    def __enter__(self) -> "RunLock":
        owner = f"{os.getpid()} {socket.gethostname()}\n"
        for _ in range(2):  # a second try after removing a stale lock
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                f.write(owner)
            self._held = True
            remove_temp_files(os.path.dirname(self.path))  # ours now: no live run writes them
            return self
        raise OutputDirError(f"cannot take the lock {self.path}")

    def _take_over_if_stale(self) -> None:
        owner = lock_owner(os.path.dirname(self.path))
        if owner is None:
            return  # released meanwhile
        check_not_in_use(os.path.dirname(self.path))
        print(f"notice: taking over the lock of process {owner[0]}, which is gone: {self.path}")
        os.remove(self.path)

    def __exit__(self, *exc_info) -> None:
        if self._held:
            os.remove(self.path)
            self._held = False


def lock_owner(output_dir: str) -> Optional[Tuple[str, str]]:
    """(pid, host) written in the folder's lock, or None if there is no lock."""
    try:
        with open(os.path.join(output_dir, LOCK_FILE)) as f:
            pid, host = (f.read().split() + ["", ""])[:2]
    except FileNotFoundError:
        return None
    return pid, host


def check_not_in_use(output_dir: str) -> None:
    """Raises OutputDirError if a live process on this host, or any process on another
    host, holds the folder's lock."""
    owner = lock_owner(output_dir)
    if owner is None:
        return
    pid, host = owner
    if host == socket.gethostname() and pid.isdigit() and not process_alive(int(pid)):
        return  # stale: its process is gone
    raise OutputDirError(f"{output_dir} is in use by process {pid} on {host or 'an unknown host'} "
                         f"(lock {os.path.join(output_dir, LOCK_FILE)}); wait for it to end, or "
                         "choose another --output_dir")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def failpoint(name: str) -> None:
    """Kills this process with SIGKILL here if ENAS_FAILPOINT names this point (the tests
    of kill -9 anywhere use it); does nothing otherwise."""
    wanted = os.environ.get(FAILPOINT_ENV)
    if not wanted:
        return
    point, _, count = wanted.partition("@")
    if point != name:
        return
    _failpoint_hits[name] = _failpoint_hits.get(name, 0) + 1
    if _failpoint_hits[name] == int(count or 1):
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)
