"""Optimizer, learning-rate schedule, losses and the compiled child steps.

Models are passed in; nothing here reads globals. Two step builders:
  * FixedChildSteps: the whole train step of the fixed child is one
    tf.function (the arc is static, so the graph is too);
  * SharedChildSteps: the search-phase step runs the shared child's forward
    pass eagerly over the sampled arc (its expensive pieces are compiled, see
    src/shared_child.py) and applies the update with one compiled function.
"""
from __future__ import annotations

import math
import os
import random
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from src import arc as arc_lib
from src import reporting
from src.configs import OptimConfig
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
    """

    def __init__(self, variables: Sequence[tf.Variable], optim: OptimConfig):
        super().__init__(name="nesterov_sgd")
        self._variables = list(variables)
        self._sizes = [v.shape.num_elements() for v in self._variables]
        self._segments = tf.constant(np.repeat(np.arange(len(self._sizes)), self._sizes), tf.int32)
        self.optim = optim
        self.learning_rate = tf.Variable(optim.lr_max, trainable=False, name="learning_rate")
        self.accumulator = tf.Variable(tf.zeros([sum(self._sizes)]), trainable=False,
                                       name="accumulator")
        self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")

    def apply(self, grads):
        """Applies one update (call inside a tf.function); returns the global gradient
        norm before clipping."""
        flat_w = tf.concat([tf.reshape(v, [-1]) for v in self._variables], axis=0)
        flat_g = tf.concat([tf.reshape(g, [-1]) for g in grads], axis=0)
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


class FixedChildSteps:
    """Compiled train and eval steps for a FixedChild."""

    def __init__(self, model, optim: OptimConfig, image_shape: Sequence[int]):
        self.model = model
        self.optim = optim
        self.variables = list(model.trainable_variables)
        self.optimizer = NesterovSGD(self.variables, optim)
        images = tf.TensorSpec([None, *image_shape], tf.float32)
        labels = tf.TensorSpec([None], tf.int32)
        self.train_step = tf.function(self._train_step, input_signature=[
            images, labels, tf.TensorSpec([], tf.float32)])
        self.eval_step = tf.function(self._eval_step, input_signature=[images])

    def _train_step(self, images, labels, progress) -> Dict[str, tf.Tensor]:
        """One SGD step; progress in [0, 1] drives the drop-path ramp."""
        with tf.GradientTape() as tape:
            logits, aux_logits = self.model(images, training=True, progress=progress)
            loss = classification_loss(labels, logits, aux_logits, self.optim.aux_weight)
        grads = tape.gradient(loss, self.variables)
        grad_norm = self.optimizer.apply(grads)
        return {"loss": loss, "grad_norm": grad_norm, "correct": count_correct(labels, logits)}

    def _eval_step(self, images):
        """Predicted class ids [N] with inference-mode BN and no dropout."""
        logits, _ = self.model(images, training=False)
        return tf.argmax(logits, axis=1, output_type=tf.int32)


class SharedChildSteps:
    """Search-phase steps for a SharedChild: the forward pass follows the arc
    eagerly, the optimizer update is one compiled function."""

    def __init__(self, model, optim: OptimConfig):
        self.model = model
        self.optim = optim
        # The variant's quirk (train_aux_head off): the aux loss still reaches the body,
        # but the aux head's own weights are not among the trained variables.
        self.variables: List[tf.Variable] = (list(model.trainable_variables)
                                             if model.config.train_aux_head else model.body_variables())
        self.optimizer = NesterovSGD(self.variables, optim)
        self._apply = tf.function(self.optimizer.apply)

    def train_step(self, images, labels, arc: Sequence[int]) -> Dict[str, tf.Tensor]:
        with tf.GradientTape() as tape:
            logits, aux_logits = self.model(images, arc, training=True)
            loss = classification_loss(labels, logits, aux_logits, self.optim.aux_weight)
        # Weights of ops the arc did not choose get a zero loss gradient (their L2
        # gradient and momentum still apply, as in the authors' all-ops graph).
        grads = tape.gradient(loss, self.variables,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]
        grad_norm = self._apply(grads)
        return {"loss": loss, "grad_norm": grad_norm, "correct": count_correct(labels, logits)}

    def warm_up(self, images, labels) -> None:
        """Traces every compiled piece (forward, backward, evaluation) on two arcs that
        use every op, without an optimizer step."""
        for arc in arc_lib.warm_up_arcs(self.model.config.num_cells):
            with tf.GradientTape() as tape:
                logits, aux_logits = self.model(images, arc, training=True)
                loss = classification_loss(labels, logits, aux_logits, self.optim.aux_weight)
            tape.gradient(loss, self.variables)
            self.model(images, arc, training=False)
        # Trace the update without running it (running it would move the weights).
        self._apply.get_concrete_function([tf.TensorSpec(v.shape, v.dtype) for v in self.variables])

    def count_correct(self, images, labels, arc: Sequence[int]):
        """Correct predictions of the shared child with `arc` (batch-stat BN, no dropout)."""
        logits, _ = self.model(images, arc, training=False)
        return count_correct(labels, logits)

    def set_learning_rate(self, lr: float):
        self.optimizer.learning_rate.assign(lr)


StepFn = Callable[[tf.Tensor, tf.Tensor], Dict[str, tf.Tensor]]


def train_one_epoch(step_fn: StepFn, batches, num_batches: int, epoch: int, lr: float,
                    step: tf.Variable, log_every: int, start: float, desc: str,
                    summaries: Optional[RunSummaries] = None) -> Dict[str, float]:
    """Runs step_fn(images, labels) -> {loss, grad_norm, correct} over one epoch with a
    progress bar, a log line every log_every steps (global step counter `step`) and,
    given summaries, the step's figures in TensorBoard.

    Returns the epoch's mean training loss and accuracy."""
    losses, correct, seen = [], 0, 0
    bar = reporting.ProgressBar(num_batches, desc=desc)
    for images, labels in batches:
        metrics = step_fn(images, labels)
        step.assign_add(1)
        losses.append(float(metrics["loss"]))  # also waits for the step to finish
        correct += int(metrics["correct"])
        seen += int(labels.shape[0])
        if summaries is not None:
            summaries.scalars({"child/loss": losses[-1], "child/learning_rate": lr,
                               "child/accuracy": int(metrics["correct"]) / int(labels.shape[0]),
                               "child/grad_norm": metrics["grad_norm"]}, int(step))
        if int(step) % log_every == 0:
            bar.write(reporting.format_train_line(
                epoch + 1, int(step), losses[-1], lr, float(metrics["grad_norm"]),
                int(metrics["correct"]), int(labels.shape[0]), (time.time() - start) / 60,
                bar.eta()))
        bar.update(loss=losses[-1])
    bar.close()
    return {"train_loss": float(np.mean(losses)) if losses else float("nan"),
            "train_accuracy": correct / max(1, seen)}


class CheckpointMismatch(ValueError):
    """The output folder's checkpoint does not fit the model built from these flags."""


def restore_or_start(checkpoint: tf.train.Checkpoint, output_dir: str,
                     checkpoint_subdir: str) -> tf.train.CheckpointManager:
    """A manager for output_dir/checkpoint_subdir; restores its latest checkpoint if any
    (the caller prints where it resumed)."""
    manager = tf.train.CheckpointManager(checkpoint, os.path.join(output_dir, checkpoint_subdir),
                                         max_to_keep=3)
    if manager.latest_checkpoint:
        try:
            checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.InvalidArgumentError):
            raise CheckpointMismatch(
                f"{output_dir} holds checkpoints of a different model (other flags?); choose "
                "another --output_dir or pass --reset_output_dir") from None
    return manager
