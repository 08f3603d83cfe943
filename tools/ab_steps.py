"""Times one checkout's search step, valid forward and fixed-child step at the default
sizes, in this process; prints one JSON line. For back-to-back A/B runs of two versions:

    for r in 1 2; do for c in ../old-checkout .; do python tools/ab_steps.py $c; done; done

Search: 6 layers, 20 filters, controller-sampled arcs, median of 8 steps and 8 valid
forwards after warm-up. Fixed child: 15 layers, 16 filters, the reference arc, median of
6 steps. Batch 128, 32x32x1, random data. --recompute on|off forces the search's choice
(checkouts that have the flag); the default is what the checkout would choose.
"""
import argparse
import dataclasses
import json
import os
import resource
import statistics
import sys
import time


def median_time(fn, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkout", help="the repository checkout to time")
    parser.add_argument("--recompute", choices=["on", "off"], default=None)
    args = parser.parse_args()
    sys.path.insert(0, os.path.abspath(args.checkout))
    os.chdir(args.checkout)
    import tensorflow as tf
    from src import arc as arc_lib, search
    from src.configs import (ChildConfig, ControllerConfig, DataConfig, OptimConfig, RunConfig,
                             SearchConfig)
    from src.fixed_child import FixedChild
    try:
        from src.child_steps import FixedChildSteps
    except ImportError:  # a checkout from before src/child_steps.py
        from src.train_steps import FixedChildSteps

    images = tf.random.stateless_normal([128, 32, 32, 1], [0, 0])
    labels = tf.random.stateless_uniform([128], [0, 1], 0, 10, tf.int32)
    child = ChildConfig(num_classes=10, channel=1, img_size=32, num_layers=6, out_filters=20,
                        keep_prob=0.9)
    if args.recompute:
        child = dataclasses.replace(child, recompute=args.recompute)
    state = search.build_state(SearchConfig(
        data=DataConfig(), child=child, optim=OptimConfig(lr_max=0.05, lr_min=0.0005, l2_reg=1e-4),
        controller=ControllerConfig(), run=RunConfig()))
    if hasattr(search, "controller_sampler"):  # the compiled step: arcs as int32 tensors
        state.child_steps.warm_up()
        sample = search.controller_sampler(state.controller)
        draw = lambda: sample(1)[0]  # noqa: E731
    else:  # a checkout from before it
        state.child_steps.warm_up(images, labels)
        draw = lambda: search.sample_arc(state.controller)  # noqa: E731

    def child_step():
        float(state.child_steps.train_step(images, labels, draw())["loss"])

    def valid_forward():
        int(state.child_steps.count_correct(images, labels, draw()))

    figures = {"search_step_s": median_time(child_step, 8),
               "valid_forward_s": median_time(valid_forward, 8),
               "search_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    fixed = ChildConfig(num_classes=10, channel=1, img_size=32, num_layers=15, out_filters=16)
    steps = FixedChildSteps(FixedChild(fixed, arc_lib.parse_arc(arc_lib.DEFAULT_ARC), seed=0),
                            OptimConfig(), [32, 32, 1])
    figures["fixed_step_s"] = median_time(
        lambda: float(steps.train_step(images, labels, tf.constant(0.5))["loss"]), 6)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
