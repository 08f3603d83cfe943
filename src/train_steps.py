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
from typing import Dict, List, Sequence

import tensorflow as tf

from src.configs import OptimConfig


def cosine_lr(epoch: int, optim: OptimConfig, lr_max: float = None, lr_min: float = None) -> float:
    """Cosine learning rate with warm restarts (SGDR), constant within an epoch.

    Periods T_0, T_0 * T_mul, ...: with T_0 = 10, T_mul = 2 it restarts after
    epochs 10, 30, 70, 150, 310, 630.
    """
    lr_max = optim.lr_max if lr_max is None else lr_max
    lr_min = optim.lr_min if lr_min is None else lr_min
    start, period = 0, optim.lr_T_0
    while epoch >= start + period:
        start, period = start + period, period * optim.lr_T_mul
    t = (epoch - start) / period
    return lr_min + 0.5 * (lr_max - lr_min) * (1.0 + math.cos(math.pi * t))


def make_sgd(optim: OptimConfig, variables: Sequence[tf.Variable]) -> tf.keras.optimizers.Optimizer:
    """SGD with Nesterov momentum; slots built now, before any step is traced."""
    optimizer = tf.keras.optimizers.SGD(learning_rate=optim.lr_max, momentum=optim.momentum,
                                        nesterov=True)
    optimizer.build(list(variables))
    return optimizer


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


def regularize_and_clip(grads, variables, l2_reg: float, grad_bound: float):
    """Adds the L2 gradient (loss + l2 * sum w^2, all weights as the authors do) and
    clips every tensor to norm grad_bound (the authors' 'norm' mode never clipped).

    Returns (clipped grads, global norm before clipping)."""
    grads = [g + 2.0 * l2_reg * v for g, v in zip(grads, variables)]
    norm = tf.linalg.global_norm(grads)
    if grad_bound > 0:
        grads = [tf.clip_by_norm(g, grad_bound) for g in grads]
    return grads, norm


class FixedChildSteps:
    """Compiled train and eval steps for a FixedChild."""

    def __init__(self, model, optim: OptimConfig, image_shape: Sequence[int]):
        self.model = model
        self.optim = optim
        self.variables = list(model.trainable_variables)
        self.optimizer = make_sgd(optim, self.variables)
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
        grads, grad_norm = regularize_and_clip(grads, self.variables, self.optim.l2_reg,
                                               self.optim.grad_bound)
        self.optimizer.apply_gradients(zip(grads, self.variables))
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
        self.variables: List[tf.Variable] = list(model.trainable_variables)
        self.optimizer = make_sgd(optim, self.variables)
        self._apply = tf.function(self._apply_grads)

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

    def _apply_grads(self, grads):
        grads, grad_norm = regularize_and_clip(grads, self.variables, self.optim.l2_reg,
                                               self.optim.grad_bound)
        self.optimizer.apply_gradients(zip(grads, self.variables))
        return grad_norm

    def count_correct(self, images, labels, arc: Sequence[int]):
        """Correct predictions of the shared child with `arc` (batch-stat BN, no dropout)."""
        logits, _ = self.model(images, arc, training=False)
        return count_correct(labels, logits)

    def set_learning_rate(self, lr: float):
        self.optimizer.learning_rate.assign(lr)
