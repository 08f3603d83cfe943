"""Ops shared by the fixed child and the shared (search) child.

Two kinds of pieces live here:
  * pure functions on tensors (separable conv, pools, batch-statistics BN,
    factorized reduction paths, classifier head, drop path), used by both
    children, and
  * small tf.Modules for the parts whose weights do not depend on the arc
    (stem, calibration, 1x1 conv + BN, factorized reduction, the two heads).
    The modules made of such pieces (Calibrate, AuxHead) take in `apply` the
    way to run each piece: the search child runs them as compiled functions
    on weight values (see shared_child.py), the fixed child calls them.

All tensors are NHWC. BN: decay 0.9, epsilon 1e-5; conv weights He-normal.

Mixed precision (ChildConfig.mixed_precision) follows Keras's policies: the
children cast their input images to the compute dtype (compute_dtype), and every
op here runs in the dtype of its input: weights are float32 variables, cast where
used (in_dtype_of), so their gradients come back in float32; BN's scale, offset
and statistics stay float32 (the fused kernel takes them so); the heads pool and
multiply in float32, so logits are float32.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Optional, Tuple

import numpy as np
import tensorflow as tf

BN_DECAY = 0.9
BN_EPSILON = 1e-5
AUX_PROJ_FILTERS = 128
AUX_FILTERS = 768


def compute_dtype(mixed_precision: str) -> tf.DType:
    """The dtype a child computes in for ChildConfig.mixed_precision."""
    return {"off": tf.float32, "float16": tf.float16, "bfloat16": tf.bfloat16}[mixed_precision]


def in_dtype_of(weight, x):
    """weight (a float32 variable or value) in x's dtype: a no-op without mixed
    precision; under it the cast's gradient reaches the float32 weight."""
    return tf.cast(weight, x.dtype)


def describe_mixed_precision(mixed_precision: str) -> str:
    """The log line naming the precision a child computes in."""
    if mixed_precision == "off":
        return "Mixed precision: off (float32)"
    scaling = ", dynamic loss scaling" if mixed_precision == "float16" else ""
    return (f"Mixed precision: {mixed_precision} compute; float32 variables, BN statistics "
            f"and logits{scaling}")


def he_normal(shape, fan_in: int, name: str) -> tf.Variable:
    """A He-normal initialised weight; fan_in is the real kernel's fan-in (also for
    the search-phase weights stacked per possible input)."""
    std = math.sqrt(2.0 / fan_in)
    return tf.Variable(tf.random.normal(shape, stddev=std), name=name)


def conv_weight(kernel: int, in_c: int, out_c: int, name: str = "w") -> tf.Variable:
    return he_normal([kernel, kernel, in_c, out_c], kernel * kernel * in_c, name)


# Empty statistics for fused BN in training. A NumPy array, not a tensor: a tensor made
# at import would start TensorFlow before a multi-worker strategy can configure it.
_EMPTY = np.zeros([0], np.float32)


def batch_norm_batch_stats(x, scale, offset):
    """BN with the statistics of this batch; returns (y, mean, variance) [C].

    The fused kernel is about 5x faster than moments + normalization on CPU
    (forward and backward); its variance is Bessel-corrected, as the moving
    averages want.
    """
    y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
        x=x, scale=scale, offset=offset, mean=_EMPTY, variance=_EMPTY,
        epsilon=BN_EPSILON, is_training=True)
    return y, mean, variance


def moving_average_step(average, batch_value):
    """How far one batch moves a moving average (to subtract from it)."""
    return (1.0 - BN_DECAY) * (average - batch_value)


def batch_norm_train(x, weights):
    """BN with the statistics of this batch; weights = (scale, offset, moving_mean,
    moving_variance) [C] as tensors. Returns (y, (moving_mean, moving_variance) after
    this batch), for the caller to assign."""
    scale, offset, moving_mean, moving_variance = weights
    y, mean, variance = batch_norm_batch_stats(x, scale, offset)  # mean, variance float32
    return y, (moving_mean - moving_average_step(moving_mean, mean),
               moving_variance - moving_average_step(moving_variance, variance))


def batch_norm_inference(x, scale, offset, mean, variance):
    y, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
        x=x, scale=scale, offset=offset, mean=mean, variance=variance,
        epsilon=BN_EPSILON, is_training=False)
    return y


def separable_conv(x, depthwise, pointwise, stride: int = 1):
    """relu, then depthwise kxk [k,k,C,1] + pointwise 1x1 [1,1,C,C'] ('SAME'), in x's dtype."""
    x = depthwise_conv(tf.nn.relu(x), in_dtype_of(depthwise, x), stride)
    return tf.nn.conv2d(x, in_dtype_of(pointwise, x), 1, "VALID")


# Which backward formulation is fastest on CPU, per kernel size, for stride 1
# (interleaved medians at [128,32,32,20] / [128,16,16,40], docs/performance.md; the script
# was tools/bench_depthwise.py, deleted once decided: git show 2c38131:tools/bench_depthwise.py).
# Stride 2 keeps TensorFlow's own gradients. Measured on CPU only: with a GPU,
# TensorFlow's own (cuDNN) gradients are used throughout (depthwise_gradients).
FLIPPED_GRAD_INPUT_KERNELS = (3, 5)
FOLDED_GRAD_FILTER_KERNELS = (5,)
CUSTOM, TENSORFLOW = "custom", "tensorflow"


def choose_depthwise_gradients(gpus) -> str:
    """CUSTOM (the formulations above, measured faster on CPU) without a GPU in
    `gpus` (tf.config.list_physical_devices('GPU')), else TENSORFLOW: the custom
    ones were never measured on a GPU, where the ops would run."""
    return TENSORFLOW if gpus else CUSTOM


@functools.lru_cache(maxsize=None)
def depthwise_gradients() -> str:
    """choose_depthwise_gradients for this process's devices, decided once."""
    return choose_depthwise_gradients(tf.config.list_physical_devices("GPU"))


def describe_depthwise_gradients() -> str:
    """The log line naming the depthwise-conv gradients this process uses."""
    if depthwise_gradients() == CUSTOM:
        return "Depthwise-conv gradients: custom (measured faster on CPU)"
    return "Depthwise-conv gradients: TensorFlow's own (GPU)"


def depthwise_conv(x, depthwise, stride: int = 1, gradients: Optional[str] = None):
    """'SAME' depthwise conv, x [N,H,W,C], depthwise [k,k,C,1]. With CUSTOM gradients
    (default: depthwise_gradients()), stride 1 and odd kernels, its gradients use the
    faster formulations below. A kernel whose size is not known when traced (the
    search child's relaxed traces) is taken to be odd."""
    kernel = depthwise.shape[0]
    custom = (gradients or depthwise_gradients()) == CUSTOM
    if not custom or stride != 1 or (kernel is not None and not _has_custom_gradients(kernel)):
        return tf.nn.depthwise_conv2d(x, depthwise, [1, stride, stride, 1], "SAME")
    # Read a variable here, outside the custom gradient, so its gradient reaches the
    # variable through the read (a custom gradient would need a `variables` argument).
    return _depthwise_conv_fast_grads(tf.convert_to_tensor(x), tf.convert_to_tensor(depthwise))


def _has_custom_gradients(kernel: int) -> bool:
    """An odd kernel with a faster formulation of either gradient."""
    return kernel % 2 == 1 and (kernel in FLIPPED_GRAD_INPUT_KERNELS
                                or kernel in FOLDED_GRAD_FILTER_KERNELS)


def _tf_grad_input(x, depthwise, dy):
    return tf.raw_ops.DepthwiseConv2dNativeBackpropInput(
        input_sizes=tf.shape(x), filter=depthwise, out_backprop=dy,
        strides=[1, 1, 1, 1], padding="SAME")


def _tf_grad_filter(x, depthwise, dy):
    return tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(
        input=x, filter_sizes=tf.shape(depthwise), out_backprop=dy,
        strides=[1, 1, 1, 1], padding="SAME")


def _pick(kernel, kernels, fast, plain):
    """fast() if the kernel size is in `kernels`, else plain(); decided when traced
    if the size is known then, else when run."""
    if isinstance(kernel, int):
        return fast() if kernel in kernels else plain()
    return tf.cond(tf.reduce_any(tf.equal(kernel, kernels)), fast, plain)


@tf.custom_gradient
def _depthwise_conv_fast_grads(x, depthwise):
    """Stride-1 'SAME' depthwise conv with an odd kernel and a chosen backward."""
    y = tf.nn.depthwise_conv2d(x, depthwise, [1, 1, 1, 1], "SAME")

    def grad(dy):
        kernel = depthwise.shape[0] or tf.shape(depthwise)[0]
        dx = _pick(kernel, FLIPPED_GRAD_INPUT_KERNELS,
                   lambda: depthwise_grad_input_flipped(dy, depthwise),
                   lambda: _tf_grad_input(x, depthwise, dy))
        dw = _pick(kernel, FOLDED_GRAD_FILTER_KERNELS,
                   lambda: depthwise_grad_filter_folded(x, dy, kernel),
                   lambda: _tf_grad_filter(x, depthwise, dy))
        return dx, dw

    return y, grad


def depthwise_grad_input_flipped(dy, depthwise):
    """Input gradient of a stride-1 'SAME' depthwise conv with an odd kernel: the
    same conv of dy with the kernel flipped in space. dy [N,H,W,C] -> [N,H,W,C]."""
    return tf.nn.depthwise_conv2d(dy, tf.reverse(depthwise, [0, 1]), [1, 1, 1, 1], "SAME")


def depthwise_grad_filter_folded(x, dy, kernel: int):
    """Filter gradient of a stride-1 'SAME' depthwise conv (odd kernel) as one VALID
    depthwise conv with the batch folded into channels: x padded -> [1,H+2p,W+2p,N*C],
    dy as an HxW filter [H,W,N*C,1]; the [1,k,k,N*C] result summed over N -> [k,k,C,1]."""
    pad = kernel // 2
    n, height, width, c = tf.unstack(tf.shape(dy))
    padded = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    folded_x = tf.reshape(tf.transpose(padded, [1, 2, 0, 3]),
                          [1, height + 2 * pad, width + 2 * pad, n * c])
    folded_dy = tf.reshape(tf.transpose(dy, [1, 2, 0, 3]), [height, width, n * c, 1])
    out = tf.nn.depthwise_conv2d(folded_x, folded_dy, [1, 1, 1, 1], "VALID")  # [1,k,k,N*C]
    return tf.expand_dims(tf.reduce_sum(tf.reshape(out, [kernel, kernel, n, c]), axis=2), -1)


def even_pixels(x):
    """x[:, ::2, ::2, :] as a 1x1 average pool with stride 2: the same values, but its
    gradient is the pooling kernel's, not the strided slice's slow scatter (2-4x the cost
    of the whole path on CPU). Not a stride-2 1x1 conv: oneDNN's backward pass of that
    aborts with a double free at some shapes (e.g. [128, 64, 64, 12] -> 4 channels)."""
    return tf.nn.avg_pool2d(x, 1, 2, "VALID")


def avg_pool3x3(x, stride: int = 1):
    return tf.nn.avg_pool2d(x, 3, stride, "SAME")


def max_pool3x3(x, stride: int = 1):
    return tf.nn.max_pool2d(x, 3, stride, "SAME")


def factorized_paths(x, w_path1, w_path2):
    """The two stride-2 1x1-conv paths of a factorized reduction, concatenated.

    Path 2 is shifted by one pixel (pad right/bottom, drop first row/column) so the
    two paths see complementary pixels. [N,H,W,C] -> [N,ceil(H/2),ceil(W/2),C1+C2].
    """
    path1 = tf.nn.conv2d(even_pixels(x), in_dtype_of(w_path1, x), 1, "SAME")
    shifted = tf.pad(x, [[0, 0], [0, 1], [0, 1], [0, 0]])[:, 1:, 1:, :]
    path2 = tf.nn.conv2d(even_pixels(shifted), in_dtype_of(w_path2, x), 1, "SAME")
    return tf.concat([path1, path2], axis=3)


def pooled_float32(x):
    """Global average pool [N,H,W,C] -> [N,C], summed in float32 whatever x's dtype:
    the heads' dense layers and logits stay float32 under mixed precision."""
    return tf.reduce_mean(tf.cast(x, tf.float32), axis=[1, 2])


def classifier_head(x, w, keep_prob: float, training: bool, seed=None):
    """relu, global average pool, dropout (training only, stateless: `seed` int64 [2]),
    dense w [C, classes] (no bias); float32 from the pool on."""
    x = pooled_float32(tf.nn.relu(x))
    if training and keep_prob < 1.0:
        x = tf.nn.experimental.stateless_dropout(x, rate=1.0 - keep_prob, seed=seed)
    return x @ w


def drop_path(x, keep_prob, seed):
    """Drops whole examples' paths with prob 1 - keep_prob, rescaling the kept ones
    (stateless: `seed` int64 [2])."""
    noise = tf.random.stateless_uniform([tf.shape(x)[0], 1, 1, 1], seed)  # float32, as keep_prob
    mask = tf.floor(keep_prob + noise)  # 1 with probability keep_prob
    # One multiply over x: the [N,1,1,1] factor broadcasts.
    return x * tf.cast(mask / keep_prob, x.dtype)


def dropout_generator(seed: int) -> tf.random.Generator:
    """The generator a child draws its dropout and drop-path seeds from. It is a
    variable of the model, so checkpoints carry its state and a resumed run draws
    what an uninterrupted one would."""
    return tf.random.Generator.from_seed(seed)


def next_seed(generator: tf.random.Generator):
    """A fresh stateless seed, int64 [2]."""
    return generator.make_seeds(1)[:, 0]


def drop_path_keep_prob(base_keep_prob: float, layer_id: int, num_layers: int, progress):
    """Keep prob ramped in depth (layer l of L + 2) and in training progress [0, 1]."""
    layer_ratio = (layer_id + 1) / (num_layers + 2)
    layer_keep = 1.0 - layer_ratio * (1.0 - base_keep_prob)
    return 1.0 - progress * (1.0 - layer_keep)


def moving_statistic(initial, name: str) -> tf.Variable:
    """A BN moving average. Under a tf.distribute strategy each replica keeps its own
    copy, updated from its batch, and reading it averages them (as Keras's BN does)."""
    return tf.Variable(initial, trainable=False, name=name,
                       synchronization=tf.VariableSynchronization.ON_READ,
                       aggregation=tf.VariableAggregation.MEAN)


def batch_norm_global_stats(x, scale, offset, replica_context):
    """BN with the statistics of the whole global batch, all-reduced over the replicas
    (as Keras's synchronized BN); returns (y in x's dtype, mean, Bessel-corrected
    variance) [C]. The statistics are float32 whatever x's dtype."""
    x32 = tf.cast(x, tf.float32)
    local = tf.stack([tf.cast(tf.size(x32) // tf.shape(x32)[-1], tf.float32) * tf.ones_like(scale),
                      tf.reduce_sum(x32, axis=[0, 1, 2]),
                      tf.reduce_sum(tf.square(x32), axis=[0, 1, 2])])  # [3, C]
    count, total, total_sq = tf.unstack(replica_context.all_reduce(tf.distribute.ReduceOp.SUM, local))
    mean = total / count
    variance = tf.maximum(total_sq / count - tf.square(mean), 0.0)  # biased, as fused BN normalises
    y = tf.nn.batch_normalization(x32, mean, variance, offset, scale, BN_EPSILON)
    return tf.cast(y, x.dtype), mean, variance * count / tf.maximum(count - 1.0, 1.0)


class BatchNorm(tf.Module):
    """BN with trainable scale/offset and moving statistics for inference.

    `sync`: under a strategy with several replicas, training normalises with the
    global batch's statistics (batch_norm_global_stats) instead of the replica's."""

    def __init__(self, channels: int, name: Optional[str] = None):
        super().__init__(name=name)
        self.sync = False
        self.scale = tf.Variable(tf.ones([channels]), name="scale")
        self.offset = tf.Variable(tf.zeros([channels]), name="offset")
        self.moving_mean = moving_statistic(tf.zeros([channels]), "moving_mean")
        self.moving_variance = moving_statistic(tf.ones([channels]), "moving_variance")

    def __call__(self, x, training: bool):
        if not training:
            return batch_norm_inference(x, self.scale, self.offset,
                                        self.moving_mean, self.moving_variance)
        context = tf.distribute.get_replica_context()
        if self.sync and context is not None and context.num_replicas_in_sync > 1:
            y, mean, variance = batch_norm_global_stats(x, self.scale, self.offset, context)
        else:
            y, mean, variance = batch_norm_batch_stats(x, self.scale, self.offset)
        self.moving_mean.assign_sub(moving_average_step(self.moving_mean, mean))
        self.moving_variance.assign_sub(moving_average_step(self.moving_variance, variance))
        return y

    def values(self):
        """(scale, offset, moving_mean, moving_variance) as tensors (batch_norm_train)."""
        return (self.scale.value(), self.offset.value(), self.moving_mean.value(),
                self.moving_variance.value())

    def assign_moving_averages(self, moving_mean, moving_variance):
        self.moving_mean.assign(moving_mean)
        self.moving_variance.assign(moving_variance)


class ConvBN(tf.Module):
    """(relu,) kxk conv, BN: the stem (no relu) and every 1x1 projection (relu)."""

    def __init__(self, in_c: int, out_c: int, kernel: int = 1, relu: bool = True,
                 name: Optional[str] = None):
        super().__init__(name=name)
        self.relu = relu
        self.w = conv_weight(kernel, in_c, out_c)
        self.bn = BatchNorm(out_c)

    def __call__(self, x, training: bool):
        if self.relu:
            x = tf.nn.relu(x)
        return self.bn(tf.nn.conv2d(x, in_dtype_of(self.w, x), 1, "SAME"), training)


class FactorizedReduction(tf.Module):
    """Halves H and W without losing half the pixels: two shifted 1x1 paths, BN."""

    def __init__(self, in_c: int, out_c: int, name: Optional[str] = None):
        super().__init__(name=name)
        if out_c % 2:
            raise ValueError(f"factorized reduction needs an even filter count, got {out_c}")
        self.w_path1 = conv_weight(1, in_c, out_c // 2, "w_path1")
        self.w_path2 = conv_weight(1, in_c, out_c // 2, "w_path2")
        self.bn = BatchNorm(out_c)

    def __call__(self, x, training: bool):
        return self.bn(factorized_paths(x, self.w_path1, self.w_path2), training)


Shape = Tuple[int, int]  # (height = width, channels)
# run_piece(piece, inputs): how a composite module runs its ConvBN / FactorizedReduction.
RunPiece = Callable[[tf.Module, tf.Tensor], tf.Tensor]


def halved(hw: int) -> int:
    """Output size of every stride-2 op here ('SAME' padding): ceil(hw / 2)."""
    return (hw + 1) // 2


class Calibrate(tf.Module):
    """Brings a layer's two inputs to the same size and `out_c` channels.

    Input 0 may be twice as large (it comes from before a reduction; odd sizes round
    up): relu and a
    factorized reduction. Otherwise a channel mismatch gets relu, 1x1 conv, BN.
    """

    def __init__(self, shape0: Shape, shape1: Shape, out_c: int, name: Optional[str] = None):
        super().__init__(name=name)
        (hw0, c0), (hw1, c1) = shape0, shape1
        self.reduce_x = None
        self.project_x = None
        self.project_y = None
        if hw0 != hw1:
            if halved(hw0) != hw1:
                raise ValueError(f"cannot calibrate inputs of size {hw0} and {hw1}")
            self.reduce_x = FactorizedReduction(c0, out_c)
        elif c0 != out_c:
            self.project_x = ConvBN(c0, out_c)
        if c1 != out_c:
            self.project_y = ConvBN(c1, out_c)

    def __call__(self, x, y, training: bool):
        return self.apply(x, y, lambda piece, inputs: piece(inputs, training))

    def apply(self, x, y, run_piece: RunPiece):
        """Calibrates x and y with run_piece(piece, inputs) running each piece."""
        if self.reduce_x is not None:
            x = run_piece(self.reduce_x, tf.nn.relu(x))
        elif self.project_x is not None:
            x = run_piece(self.project_x, x)
        if self.project_y is not None:
            y = run_piece(self.project_y, y)
        return x, y


class AuxHead(tf.Module):
    """relu, 5x5 avg pool stride 3 VALID, 1x1 conv 128 + BN + relu,
    conv over the remaining HxW to 768 + BN + relu, global pool, dense.

    Feature maps smaller than 5x5 (small images) pool over what there is
    instead of failing; from 5x5 up this is exactly the authors' head.
    """

    def __init__(self, in_c: int, hw: int, num_classes: int, name: Optional[str] = None):
        super().__init__(name=name)
        self.pool = min(5, hw)
        pooled_hw = (hw - self.pool) // 3 + 1
        self.proj = ConvBN(in_c, AUX_PROJ_FILTERS, relu=False)
        self.conv = ConvBN(AUX_PROJ_FILTERS, AUX_FILTERS, kernel=pooled_hw, relu=False)
        self.w_fc = he_normal([AUX_FILTERS, num_classes], AUX_FILTERS, "w_fc")

    def __call__(self, x, training: bool):
        return self.apply(x, lambda piece, inputs: piece(inputs, training))

    def apply(self, x, run_piece: RunPiece):
        """The head's logits, with run_piece(piece, inputs) running its two ConvBNs."""
        x = tf.nn.avg_pool2d(tf.nn.relu(x), self.pool, 3, "VALID")
        x = tf.nn.relu(run_piece(self.proj, x))
        x = tf.nn.relu(run_piece(self.conv, x))
        return pooled_float32(x) @ self.w_fc


class ClassifierHead(tf.Module):
    """relu, global average pool, dropout (training only), dense (no bias, as the authors)."""

    def __init__(self, in_c: int, num_classes: int, keep_prob: float, name: Optional[str] = None):
        super().__init__(name=name)
        self.keep_prob = keep_prob
        self.w = he_normal([in_c, num_classes], in_c, "w")

    def __call__(self, x, training: bool, seed=None):
        return classifier_head(x, self.w, self.keep_prob, training, seed)


def count_params(variables) -> int:
    return int(sum(v.shape.num_elements() for v in variables))
