"""The fixed-arc child: the final network built from one arc (spec section 2).

The arc is static here, so the whole forward pass is an ordinary graph that a
compiled training step traces once.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import tensorflow as tf

from src import arc as arc_lib
from src.configs import ChildConfig
from src.ops import (AuxHead, BatchNorm, Calibrate, ClassifierHead, ConvBN, FactorizedReduction,
                     Shape, halved, avg_pool3x3, compute_dtype, conv_weight, count_params,
                     drop_path, drop_path_keep_prob, dropout_generator, max_pool3x3, next_seed,
                     separable_conv)


class SepConvStack(tf.Module):
    """Twice (relu, separable kxk conv, BN); the stride applies to the first only."""

    def __init__(self, kernel: int, in_c: int, out_c: int, stride: int):
        super().__init__()
        self.stride = stride
        self.depthwise = [conv_weight(kernel, in_c, 1, "w_depth"), conv_weight(kernel, out_c, 1, "w_depth")]
        self.pointwise = [conv_weight(1, in_c, out_c, "w_point"), conv_weight(1, out_c, out_c, "w_point")]
        self.bns = [BatchNorm(out_c), BatchNorm(out_c)]

    def __call__(self, x, training: bool):
        for i, (dw, pw, bn) in enumerate(zip(self.depthwise, self.pointwise, self.bns)):
            x = bn(separable_conv(x, dw, pw, self.stride if i == 0 else 1), training)
        return x


class FixedOp(tf.Module):
    """One of the five candidate ops, applied to one node input."""

    def __init__(self, op: int, in_c: int, out_c: int, stride: int):
        super().__init__()
        self.op, self.stride = op, stride
        self.sep_conv = self.reduce = self.project = None
        if op in arc_lib.SEP_CONV_KERNELS:
            self.sep_conv = SepConvStack(arc_lib.SEP_CONV_KERNELS[op], in_c, out_c, stride)
            return
        if op == arc_lib.IDENTITY and stride > 1:
            self.reduce = FactorizedReduction(in_c, out_c)
            in_c = out_c
        if in_c != out_c:  # calibration makes this rare; kept for generality
            self.project = ConvBN(in_c, out_c)

    def __call__(self, x, training: bool):
        if self.sep_conv is not None:
            return self.sep_conv(x, training)
        if self.op == arc_lib.AVG_POOL:
            x = avg_pool3x3(x, self.stride)
        elif self.op == arc_lib.MAX_POOL:
            x = max_pool3x3(x, self.stride)
        elif self.reduce is not None:
            x = self.reduce(x, training)
        if self.project is not None:
            x = self.project(x, training)
        return x


class FixedCell(tf.Module):
    """A normal (stride 1) or reduction (stride 2) cell for a fixed cell arc."""

    def __init__(self, cell: Sequence[int], shape0: Shape, shape1: Shape, out_c: int,
                 stride: int, layer_id: int, config: ChildConfig, rng: tf.random.Generator):
        super().__init__()
        self.rng = rng  # the child's, shared by every cell
        self.nodes = arc_lib.cell_nodes(cell)
        self.layer_id, self.num_layers = layer_id, config.num_layers
        self.drop_path_base = config.drop_path_keep_prob
        self.calibrate = Calibrate(shape0, shape1, out_c)
        self.layer_base = ConvBN(out_c, out_c)
        in_hw = shape1[0]
        self.out_hw = halved(in_hw) if stride == 2 else in_hw
        self.ops = []
        for x_id, x_op, y_id, y_op in self.nodes:
            self.ops.append([FixedOp(op, out_c, out_c, stride if input_id in (0, 1) else 1)
                             for input_id, op in ((x_id, x_op), (y_id, y_op))])
        self.unused = arc_lib.unused_ids(cell)
        # Unused cell inputs (ids 0, 1) are still full size in a reduction cell: one
        # factorized reduction each (a list, as checkpoints want string dict keys).
        self.combine_reduce = [FactorizedReduction(out_c, out_c) if i in (0, 1) and stride > 1
                               else None for i in self.unused]
        self.out_shape: Shape = (self.out_hw, len(self.unused) * out_c)

    def __call__(self, prev0, prev1, training: bool, progress):
        x0, x1 = self.calibrate(prev0, prev1, training)
        states = [x0, self.layer_base(x1, training)]
        for (x_id, x_op, y_id, y_op), (op_x, op_y) in zip(self.nodes, self.ops):
            out_x = self._maybe_drop_path(op_x(states[x_id], training), x_op, training, progress)
            out_y = self._maybe_drop_path(op_y(states[y_id], training), y_op, training, progress)
            states.append(out_x + out_y)
        outs = [states[i] if reduce is None else reduce(states[i], training)
                for i, reduce in zip(self.unused, self.combine_reduce)]
        return tf.concat(outs, axis=3)  # [N, out_hw, out_hw, len(unused) * out_c]

    def _maybe_drop_path(self, x, op: int, training: bool, progress):
        if not training or op == arc_lib.IDENTITY or self.drop_path_base >= 1.0:
            return x
        keep = drop_path_keep_prob(self.drop_path_base, self.layer_id, self.num_layers, progress)
        return drop_path(x, keep, next_seed(self.rng))


class FixedChild(tf.Module):
    """Stem, num_layers + 2 cells (normal and reduction), aux head, classifier."""

    def __init__(self, config: ChildConfig, arc: Sequence[int], seed: int = 0):
        super().__init__(name="fixed_child")
        arc_lib.validate_arc(arc, config.num_cells)
        self.config = config
        self.compute_dtype = compute_dtype(config.mixed_precision)
        self.rng = dropout_generator(seed)
        normal, reduction = arc_lib.split_arc(arc, config.num_cells)
        reductions = arc_lib.reduction_layer_ids(config.num_layers, config.num_reductions)
        aux_layer = arc_lib.aux_head_layer_id(config.num_layers, config.num_reductions)
        stem_c = 3 * config.out_filters
        self.stem = ConvBN(config.channel, stem_c, kernel=3, relu=False)
        shapes: List[Shape] = [(config.img_size, stem_c)] * 2
        out_c = config.out_filters
        self.cells: List[FixedCell] = []
        self.aux_head: Optional[AuxHead] = None
        self.aux_layer = aux_layer
        for layer_id in range(arc_lib.total_layers(config.num_layers)):
            is_reduction = layer_id in reductions
            out_c *= 2 if is_reduction else 1
            cell = FixedCell(reduction if is_reduction else normal, shapes[0], shapes[1], out_c,
                             2 if is_reduction else 1, layer_id, config, self.rng)
            self.cells.append(cell)
            shapes = [shapes[1], cell.out_shape]
            if config.use_aux_heads and layer_id == aux_layer:
                self.aux_head = AuxHead(cell.out_shape[1], cell.out_shape[0], config.num_classes)
        self.head = ClassifierHead(shapes[1][1], config.num_classes, config.keep_prob)
        for module in self.submodules:
            if isinstance(module, BatchNorm):
                module.sync = config.sync_batch_norm

    @property
    def layer_shapes(self) -> List[Shape]:
        """(H = W, C) of each cell's output, in layer order."""
        return [cell.out_shape for cell in self.cells]

    def __call__(self, images, training: bool, progress=1.0):
        """images [N,H,W,C] -> (logits [N, classes], aux logits or None).

        progress in [0, 1] is the fraction of training done (drop-path ramp). The
        layers run in the compute dtype (ops.py); the logits are float32.
        """
        x = self.stem(tf.cast(images, self.compute_dtype), training)
        prev0, prev1 = x, x
        aux_logits = None
        for layer_id, cell in enumerate(self.cells):
            prev0, prev1 = prev1, cell(prev0, prev1, training, progress)
            if training and self.aux_head is not None and layer_id == self.aux_layer:
                aux_logits = self.aux_head(prev1, training)
        seed = next_seed(self.rng) if training else None
        return self.head(prev1, training, seed), aux_logits

    def num_params(self) -> int:
        """Trainable parameters, the aux head excluded (as the authors count them)."""
        aux = {id(v) for v in self.aux_head.trainable_variables} if self.aux_head else set()
        return count_params(v for v in self.trainable_variables if id(v) not in aux)

    def num_aux_params(self) -> int:
        return count_params(self.aux_head.trainable_variables) if self.aux_head else 0
