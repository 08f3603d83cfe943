"""Optimizer, learning-rate schedule, losses and the compiled child steps.

Models are passed in; nothing here reads globals. Two step builders:
  * FixedChildSteps: the whole train step of the fixed child is one
    tf.function (the arc is static, so the graph is too);
  * SharedChildSteps: the search-phase step runs the shared child's forward
    pass eagerly over the sampled arc (its expensive pieces are compiled, see
    src/shared_child.py) and applies the update with one compiled function.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import random
import signal
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from src import arc as arc_lib
from src import distribute, ops, reporting, run_dir
from src.checkpoints import CheckpointMismatch
from src.configs import ChildConfig, OptimConfig
from src.summaries import RunSummaries


def cosine_lr(epoch: int, optim: OptimConfig) -> float:
    """Cosine learning rate with warm restarts (SGDR), constant within an epoch.

    Periods T_0, T_0 * T_mul, ...: with T_0 = 10, T_mul = 2 it restarts after
    epochs 10, 30, 70, 150, 310, 630.
    """
    start, period = 0, optim.lr_T_0
    while epoch >= start + period:
        start, period = start + period, period * optim.lr_T_mul
    t = (epoch - start) / period
    return optim.lr_min + 0.5 * (optim.lr_max - optim.lr_min) * (1.0 + math.cos(math.pi * t))


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


class DynamicLossScale(tf.Module):
    """float16's dynamic loss scale (as Keras's LossScaleOptimizer): the loss is
    multiplied by `scale` before the backward pass, so that small float16 gradients
    do not flush to zero, and the float32 gradients are divided by it again. A step
    with a non-finite gradient is skipped and halves the scale; every growth_steps
    finite steps in a row double it."""

    def __init__(self, initial: float = 2.0 ** 15, growth_steps: int = 2000):
        super().__init__(name="loss_scale")
        self.growth_steps = growth_steps
        self.scale = tf.Variable(initial, trainable=False, name="scale")
        self.finite_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="finite_steps")

    def update(self, finite) -> None:
        """After a step whose gradients were all finite (bool tensor) or not."""
        finite_steps = tf.where(finite, self.finite_steps + 1, 0)
        grow = finite_steps >= self.growth_steps
        self.scale.assign(tf.where(finite, tf.where(grow, 2.0, 1.0), 0.5) * self.scale)
        self.finite_steps.assign(tf.where(grow, tf.zeros_like(finite_steps), finite_steps))


def loss_scale_for(config: ChildConfig) -> Optional[DynamicLossScale]:
    """A dynamic loss scale for float16; None otherwise (bfloat16 has float32's range)."""
    return DynamicLossScale() if config.mixed_precision == "float16" else None


def announce_child_numerics(config: ChildConfig) -> None:
    """The log lines naming the depthwise-conv gradients and the precision chosen."""
    print(ops.describe_depthwise_gradients())
    print(ops.describe_mixed_precision(config.mixed_precision))


class NesterovSGD(tf.Module):
    """SGD with Nesterov momentum, L2 and per-tensor norm clipping, in one update.

    TF1 MomentumOptimizer semantics, as the authors trained with:
    accum <- momentum * accum + g;  w <- w - lr * (g + momentum * accum),
    where g is the loss gradient plus the L2 gradient (loss + l2 * sum w^2 over all
    weights), each tensor clipped to norm grad_bound (the authors' 'norm' mode
    never clipped: it appended the unclipped gradient).

    The update works on one flat view of all variables (per-tensor norms by
    segment sums), so its graph has a handful of ops per variable instead of a
    Keras optimizer's dozens: with the shared child's 1,340 variables that is the
    difference between about 40 s and a few seconds of tracing, and 0.8 GB of
    memory held by the traced graph.

    The variables are the float32 master weights, also under mixed precision. Given
    a loss_scale (float16), the gradients passed to apply are of the loss scaled by
    scale_loss: apply unscales them and skips the update if any is not finite.
    """

    def __init__(self, variables: Sequence[tf.Variable], optim: OptimConfig,
                 loss_scale: Optional[DynamicLossScale] = None):
        super().__init__(name="nesterov_sgd")
        self.loss_scale = loss_scale  # an attribute: checkpointed with the optimizer
        self._variables = list(variables)
        self._sizes = [v.shape.num_elements() for v in self._variables]
        self._segments = tf.constant(np.repeat(np.arange(len(self._sizes)), self._sizes), tf.int32)
        self.optim = optim
        self.learning_rate = tf.Variable(optim.lr_max, trainable=False, name="learning_rate")
        self.accumulator = tf.Variable(tf.zeros([sum(self._sizes)]), trainable=False,
                                       name="accumulator")
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")
        # The accumulator is one flat vector: a checkpoint made for other variables (or the
        # same ones in another order) would restore into it without any error. So the
        # layout is saved beside it and checked after a restore (check_layout).
        self._layout = [f"{v.name} {v.shape.as_list()}" for v in self._variables]
        self.layout = tf.Variable(json.dumps(self._layout), trainable=False, name="layout")

    def check_layout(self) -> None:
        """Raises CheckpointMismatch, naming the first variable that differs, if the
        restored accumulator was laid out for other variables."""
        saved = json.loads(self.layout.numpy().decode("utf-8"))
        for index, (here, there) in enumerate(itertools.zip_longest(self._layout, saved)):
            if here != there:
                raise CheckpointMismatch(
                    f"the checkpoint's optimizer state was saved for other variables: variable "
                    f"{index} is {here or 'missing'} here, {there or 'missing'} in the checkpoint")

    def scale_loss(self, loss):
        """The loss to differentiate: scaled by the loss scale, if any."""
        return loss if self.loss_scale is None else loss * self.loss_scale.scale

    def apply(self, grads):
        """Applies one update (call inside a tf.function); returns the global gradient
        norm before clipping (0 for an update skipped by the loss scale)."""
        flat_g = tf.concat([tf.reshape(g, [-1]) for g in grads], axis=0)
        if self.loss_scale is None:
            return self._apply_flat(flat_g)
        flat_g /= self.loss_scale.scale
        finite = tf.reduce_all(tf.math.is_finite(flat_g))
        grad_norm = tf.cond(finite, lambda: self._apply_flat(flat_g), lambda: tf.constant(0.0))
        self.loss_scale.update(finite)
        return grad_norm

    def _apply_flat(self, flat_g):
        """The update itself, on the unscaled gradients as one flat vector."""
        flat_w = tf.concat([tf.reshape(v, [-1]) for v in self._variables], axis=0)
        flat_g += 2.0 * self.optim.l2_reg * flat_w
        norms = tf.sqrt(tf.math.segment_sum(flat_g * flat_g, self._segments))  # [num variables]
        if self.optim.grad_bound > 0:
            scale = tf.minimum(1.0, self.optim.grad_bound / tf.maximum(norms, 1e-12))
            flat_g *= tf.gather(scale, self._segments)
        accumulator = self.accumulator.assign(self.optim.momentum * self.accumulator + flat_g)
        step = self.learning_rate * (flat_g + self.optim.momentum * accumulator)
        for variable, delta in zip(self._variables, tf.split(step, self._sizes)):
            variable.assign_sub(tf.reshape(delta, variable.shape))
        self.iterations.assign_add(1)
        return tf.norm(norms)


def classification_loss(labels, logits, aux_logits, aux_weight: float):
    """Mean cross-entropy, plus aux_weight times the aux head's when it ran."""
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
    if aux_logits is not None:
        loss += aux_weight * tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=aux_logits))
    return loss


def count_correct(labels, logits):
    predictions = tf.argmax(logits, axis=1, output_type=tf.int32)
    return tf.reduce_sum(tf.cast(tf.equal(predictions, labels), tf.int32))


def summed_loss(labels, logits, aux_logits, aux_weight: float, global_count):
    """classification_loss over a replica's slice of a global batch: its examples'
    summed cross-entropy over the global batch's size, so the replicas' losses (and
    gradients) add up to those of the global batch."""
    loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
    if aux_logits is not None:
        loss += aux_weight * tf.reduce_sum(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=aux_logits))
    return loss / global_count


def global_batch_size(labels):
    """Examples in the global batch (float32 []): the replicas' counts all-reduced."""
    count = tf.cast(tf.shape(labels)[0], tf.float32)
    return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, count)


class FixedChildSteps:
    """Compiled train and eval steps for a FixedChild.

    Under a tf.distribute strategy (the model and this object made in its scope),
    train_step takes a distributed global batch: each replica runs forward and
    backward on its slice, the gradients are summed over the replicas, and the
    optimizer applies them once, in cross-replica context."""

    def __init__(self, model, optim: OptimConfig, image_shape: Sequence[int],
                 strategy: Optional[tf.distribute.Strategy] = None):
        self.model = model
        self.optim = optim
        self.strategy = strategy or tf.distribute.get_strategy()
        self.variables = list(model.trainable_variables)
        announce_child_numerics(model.config)
        # Outside the strategy's scope: the optimizer runs once per step, in cross-replica
        # context, so its state is one ordinary copy per worker (a multi-worker strategy
        # could not broadcast its string layout variable anyway).
        self.optimizer = NesterovSGD(self.variables, optim, loss_scale_for(model.config))
        images = tf.TensorSpec([None, *image_shape], tf.float32)
        labels = tf.TensorSpec([None], tf.int32)
        if not distribute.is_distributed(self.strategy):
            self.train_step = tf.function(self._train_step, input_signature=[
                images, labels, tf.TensorSpec([], tf.float32)])
        else:  # distributed batches: the signature follows them
            self.train_step = tf.function(self._distributed_train_step, reduce_retracing=True)
        self.eval_step = tf.function(self._eval_step, input_signature=[images])

    def _train_step(self, images, labels, progress) -> Dict[str, tf.Tensor]:
        """One SGD step; progress in [0, 1] drives the drop-path ramp."""
        with tf.GradientTape() as tape:
            logits, aux_logits = self.model(images, training=True, progress=progress)
            loss = classification_loss(labels, logits, aux_logits, self.optim.aux_weight)
            scaled_loss = self.optimizer.scale_loss(loss)  # on the tape: float16's loss scale
        grads = tape.gradient(scaled_loss, self.variables)
        grad_norm = self.optimizer.apply(grads)
        return {"loss": loss, "grad_norm": grad_norm, "correct": count_correct(labels, logits)}

    def _replica_step(self, images, labels, progress):
        """A replica's share of the step; returns the loss, gradients, correct and count
        summed over all replicas (the same on every replica)."""
        with tf.GradientTape() as tape:
            logits, aux_logits = self.model(images, training=True, progress=progress)
            loss = summed_loss(labels, logits, aux_logits, self.optim.aux_weight,
                               global_batch_size(labels))
            scaled_loss = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled_loss, self.variables)
        # One dtype for the whole all-reduce (it packs its tensors together).
        counts = tf.cast(tf.stack([count_correct(labels, logits), tf.shape(labels)[0]]), tf.float32)
        return tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, (loss, grads, counts))

    def _distributed_train_step(self, images, labels, progress) -> Dict[str, tf.Tensor]:
        summed = self.strategy.run(self._replica_step, args=(images, labels, progress))
        # Every replica holds the same sums: use the first's.
        loss, grads, counts = tf.nest.map_structure(
            lambda value: self.strategy.experimental_local_results(value)[0], summed)
        # L2 lives in the optimizer, so it is added once, to the summed gradients.
        grad_norm = self.optimizer.apply(grads)
        correct, count = tf.unstack(tf.cast(counts, tf.int32))
        return {"loss": loss, "grad_norm": grad_norm, "correct": correct, "count": count}

    def _eval_step(self, images):
        """Predicted class ids [N] with inference-mode BN and no dropout."""
        logits, _ = self.model(images, training=False)
        return tf.argmax(logits, axis=1, output_type=tf.int32)


class SharedChildSteps:
    """Search-phase steps for a SharedChild: the forward pass follows the arc
    eagerly, the optimizer update is one compiled function."""

    def __init__(self, model, optim: OptimConfig, strategy: Optional[tf.distribute.Strategy] = None):
        self.model = model
        self.optim = optim
        self.strategy = strategy or tf.distribute.get_strategy()
        # The variant's quirk (train_aux_head off): the aux loss still reaches the body,
        # but the aux head's own weights are not among the trained variables.
        self.variables: List[tf.Variable] = (list(model.trainable_variables)
                                             if model.config.train_aux_head else model.body_variables())
        announce_child_numerics(model.config)
        self.optimizer = NesterovSGD(self.variables, optim, loss_scale_for(model.config))
        self._apply = tf.function(self.optimizer.apply)

    def train_step(self, images, labels, arc: Sequence[int]) -> Dict[str, tf.Tensor]:
        """One step on `arc`. Under a strategy (the child made in its scope) images and
        labels are a distributed global batch: every replica runs the same arc on its
        slice (eagerly, one thread per local replica), the gradients are summed over
        the replicas, and the update is applied once."""
        if distribute.is_distributed(self.strategy):
            return self._distributed_train_step(images, labels, arc)
        with tf.GradientTape() as tape:
            logits, aux_logits = self.model(images, arc, training=True)
            loss = classification_loss(labels, logits, aux_logits, self.optim.aux_weight)
            scaled_loss = self.optimizer.scale_loss(loss)  # on the tape: float16's loss scale
        # Weights of ops the arc did not choose get a zero loss gradient (their L2
        # gradient and momentum still apply, as in the authors' all-ops graph).
        grads = tape.gradient(scaled_loss, self.variables,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]
        grad_norm = self._apply(grads)
        return {"loss": loss, "grad_norm": grad_norm, "correct": count_correct(labels, logits)}

    def _distributed_train_step(self, images, labels, arc) -> Dict[str, tf.Tensor]:
        def replica_step(images, labels):
            with tf.GradientTape() as tape:
                logits, aux_logits = self.model(images, arc, training=True)
                loss = summed_loss(labels, logits, aux_logits, self.optim.aux_weight,
                                   global_batch_size(labels))
                scaled_loss = self.optimizer.scale_loss(loss)
            grads = tape.gradient(scaled_loss, self.variables,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]
            counts = tf.cast(tf.stack([count_correct(labels, logits), tf.shape(labels)[0]]), tf.float32)
            return tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, (loss, grads, counts))

        summed = self.strategy.run(replica_step, args=(images, labels))
        loss, grads, counts = tf.nest.map_structure(
            lambda value: self.strategy.experimental_local_results(value)[0], summed)
        grad_norm = self._apply(grads)
        correct, count = tf.unstack(tf.cast(counts, tf.int32))
        return {"loss": loss, "grad_norm": grad_norm, "correct": correct, "count": count}

    def count_correct_in_parallel(self, batches, arcs) -> List[int]:
        """Correct predictions of each arc on its batch, one arc per replica at once (all
        replicas of all workers): batches and arcs have num_replicas_in_sync entries,
        the same on every worker. Returns the counts, in order, on every worker."""
        def replica_value(index):
            return self.strategy.experimental_distribute_values_from_function(
                lambda context: batches[context.replica_id_in_sync_group][index])

        def replica_count(images, labels):
            replica = int(tf.distribute.get_replica_context().replica_id_in_sync_group)
            return tf.reshape(self.count_correct(images, labels, arcs[replica]), [1])

        counts = self.strategy.run(replica_count, args=(replica_value(0), replica_value(1)))
        return [int(c) for c in self.strategy.gather(counts, axis=0).numpy()]

    def warm_up(self, images, labels) -> None:
        """Traces every compiled piece (forward, backward, evaluation) on two arcs that
        use every op, without an optimizer step, and without using up dropout draws (a
        resumed run warms up too, and must draw what an uninterrupted one does)."""
        rng_state = tf.identity(self.model.rng.state)
        for arc in arc_lib.warm_up_arcs(self.model.config.num_cells):
            with tf.GradientTape() as tape:
                logits, aux_logits = self.model(images, arc, training=True)
                loss = classification_loss(labels, logits, aux_logits, self.optim.aux_weight)
            tape.gradient(loss, self.variables)
            self.model(images, arc, training=False)
        # Trace the update without running it (running it would move the weights).
        self._apply.get_concrete_function([tf.TensorSpec(v.shape, v.dtype) for v in self.variables])
        self.model.rng.state.assign(rng_state)

    def count_correct(self, images, labels, arc: Sequence[int]):
        """Correct predictions of the shared child with `arc` (batch-stat BN, no dropout)."""
        logits, _ = self.model(images, arc, training=False)
        return count_correct(labels, logits)

    def set_learning_rate(self, lr: float):
        self.optimizer.learning_rate.assign(lr)


StepFn = Callable[[tf.Tensor, tf.Tensor], Dict[str, tf.Tensor]]


class NonFiniteLoss(RuntimeError):
    """The loss or the gradient norm became NaN or infinite."""


class StopRequested(Exception):
    """SIGTERM or SIGINT arrived; raised at the next step boundary."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_stop_signal: Optional[int] = None  # set by the handler of stop_at_step_boundaries


@contextlib.contextmanager
def stop_at_step_boundaries():
    """While active, SIGTERM and SIGINT let the current step finish: the next check_stop()
    raises StopRequested. A second signal interrupts at once."""
    global _stop_signal

    def request_stop(signum, frame):
        global _stop_signal
        if _stop_signal is not None:
            raise KeyboardInterrupt
        _stop_signal = signum

    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may install signal handlers
        return
    previous = {signum: signal.signal(signum, request_stop)
                for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _stop_signal = None


def check_stop() -> None:
    if _stop_signal is not None:
        raise StopRequested(_stop_signal)


def check_finite(loss: float, grad_norm: float, epoch: int, step: int) -> None:
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        raise NonFiniteLoss(f"the loss became {loss} (gradient norm {grad_norm}) at epoch "
                            f"{epoch + 1}, step {step}; nothing of it was checkpointed. A lower "
                            "--child_lr_max usually helps")


def train_one_epoch(step_fn: StepFn, batches, num_batches: int, epoch: int, lr: float,
                    step: tf.Variable, log_every: int, start: float, desc: str,
                    summaries: Optional[RunSummaries] = None) -> Dict[str, float]:
    """Runs step_fn(images, labels) -> {loss, grad_norm, correct} over one epoch with a
    progress bar, a log line every log_every steps (global step counter `step`) and,
    given summaries, the step's figures in TensorBoard. Stops with NonFiniteLoss on a
    NaN or infinite loss, and with StopRequested after a step when a signal asked.

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
