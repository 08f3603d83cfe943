"""Shared ops whose fast form must equal the plain one."""
import numpy as np
import pytest
import tensorflow as tf

from src.ops import drop_path, factorized_paths


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
