"""Shared ops whose fast form must equal the plain one."""
import numpy as np
import pytest
import tensorflow as tf

from src import ops
from src.ops import depthwise_conv, drop_path, factorized_paths, separable_conv


def strided_slice_paths(x, w_path1, w_path2):
    """The factorized reduction as first written: slice every second pixel, 1x1 convs."""
    path1 = tf.nn.conv2d(x[:, ::2, ::2, :], w_path1, 1, "SAME")
    shifted = tf.pad(x, [[0, 0], [0, 1], [0, 1], [0, 0]])[:, 1:, 1:, :]
    path2 = tf.nn.conv2d(shifted[:, ::2, ::2, :], w_path2, 1, "SAME")
    return tf.concat([path1, path2], axis=3)


@pytest.mark.parametrize("shape", [(2, 7, 6, 4), (2, 8, 6, 4),
                                   # A stride-2 1x1 conv's backward pass aborted the process
                                   # (oneDNN double free) at this shape.
                                   (128, 64, 12, 4)])
def test_pooled_paths_equal_the_strided_slices_with_their_gradients(shape):
    n, hw, c_in, c_out = shape
    x = tf.random.normal([n, hw, hw, c_in])
    w1, w2 = tf.random.normal([1, 1, c_in, c_out]), tf.random.normal([1, 1, c_in, c_out])
    results = []
    for fn in (strided_slice_paths, factorized_paths):
        with tf.GradientTape() as tape:
            tape.watch([x, w1, w2])
            y = fn(x, w1, w2)
            loss = tf.reduce_sum(tf.sin(y))
        results.append([y] + tape.gradient(loss, [x, w1, w2]))
    assert results[1][0].shape == (n, (hw + 1) // 2, (hw + 1) // 2, 2 * c_out)
    for plain, fast in zip(*results):
        np.testing.assert_allclose(plain, fast, rtol=1e-4, atol=1e-4)


def test_drop_path_keeps_or_drops_whole_examples_rescaled():
    x = tf.random.normal([64, 3, 3, 2])
    y = drop_path(x, 0.5, tf.constant([1, 2], tf.int64))
    kept = np.all(np.isclose(y, 2.0 * x), axis=(1, 2, 3))
    dropped = np.all(y == 0.0, axis=(1, 2, 3))
    assert np.all(kept | dropped) and 10 < kept.sum() < 54


def test_custom_depthwise_gradients_are_chosen_on_cpu_only():
    assert ops.choose_depthwise_gradients([]) == ops.CUSTOM
    gpu = tf.config.PhysicalDevice(name="/physical_device:GPU:0", device_type="GPU")
    assert ops.choose_depthwise_gradients([gpu]) == ops.TENSORFLOW
    if not tf.config.list_physical_devices("GPU"):  # this machine's choice, made once
        assert ops.depthwise_gradients() == ops.CUSTOM
        assert ops.describe_depthwise_gradients() == (
            "Depthwise-conv gradients: custom (measured faster on CPU)")


@pytest.mark.parametrize("gradients", [ops.CUSTOM, ops.TENSORFLOW])
@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw", [7, 8])
def test_depthwise_conv_and_its_gradients_equal_tensorflows(kernel, stride, hw, gradients):
    x = tf.random.normal([3, hw, hw, 4])
    w = tf.random.normal([kernel, kernel, 4, 1])
    dy = tf.random.normal([3, (hw + stride - 1) // stride, (hw + stride - 1) // stride, 4])
    results = []
    for fn in (lambda a, b: tf.nn.depthwise_conv2d(a, b, [1, stride, stride, 1], "SAME"),
               lambda a, b: depthwise_conv(a, b, stride, gradients)):
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            y = fn(x, w)
        results.append([y] + tape.gradient(y, [x, w], output_gradients=dy))
    for plain, fast in zip(*results):
        np.testing.assert_allclose(plain, fast, rtol=1e-4, atol=1e-4)


def test_separable_conv_gradients_in_tf_function_with_unknown_batch_and_recompute():
    x = tf.random.normal([2, 8, 8, 4])
    dw, pw = tf.Variable(tf.random.normal([5, 5, 4, 1])), tf.random.normal([1, 1, 4, 6])

    def plain(a, b, c):
        return tf.nn.separable_conv2d(tf.nn.relu(a), b, c, [1, 1, 1, 1], "SAME")

    spec = [tf.TensorSpec([None, 8, 8, 4]), tf.TensorSpec([5, 5, 4, 1]), tf.TensorSpec([1, 1, 4, 6])]
    results = []
    for fn in (plain, separable_conv, tf.recompute_grad(separable_conv)):
        @tf.function(input_signature=spec)
        def loss_and_grads(a, b, c, fn=fn):
            with tf.GradientTape() as tape:
                tape.watch([a, b, c])
                loss = tf.reduce_sum(tf.sin(fn(a, b, c)))
            return [loss] + tape.gradient(loss, [a, b, c])
        results.append(loss_and_grads(x, dw, pw))
    for fast in results[1:]:
        for want, got in zip(results[0], fast):
            np.testing.assert_allclose(want, got, rtol=1e-4, atol=1e-4)
    with tf.GradientTape() as tape:  # a variable filter, eagerly
        loss = tf.reduce_sum(tf.sin(separable_conv(x, dw, pw)))
    np.testing.assert_allclose(tape.gradient(loss, dw), results[0][2], rtol=1e-4, atol=1e-4)


def test_depthwise_conv_gradients_with_a_kernel_size_unknown_when_traced():
    x, dy = tf.random.normal([2, 8, 8, 3]), tf.random.normal([2, 8, 8, 3])
    for kernel in (3, 5):
        w = tf.random.normal([kernel, kernel, 3, 1])
        grads = []
        for fn in (lambda a, b: tf.nn.depthwise_conv2d(a, b, [1, 1, 1, 1], "SAME"), depthwise_conv):
            @tf.function(input_signature=[tf.TensorSpec(None), tf.TensorSpec(None)])
            def grad(a, b, fn=fn):
                with tf.GradientTape() as tape:
                    tape.watch([a, b])
                    y = fn(a, b)
                return tape.gradient(y, [a, b], output_gradients=dy)
            grads.append(grad(x, w))
        for plain, fast in zip(*grads):
            np.testing.assert_allclose(plain, fast, rtol=1e-4, atol=1e-4)
