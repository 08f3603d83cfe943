"""The ENAS micro controller: an LSTM that samples arcs (spec section 4).

It knows arcs only; the reward comes from the caller (see controller_step.py).

Both cells are walked by one routine, `_walk`, which asks a `choose` callback for
every decision: sampling draws from the logits, teacher forcing reads the given
arcs. That keeps the sampled log-prob and the recomputed one on the same path.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import numpy as np
import tensorflow as tf

from src.arc import NUM_BRANCHES
from src.configs import ControllerConfig

INIT_RANGE = 0.1  # every weight uniform(-0.1, 0.1), except b_soft
OP_BIAS_INIT = (10.0, 10.0, 0.0, 0.0, 0.0)  # learned b_soft starts on the sep convs
NORMAL_OP_BIAS = (0.25, 0.25, -0.25, -0.25, -0.25)  # fixed, normal cell only

# choose(shaped logits [K, n], arc position) -> chosen ids [K] int32
Chooser = Callable[[tf.Tensor, int], tf.Tensor]


class Controller(tf.Module):
    """Samples arcs of 8 * num_cells ints (normal cell, then reduction cell)."""

    def __init__(self, config: ControllerConfig = ControllerConfig()):
        super().__init__(name="controller")
        self.config = config
        self.arc_length = 8 * config.num_cells
        size = config.lstm_size
        # A separate generator for the initial weights, so that the sampling
        # stream below depends on config.seed only.
        init = tf.random.Generator.from_seed(config.seed + 1)

        def uniform(shape, name):
            return tf.Variable(init.uniform(shape, -INIT_RANGE, INIT_RANGE), name=name)

        self.w_lstm = uniform([2 * size, 4 * size], "w_lstm")  # [x, h] -> [i, f, o, g]
        self.g_emb = uniform([1, size], "g_emb")
        self.w_emb = uniform([NUM_BRANCHES, size], "w_emb")
        self.w_soft = uniform([size, NUM_BRANCHES], "w_soft")
        self.b_soft = tf.Variable([OP_BIAS_INIT], dtype=tf.float32, name="b_soft")
        self.w_attn_1 = uniform([size, size], "w_attn_1")
        self.w_attn_2 = uniform([size, size], "w_attn_2")
        self.v_attn = uniform([size, 1], "v_attn")
        self.normal_op_bias = tf.constant([NORMAL_OP_BIAS], dtype=tf.float32)
        self.rng = tf.random.Generator.from_seed(config.seed)

    # ------------------------------------------------------------------ public

    @tf.function(input_signature=[tf.TensorSpec([], tf.int32)])
    def sample_batch(self, count):
        """`count` arcs drawn at once, in one batched walk: (arcs int32 [count, L],
        neg_log_prob float32 [count], entropy float32 [count]).

        neg_log_prob is the summed cross-entropy (-log p) of all choices."""
        arcs, logits = self._walk(self._draw, batch=count)
        neg_log_prob, entropy = _neg_log_prob_and_entropy(logits, arcs)
        return arcs, neg_log_prob, entropy

    def sample(self):
        """One arc: (arc int32 [L], neg_log_prob float32 [], entropy float32 [])."""
        arcs, neg_log_prob, entropy = self.sample_batch(tf.constant(1))
        return arcs[0], neg_log_prob[0], entropy[0]

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)])
    def neg_log_prob_and_entropy(self, arcs):
        """arcs int32 [K, L] -> (neg_log_prob [K], entropy [K]) by teacher forcing.

        Differentiable w.r.t. the trainable variables (neg_log_prob only)."""
        arcs = tf.ensure_shape(arcs, [None, self.arc_length])
        _, logits = self._walk(_teacher(arcs), batch=tf.shape(arcs)[0])
        return _neg_log_prob_and_entropy(logits, arcs)

    def logits_for(self, arc) -> List[np.ndarray]:
        """The shaped logits of each of the L choices of `arc`, in arc order
        (index choices: k entries for node k; op choices: NUM_BRANCHES)."""
        arcs = tf.constant([list(arc)], dtype=tf.int32)
        _, logits = self._walk(_teacher(arcs), batch=1)
        return [l[0].numpy() for l in logits]

    # ------------------------------------------------------------- the walk

    def _walk(self, choose: Chooser, batch) -> Tuple[tf.Tensor, List[tf.Tensor]]:
        """Runs the normal then the reduction cell sampler on one LSTM state.

        Returns (choices int32 [K, L], shaped logits per arc position)."""
        zeros = tf.zeros([batch, self.config.lstm_size])
        state = (zeros, zeros)
        choices: Dict[int, tf.Tensor] = {}
        logits: Dict[int, tf.Tensor] = {}
        for cell, is_normal in enumerate((True, False)):
            offset = cell * 4 * self.config.num_cells
            state = self._walk_cell(state, choose, batch, is_normal, offset, choices, logits)
        positions = range(self.arc_length)
        return tf.stack([choices[p] for p in positions], axis=1), [logits[p] for p in positions]

    def _walk_cell(self, state, choose, batch, is_normal, offset, choices, logits):
        """One cell's decisions, written into choices/logits by arc position;
        returns the final LSTM state (c, h)."""
        # Broadcast, not tile: tile's gradient transposes an int32 shape tensor, which
        # the oneDNN graph pass reports as unsupported on this CPU (an error line).
        start = tf.broadcast_to(self.g_emb, [batch, self.config.lstm_size])
        anchors, anchors_w1 = [], []
        for _ in range(2):  # the two cell inputs: an attention key, no embedding
            state = self._lstm(start, state)
            anchors.append(tf.zeros_like(state[1]))
            anchors_w1.append(state[1] @ self.w_attn_1)

        x = start
        for node in range(self.config.num_cells):
            base = offset + 4 * node  # x_id, x_op, y_id, y_op
            stacked_anchors = tf.stack(anchors, axis=1)  # [K, k, lstm]
            stacked_w1 = tf.stack(anchors_w1, axis=1)
            for pos in (base, base + 2):  # both input ids first ...
                state = self._lstm(x, state)
                logits[pos] = self._index_logits(state[1], stacked_w1)
                choices[pos] = choose(logits[pos], pos)
                x = tf.gather(stacked_anchors, choices[pos], batch_dims=1)
            for pos in (base + 1, base + 3):  # ... then both ops
                state = self._lstm(x, state)
                logits[pos] = self._op_logits(state[1], is_normal)
                choices[pos] = choose(logits[pos], pos)
                x = tf.gather(self.w_emb, choices[pos])
            state = self._lstm(x, state)  # the node's own anchor
            anchors.append(state[1])
            anchors_w1.append(state[1] @ self.w_attn_1)
            x = start
        return state

    def _lstm(self, x, state):
        """One bias-free LSTM step: [i, f, o, g] = [x, h] @ W."""
        c, h = state
        i, f, o, g = tf.split(tf.concat([x, h], axis=1) @ self.w_lstm, 4, axis=1)
        c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
        return c, tf.sigmoid(o) * tf.tanh(c)

    def _index_logits(self, h, anchors_w1):
        """Attention over the k previous ids: anchors_w1 [K, k, lstm] -> [K, k]."""
        query = tf.expand_dims(h @ self.w_attn_2, 1)
        raw = tf.squeeze(tf.tanh(anchors_w1 + query) @ self.v_attn, axis=2)
        return self._shape(raw, self.config.tanh_constant)

    def _op_logits(self, h, is_normal):
        """Op logits [K, NUM_BRANCHES]; the normal cell adds its fixed bias last."""
        tanh_constant = self.config.tanh_constant
        if tanh_constant is not None:
            tanh_constant /= self.config.op_tanh_reduce
        logits = self._shape(h @ self.w_soft + self.b_soft, tanh_constant)
        return logits + self.normal_op_bias if is_normal else logits

    def _shape(self, logits, tanh_constant):
        """Temperature, then a tanh squash that keeps the logits in a bounded range."""
        if self.config.temperature is not None:
            logits = logits / self.config.temperature
        if tanh_constant is not None:
            logits = tanh_constant * tf.tanh(logits)
        return logits

    def _draw(self, logits, position):
        """Samples one id per row with the module's generator (Gumbel-max)."""
        del position
        uniform = self.rng.uniform(tf.shape(logits), minval=1e-20, maxval=1.0)
        gumbel = -tf.math.log(-tf.math.log(uniform))
        return tf.argmax(logits + gumbel, axis=1, output_type=tf.int32)


def _teacher(arcs) -> Chooser:
    """A chooser that feeds the given arcs' choices (teacher forcing)."""
    return lambda logits, position: arcs[:, position]


def _neg_log_prob_and_entropy(logits: List[tf.Tensor], choices) -> Tuple[tf.Tensor, tf.Tensor]:
    """Sums over positions of -log p(choice) and of the entropy (no gradient)."""
    neg_log_prob, entropy = 0.0, 0.0
    for position, l in enumerate(logits):
        neg_log_prob += tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=choices[:, position], logits=l)
        entropy += tf.stop_gradient(tf.nn.softmax_cross_entropy_with_logits(
            labels=tf.nn.softmax(l), logits=l))
    return neg_log_prob, entropy
