"""What one search step costs at the CPU search preset's size, in this checkout.

    python tools/step_costs.py [--img_size 28 --channel 1]      # the digits
    python tools/step_costs.py --img_size 32 --channel 3        # colour photos

Builds the shared child of presets/cpu_search.flags (3 + 2 layers x 16 filters, batch 64,
10 classes, no recomputation) on random images and prints one JSON line: the warm-up
(tracing) time, the first train step and first scoring forward (TensorFlow builds and
optimises the graph on first use), the mean of 20 later train steps and of 20 scoring
forwards, each on a fresh random arc, and the CPU share of the train steps (process CPU
time / wall time). Works on checkouts from before the compiled step (commit 523ef11) too,
so `tools/ab_benchmark.py`-style A/B comparisons can run it in both.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.getcwd())

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from src import arc as arc_lib  # noqa: E402
from src.child_steps import SharedChildSteps  # noqa: E402
from src.configs import ChildConfig, OptimConfig  # noqa: E402
from src.shared_child import SharedChild  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--img_size", type=int, default=28)
    parser.add_argument("--channel", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    config = ChildConfig(num_classes=10, channel=args.channel, img_size=args.img_size, num_layers=3,
                         out_filters=16, recompute="off")
    steps = SharedChildSteps(SharedChild(config, recompute=False), OptimConfig(lr_max=0.05, l2_reg=1e-4))
    images = tf.random.normal([64, args.img_size, args.img_size, args.channel])
    labels = tf.constant(np.arange(64) % 10, tf.int32)
    rng = random.Random(0)
    compiled = hasattr(steps, "arc_spec")  # arcs as int32 tensors (the compiled step)

    def arc():
        drawn = arc_lib.random_arc(rng)
        return tf.constant(drawn, tf.int32) if compiled else drawn

    def timed(fn):
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    figures = {"warm_up_s": timed(steps.warm_up if compiled else lambda: steps.warm_up(images, labels)),
               "first_step_s": timed(lambda: float(steps.train_step(images, labels, arc())["loss"])),
               "first_forward_s": timed(lambda: int(steps.count_correct(images, labels, arc())))}
    cpu = time.process_time()
    wall = timed(lambda: [float(steps.train_step(images, labels, arc())["loss"]) for _ in range(args.steps)])
    figures.update(step_s=wall / args.steps, step_cpu_share=(time.process_time() - cpu) / wall)
    figures["forward_s"] = timed(lambda: [int(steps.count_correct(images, labels, arc()))
                                          for _ in range(args.steps)]) / args.steps
    print(json.dumps({key: round(value, 3) for key, value in figures.items()}))


if __name__ == "__main__":
    main()
