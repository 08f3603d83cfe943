"""Interleaved micro-benchmark of batch-statistics BN and 3x3 max pooling (forward, and
forward + backward) at the search child's shapes, on CPU.

    python tools/bench_bn_pool.py [--repeats 15]

Candidates run in turn, round after round, so load from other processes hits them
alike; medians are printed, and each alternative's result is checked against TF's.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

from src import ops  # noqa: E402


def fused_bn(x, g, b):
    return ops.batch_norm_batch_stats(x, g, b)[0]


def moments_bn(x, g, b):
    mean, variance = tf.nn.moments(x, [0, 1, 2])
    return tf.nn.batch_normalization(x, mean, variance, b, g, ops.BN_EPSILON)


def relu_fused_bn(x, g, b):  # what grappler fuses into FusedBatchNormEx
    return tf.nn.relu(fused_bn(x, g, b))


def relu_moments_bn(x, g, b):
    return tf.nn.relu(moments_bn(x, g, b))


def tf_max_pool(x):
    return tf.nn.max_pool2d(x, 3, 1, "SAME")


def forward_and_backward(fn):
    @tf.function
    def run(*args):
        with tf.GradientTape() as tape:
            tape.watch(args)
            y = fn(*args)
            loss = tf.reduce_sum(y * y)
        return [y] + tape.gradient(loss, list(args))
    return run


def forward(fn):
    return tf.function(lambda *args: [fn(*args)])


def time_interleaved(fns, args, repeats):
    results = {k: [t.numpy() for t in fn(*args)] for k, fn in fns.items()}
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            start = time.perf_counter()
            [t.numpy() for t in fn(*args)]
            times[k].append(time.perf_counter() - start)
    ref = next(iter(results.values()))
    out = []
    for k, ts in times.items():
        err = max(float(abs(a - b).max()) for a, b in zip(ref, results[k]))
        out.append(f"{k} {1000 * statistics.median(ts):.2f} ms (diff {err:.1e})")
    return "; ".join(out)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    extra = {name: getattr(ops, name) for name in dir(ops) if name.startswith("max_pool3x3_")}
    for c, hw in ((20, 32), (40, 16), (80, 8)):
        x = tf.random.normal([128, hw, hw, c])
        g, b = tf.random.normal([c]) + 1.0, tf.random.normal([c])
        bns = {"fused": fused_bn, "moments": moments_bn, "relu+fused": relu_fused_bn,
               "relu+moments": relu_moments_bn}
        print(f"C={c} {hw}x{hw}")
        print("  BN forward:  " + time_interleaved({k: forward(f) for k, f in bns.items()},
                                                    (x, g, b), args.repeats))
        print("  BN fwd+bwd:  " + time_interleaved(
            {k: forward_and_backward(f) for k, f in bns.items()}, (x, g, b), args.repeats))
        pools = {"tf": tf_max_pool, **extra}
        print("  maxpool fwd+bwd: " + time_interleaved(
            {k: forward_and_backward(f) for k, f in pools.items()}, (x,), args.repeats))


if __name__ == "__main__":
    main()
