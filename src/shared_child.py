"""The weight-shared child of the search phase (spec section 2, authors' layout).

Every node input holds the weights of all candidate ops, one slice per
possible input id (BN of the separable convs too). The arc is a tensor, int32
[8 * B], so one compiled step serves every arc: each node input is a
`tf.switch_case` on its input id (which state it reads) and then on its op, so
only the sampled op runs, on its input's weight slice (a one-hot mask: unread
slices and ops get a zero loss gradient, as in the authors' all-ops graph).

Wirings (how the sampled choices become a graph):
  * SAMPLED, the fast path: switch_case on input id and op; the cell output sums,
    over the unused states only, relu + that state's rows of the 1x1 conv (a
    `tf.cond` per state), which equals the 1x1 conv of their concatenation.
  * ALL_OPS, the reference (the authors' way): every op of every input runs, the
    chosen one is gathered, and the 1x1 conv runs over all B + 2 states with the
    used ones masked to zero.
Both give the same values and gradients (tests/test_shared_child.py).
"""
from __future__ import annotations

from typing import Callable, List, NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf

from src import arc as arc_lib
from src.configs import ChildConfig
from src.ops import (AuxHead, Calibrate, ClassifierHead, ConvBN, FactorizedReduction,
                     avg_pool3x3, batch_norm_batch_stats, classifier_head, compute_dtype,
                     count_params, dropout_generator, halved, he_normal, in_dtype_of,
                     max_pool3x3, next_seed, separable_conv)


def sep_conv_stack(x, pick, packed, *, kernel: int):
    """Twice (relu, separable conv, BN with batch stats) with the weight slices that
    `pick` selects. x [N,H,W,C]; pick float32 [I], one-hot on the input id; packed:
    SharedSepConv.packed(), the weights of all I inputs as one flat vector."""
    # A float selector, not an int id: recompute_grad watches every argument, and a
    # tape cannot watch an integer. It is a constant, so no gradient flows into it.
    pick = tf.stop_gradient(pick)
    weights = unpack_sep_conv(packed, kernel, pick.shape[0], x.shape[-1])
    for dw, pw, gamma, beta in weights:
        x = separable_conv(x, select_slice(dw, pick), select_slice(pw, pick))
        x, _, _ = batch_norm_batch_stats(x, select_slice(gamma, pick), select_slice(beta, pick))
    return x


def sep_conv_shapes(kernel: int, num_inputs: int, channels: int):
    """Shapes of one unit's (depthwise, pointwise, BN scale, BN offset) weights."""
    i, c = num_inputs, channels
    return [i, kernel, kernel, c, 1], [i, 1, 1, c, c], [i, c], [i, c]


def unpack_sep_conv(packed, kernel: int, num_inputs: int, channels: int):
    """The flat vector of SharedSepConv.packed() -> two units of (dw, pw, scale, offset)."""
    shapes = sep_conv_shapes(kernel, num_inputs, channels) * 2
    sizes = [int(np.prod(shape)) for shape in shapes]
    flat = [tf.reshape(part, shape) for part, shape in zip(tf.split(packed, sizes), shapes)]
    return [flat[:4], flat[4:]]


def select_slice(weights, one_hot):
    """weights[i] for the one-hot i, as a masked sum over axis 0: [I, ...] -> [...].
    Unlike a gather its gradient is dense, as a switch_case's gradient wants."""
    mask = tf.reshape(one_hot, [-1] + [1] * (weights.shape.rank - 1))
    return tf.reduce_sum(weights * mask, axis=0)


# Compiled pieces, called from the switch_case branches: a call site is one op, and
# each piece's forward and backward graphs are built once per shape (kernel, H, C, I),
# not once per call site. Their weights come packed in one tensor: the gradient of a
# switch_case costs tracing time for every input of every branch.
def with_kernel(kernel: int):
    """sep_conv_stack(x, pick, packed) for one kernel size (recompute_grad takes no
    keyword arguments)."""
    return lambda x, pick, packed: sep_conv_stack(x, pick, packed, kernel=kernel)


SEP_CONV_PIECES = {
    (kernel, recompute): tf.function(
        # recompute_grad keeps only the inputs and recomputes the rest in the backward
        # pass (less memory). The kernel is bound here, not passed: a Python argument
        # of a nested tf.function may arrive as a tensor.
        (tf.recompute_grad if recompute else (lambda f: f))(with_kernel(kernel)), autograph=False)
    for kernel in arc_lib.SEP_CONV_KERNELS.values() for recompute in (False, True)}


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


class SharedSepConv(tf.Module):
    """Weights of one separable-conv op (kernel k, C -> C) for each possible input."""

    def __init__(self, kernel: int, num_inputs: int, channels: int, stacked_fan_in: bool = False,
                 recompute: bool = True):
        super().__init__()
        self.recompute = recompute
        self.kernel = kernel
        c = channels
        # Fan-in as for the fixed child's [k, k, C, 1] depthwise kernel (k * k * C); the
        # authors' stored [num_inputs, k*k*C] weights got num_inputs instead.
        depth_fan_in, point_fan_in = (num_inputs, num_inputs) if stacked_fan_in else (kernel * kernel * c, c)
        self.depthwise = [he_normal([num_inputs, kernel, kernel, c, 1], depth_fan_in, "w_depth")
                          for _ in range(2)]
        self.pointwise = [he_normal([num_inputs, 1, 1, c, c], point_fan_in, "w_point") for _ in range(2)]
        self.scale = [tf.Variable(tf.ones([num_inputs, c]), name="scale") for _ in range(2)]
        self.offset = [tf.Variable(tf.zeros([num_inputs, c]), name="offset") for _ in range(2)]

    def packed(self):
        """Every weight, unit by unit (dw, pw, scale, offset), as one flat vector."""
        units = zip(self.depthwise, self.pointwise, self.scale, self.offset)
        return tf.concat([tf.reshape(v, [-1]) for unit in units for v in unit], axis=0)

    def apply(self, x, pick, packed):
        """x [N,H,W,C]; pick float32 [I], one-hot on the input id x came from; packed:
        self.packed(), made outside any switch_case."""
        return SEP_CONV_PIECES[self.kernel, self.recompute](x, pick, packed)


class NodeInput(tf.Module):
    """The five candidate ops for one input (x or y) of one node."""

    def __init__(self, num_inputs: int, channels: int, stacked_fan_in: bool = False,
                 recompute: bool = True):
        super().__init__()
        self.num_inputs = num_inputs
        # A list indexed by op id (0: 3x3, 1: 5x5); checkpoints need string keys for dicts.
        self.sep_convs = [SharedSepConv(arc_lib.SEP_CONV_KERNELS[op], num_inputs, channels,
                                        stacked_fan_in, recompute)
                          for op in sorted(arc_lib.SEP_CONV_KERNELS)]

    def values(self):
        """Both separable convs' packed weights (see SharedSepConv.packed)."""
        return tuple(sep.packed() for sep in self.sep_convs)

    @property
    def recompute(self) -> bool:
        return self.sep_convs[0].recompute


def candidate_op(op: int, x, pick, packed, recompute: bool):
    """Output of candidate `op` (a Python int) on x, whose input id `pick` one-hot
    encodes; packed: NodeInput.values(). Pools and identity need no weights because
    calibration already brought every input to the cell's channels."""
    if op in arc_lib.SEP_CONV_KERNELS:
        return SEP_CONV_PIECES[arc_lib.SEP_CONV_KERNELS[op], recompute](x, pick, packed[op])
    if op == arc_lib.AVG_POOL:
        return avg_pool3x3(x)
    if op == arc_lib.MAX_POOL:
        return max_pool3x3(x)
    return tf.identity(x)


# ---------------------------------------------------------------- the two wirings

def switch_node_input(states, input_id, op, packed, recompute: bool):
    """The chosen op on the chosen state, and nothing else: input_id, op int32 [];
    states: the node's readable states, each [N,H,W,C]."""
    x = tf.switch_case(input_id, [lambda s=s: tf.identity(s) for s in states])
    pick = tf.one_hot(input_id, len(states))
    return tf.switch_case(op, [lambda o=o: candidate_op(o, x, pick, packed, recompute)
                               for o in range(arc_lib.NUM_BRANCHES)])


# One compiled piece per node input shape (number of states, H, C): its forward and
# backward graphs (a switch_case's gradient is expensive to build) are traced once per
# shape, and every node input of that shape, in any layer or child, calls them.
compiled_node_input = tf.function(switch_node_input, autograph=False)


def sampled_node_input(node_input: NodeInput, states: Sequence[tf.Tensor], input_id, op):
    """The fast wiring's node input (switch_node_input, compiled)."""
    return compiled_node_input(tuple(states), input_id, op, node_input.values(),
                               node_input.recompute)


def all_ops_node_input(node_input: NodeInput, states: Sequence[tf.Tensor], input_id, op):
    """Every op on the chosen state, then the chosen one kept (the authors' reference)."""
    x = tf.gather(tf.stack(states), input_id)  # [k, N,H,W,C] -> [N,H,W,C]
    pick, packed = tf.one_hot(input_id, len(states)), node_input.values()
    outs = tf.stack([candidate_op(o, x, pick, packed, node_input.recompute)
                     for o in range(arc_lib.NUM_BRANCHES)])
    return tf.gather(outs, op)  # [5, N,H,W,C] -> [N,H,W,C]


def unused_states(cell, num_states: int):
    """bool [num_states]: True for the states (cell inputs 0, 1 and nodes) no node of
    `cell` (int32 [4 * B]) reads: those are concatenated into the cell's output."""
    read_ids = tf.concat([cell[0::4], cell[2::4]], axis=0)  # every x_id, then every y_id
    reads = tf.reduce_sum(tf.one_hot(read_ids, num_states), axis=0)
    return tf.equal(reads, 0.0)


def project_state(state, w):
    """relu, then the 1x1 conv rows w [C, C] that belong to this state's channels."""
    return tf.nn.conv2d(tf.nn.relu(state), in_dtype_of(w[tf.newaxis, tf.newaxis], state), 1, "SAME")


def combine_unused_only(states, unused, final_w, scale, offset):
    """relu + 1x1 conv + BN over the concatenation of the unused states, as the sum
    of each unused state's projection by its own CxC block of final_w [B + 2, C, C]:
    the same values and gradients, with fixed shapes and no work for used states."""
    zeros = lambda: tf.zeros_like(states[0])  # noqa: E731
    blocks = tf.unstack(final_w)  # [B + 2, C, C] -> B + 2 x [C, C], outside the conds
    projected = [tf.cond(unused[i], lambda s=s, w=w: project_state(s, w), zeros)
                 for i, (s, w) in enumerate(zip(states, blocks))]
    y, _, _ = batch_norm_batch_stats(tf.add_n(projected), scale, offset)
    return y


# Compiled for the same reason as compiled_node_input: its conds' gradients are
# built once per shape.
compiled_combine_unused_only = tf.function(combine_unused_only, autograph=False)


def combine_masked_concat(states, unused, final_w, scale, offset):
    """The reference: all B + 2 states concatenated with the used ones zeroed, one
    1x1 conv with every row of final_w, BN."""
    mask = tf.cast(unused, states[0].dtype)
    masked = tf.concat([s * mask[i] for i, s in enumerate(states)], axis=3)  # [N,H,W,(B+2)C]
    c = final_w.shape[-1]
    w = tf.reshape(final_w, [1, 1, len(states) * c, c])
    y, _, _ = batch_norm_batch_stats(
        tf.nn.conv2d(tf.nn.relu(masked), in_dtype_of(w, masked), 1, "SAME"), scale, offset)
    return y


class Wiring(NamedTuple):
    node_input: Callable  # (NodeInput, states, input_id, op) -> [N,H,W,C]
    combine: Callable  # (states, unused, final_w, scale, offset) -> [N,H,W,C]


SAMPLED = Wiring(sampled_node_input,
                 lambda states, *weights: compiled_combine_unused_only(tuple(states), *weights))
ALL_OPS = Wiring(all_ops_node_input, combine_masked_concat)


def compiled_pieces():
    """The module-level tf.functions the shared child calls (to count their traces)."""
    return [compiled_node_input, compiled_combine_unused_only, *SEP_CONV_PIECES.values()]


class SharedLayer(tf.Module):
    """One search-phase layer: calibrate, B nodes, relu + 1x1 conv + BN over the
    concatenation of the unused nodes."""

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
        """(Reduction layers: halve the last output, then) calibrate both inputs. The
        search's BN always normalises with batch statistics; the moving averages are
        still kept current, for the checkpoint."""
        if self.reduce is not None:
            prev0, prev1 = prev1, self.reduce(prev1, training=True)
        x0, x1 = self.calibrate(prev0, prev1, training=True)
        return x0, x1, prev1

    def __call__(self, prev0, prev1, cell, wiring: Wiring = SAMPLED):
        """Returns (this layer's output, the input the next layer sees as h[i-1]).
        cell: int32 [4 * B], nodes of (x_id, x_op, y_id, y_op)."""
        x0, x1, prev1 = self._prepare_inputs(prev0, prev1)
        states = [x0, x1]
        for node, (x_in, y_in) in enumerate(self.nodes):
            x_id, x_op, y_id, y_op = (cell[4 * node + j] for j in range(4))
            states.append(wiring.node_input(x_in, states, x_id, x_op)
                          + wiring.node_input(y_in, states, y_id, y_op))
        out = wiring.combine(states, unused_states(cell, len(states)), self.final_w.value(),
                             self.final_scale, self.final_offset)
        return out, prev1


class SharedChild(tf.Module):
    """Stem, num_layers + 2 shared layers, aux head, classifier. BN always uses
    batch statistics (also for evaluation), as in the authors' search phase."""

    def __init__(self, config: ChildConfig, wiring: Wiring = SAMPLED, seed: int = 0,
                 recompute: bool = True):
        """recompute: separable convs recompute their activations in the backward pass
        (less memory, see choose_recompute)."""
        super().__init__(name="shared_child")
        self.config = config
        self.compute_dtype = compute_dtype(config.mixed_precision)
        self.recompute = recompute
        self.wiring = wiring
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
        self.rng = dropout_generator(seed)

    @property
    def arc_length(self) -> int:
        return 8 * self.config.num_cells

    @property
    def layer_shapes(self):
        return [layer.out_shape for layer in self.layers]

    def __call__(self, images, arc, training: bool = True):
        """images [N,H,W,C], arc int32 [8 * B] (a tensor, or a sequence of ints) ->
        (logits, aux logits or None).

        `training` switches dropout and the aux head only: BN always uses batch stats.
        The layers run in the compute dtype (ops.py); the logits are float32.
        """
        arc = tf.convert_to_tensor(arc, tf.int32)
        half = 4 * self.config.num_cells
        normal, reduction = arc[:half], arc[half:]
        x = self.stem(tf.cast(images, self.compute_dtype), training=True)
        prev0, prev1 = x, x
        aux_logits = None
        for layer_id, layer in enumerate(self.layers):
            cell = reduction if layer.reduce is not None else normal
            out, prev1 = layer(prev0, prev1, cell, self.wiring)
            prev0, prev1 = prev1, out
            if training and self.aux_head is not None and layer_id == self.aux_layer:
                aux_logits = self.aux_head(out, training=True)
        seed = next_seed(self.rng) if training and self.head.keep_prob < 1.0 else None
        logits = classifier_head(prev1, self.head.w, self.head.keep_prob, training, seed)
        return logits, aux_logits

    def body_variables(self) -> List[tf.Variable]:
        """Every trainable variable but the aux head's."""
        aux = {id(v) for v in self.aux_head.trainable_variables} if self.aux_head else set()
        return [v for v in self.trainable_variables if id(v) not in aux]

    def num_params(self) -> int:
        return count_params(self.body_variables())
