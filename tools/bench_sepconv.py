"""Interleaved A/B micro-benchmark: one separable conv forward + backward, TF's
tf.nn.separable_conv2d (A) against src.ops.separable_conv with its custom depthwise
gradients (B), on CPU.

    python tools/bench_sepconv.py [--repeats 9] [--batch 128] [--fixed-child]

--fixed-child instead times fixed-child train steps (15 layers, 16 filters, 32x32x1,
as src/benchmark.py) of a model traced with TF's depthwise gradients (A) against one
traced with the custom ones (B).

A and B alternate (A, B, A, B, ...) so load from other processes hits them alike;
medians are printed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

from src import benchmark, ops  # noqa: E402
from src.ops import separable_conv  # noqa: E402


def tf_separable_conv(x, depthwise, pointwise, stride: int = 1):
    return tf.nn.separable_conv2d(tf.nn.relu(x), depthwise, pointwise,
                                  strides=[1, stride, stride, 1], padding="SAME")


def step_fn(conv, x, dw, pw, stride):
    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch([x, dw, pw])
            loss = tf.reduce_sum(tf.square(conv(x, dw, pw, stride)))
        return tape.gradient(loss, [x, dw, pw])
    return step


def fixed_child_steps(args):
    """Two fixed children, one traced with each depthwise_conv; alternate their steps."""
    plan = benchmark.Plan(batch_size=args.batch)
    fast_depthwise = ops.depthwise_conv
    steps = {}
    folded = ops.FOLDED_GRAD_FILTER_KERNELS
    for name, depthwise, folded_kernels in (
            ("A tf", lambda x, w, stride=1: tf.nn.depthwise_conv2d(
                x, w, [1, stride, stride, 1], "SAME"), folded),
            ("B custom", fast_depthwise, folded),
            ("C custom input grad only", fast_depthwise, ())):
        # read when the train step is traced
        ops.depthwise_conv, ops.FOLDED_GRAD_FILTER_KERNELS = depthwise, folded_kernels
        fixed = benchmark.fixed_steps(plan)
        train = benchmark.synthetic_batches(plan, 2)

        def step(fixed=fixed, train=train):
            images, labels = next(train)
            float(fixed.train_step(images, labels, tf.constant(0.5))["loss"])
        step()
        step()
        steps[name] = step
    ops.depthwise_conv, ops.FOLDED_GRAD_FILTER_KERNELS = fast_depthwise, folded
    times = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    print(f"fixed child train step (15 layers, 16 filters, batch {args.batch}, 32x32x1): "
          + ", ".join(f"{name} {statistics.median(ts):.3f} s" for name, ts in times.items()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--fixed-child", action="store_true")
    args = parser.parse_args(argv)
    if args.fixed_child:
        fixed_child_steps(args)
        return
    for hw, c in ((32, 20), (16, 40)):
        for k in (3, 5):
            for stride in (1,):
                x = tf.random.normal([args.batch, hw, hw, c])
                dw = tf.random.normal([k, k, c, 1])
                pw = tf.random.normal([1, 1, c, c])
                fns = {"A tf": step_fn(tf_separable_conv, x, dw, pw, stride),
                       "B custom": step_fn(separable_conv, x, dw, pw, stride)}
                for fn in fns.values():
                    fn()
                times = {name: [] for name in fns}
                for _ in range(args.repeats):
                    for name, fn in fns.items():
                        start = time.perf_counter()
                        [g.numpy() for g in fn()]
                        times[name].append(time.perf_counter() - start)
                print(f"[{args.batch},{hw},{hw},{c}] k={k} stride {stride}: " + ", ".join(
                    f"{name} {1000 * statistics.median(ts):.2f} ms" for name, ts in times.items()),
                    flush=True)


if __name__ == "__main__":
    main()
