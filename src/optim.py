"""The child's optimizer and learning-rate schedule: SGDR cosine, the flat Nesterov
SGD the authors trained with, and float16's dynamic loss scale."""
from __future__ import annotations

import itertools
import json
import math
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from src.checkpoints import CheckpointMismatch
from src.configs import ChildConfig, OptimConfig


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
