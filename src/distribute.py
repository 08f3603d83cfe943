"""tf.distribute strategies for retraining and search (--strategy).

  * default: TensorFlow's default strategy, one device (what runs without the flag);
  * mirrored: tf.distribute.MirroredStrategy over local devices (every GPU by
    default; one replica on the CPU on a machine without GPU);
  * multi_worker: tf.distribute.MultiWorkerMirroredStrategy over the machines that
    the TF_CONFIG environment variable lists, as TensorFlow documents it.

Every worker runs the same program on the same (seeded) data. Only the chief writes
results, pictures, checkpoints and TensorBoard; the others write into a temporary
folder (saving a checkpoint may involve collectives, so they must save too) that
is deleted at the end (TensorFlow's multi-worker guide). Collectives time out after
RunConfig.collective_timeout_s, so a dead worker makes the others stop with a
WorkerLost error instead of hanging.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from typing import Iterable, Iterator, Sequence, Tuple

import tensorflow as tf

from src.configs import ConfigError, RunConfig

TF_CONFIG = "TF_CONFIG"
# What a collective raises when a peer has died or stopped answering.
PEER_ERRORS = (tf.errors.DeadlineExceededError, tf.errors.UnavailableError,
                tf.errors.CancelledError, tf.errors.AbortedError, tf.errors.InternalError)


class WorkerLost(RuntimeError):
    """Another worker of a multi-worker run died or stopped answering."""


def build_strategy(run: RunConfig) -> tf.distribute.Strategy:
    """The strategy of --strategy (call before any other TensorFlow work: a
    multi-worker strategy must be made before the first op runs)."""
    if run.strategy == "default":
        return tf.distribute.get_strategy()
    if run.strategy == "mirrored":
        check_devices(run.devices)
        return tf.distribute.MirroredStrategy(devices=list(run.devices) or local_devices())
    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=run.collective_timeout_s)
    read_tf_config()  # a one-line error for a bad one; TensorFlow reads it itself
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


def local_devices() -> Sequence[str]:
    """Every local GPU; without one, every logical CPU device (one unless a test or the
    user configured more)."""
    gpus = tf.config.list_logical_devices("GPU")
    return [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]


def check_devices(devices: Sequence[str]) -> None:
    """Raises ConfigError naming the first of --devices that this machine lacks."""
    known = {(d.device_type, int(d.name.rsplit(":", 1)[1])) for d in tf.config.list_logical_devices()}
    for name in devices:
        try:
            spec = tf.DeviceSpec.from_string(name if name.startswith("/") else "/" + name)
        except ValueError:
            spec = None
        if spec is None or ((spec.device_type or "").upper(), spec.device_index or 0) not in known:
            names = ", ".join(d.name for d in tf.config.list_logical_devices())
            raise ConfigError(f"--devices: no device {name!r} here (there are: {names})")


def read_tf_config() -> dict:
    """TF_CONFIG, checked: {"cluster": {"worker": [host:port, ...]}, "task": {"type":
    "worker", "index": i}}. Raises ConfigError in one line when it is missing or wrong."""
    text = os.environ.get(TF_CONFIG)
    if not text:
        raise ConfigError("--strategy multi_worker needs the TF_CONFIG environment variable "
                          '(e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                          '"task": {"type": "worker", "index": 0}})')
    try:
        config = json.loads(text)
        workers = config["cluster"]["worker"]
        task_type, index = config["task"]["type"], int(config["task"]["index"])
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"TF_CONFIG is not valid ({type(error).__name__}: {error}); it needs "
                          'cluster.worker (a list of host:port) and task {"type", "index"}') from None
    if not isinstance(workers, list) or not workers:
        raise ConfigError("TF_CONFIG: cluster.worker must be a non-empty list of host:port")
    if task_type not in ("worker", "chief") or not 0 <= index < len(config["cluster"].get(task_type, [])):
        raise ConfigError(f"TF_CONFIG: task {task_type} {index} is not in the cluster")
    return config


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's files: always, but in a multi-worker run
    only the chief (the 'chief' task, or worker 0 when there is none)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    return task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().jobs


def worker_output_dir(output_dir: str, chief: bool) -> str:
    """Where this process writes: the output folder for the chief, a fresh temporary
    folder for the other workers (remove it with remove_worker_dir)."""
    return output_dir if chief else tempfile.mkdtemp(prefix="enas_worker_")


def worker_run_config(run: RunConfig, chief: bool) -> Tuple[RunConfig, str]:
    """(run with this process's output folder, the folder to resume from). The other
    workers of a multi-worker run resume from the chief's checkpoints and write
    everything into a temporary folder (remove it with remove_worker_dir)."""
    restore_dir = run.output_dir if chief or not run.reset_output_dir else ""
    return dataclasses.replace(run, output_dir=worker_output_dir(run.output_dir, chief)), restore_dir


def remove_worker_dir(path: str, chief: bool) -> None:
    if not chief:
        shutil.rmtree(path, ignore_errors=True)


def distribute_batches(strategy: tf.distribute.Strategy, batches: tf.data.Dataset) -> Iterable:
    """Global (images, labels) batches, each split over the replicas: replica r of
    R (over all workers) gets the r-th of R near-equal consecutive slices. Every worker
    builds the same global batches from the same seed, so the slices add up to each
    batch exactly once.

    Split by hand rather than by experimental_distribute_dataset: its per-device
    iterators log a TensorFlow warning that nobody can act on at every start."""
    if not is_distributed(strategy):
        return batches
    return (split_over_replicas(strategy, images, labels) for images, labels in batches)


def split_over_replicas(strategy: tf.distribute.Strategy, *tensors):
    """Per-replica slices [n_r, ...] of each tensor [N, ...] along axis 0 (n_r differ by
    at most one), as distributed values."""
    replicas, total = strategy.num_replicas_in_sync, int(tensors[0].shape[0])
    bounds = [total * r // replicas for r in range(replicas + 1)]

    def distributed(tensor):
        return strategy.experimental_distribute_values_from_function(
            lambda context: tensor[bounds[context.replica_id_in_sync_group]:
                                   bounds[context.replica_id_in_sync_group + 1]])

    return tuple(distributed(tensor) for tensor in tensors)


def is_distributed(strategy: tf.distribute.Strategy) -> bool:
    """Whether strategy is mirrored or multi-worker (not TensorFlow's default one)."""
    return isinstance(strategy, (tf.distribute.MirroredStrategy,
                                 tf.distribute.MultiWorkerMirroredStrategy))


@contextlib.contextmanager
def peer_failures(strategy: tf.distribute.Strategy, timeout_s: float) -> Iterator[None]:
    """In a multi-worker run, turns a collective that failed because a peer died or timed
    out into WorkerLost (one line)."""
    try:
        yield
    except PEER_ERRORS as error:
        if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            raise
        first = (getattr(error, "message", None) or str(error)).strip().splitlines()
        raise WorkerLost(f"another worker died or stopped answering (no answer within "
                         f"{timeout_s:g}s: {type(error).__name__}"
                         f"{': ' + first[0][:200] if first else ''})") from None
