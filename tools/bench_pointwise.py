"""Interleaved micro-benchmark: a 1x1 conv as tf.nn.conv2d vs as reshape + matmul,
forward and both gradients, at the search child's shapes (CPU).

    python tools/bench_pointwise.py [--repeats 15]
"""
from __future__ import annotations

import argparse
import statistics
import time

import tensorflow as tf


def conv_1x1(x, w):
    return tf.nn.conv2d(x, w, 1, "SAME")


def matmul_1x1(x, w):
    shape = tf.shape(x)
    y = tf.reshape(x, [-1, shape[3]]) @ tf.reshape(w, tf.shape(w)[2:])  # [N*H*W, C']
    return tf.reshape(y, tf.concat([shape[:3], tf.shape(w)[3:]], 0))


def step_of(fn):
    @tf.function
    def step(x, w, dy):
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            y = fn(x, w)
        return tape.gradient(y, [x, w], output_gradients=dy)
    return step


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    for c, hw in ((20, 32), (40, 16), (80, 8), (60, 32)):
        x = tf.random.normal([128, hw, hw, c])
        w = tf.random.normal([1, 1, c, 20 if c == 60 else c])
        dy = tf.random.normal([128, hw, hw, w.shape[3]])
        fns = {"conv2d": step_of(conv_1x1), "matmul": step_of(matmul_1x1)}
        ref = [fn(x, w, dy) for fn in fns.values()]
        err = max(float(tf.reduce_max(tf.abs(a - b))) for a, b in zip(*ref))
        times = {k: [] for k in fns}
        for _ in range(args.repeats):
            for k, fn in fns.items():
                t = time.perf_counter()
                [g.numpy() for g in fn(x, w, dy)]
                times[k].append(time.perf_counter() - t)
        print(f"C={c} {hw}x{hw}: " + ", ".join(f"{k} {1000 * statistics.median(v):.2f} ms"
                                              for k, v in times.items()) + f" (max diff {err:.1e})")


if __name__ == "__main__":
    main()
