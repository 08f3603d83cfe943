import dataclasses
import random

import numpy as np
import pytest
import tensorflow as tf

from src import arc as arc_lib
from src.configs import OptimConfig
from src.shared_child import (ALL_OPS, KEPT_PER_NODE_PLAIN, SAMPLED, SEP_CONV_PIECES, SharedChild,
                               SharedSepConv, choose_recompute, compiled_pieces,
                               estimate_activation_mb)
from src.child_steps import SharedChildSteps, classification_loss
from tests.conftest import tiny_child_config


def sep_conv_params(kernel, num_inputs, c):
    """Two (depthwise k*k*C, pointwise C*C, BN 2C) units, one slice per possible input."""
    return 2 * num_inputs * (kernel * kernel * c + c * c + 2 * c)


def layer_node_params(c):
    # Nodes 2..6 read 2..6 possible inputs; each node has an x and a y input,
    # each holding a 3x3 and a 5x5 separable conv.
    return sum(2 * (sep_conv_params(3, n, c) + sep_conv_params(5, n, c)) for n in range(2, 7))


def final_conv_params(c):
    return 7 * c * c + 2 * c  # one CxC block per id, BN


def factorized_reduction_params(in_c, out_c):
    return 2 * in_c * (out_c // 2) + 2 * out_c


def test_parameter_count_worked_out_by_hand():
    # 3 normal layers + reductions at layer ids 1 and 3; 4 filters; 1 channel; 3 classes.
    config = tiny_child_config()
    stem = 3 * 3 * 1 * 12 + 2 * 12
    layer0 = 2 * (12 * 4 + 2 * 4) + layer_node_params(4) + final_conv_params(4)  # calibrate 12->4 twice
    layer1 = 2 * factorized_reduction_params(4, 8) + layer_node_params(8) + final_conv_params(8)
    layer2 = layer_node_params(8) + final_conv_params(8)
    layer3 = 2 * factorized_reduction_params(8, 16) + layer_node_params(16) + final_conv_params(16)
    layer4 = layer_node_params(16) + final_conv_params(16)
    head = 16 * 3
    expected = stem + layer0 + layer1 + layer2 + layer3 + layer4 + head
    assert expected == 268_444
    assert SharedChild(config).num_params() == expected


@pytest.mark.parametrize("num_reductions", [2, 3])
def test_sampled_ops_equal_all_ops_and_select(num_reductions):
    tf.random.set_seed(0)
    child = SharedChild(tiny_child_config(num_reductions=num_reductions))
    images = tf.random.normal([6, 16, 16, 1])
    rng = random.Random(num_reductions)
    for _ in range(3):
        arc = arc_lib.random_arc(rng)
        child.wiring = SAMPLED
        fast, _ = child(images, arc, training=False)
        child.wiring = ALL_OPS
        reference, _ = child(images, arc, training=False)
        np.testing.assert_allclose(fast, reference, rtol=1e-5, atol=1e-5)


def loss_and_gradients(child, images, labels, arc):
    with tf.GradientTape() as tape:
        logits, aux = child(images, arc, training=True)
        loss = classification_loss(labels, logits, aux, 0.4)
    grads = tape.gradient(loss, child.trainable_variables,
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return loss, logits, [tf.convert_to_tensor(g) for g in grads]


def test_compiled_step_equals_the_all_ops_reference_on_random_arcs():
    # The compiled train step (arc as a tensor, switch_case) against the authors' all-ops
    # graph run eagerly: the same loss, logits and gradients of every weight.
    tf.random.set_seed(1)
    child = SharedChild(tiny_child_config(num_layers=1), recompute=False)
    steps = SharedChildSteps(child, OptimConfig(lr_max=0.01, l2_reg=1e-4))
    images, labels = tf.random.normal([6, 16, 16, 1]), tf.constant([0, 1, 2, 0, 1, 2])
    compiled = tf.function(lambda arc: loss_and_gradients(child, images, labels, arc),
                           input_signature=[steps.arc_spec], autograph=False)
    rng = random.Random(5)
    for _ in range(3):
        arc = arc_lib.random_arc(rng)
        loss, logits, grads = compiled(tf.constant(arc, tf.int32))
        child.wiring = ALL_OPS
        ref_loss, ref_logits, ref_grads = loss_and_gradients(child, images, labels, arc)
        child.wiring = SAMPLED
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
        np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-5)
        for fast, reference in zip(grads, ref_grads):
            np.testing.assert_allclose(fast, reference, rtol=1e-3, atol=1e-5)
    assert compiled.experimental_get_tracing_count() == 1


def test_gradients_of_unchosen_ops_and_input_slices_are_zero():
    tf.random.set_seed(1)
    child = SharedChild(tiny_child_config(use_aux_heads=False))
    images, labels = tf.random.normal([6, 16, 16, 1]), tf.constant([0, 1, 2, 0, 1, 2])
    arc = arc_lib.parse_arc(arc_lib.DEFAULT_ARC)
    _, _, grads = loss_and_gradients(child, images, labels, arc)
    # Node 3 of the normal cell reads x from id 0 with sep 5x5: its 3x3 gets nothing, and
    # its 5x5 only in input id 0's slice.
    node3_x = child.layers[0].nodes[1][0]
    assert float(tf.reduce_sum(tf.abs(_grad_of(child, grads, node3_x.sep_convs[0].depthwise[0])))) == 0.0
    used = _grad_of(child, grads, node3_x.sep_convs[1].depthwise[0]).numpy()
    assert np.abs(used[0]).sum() > 0 and np.abs(used[1:]).sum() == 0


def _grad_of(child, grads, variable):
    index = [id(v) for v in child.trainable_variables].index(id(variable))
    return grads[index]


def test_the_compiled_step_is_traced_once_for_many_arcs():
    tf.random.set_seed(2)
    child = SharedChild(tiny_child_config(num_layers=1))
    steps = SharedChildSteps(child, OptimConfig(lr_max=0.01, l2_reg=1e-4))
    steps.warm_up()
    images, labels = tf.random.normal([4, 16, 16, 1]), tf.constant([0, 1, 2, 0])
    pieces = [f.experimental_get_tracing_count() for f in compiled_pieces()]
    rng = random.Random(3)
    for _ in range(20):
        arc = tf.constant(arc_lib.random_arc(rng), tf.int32)
        steps.train_step(images, labels, arc)
        steps.count_correct(images, labels, arc)
    steps.train_step(images[:3], labels[:3], arc)  # another batch size: the same trace
    assert [f.experimental_get_tracing_count() for f in steps.compiled_functions()] == [1, 1]
    assert [f.experimental_get_tracing_count() for f in compiled_pieces()] == pieces


def test_a_second_child_reuses_the_first_ones_pieces():
    # The compiled pieces are module-level and take weights as arguments: no trace per
    # layer or child instance (TensorFlow warns about those as retracing).
    images, arc = tf.random.normal([2, 16, 16, 1]), arc_lib.parse_arc(arc_lib.DEFAULT_ARC)

    def traces():
        return sum(f.experimental_get_tracing_count() for f in compiled_pieces())

    SharedChild(tiny_child_config(num_layers=1))(images, arc, training=True)
    warm = traces()
    SharedChild(tiny_child_config(num_layers=1))(images, arc, training=True)
    assert traces() == warm


def test_forward_keeps_the_bn_moving_averages_current():
    child = SharedChild(tiny_child_config())
    bns = [child.stem.bn, child.layers[0].calibrate.project_x.bn, child.layers[1].reduce.bn,
           child.aux_head.proj.bn]
    child(tf.random.normal([2, 16, 16, 1]) + 3.0, arc_lib.parse_arc(arc_lib.DEFAULT_ARC),
          training=True)
    for bn in bns:
        assert not np.allclose(bn.moving_mean, 0.0) and not np.allclose(bn.moving_variance, 1.0)


@pytest.mark.parametrize("img_size, num_reductions", [(28, 3), (30, 2)])
def test_odd_feature_map_sizes_round_up(img_size, num_reductions):
    child = SharedChild(tiny_child_config(img_size=img_size, num_reductions=num_reductions))
    logits, aux = child(tf.random.normal([2, img_size, img_size, 1]),
                        arc_lib.parse_arc(arc_lib.DEFAULT_ARC), training=True)
    assert logits.shape == (2, 3) and aux.shape == (2, 3)


def test_recomputed_sep_conv_gives_the_plain_gradients():
    sep = SharedSepConv(5, num_inputs=3, channels=4)
    # Input id 2 of the 3 this node input may read.
    x, pick, packed = tf.random.normal([2, 8, 8, 4]), tf.one_hot(2, 3), sep.packed()
    grads = []
    for recompute in (False, True):
        with tf.GradientTape() as tape:
            tape.watch([x, packed])
            loss = tf.reduce_sum(tf.sin(SEP_CONV_PIECES[5, recompute](x, pick, packed)))
        grads.append(tape.gradient(loss, [x, packed]))
    for plain, recomputed in zip(*grads):
        np.testing.assert_allclose(plain, recomputed, rtol=1e-5, atol=1e-6)


def test_stacked_fan_in_reproduces_the_authors_larger_init():
    tf.random.set_seed(0)
    kernel_init = SharedChild(tiny_child_config(out_filters=8))
    tf.random.set_seed(0)
    stacked = SharedChild(tiny_child_config(out_filters=8, init_fan_in="stacked"))
    node = 4  # node 6 of the first layer: 6 possible inputs
    for child, expected in ((kernel_init, np.sqrt(2 / (5 * 5 * 8))), (stacked, np.sqrt(2 / 6))):
        # Layer 0 (normal) works at out_filters = 8 channels; the 5x5 sep conv of node 6.
        depthwise = child.layers[0].nodes[node][0].sep_convs[1].depthwise[0].numpy()
        assert depthwise.shape == (6, 5, 5, 8, 1)
        assert np.std(depthwise) == pytest.approx(expected, rel=0.2)


def test_untrained_aux_head_is_left_out_of_the_trained_variables():
    child = SharedChild(tiny_child_config(train_aux_head=False))
    trained = {id(v) for v in SharedChildSteps(child, OptimConfig()).variables}
    aux = {id(v) for v in child.aux_head.trainable_variables}
    assert aux and not aux & trained
    assert len(trained) == len(child.trainable_variables) - len(aux)


def test_recompute_flag_decides_and_auto_follows_the_memory_budget():
    config = tiny_child_config()
    assert choose_recompute(dataclasses.replace(config, recompute="on"), 8)[0] is True
    assert choose_recompute(dataclasses.replace(config, recompute="off"), 8)[0] is False
    estimate = estimate_activation_mb(config, 128, recompute=False)
    # Stem 16x16x12, layers 16x16x4, 8x8x8 (x2), 4x4x16 (x2): 5,632 values an image.
    assert estimate == pytest.approx(128 * 5632 * 5 * KEPT_PER_NODE_PLAIN * 4 / 2 ** 20)
    assert estimate_activation_mb(config, 128, recompute=True) < estimate
    tight = dataclasses.replace(config, memory_budget_mb=max(1, int(estimate) - 1))
    roomy = dataclasses.replace(config, memory_budget_mb=int(estimate) + 1)
    recompute, why = choose_recompute(tight, 128)
    assert recompute is True and "over" in why
    assert choose_recompute(roomy, 128)[0] is False


def test_children_with_and_without_recomputation_give_the_same_gradients():
    images, labels = tf.random.normal([4, 16, 16, 1]), tf.constant([0, 1, 2, 1])
    arc = arc_lib.parse_arc(arc_lib.DEFAULT_ARC)
    grads = []
    for recompute in (False, True):
        tf.random.set_seed(0)
        child = SharedChild(tiny_child_config(keep_prob=1.0), recompute=recompute)
        with tf.GradientTape() as tape:
            logits, aux = child(images, arc, training=True)
            loss = classification_loss(labels, logits, aux, 0.4)
        grads.append(tape.gradient(loss, child.trainable_variables,
                                   unconnected_gradients=tf.UnconnectedGradients.ZERO))
    for plain, recomputed in zip(*grads):
        np.testing.assert_allclose(tf.convert_to_tensor(plain), tf.convert_to_tensor(recomputed),
                                   rtol=1e-4, atol=1e-5)
