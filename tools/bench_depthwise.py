"""Interleaved micro-benchmark of depthwise-conv kernels and their gradients on CPU.

    python tools/bench_depthwise.py [--repeats 15] [--batch 128]

For each shape of the search child (k, C, HxW) it times TensorFlow's depthwise
forward, backprop-input and backprop-filter kernels against alternatives (input gradient as a forward depthwise conv with the flipped
kernel; filter gradient as k*k shifted multiply-reduces, or as one depthwise
conv over the batch folded into channels). Candidates run in turn, round after
round (A, B, C, A, B, C, ...), so load from other processes hits them alike;
the medians are printed. Also checks that each alternative equals TF's result.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402


def depthwise_grad_input(dy, depthwise):
    """Gradient of a stride-1 'SAME' depthwise conv with an odd kernel w.r.t. its
    input: the same conv of dy with the kernel flipped in space. dy [N,H,W,C],
    depthwise [k,k,C,1] -> [N,H,W,C]."""
    return tf.nn.depthwise_conv2d(dy, tf.reverse(depthwise, [0, 1]), [1, 1, 1, 1], "SAME")


def depthwise_grad_filter_shifted(x, dy, kernel: int):
    """Gradient of a stride-1 'SAME' depthwise conv (odd kernel) w.r.t. its filter,
    as kernel*kernel shifted multiply-reduces: dw[i,j,c] = sum over n,h,w of
    x_padded[n,h+i,w+j,c] * dy[n,h,w,c]. x, dy [N,H,W,C] -> [k,k,C,1]."""
    pad = kernel // 2
    height, width = tf.shape(dy)[1], tf.shape(dy)[2]
    padded = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    rows = []
    for i in range(kernel):
        band = padded[:, i:i + height]  # [N,H,W+2p,C]
        rows.append(tf.stack([tf.reduce_sum(band[:, :, j:j + width] * dy, axis=[0, 1, 2])
                              for j in range(kernel)]))  # [k, C]
    return tf.expand_dims(tf.stack(rows), -1)


def depthwise_grad_filter_folded(x, dy, kernel: int):
    """The same filter gradient as one VALID depthwise conv: the batch folded into
    channels ([1, H+2p, W+2p, N*C]), dy as an HxW filter [H, W, N*C, 1]; the
    [1,k,k,N*C] result is summed over N. -> [k,k,C,1]."""
    pad = kernel // 2
    n, height, width, c = tf.unstack(tf.shape(dy))
    padded = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    folded_x = tf.reshape(tf.transpose(padded, [1, 2, 0, 3]), [1, height + 2 * pad, width + 2 * pad, n * c])
    folded_dy = tf.reshape(tf.transpose(dy, [1, 2, 0, 3]), [height, width, n * c, 1])
    out = tf.nn.depthwise_conv2d(folded_x, folded_dy, [1, 1, 1, 1], "VALID")  # [1,k,k,N*C]
    return tf.expand_dims(tf.reduce_sum(tf.reshape(out, [kernel, kernel, n, c]), axis=2), -1)



def candidates(x, w, dy):
    k, c = w.shape[0], w.shape[2]
    shape = tf.shape(x)
    tf_forward = tf.function(lambda: tf.nn.depthwise_conv2d(x, w, [1, 1, 1, 1], "SAME"))
    tf_grad_input = tf.function(lambda: tf.raw_ops.DepthwiseConv2dNativeBackpropInput(
        input_sizes=shape, filter=w, out_backprop=dy, strides=[1, 1, 1, 1], padding="SAME"))
    tf_grad_filter = tf.function(lambda: tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(
        input=x, filter_sizes=tf.shape(w), out_backprop=dy, strides=[1, 1, 1, 1], padding="SAME"))
    flip_grad_input = tf.function(lambda: depthwise_grad_input(dy, w))
    shift_grad_filter = tf.function(lambda: depthwise_grad_filter_shifted(x, dy, k))
    fold_grad_filter = tf.function(lambda: depthwise_grad_filter_folded(x, dy, k))
    return {
        "tf forward": tf_forward,
        "tf grad input": tf_grad_input,
        "flipped-kernel grad input": flip_grad_input,
        "tf grad filter": tf_grad_filter,
        "shifted grad filter": shift_grad_filter,
        "folded grad filter": fold_grad_filter,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args(argv)
    for k, c, hw in ((3, 20, 32), (5, 20, 32), (3, 40, 16), (5, 40, 16), (5, 80, 8)):
        x = tf.random.normal([args.batch, hw, hw, c])
        w = tf.random.normal([k, k, c, 1])
        dy = tf.random.normal([args.batch, hw, hw, c])
        fns = candidates(x, w, dy)
        results = {name: fn() for name, fn in fns.items()}  # traces, warms up
        err_in = float(tf.reduce_max(tf.abs(results["flipped-kernel grad input"] - results["tf grad input"])))
        err_sh = float(tf.reduce_max(tf.abs(results["shifted grad filter"] - results["tf grad filter"])))
        err_fo = float(tf.reduce_max(tf.abs(results["folded grad filter"] - results["tf grad filter"])))
        scale = float(tf.reduce_max(tf.abs(results["tf grad filter"])))
        times = {name: [] for name in fns}
        for _ in range(args.repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn().numpy()
                times[name].append(time.perf_counter() - start)
        print(f"k={k} C={c} {hw}x{hw} batch {args.batch}: max |diff| grad input {err_in:.2e}, "
              f"grad filter shifted {err_sh:.2e} folded {err_fo:.2e} (of {scale:.1f})")
        for name, ts in times.items():
            print(f"  {name:<28} {1000 * statistics.median(ts):8.2f} ms")


if __name__ == "__main__":
    main()
