"""The weight-shared child of the search phase (spec section 2, authors' layout).

Every node input holds the weights of all candidate ops, one slice per
possible input id (BN of the separable convs too). A forward pass takes an arc
as Python ints and runs only the sampled op of each node; `dispatch_all_ops`
computes all five and selects, as the authors do, on the same weights.

Execution strategy (chosen by measurement, see README "Performance"): the
walk over the arc is plain Python, and the pieces it calls (stacked separable
conv, pools, the final combine, every conv + BN and factorized reduction of
the stem, calibration and aux head, the classifier) are module-level
tf.functions; only a few small ops between them run eagerly (a relu, the aux
head's pool and dense layer). The pieces take weight values (and the input id
as a one-hot "pick") as tensors, so their traces are keyed by shapes only: any
number of arcs, layers and children reuse the same few traces, and no graph
carries an op that the arc did not choose. Compiled pieces matter on CPU:
eager max pooling, for one, runs about 6x slower than the same op inside a
graph. Values, not variables, are passed: a trace relaxed to several variable
shapes keeps the first one's static shape, and its gradient then fails.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Union

import tensorflow as tf

from src import arc as arc_lib
from src.configs import ChildConfig
from src.ops import (AuxHead, Calibrate, ClassifierHead, ConvBN, FactorizedReduction,
                     avg_pool3x3, batch_norm_batch_stats, batch_norm_train, classifier_head,
                     compute_dtype, count_params, dropout_generator, factorized_paths, halved,
                     he_normal, in_dtype_of, max_pool3x3, next_seed, separable_conv)


def sep_conv_stack(x, pick, depthwise, pointwise, scale, offset):
    """Twice (relu, separable conv, BN with batch stats) with the weight slices that
    `pick` selects. pick: float32 [B + 2], one-hot on the input id; each weight list
    holds two values [num_inputs, ...], num_inputs <= B + 2 (node k reads k + 2)."""
    # A float selector, not an int id: recompute_grad watches every argument, and a
    # tape cannot watch an integer. It is a constant, so no gradient flows into it.
    pick = tf.stop_gradient(pick[:tf.shape(depthwise[0])[0]])
    for dw, pw, gamma, beta in zip(depthwise, pointwise, scale, offset):
        x = separable_conv(x, select_slice(dw, pick), select_slice(pw, pick))
        x, _, _ = batch_norm_batch_stats(x, select_slice(gamma, pick), select_slice(beta, pick))
    return x


# The plain piece keeps its intermediate activations for the backward pass.
shared_sep_conv = tf.function(sep_conv_stack, reduce_retracing=True)
# The recomputed one keeps only its inputs and recomputes the rest in the backward
# pass. recompute_grad sits inside the compiled function, so the recomputation is
# part of the compiled backward graph (no eager forward rerun, no extra tape).
sep_conv_recomputed = tf.function(tf.recompute_grad(sep_conv_stack), reduce_retracing=True)

# Tensors a step keeps per node for the backward pass, in units of one node output
# [N, H, W, C] (see estimate_activation_mb); fitted to measured peak RSS, README.
KEPT_PER_NODE_PLAIN = 11.0
KEPT_PER_NODE_RECOMPUTED = 5.0
FALLBACK_AVAILABLE_MB = 8192  # where /proc/meminfo cannot be read


def feature_map_sizes(config: ChildConfig):
    """(height = width, channels) of every layer's node outputs, stem first."""
    reductions = arc_lib.reduction_layer_ids(config.num_layers, config.num_reductions)
    hw, c = config.img_size, config.out_filters
    sizes = [(hw, 3 * config.out_filters)]
    for layer_id in range(arc_lib.total_layers(config.num_layers)):
        if layer_id in reductions:
            hw, c = halved(hw), 2 * c
        sizes.append((hw, c))
    return sizes


def estimate_activation_mb(config: ChildConfig, batch_size: int, recompute: bool) -> float:
    """Memory a search step keeps alive for its backward pass, in MB:

        batch * sum over layers of (H_l * W_l * C_l) * num_cells * kept * 4 bytes

    where kept is the number of node-sized float32 tensors a node keeps (both its
    inputs' ops, the sum, the concatenation share): KEPT_PER_NODE_PLAIN without
    recomputation, KEPT_PER_NODE_RECOMPUTED with it. The stem counts as a layer."""
    kept = KEPT_PER_NODE_RECOMPUTED if recompute else KEPT_PER_NODE_PLAIN
    per_image = sum(hw * hw * c for hw, c in feature_map_sizes(config))
    return batch_size * per_image * config.num_cells * kept * 4 / 2 ** 20


def available_memory_mb() -> float:
    """MemAvailable of /proc/meminfo (Linux), else FALLBACK_AVAILABLE_MB."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return FALLBACK_AVAILABLE_MB


def choose_recompute(config: ChildConfig, batch_size: int):
    """(whether the separable convs recompute in the backward pass, why): config.recompute
    'on'/'off' decides; 'auto' recomputes only when a plain step's estimated activation
    memory exceeds config.memory_budget_mb (0: half of the available memory)."""
    if config.recompute != "auto":
        return config.recompute == "on", f"--recompute={config.recompute}"
    budget = config.memory_budget_mb or available_memory_mb() / 2
    estimate = estimate_activation_mb(config, batch_size, recompute=False)
    source = "--memory_budget_mb" if config.memory_budget_mb else "half the available memory"
    if estimate > budget:
        return True, (f"--recompute=auto: a plain step needs about {estimate:.0f} MB of "
                      f"activations, over the {budget:.0f} MB budget ({source})")
    return False, (f"--recompute=auto: a plain step needs about {estimate:.0f} MB of "
                   f"activations, within the {budget:.0f} MB budget ({source})")


def select_slice(weights, one_hot):
    """weights[i] for the one-hot i, as a masked sum over axis 0: [I, ...] -> [...].

    Unlike a gather its gradient is dense (no IndexedSlices), which keeps the
    optimizer's compiled step to one trace and is XLA friendly.
    """
    mask = tf.reshape(one_hot, [-1] + [1] * (weights.shape.rank - 1))
    return tf.reduce_sum(weights * mask, axis=0)


class SharedSepConv(tf.Module):
    """Weights of one separable-conv op (kernel k, C -> C) for each possible input."""

    def __init__(self, kernel: int, num_inputs: int, channels: int, stacked_fan_in: bool = False,
                 recompute: bool = True):
        super().__init__()
        self.recompute = recompute
        c = channels
        # Fan-in as for the fixed child's [k, k, C, 1] depthwise kernel (k * k * C); the
        # authors' stored [num_inputs, k*k*C] weights got num_inputs instead.
        depth_fan_in, point_fan_in = (num_inputs, num_inputs) if stacked_fan_in else (kernel * kernel * c, c)
        self.depthwise = [he_normal([num_inputs, kernel, kernel, c, 1], depth_fan_in, "w_depth")
                          for _ in range(2)]
        self.pointwise = [he_normal([num_inputs, 1, 1, c, c], point_fan_in, "w_point") for _ in range(2)]
        self.scale = [tf.Variable(tf.ones([num_inputs, c]), name="scale") for _ in range(2)]
        self.offset = [tf.Variable(tf.zeros([num_inputs, c]), name="offset") for _ in range(2)]

    def __call__(self, x, pick):
        # Values, not variables: traces then key on shapes alone (relaxed by reduce_retracing).
        values = [[v.value() for v in vs] for vs in (self.depthwise, self.pointwise, self.scale, self.offset)]
        piece = sep_conv_recomputed if self.recompute else shared_sep_conv
        return piece(x, pick, *values)


compiled_avg_pool = tf.function(avg_pool3x3, reduce_retracing=True)
compiled_max_pool = tf.function(max_pool3x3, reduce_retracing=True)


@tf.function(reduce_retracing=True)
def combine_unused(concatenated, unused, final_w, bn_scale, bn_offset):
    """relu, 1x1 conv, BN over the concatenation of the unused states.

    concatenated: [N,H,W,k*C], the k unused states in id order; unused: int32 [k]
    ids; final_w: [B + 2, C, C], one CxC block per id, so only their rows enter.
    Returns [N,H,W,C].
    """
    c = tf.shape(final_w)[2]
    w = tf.reshape(tf.gather(final_w, unused), [1, 1, tf.size(unused) * c, c])
    x = tf.nn.relu(concatenated)
    y, _, _ = batch_norm_batch_stats(tf.nn.conv2d(x, in_dtype_of(w, x), 1, "SAME"),
                                     bn_scale, bn_offset)
    return y


@tf.function(reduce_retracing=True)
def conv_bn_train(x, w, bn, relu: bool):
    """ConvBN's training pass on weight values: (relu,) conv, BN with batch statistics.
    bn: see batch_norm_train. Returns (y, the BN's new moving averages)."""
    if relu:
        x = tf.nn.relu(x)
    return batch_norm_train(tf.nn.conv2d(x, in_dtype_of(w, x), 1, "SAME"), bn)


@tf.function(reduce_retracing=True)
def factorized_reduction_train(x, w_path1, w_path2, bn):
    """FactorizedReduction's training pass on weight values; returns (y, new moving averages)."""
    return batch_norm_train(factorized_paths(x, w_path1, w_path2), bn)


compiled_classifier_head = tf.function(classifier_head, reduce_retracing=True)


def run_piece(piece: Union[ConvBN, FactorizedReduction], x):
    """The training pass of a ConvBN or FactorizedReduction on the compiled functions,
    then its BN's moving averages are assigned (the search's BN normalises with batch
    statistics and never reads them, but the checkpoint keeps them current)."""
    if isinstance(piece, ConvBN):
        y, moving_averages = conv_bn_train(x, piece.w.value(), piece.bn.values(), piece.relu)
    else:
        y, moving_averages = factorized_reduction_train(x, piece.w_path1.value(),
                                                        piece.w_path2.value(), piece.bn.values())
    piece.bn.assign_moving_averages(*moving_averages)
    return y


class NodeInput(tf.Module):
    """The five candidate ops for one input (x or y) of one node."""

    def __init__(self, num_inputs: int, channels: int, stacked_fan_in: bool = False,
                 recompute: bool = True):
        super().__init__()
        # A list indexed by op id (0: 3x3, 1: 5x5); checkpoints need string keys for dicts.
        self.sep_convs = [SharedSepConv(arc_lib.SEP_CONV_KERNELS[op], num_inputs, channels,
                                        stacked_fan_in, recompute)
                          for op in sorted(arc_lib.SEP_CONV_KERNELS)]

    def op(self, op: int, x, pick):
        """Output of candidate `op` (a Python int) on x, whose input id `pick` one-hot
        encodes; pools and identity need no weights because calibration already
        brought every input to the cell's channels."""
        if op in arc_lib.SEP_CONV_KERNELS:
            return self.sep_convs[op](x, pick)
        if op == arc_lib.AVG_POOL:
            return compiled_avg_pool(x)
        if op == arc_lib.MAX_POOL:
            return compiled_max_pool(x)
        return x


Dispatch = Callable[[NodeInput, tf.Tensor, tf.Tensor, int], tf.Tensor]


def dispatch_sampled_op(node_input: NodeInput, x, pick, op: int):
    """Runs only the op the arc chose (the fast path)."""
    return node_input.op(op, x, pick)


def dispatch_all_ops(node_input: NodeInput, x, pick, op: int):
    """Runs all five ops and keeps one, as the authors' code does (the reference)."""
    outs = tf.stack([node_input.op(o, x, pick) for o in range(arc_lib.NUM_BRANCHES)])
    return outs[op]  # [5, N, H, W, C] -> [N, H, W, C]


class SharedLayer(tf.Module):
    """One search-phase layer: calibrate, B nodes, relu + 1x1 conv + BN over the
    concatenation of the unused nodes (weights only for the used rows)."""

    def __init__(self, shape0, shape1, channels: int, num_cells: int, reduce_first: Optional[int],
                 stacked_fan_in: bool = False, recompute: bool = True):
        super().__init__()
        # Reduction layers first halve the last output (factorized reduction, C' = 2C).
        self.reduce = FactorizedReduction(reduce_first, channels) if reduce_first else None
        if self.reduce is not None:
            shape0, shape1 = shape1, (halved(shape1[0]), channels)
        self.calibrate = Calibrate(shape0, shape1, channels)
        self.nodes = [tuple(NodeInput(k + 2, channels, stacked_fan_in, recompute) for _ in range(2))
                      for k in range(num_cells)]
        final_fan_in = num_cells + 2 if stacked_fan_in else channels
        self.final_w = he_normal([num_cells + 2, channels, channels], final_fan_in, "final_w")
        # BN of the combine: batch statistics only, so no moving averages to keep.
        self.final_scale = tf.Variable(tf.ones([channels]), name="final_scale")
        self.final_offset = tf.Variable(tf.zeros([channels]), name="final_offset")
        self.out_shape = (shape1[0], channels)

    def _prepare_inputs(self, prev0, prev1):
        """(Reduction layers: halve the last output, then) calibrate both inputs."""
        if self.reduce is not None:
            prev0, prev1 = prev1, run_piece(self.reduce, prev1)
        x0, x1 = self.calibrate.apply(prev0, prev1, run_piece)
        return x0, x1, prev1

    def __call__(self, prev0, prev1, cell: Sequence[int], picks: List[tf.Tensor], dispatch: Dispatch):
        """Returns (this layer's output, the input the next layer sees as h[i-1]).

        picks[i]: the one-hot of input id i (see shared_sep_conv)."""
        x0, x1, prev1 = self._prepare_inputs(prev0, prev1)
        states = [x0, x1]
        for (x_id, x_op, y_id, y_op), (x_in, y_in) in zip(arc_lib.cell_nodes(cell), self.nodes):
            states.append(dispatch(x_in, states[x_id], picks[x_id], x_op)
                          + dispatch(y_in, states[y_id], picks[y_id], y_op))
        unused = arc_lib.unused_ids(cell)
        # Only the unused states are copied (the authors stack all B + 2, then gather).
        concatenated = tf.concat([states[i] for i in unused], axis=3)  # [N,H,W,k*C]
        out = combine_unused(concatenated, tf.constant(unused, tf.int32), self.final_w.value(),
                             self.final_scale.value(), self.final_offset.value())
        return out, prev1


class SharedChild(tf.Module):
    """Stem, num_layers + 2 shared layers, aux head, classifier. BN always uses
    batch statistics (also for evaluation), as in the authors' search phase."""

    def __init__(self, config: ChildConfig, dispatch: Dispatch = dispatch_sampled_op, seed: int = 0,
                 recompute: bool = True):
        """recompute: separable convs recompute their activations in the backward pass
        (less memory, see choose_recompute)."""
        super().__init__(name="shared_child")
        self.config = config
        self.compute_dtype = compute_dtype(config.mixed_precision)
        self.recompute = recompute
        self.dispatch = dispatch
        reductions = arc_lib.reduction_layer_ids(config.num_layers, config.num_reductions)
        self.aux_layer = arc_lib.aux_head_layer_id(config.num_layers, config.num_reductions)
        stem_c = 3 * config.out_filters
        self.stem = ConvBN(config.channel, stem_c, kernel=3, relu=False)
        shapes = [(config.img_size, stem_c)] * 2
        c = config.out_filters
        self.layers: List[SharedLayer] = []
        self.aux_head = None
        for layer_id in range(arc_lib.total_layers(config.num_layers)):
            reduce_first = None
            if layer_id in reductions:
                reduce_first, c = shapes[1][1], 2 * c
            layer = SharedLayer(shapes[0], shapes[1], c, config.num_cells, reduce_first,
                                stacked_fan_in=config.init_fan_in == "stacked", recompute=recompute)
            self.layers.append(layer)
            shapes = [shapes[1] if reduce_first is None else (layer.out_shape[0], c), layer.out_shape]
            if config.use_aux_heads and layer_id == self.aux_layer:
                self.aux_head = AuxHead(c, layer.out_shape[0], config.num_classes)
        self.head = ClassifierHead(c, config.num_classes, config.keep_prob)
        # Input ids as one-hot tensors [B + 2], made once: a Python int would retrace the
        # compiled pieces, and all ids share one shape, hence one trace.
        self._picks = [tf.one_hot(i, config.num_cells + 2) for i in range(config.num_cells + 2)]
        self.rng = dropout_generator(seed)

    @staticmethod
    def compiled_functions():
        """Every tf.function the forward pass calls (to count traces); module-level,
        so shared by all children."""
        return [shared_sep_conv, sep_conv_recomputed, compiled_avg_pool, compiled_max_pool, combine_unused,
                conv_bn_train, factorized_reduction_train, compiled_classifier_head]

    @property
    def layer_shapes(self):
        return [layer.out_shape for layer in self.layers]

    def __call__(self, images, arc: Sequence[int], training: bool = True):
        """images [N,H,W,C], arc of 8*B Python ints -> (logits, aux logits or None).

        `training` switches dropout and the aux head only: BN always uses batch stats.
        The layers run in the compute dtype (ops.py); the logits are float32.
        """
        normal, reduction = arc_lib.split_arc([int(a) for a in arc], self.config.num_cells)
        x = run_piece(self.stem, tf.cast(images, self.compute_dtype))
        prev0, prev1 = x, x
        aux_logits = None
        for layer_id, layer in enumerate(self.layers):
            cell = reduction if layer.reduce is not None else normal
            out, prev1 = layer(prev0, prev1, cell, self._picks, self.dispatch)
            prev0, prev1 = prev1, out
            if training and self.aux_head is not None and layer_id == self.aux_layer:
                aux_logits = self.aux_head.apply(out, run_piece)
        # The dropout seed is drawn even where it is unused, so every call has one signature.
        logits = compiled_classifier_head(prev1, self.head.w.value(), self.head.keep_prob,
                                          training, next_seed(self.rng))
        return logits, aux_logits

    def body_variables(self) -> List[tf.Variable]:
        """Every trainable variable but the aux head's."""
        aux = {id(v) for v in self.aux_head.trainable_variables} if self.aux_head else set()
        return [v for v in self.trainable_variables if id(v) not in aux]

    def num_params(self) -> int:
        return count_params(self.body_variables())
