"""How fast does the shared child learn? Validation accuracy against child steps.

Trains a fresh shared child on the bundled data (or any image folders) once per
variant, under the variant's arc policy, and every --eval_every steps scores it on
the whole validation set with a freshly drawn arc per batch (as the search
evaluates). Writes one PNG of the curves (steps on x), a JSON of the points, and
prints a Markdown table.

    python tools/shared_child_curves.py                       # the CPU search preset's size
    python tools/shared_child_curves.py --layers 6 --filters 20 --img_size 32 --batch_size 128 \\
        --steps 120 --variants uniform,controller_init        # the default (paper) search size

Variants (comma-separated names):
  uniform            uniformly random arcs (warm-up epochs, random search)
  controller_init    arcs from the controller's initial policy (the authors' first epochs)
  fixed_arc          one arc throughout (the default arc): the ceiling
  two_arcs           two random arcs in turn: how far diversity alone slows learning
  lr_0.01, lr_0.2    uniform arcs, another (constant) learning rate
  no_aux             uniform arcs, no aux head
  no_crop            uniform arcs, no random crop
  stacked_init       uniform arcs, the authors' He fan-in from the stacked first dimension
  untrained_aux      uniform arcs, the variant's aux head that is never updated
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import time
from typing import Callable, Dict, List, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import tensorflow as tf  # noqa: E402

from src import arc as arc_lib  # noqa: E402
from src import data as data_lib  # noqa: E402
from src import reporting  # noqa: E402
from src.configs import ChildConfig, ControllerConfig, DataConfig, OptimConfig  # noqa: E402
from src.controller import Controller  # noqa: E402
from src.search import controller_sampler, uniform_sampler  # noqa: E402
from src.shared_child import SharedChild  # noqa: E402
from src.child_steps import SharedChildSteps  # noqa: E402

# name -> (arc policy, overrides of ChildConfig, OptimConfig and DataConfig fields)
VARIANTS: Dict[str, Tuple[str, Dict]] = {
    "uniform": ("uniform", {}),
    "controller_init": ("controller", {}),
    "fixed_arc": ("fixed", {}),
    "two_arcs": ("two", {}),
    "lr_0.01": ("uniform", {"lr_max": 0.01}),
    "lr_0.2": ("uniform", {"lr_max": 0.2}),
    "no_aux": ("uniform", {"use_aux_heads": False}),
    "no_crop": ("uniform", {"random_crop": False}),
    "stacked_init": ("uniform", {"init_fan_in": "stacked"}),
    "untrained_aux": ("uniform", {"train_aux_head": False}),
}


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="uniform,controller_init,fixed_arc",
                        help="comma-separated names (see the module docstring)")
    parser.add_argument("--steps", type=int, default=200, help="child steps per variant")
    parser.add_argument("--eval_every", type=int, default=25, help="steps between evaluations")
    parser.add_argument("--layers", type=int, default=3, help="child_num_layers (3: cpu_search.flags)")
    parser.add_argument("--filters", type=int, default=16, help="child_out_filters")
    parser.add_argument("--img_size", type=int, default=28)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05, help="constant learning rate")
    parser.add_argument("--train_dir", default=os.path.join(REPO_ROOT, "data", "train"))
    parser.add_argument("--valid_dir", default=os.path.join(REPO_ROOT, "data", "valid"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "output", "curves"),
                        help="folder for curves.png and curves.json")
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    return args


def split_overrides(overrides: Dict) -> Tuple[Dict, Dict, Dict]:
    """Splits one variant's overrides into ChildConfig, OptimConfig, DataConfig fields."""
    parts = []
    for cls in (ChildConfig, OptimConfig, DataConfig):
        names = {f.name for f in dataclasses.fields(cls)}
        parts.append({k: v for k, v in overrides.items() if k in names})
    return tuple(parts)


def arc_policy(policy: str, seed: int) -> Callable[[], List[int]]:
    rng = random.Random(seed)
    if policy == "uniform":
        uniform = uniform_sampler(rng, arc_lib.NUM_CELLS)
        return lambda: uniform(1)[0]
    if policy == "controller":
        controller = Controller(ControllerConfig(seed=seed))
        return lambda: controller_sampler(controller)(1)[0]
    if policy == "fixed":
        arc = list(arc_lib.parse_arc(arc_lib.DEFAULT_ARC))
        return lambda: arc
    two = [list(arc_lib.random_arc(rng)) for _ in range(2)]
    return lambda: two[rng.randrange(2)]


def run_variant(name: str, args, datasets: Dict) -> List[Tuple[int, float]]:
    policy, overrides = VARIANTS[name]
    child_over, optim_over, data_over = split_overrides(overrides)
    data_cfg = DataConfig(train_dir=args.train_dir, valid_dir=args.valid_dir,
                          test_dir=args.valid_dir, img_size=args.img_size,
                          batch_size=args.batch_size, seed=args.seed, **data_over)
    key = (args.img_size,)
    if key not in datasets:
        datasets[key] = data_lib.load_dataset(data_cfg, verbose=False)
    dataset = datasets[key]
    tf.random.set_seed(args.seed)
    child = SharedChild(ChildConfig(
        num_classes=dataset.num_classes, channel=1, img_size=args.img_size,
        num_layers=args.layers, out_filters=args.filters, keep_prob=0.9, **child_over))
    lr = optim_over.pop("lr_max", args.lr)
    steps = SharedChildSteps(child, OptimConfig(lr_max=lr, lr_min=lr, l2_reg=1e-4, **optim_over))
    steps.set_learning_rate(lr)
    next_arc = arc_policy(policy, args.seed)
    batches = iter(data_lib.TrainBatches(dataset.train, data_cfg).epoch(0, steps=args.steps))
    points, start = [], time.time()
    for step in range(1, args.steps + 1):
        images, labels = next(batches)
        steps.train_step(images, labels, next_arc())
        if step % args.eval_every == 0:
            correct = sum(int(steps.count_correct(images, labels, next_arc()))
                          for images, labels in data_lib.mixed_eval_batches(dataset.valid, 128))
            points.append((step, correct / len(dataset.valid.labels)))
            print(f"{name:16s} step {step:5d}  valid {points[-1][1]:.3f}  "
                  f"{time.time() - start:6.0f}s", flush=True)
    return points


def main(argv: List[str]) -> None:
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    datasets: Dict = {}
    curves = {name: run_variant(name, args, datasets) for name in args.variants.split(",")}
    size = f"{args.layers} layers, {args.filters} filters, {args.img_size}px, batch {args.batch_size}"
    with open(os.path.join(args.out, "curves.json"), "w") as f:
        json.dump({"config": vars(args), "curves": curves}, f, indent=1)
    reporting.save_curves(os.path.join(args.out, "curves.png"), curves,
                          title=f"shared child, valid accuracy ({size})",
                          xlabel="child steps", ylabel="valid accuracy")
    checkpoints = [step for step, _ in next(iter(curves.values()))]
    print(f"\n| variant | {' | '.join(f'step {s}' for s in checkpoints)} |")
    print(f"|---|{'---|' * len(checkpoints)}")
    for name, points in curves.items():
        print(f"| {name} | {' | '.join(f'{acc:.3f}' for _, acc in points)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
