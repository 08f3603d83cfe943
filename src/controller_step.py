"""REINFORCE with a moving-average baseline for the controller (spec section 4).

The caller (the search loop) samples arcs, scores them on the shared child and
turns the scores into rewards with `reward_from`; `ReinforceTrainer.update` then
takes one Adam step on the K aggregated samples.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import tensorflow as tf

from src.configs import ControllerConfig
from src.controller import Controller


def reward_from(accuracy, entropy, entropy_weight: float):
    """Reward of one sampled arc: its validation accuracy plus an entropy bonus."""
    return accuracy + entropy_weight * entropy


def moving_average_baselines(baseline, rewards, bl_dec: float):
    """The baseline after each reward in turn: b <- b - (1 - bl_dec) * (b - r).

    baseline [] and rewards [K] -> [K]; the last entry is the new baseline."""
    return tf.scan(lambda b, r: b - (1.0 - bl_dec) * (b - r), rewards, initializer=baseline)


class ReinforceTrainer(tf.Module):
    """Holds the controller, its Adam optimizer and the reward baseline."""

    def __init__(self, controller: Controller, config: Optional[ControllerConfig] = None):
        """config defaults to the controller's own (lr, bl_dec)."""
        super().__init__(name="reinforce_trainer")
        self.controller = controller
        self.config = config = config or controller.config
        self.baseline = tf.Variable(0.0, trainable=False, name="baseline")
        self.optimizer = tf.keras.optimizers.Adam(
            learning_rate=config.lr, beta_1=0.0, epsilon=1e-3)
        # Slots exist before any tracing, so the compiled step never creates variables.
        self.optimizer.build(controller.trainable_variables)

    def update(self, arcs, rewards) -> Dict[str, float]:
        """One step on arcs int32 [K, L] with their rewards [K]; returns its stats."""
        arcs = tf.constant(np.asarray(arcs, dtype=np.int32))
        rewards = tf.constant(np.asarray(rewards, dtype=np.float32))
        return {name: float(value) for name, value in self.train_step(arcs, rewards).items()}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32),
                                  tf.TensorSpec([None], tf.float32)])
    def train_step(self, arcs, rewards):
        """The compiled step behind `update`; returns a dict of float32 scalars."""
        baselines = moving_average_baselines(self.baseline, rewards, self.config.bl_dec)
        # Each sample is judged against the baseline updated with its own reward.
        advantages = rewards - baselines
        variables = self.controller.trainable_variables
        with tf.GradientTape() as tape:
            neg_log_prob, entropy = self.controller.neg_log_prob_and_entropy(arcs)
            # REINFORCE: minimising -log p(arc) * advantage raises the probability of arcs
            # rewarded above the baseline. Mean over the K samples = the authors' averaged
            # per-sample gradients.
            loss = tf.reduce_mean(neg_log_prob * advantages)
        grads = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        self.baseline.assign(baselines[-1])
        return {
            "loss": loss,
            "grad_norm": tf.linalg.global_norm(grads),
            "baseline": self.baseline.read_value(),
            "reward": tf.reduce_mean(rewards),
            "advantage": tf.reduce_mean(advantages),
            "neg_log_prob": tf.reduce_mean(neg_log_prob),
            "entropy": tf.reduce_mean(entropy),
        }
