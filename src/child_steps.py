"""The compiled train and evaluation steps of both children, on one interface.

  * FixedChildSteps: the arc is static, so the whole train step is one tf.function;
  * SharedChildSteps: the forward pass follows the sampled arc eagerly (its expensive
    pieces are compiled, see src/shared_child.py) and the update is one compiled
    function.

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

from src import arc as arc_lib
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


def count_correct(labels, logits):
    predictions = tf.argmax(logits, axis=1, output_type=tf.int32)
    return tf.reduce_sum(tf.cast(tf.equal(predictions, labels), tf.int32))


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
        return {"loss": loss, "grad_norm": grad_norm, "correct": count_correct(labels, logits)}

    def _replica_sums(self, images, labels, step_input):
        """A replica's share of the step; returns the loss, gradients, correct and count
        summed over all replicas (the same on every replica)."""
        loss, grads, logits = self._loss_and_gradients(images, labels, step_input,
                                                       global_batch_size(labels))
        # One dtype for the whole all-reduce (it packs its tensors together).
        counts = tf.cast(tf.stack([count_correct(labels, logits), tf.shape(labels)[0]]), tf.float32)
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
        images = tf.TensorSpec([None, *image_shape], tf.float32)
        labels = tf.TensorSpec([None], tf.int32)
        if not distribute.is_distributed(self.strategy):
            self.train_step = tf.function(
                lambda images, labels, progress: self._one_device_step(
                    images, labels, progress, self.optimizer.apply),
                input_signature=[images, labels, tf.TensorSpec([], tf.float32)])
        else:  # distributed batches: the signature follows them
            self.train_step = tf.function(
                lambda images, labels, progress: self._distributed_step(
                    images, labels, progress, self.optimizer.apply), reduce_retracing=True)
        self.eval_step = tf.function(self._eval_step, input_signature=[images])

    def _train_forward(self, images, progress):
        return self.model(images, training=True, progress=progress)

    def _eval_step(self, images):
        """Predicted class ids [N] with inference-mode BN and no dropout."""
        logits, _ = self.model(images, training=False)
        return tf.argmax(logits, axis=1, output_type=tf.int32)


class SharedChildSteps(ChildSteps):
    """Search-phase steps for a SharedChild; train_step's step_input is the arc. Under a
    strategy every replica runs the same arc on its slice (eagerly, one thread per local
    replica)."""

    def __init__(self, model, optim: OptimConfig, strategy: Optional[tf.distribute.Strategy] = None):
        # The variant's quirk (train_aux_head off): the aux loss still reaches the body,
        # but the aux head's own weights are not among the trained variables.
        variables = (model.trainable_variables if model.config.train_aux_head
                     else model.body_variables())
        super().__init__(model, optim, variables, strategy)
        self._apply = tf.function(self.optimizer.apply)

    def train_step(self, images, labels, arc: Sequence[int]) -> Dict[str, tf.Tensor]:
        if distribute.is_distributed(self.strategy):
            return self._distributed_step(images, labels, arc, self._apply)
        return self._one_device_step(images, labels, arc, self._apply)

    def _train_forward(self, images, arc):
        return self.model(images, arc, training=True)

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
            self._loss_and_gradients(images, labels, arc)
            self.model(images, arc, training=False)
        # Trace the update without running it (running it would move the weights).
        self._apply.get_concrete_function([tf.TensorSpec(v.shape, v.dtype) for v in self.variables])
        self.model.rng.state.assign(rng_state)

    def count_correct(self, images, labels, arc: Sequence[int]):
        """Correct predictions of the shared child with `arc` (batch-stat BN, no dropout)."""
        logits, _ = self.model(images, arc, training=False)
        return count_correct(labels, logits)
