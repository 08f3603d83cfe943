import numpy as np
import pytest
import tensorflow as tf

from src import arc as arc_lib
from src.configs import OptimConfig
from src.fixed_child import FixedChild
from src.child_steps import FixedChildSteps
from src.optim import NesterovSGD, cosine_lr
from tests.conftest import tiny_child_config


def test_cosine_schedule_with_warm_restarts():
    optim = OptimConfig(lr_max=0.05, lr_min=0.0001, lr_T_0=10, lr_T_mul=2)
    assert cosine_lr(0, optim) == pytest.approx(0.05)
    assert cosine_lr(5, optim) == pytest.approx(0.0001 + 0.5 * (0.05 - 0.0001))
    assert cosine_lr(9, optim) < 0.003
    # Restarts after epochs 10, 30, 70, 150, 310, 630.
    for restart in (10, 30, 70, 150, 310, 630):
        assert cosine_lr(restart, optim) == pytest.approx(0.05)
        assert cosine_lr(restart - 1, optim) < 0.003
    assert cosine_lr(20, optim) == pytest.approx(0.0001 + 0.5 * (0.05 - 0.0001))  # mid of 10..29


def sgd(variables, **optim):
    base = dict(lr_max=1.0, momentum=0.0, l2_reg=0.0, grad_bound=0.0)
    base.update(optim)
    return NesterovSGD(variables, OptimConfig(**base))


def test_clipping_clips_every_tensor_and_reports_the_unclipped_norm():
    variables = [tf.Variable(tf.zeros([3])), tf.Variable(tf.zeros([2, 1]))]
    grads = [tf.constant([30.0, 40.0, 0.0]), tf.constant([[0.3], [0.4]])]
    norm = sgd(variables, grad_bound=5.0).apply(grads)  # lr 1, no momentum: w = -clipped g
    np.testing.assert_allclose(variables[0], [-3.0, -4.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(variables[1], [[-0.3], [-0.4]], rtol=1e-6)
    assert float(norm) == pytest.approx(np.sqrt(50.0 ** 2 + 0.5 ** 2), rel=1e-5)


def test_l2_gradient_is_added_before_clipping():
    variables = [tf.Variable([1.0, -2.0])]
    sgd(variables, lr_max=0.5, l2_reg=0.1).apply([tf.zeros([2])])
    np.testing.assert_allclose(variables[0], [1.0 - 0.5 * 0.2, -2.0 + 0.5 * 0.4], rtol=1e-6)


def test_nesterov_momentum_follows_tf1_semantics():
    w = tf.Variable([1.0, 2.0])
    optimizer = sgd([w], lr_max=0.1, momentum=0.9)
    apply = tf.function(optimizer.apply)
    expected, accum = np.array([1.0, 2.0]), np.zeros(2)
    for g in ([1.0, -1.0], [0.5, 2.0], [-1.0, 0.0]):
        apply([tf.constant(g)])
        accum = 0.9 * accum + np.array(g)
        expected = expected - 0.1 * (np.array(g) + 0.9 * accum)
        np.testing.assert_allclose(w, expected, rtol=1e-6)
    assert int(optimizer.iterations) == 3


def test_fixed_train_step_learns_a_tiny_batch_and_traces_once():
    tf.random.set_seed(0)
    model = FixedChild(tiny_child_config(), arc_lib.parse_arc(arc_lib.DEFAULT_ARC))
    steps = FixedChildSteps(model, OptimConfig(lr_max=0.05, l2_reg=1e-4), [16, 16, 1])
    images = tf.random.normal([12, 16, 16, 1])
    labels = tf.constant([0, 1, 2] * 4)
    losses = [float(steps.train_step(images, labels, tf.constant(0.5))["loss"]) for _ in range(15)]
    assert losses[-1] < losses[0]
    steps.train_step(images[:5], labels[:5], tf.constant(1.0))  # a smaller last batch
    assert steps.train_step.experimental_get_tracing_count() == 1
    assert steps.eval_step(images).shape == (12,)


def test_a_checkpoint_of_another_model_is_a_one_line_error(tmp_path):
    from src.checkpoints import CheckpointMismatch, restore_or_start
    first = tf.train.Checkpoint(w=tf.Variable(tf.zeros([2])))
    restore_or_start(first, str(tmp_path), "checkpoints")[0].save()
    other = tf.train.Checkpoint(w=tf.Variable(tf.zeros([3])))
    with pytest.raises(CheckpointMismatch, match="different model"):
        restore_or_start(other, str(tmp_path), "checkpoints")
