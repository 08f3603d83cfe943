"""The compiled train and evaluation steps of both children, on one interface.

  * FixedChildSteps: the arc is built into the model;
  * SharedChildSteps: the arc is an int32 tensor argument, so one trace serves every
    arc (src/shared_child.py).

Either way the whole train step (forward, backward, update) is one tf.function.

Both: set_learning_rate(lr), and train_step(images, labels, step_input) -> {loss,
grad_norm, correct} (plus count under a strategy), where step_input is what the child
needs besides the batch: the fraction of training done (fixed child, for the drop-path
ramp) or the sampled arc (shared child). Under a tf.distribute strategy (the model and
the steps made in its scope) the batch is a distributed global batch: each replica runs
forward and backward on its slice, the gradients are summed over the replicas, and the
optimizer applies them once, in cross-replica context. Models are passed in; nothing
here reads globals.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import tensorflow as tf

from src import distribute, ops
from src.configs import ChildConfig, OptimConfig
from src.optim import NesterovSGD, loss_scale_for


def classification_loss(labels, logits, aux_logits, aux_weight: float, global_count=None):
    """Mean cross-entropy, plus aux_weight times the aux head's when it ran. Given
    global_count (a replica's slice of a global batch), the slice's summed cross-entropy
    over the global batch's size, so the replicas' losses (and gradients) add up to those
    of the global batch."""
    reduce = tf.reduce_mean if global_count is None else tf.reduce_sum
    loss = reduce(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
    if aux_logits is not None:
        loss += aux_weight * reduce(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=aux_logits))
    return loss if global_count is None else loss / global_count


def correct_predictions(labels, logits):
    """How many argmax predictions of logits [N, classes] equal labels [N] (int32 [])."""
    predictions = tf.argmax(logits, axis=1, output_type=tf.int32)
    return tf.reduce_sum(tf.cast(tf.equal(predictions, labels), tf.int32))


def images_spec(image_shape: Sequence[int]) -> tf.TensorSpec:
    """A batch of any size of float32 images [N, H, W, C]."""
    return tf.TensorSpec([None, *image_shape], tf.float32)


def global_batch_size(labels):
    """Examples in the global batch (float32 []): the replicas' counts all-reduced."""
    count = tf.cast(tf.shape(labels)[0], tf.float32)
    return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, count)


def announce_child_numerics(config: ChildConfig) -> None:
    """The log lines naming the depthwise-conv gradients and the precision chosen."""
    print(ops.describe_depthwise_gradients())
    print(ops.describe_mixed_precision(config.mixed_precision))


class ChildSteps:
    """What both children's steps share: the optimizer over `variables`, the loss and
    its gradients, the one-device and the distributed step. Subclasses say how the
    child runs forward in training (_train_forward) and compile train_step."""

    def __init__(self, model, optim: OptimConfig, variables: Sequence[tf.Variable],
                 strategy: Optional[tf.distribute.Strategy] = None):
        self.model = model
        self.optim = optim
        self.strategy = strategy or tf.distribute.get_strategy()
        self.variables: List[tf.Variable] = list(variables)
        announce_child_numerics(model.config)
        # Outside the strategy's scope: the optimizer runs once per step, in cross-replica
        # context, so its state is one ordinary copy per worker (a multi-worker strategy
        # could not broadcast its string layout variable anyway).
        self.optimizer = NesterovSGD(self.variables, optim, loss_scale_for(model.config))

    def set_learning_rate(self, lr: float) -> None:
        self.optimizer.learning_rate.assign(lr)

    def _compiled_train_step(self, image_shape: Sequence[int], step_input: tf.TensorSpec):
        """train_step(images, labels, step_input) as one tf.function: forward, backward
        and the update. No autograph: the models' Python control flow is over Python
        values only, and converting it tripled the shared child's tracing time. One trace on one device; under a strategy the signature follows
        the distributed batches."""
        if not distribute.is_distributed(self.strategy):
            return tf.function(
                lambda images, labels, extra: self._one_device_step(
                    images, labels, extra, self.optimizer.apply),
                input_signature=[images_spec(image_shape), tf.TensorSpec([None], tf.int32),
                                 step_input], autograph=False)
        return tf.function(
            lambda images, labels, extra: self._distributed_step(
                images, labels, extra, self.optimizer.apply), reduce_retracing=True,
            autograph=False)

    def _train_forward(self, images, step_input):
        """(logits, aux logits or None) of the child in training mode."""
        raise NotImplementedError

    def _loss_and_gradients(self, images, labels, step_input, global_count=None):
        with tf.GradientTape() as tape:
            logits, aux_logits = self._train_forward(images, step_input)
            loss = classification_loss(labels, logits, aux_logits, self.optim.aux_weight,
                                       global_count)
            scaled_loss = self.optimizer.scale_loss(loss)  # on the tape: float16's loss scale
        # Weights of ops the arc did not choose get a zero loss gradient (their L2
        # gradient and momentum still apply, as in the authors' all-ops graph).
        grads = tape.gradient(scaled_loss, self.variables,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]
        return loss, grads, logits

    def _one_device_step(self, images, labels, step_input, apply) -> Dict[str, tf.Tensor]:
        loss, grads, logits = self._loss_and_gradients(images, labels, step_input)
        grad_norm = apply(grads)
        return {"loss": loss, "grad_norm": grad_norm, "correct": correct_predictions(labels, logits)}

    def _replica_sums(self, images, labels, step_input):
        """A replica's share of the step; returns the loss, gradients, correct and count
        summed over all replicas (the same on every replica)."""
        loss, grads, logits = self._loss_and_gradients(images, labels, step_input,
                                                       global_batch_size(labels))
        # One dtype for the whole all-reduce (it packs its tensors together).
        counts = tf.cast(tf.stack([correct_predictions(labels, logits), tf.shape(labels)[0]]), tf.float32)
        return tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, (loss, grads, counts))

    def _distributed_step(self, images, labels, step_input, apply) -> Dict[str, tf.Tensor]:
        summed = self.strategy.run(lambda i, l: self._replica_sums(i, l, step_input),
                                   args=(images, labels))
        # Every replica holds the same sums: use the first's.
        loss, grads, counts = tf.nest.map_structure(
            lambda value: self.strategy.experimental_local_results(value)[0], summed)
        # L2 lives in the optimizer, so it is added once, to the summed gradients.
        grad_norm = apply(grads)
        correct, count = tf.unstack(tf.cast(counts, tf.int32))
        return {"loss": loss, "grad_norm": grad_norm, "correct": correct, "count": count}


class FixedChildSteps(ChildSteps):
    """Compiled train and eval steps for a FixedChild; train_step's step_input is the
    fraction of training done, in [0, 1] (float32 []), for the drop-path ramp."""

    def __init__(self, model, optim: OptimConfig, image_shape: Sequence[int],
                 strategy: Optional[tf.distribute.Strategy] = None):
        super().__init__(model, optim, model.trainable_variables, strategy)
        self.train_step = self._compiled_train_step(image_shape, tf.TensorSpec([], tf.float32))
        self.eval_step = tf.function(self._eval_step, input_signature=[images_spec(image_shape)],
                                     autograph=False)

    def _train_forward(self, images, progress):
        return self.model(images, training=True, progress=progress)

    def _eval_step(self, images):
        """Predicted class ids [N] with inference-mode BN and no dropout."""
        logits, _ = self.model(images, training=False)
        return tf.argmax(logits, axis=1, output_type=tf.int32)


class SharedChildSteps(ChildSteps):
    """Search-phase steps for a SharedChild; train_step's step_input is the arc, int32
    [8 * B]. Both the train step and the scoring forward are one compiled function
    each, traced once for every arc (src/shared_child.py)."""

    def __init__(self, model, optim: OptimConfig, strategy: Optional[tf.distribute.Strategy] = None):
        # The variant's quirk (train_aux_head off): the aux loss still reaches the body,
        # but the aux head's own weights are not among the trained variables.
        variables = (model.trainable_variables if model.config.train_aux_head
                     else model.body_variables())
        super().__init__(model, optim, variables, strategy)
        config = model.config
        self.image_shape = (config.img_size, config.img_size, config.channel)
        self.arc_spec = tf.TensorSpec([model.arc_length], tf.int32)
        self.train_step = self._compiled_train_step(self.image_shape, self.arc_spec)
        self.count_correct = tf.function(
            self._count_correct,
            input_signature=[images_spec(self.image_shape), tf.TensorSpec([None], tf.int32),
                             self.arc_spec], autograph=False)

    def compiled_functions(self):
        """The step's compiled functions (to count traces)."""
        return [self.train_step, self.count_correct]

    def _train_forward(self, images, arc):
        return self.model(images, arc, training=True)

    def _count_correct(self, images, labels, arc):
        """Correct predictions of the shared child with `arc` (batch-stat BN, no dropout)."""
        logits, _ = self.model(images, arc, training=False)
        return correct_predictions(labels, logits)

    def count_correct_in_parallel(self, batches, arcs) -> List[int]:
        """Correct predictions of each arc on its batch, one arc per replica at once (all
        replicas of all workers): batches and arcs have num_replicas_in_sync entries,
        the same on every worker. Returns the counts, in order, on every worker."""
        def replica_value(index):
            return self.strategy.experimental_distribute_values_from_function(
                lambda context: batches[context.replica_id_in_sync_group][index])

        arc_values = self.strategy.experimental_distribute_values_from_function(
            lambda context: arcs[context.replica_id_in_sync_group])
        counts = self.strategy.run(lambda images, labels, arc: tf.reshape(
            self.count_correct(images, labels, arc), [1]),
            args=(replica_value(0), replica_value(1), arc_values))
        return [int(c) for c in self.strategy.gather(counts, axis=0).numpy()]

    def warm_up(self) -> None:
        """Traces the train step and the scoring forward without running them (running
        would move the weights and use up dropout draws, which a resumed run must draw
        as an uninterrupted one does). A distributed step is traced at its first call."""
        labels = tf.TensorSpec([None], tf.int32)
        if not distribute.is_distributed(self.strategy):
            self.train_step.get_concrete_function(images_spec(self.image_shape), labels,
                                                  self.arc_spec)
        self.count_correct.get_concrete_function(images_spec(self.image_shape), labels,
                                                 self.arc_spec)
