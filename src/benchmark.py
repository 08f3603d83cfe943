"""Speed and memory of the search and of the fixed child, on synthetic data.

    python -m src.benchmark           # default search config, a few minutes on 2 cores
    python -m src.benchmark --quick   # a small configuration, under a minute (smoke run)
    python -m src.benchmark --deterministic   # the same with op determinism on
    python -m src.benchmark --mixed_precision bfloat16   # the child in bfloat16 (GPUs)

The sampled-op search steps and controller updates run in a process of their
own (so peak_rss_mb and startup_s are theirs alone); the all-ops reference
and the fixed child run in this process, from the same seed, so the all-ops
steps start from the same weights and see the same sequence of arcs. Every
timing is the median over steps after warm-up. The last line printed is one
JSON object.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time

# Read before TensorFlow is imported: process start is the reference for startup_s.
_PROCESS_START = time.time()

import tensorflow as tf  # noqa: E402

from src import arc as arc_lib  # noqa: E402
from src import search  # noqa: E402
from src.configs import ChildConfig, ControllerConfig, OptimConfig, SearchConfig  # noqa: E402
from src.configs import DataConfig, RunConfig  # noqa: E402
from src.fixed_child import FixedChild  # noqa: E402
from src.shared_child import ALL_OPS  # noqa: E402
from src.child_steps import FixedChildSteps, SharedChildSteps  # noqa: E402

CHANNELS, NUM_CLASSES = 1, 10


@dataclasses.dataclass(frozen=True)
class Plan:
    """What to build and how many steps to time. The default is the issue's
    configuration; --quick only shows that the benchmark works."""
    batch_size: int = 128
    img_size: int = 32
    search_layers: int = 6
    search_filters: int = 20
    fixed_layers: int = 15
    fixed_filters: int = 16
    search_steps: int = 10
    ctrl_steps: int = 3
    all_ops_steps: int = 5
    fixed_steps: int = 5
    mixed_precision: str = "off"  # ChildConfig.mixed_precision of both children


QUICK = Plan(batch_size=16, img_size=16, search_layers=1, search_filters=8, fixed_layers=1,
             fixed_filters=8, search_steps=2, ctrl_steps=1, all_ops_steps=1, fixed_steps=1)
# presets/cpu_search.flags and presets/cpu_final.flags (search and fixed sizes).
CPU_PRESET = Plan(batch_size=64, img_size=28, search_layers=3, search_filters=16, fixed_layers=6,
                  fixed_filters=20, search_steps=10, ctrl_steps=3, fixed_steps=5)
CPU_PRESET_FIXED_BATCH = 128  # cpu_final.flags keeps the default batch size

# What an epoch is made of on the bundled data (data/: 3,500 train, 500 valid, 1,000 test
# digits), to turn per-piece timings into the time a user waits for an epoch.
BUNDLED = {"train": 3500, "valid": 500, "test": 1000}
NUM_SHOWN_ARCS = 10  # search._show_sampled_arcs
NUM_LIFT_ARCS = 30  # ControllerConfig.num_lift_arcs


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """The search flags that set an epoch's work (presets/*.flags)."""
    child_steps: int  # 0 = one pass over the training set
    controller_train_steps: int
    num_aggregate: int
    eval_every_epochs: int


PAPER_EPOCH = EpochPlan(child_steps=0, controller_train_steps=30, num_aggregate=10,
                        eval_every_epochs=1)
CPU_SEARCH_EPOCH = EpochPlan(child_steps=50, controller_train_steps=10, num_aggregate=10,
                             eval_every_epochs=8)


def batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def search_epoch_split(figures: dict, batch_size: int, epoch: EpochPlan) -> dict:
    """Seconds of one controller-training search epoch on the bundled data, by part:
    child = steps x search step (each samples its arc from the controller);
    controller = train steps x controller update (K arcs sampled and rewarded on one
    validation batch each, one REINFORCE step); scoring = 10 shown arcs on one batch
    each; evaluation (every eval_every_epochs, spread over the epochs) = the selection
    half of valid + test with sampled arcs + the lift's 2 x 30 arcs on the selection
    half (src/selection.py). The last, smaller batch of a split counts as a whole one;
    the final selection, once a search, is left out."""
    half_b, test_b = batches(BUNDLED["valid"] // 2, batch_size), batches(BUNDLED["test"], batch_size)
    steps = epoch.child_steps or batches(BUNDLED["train"], batch_size)
    forward = figures["valid_forward_s"]
    split = {
        "child": steps * figures["search_step_s"],
        "controller": epoch.controller_train_steps * figures["controller_update_s"],
        "scoring": NUM_SHOWN_ARCS * forward,
        "evaluation": (half_b + test_b + 2 * NUM_LIFT_ARCS * half_b) * forward
        / epoch.eval_every_epochs,
    }
    split["total"] = sum(split.values())
    return {key: round(value, 1) for key, value in split.items()}


def fixed_epoch_s(step_s: float, eval_forward_s: float, batch_size: int) -> float:
    """One retraining epoch on the bundled data: a pass over the training split, then
    valid and test evaluated (the last, smaller batch counted as a whole one)."""
    evals = batches(BUNDLED["valid"], batch_size) + batches(BUNDLED["test"], batch_size)
    return round(batches(BUNDLED["train"], batch_size) * step_s + evals * eval_forward_s, 1)


def process_start_time() -> float:
    """Wall-clock start of this process (Linux /proc), else the module import time."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - uptime + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return _PROCESS_START


def search_config(plan: Plan, recompute: str = "auto") -> SearchConfig:
    """The search configuration (default: 6 layers, 20 filters, paper layout, aux heads)."""
    return SearchConfig(
        data=DataConfig(batch_size=plan.batch_size, eval_batch_size=plan.batch_size),
        child=ChildConfig(num_classes=NUM_CLASSES, channel=CHANNELS, img_size=plan.img_size,
                          num_layers=plan.search_layers, out_filters=plan.search_filters,
                          keep_prob=0.9, recompute=recompute,
                          mixed_precision=plan.mixed_precision),
        optim=OptimConfig(lr_max=0.05, lr_min=0.0005, l2_reg=1e-4),
        controller=ControllerConfig(), run=RunConfig())


def synthetic_batches(plan: Plan, seed: int):
    """An endless iterator of random (images, labels) batches, prefetched."""
    batch_size, size = plan.batch_size, plan.img_size
    images = tf.random.stateless_normal([4 * batch_size, size, size, CHANNELS], [seed, 0])
    labels = tf.random.stateless_uniform([4 * batch_size], [seed, 1], 0, NUM_CLASSES, tf.int32)
    data = tf.data.Dataset.from_tensor_slices((images, labels)).repeat().batch(batch_size)
    return iter(data.prefetch(tf.data.AUTOTUNE))


def median_time(fn, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def tracing_count(state: search.SearchState) -> int:
    """tf.function traces so far, over every compiled piece of the search."""
    functions = state.child_steps.compiled_functions() + [
        state.controller.sample_batch, state.controller.neg_log_prob_and_entropy,
        state.reinforce.train_step]
    return sum(f.experimental_get_tracing_count() for f in functions)


def measure_sampled_search(plan: Plan, recompute: str = "auto") -> dict:
    """The sampled-op search steps and controller updates (run in their own process)."""
    config = search_config(plan, recompute)
    state = search.build_state(config)
    train, valid = synthetic_batches(plan, 0), synthetic_batches(plan, 1)

    sample = search.controller_sampler(state.controller)

    def child_step():
        images, labels = next(train)
        float(search.child_step(state, images, labels, sample(1)[0])["loss"])  # waits for the step

    child_step()
    startup = time.time() - process_start_time()
    # Warm-up: every compiled piece at every shape, then one of each measured call.
    state.child_steps.warm_up()
    images, labels = next(valid)
    arc = sample(1)[0]

    def valid_forward():
        float(state.child_steps.count_correct(images, labels, arc))

    def controller_update():
        search.controller_update(state, valid, config.controller)

    for warm_up in (child_step, valid_forward, controller_update):
        warm_up()
    traces = tracing_count(state)
    search_step = median_time(child_step, plan.search_steps, warmup=0)
    valid_forward_s = median_time(valid_forward, plan.search_steps, warmup=0)
    controller_update_s = median_time(controller_update, plan.ctrl_steps, warmup=0)
    return {
        "search_step_s": search_step,
        "search_images_per_s": plan.batch_size / search_step,
        "valid_forward_s": valid_forward_s,
        "controller_update_s": controller_update_s,
        "startup_s": startup,
        "traces_after_warmup": tracing_count(state) - traces,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_device_mb": peak_device_mb(),
        "shared_child_params": state.child.num_params(),
        "recompute": state.child.recompute,
    }


def measure_all_ops_search(plan: Plan) -> float:
    """The same search step computing all five ops of every node and selecting."""
    config = search_config(plan)
    state = search.build_state(config)  # same seed: same initial weights
    state.child.wiring = ALL_OPS
    state.child_steps = SharedChildSteps(state.child, config.optim)  # traced with this wiring
    train = synthetic_batches(plan, 0)
    sample = search.controller_sampler(state.controller)

    def child_step():
        images, labels = next(train)
        float(search.child_step(state, images, labels, sample(1)[0])["loss"])

    return median_time(child_step, plan.all_ops_steps, warmup=1)


def fixed_steps(plan: Plan) -> FixedChildSteps:
    """The reference arc (default: 15 layers, 16 filters, 32x32x1, the final model)."""
    config = ChildConfig(num_classes=NUM_CLASSES, channel=CHANNELS, img_size=plan.img_size,
                         num_layers=plan.fixed_layers, out_filters=plan.fixed_filters,
                         mixed_precision=plan.mixed_precision)
    model = FixedChild(config, arc_lib.parse_arc(arc_lib.DEFAULT_ARC))
    return FixedChildSteps(model, OptimConfig(), [plan.img_size, plan.img_size, CHANNELS])


def measure_fixed_child(plan: Plan):
    """(train step s, evaluation forward s) of the fixed child."""
    fixed = fixed_steps(plan)
    train = synthetic_batches(plan, 2)

    def step():
        images, labels = next(train)
        float(fixed.train_step(images, labels, tf.constant(0.5))["loss"])

    images, _ = next(train)

    def eval_forward():
        fixed.eval_step(images).numpy()

    return (median_time(step, plan.fixed_steps, warmup=1),
            median_time(eval_forward, plan.fixed_steps, warmup=1))


def peak_device_mb():
    """Peak memory TensorFlow allocated on the first GPU so far, in MB; None without one."""
    if not tf.config.list_physical_devices("GPU"):
        return None
    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2 ** 20


def device_name() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"GPU: {details.get('device_name', gpus[0].name)}"
    return "CPU"


def run_sampled_worker(args, recompute: str, preset: bool = False) -> dict:
    """Runs the sampled-op part in a fresh Python process; returns its JSON."""
    command = [sys.executable, "-m", "src.benchmark", "--worker", f"--recompute={recompute}"]
    command += [f"--{name}" for name in ("quick", "deterministic") if getattr(args, name)]
    command += ["--cpu_preset"] if preset else []
    command += [f"--mixed_precision={args.mixed_precision}"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-3000:])
        raise SystemExit(f"benchmark worker failed with exit code {result.returncode}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def add_references(args, plan: Plan, figures: dict) -> None:
    """The search step with the other recompute setting (another process) and with
    all ops computed (this one), into figures."""
    chosen = "on" if figures["recompute"] else "off"
    other_setting = "off" if chosen == "on" else "on"
    other = run_sampled_worker(args, other_setting)
    for setting, result in ((chosen, figures), (other_setting, other)):
        figures[f"search_step_recompute_{setting}_s"] = result["search_step_s"]
        figures[f"peak_rss_recompute_{setting}_mb"] = result["peak_rss_mb"]
    figures["traces_after_warmup"] += other["traces_after_warmup"]
    print(f"  search step {figures['search_step_s']:.3f} s (recompute {chosen}), "
          f"{other['search_step_s']:.3f} s (recompute {other_setting}); all-ops reference ...",
          flush=True)
    figures["search_step_all_ops_s"] = measure_all_ops_search(plan)
    print(f"  all-ops step {figures['search_step_all_ops_s']:.3f} s", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a small configuration and few steps: shows the benchmark works")
    parser.add_argument("--deterministic", action="store_true",
                        help="time it with op determinism on, as --deterministic runs are")
    parser.add_argument("--recompute", choices=("auto", "on", "off"), default="auto",
                        help="the search step's recomputation as the search would choose it "
                             "(auto), or forced; the other setting is timed too")
    parser.add_argument("--skip_presets", action="store_true",
                        help="leave out the CPU preset sizes (presets/cpu_*.flags)")
    parser.add_argument("--skip_references", action="store_true",
                        help="leave out the other recompute setting and the all-ops reference "
                             "(time the sampled search and the fixed child only)")
    parser.add_argument("--mixed_precision", choices=("off", "float16", "bfloat16"),
                        default="off", help="the children's --mixed_precision")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cpu_preset", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    plan = dataclasses.replace(QUICK if args.quick else Plan(),
                               mixed_precision=args.mixed_precision)
    if args.deterministic:
        tf.config.experimental.enable_op_determinism()
    if args.worker:
        worker_plan = CPU_PRESET if args.cpu_preset else plan
        print(json.dumps(measure_sampled_search(
            dataclasses.replace(worker_plan, mixed_precision=args.mixed_precision),
            args.recompute)))
        return
    print(f"benchmark: {plan}; sampled-op search in a separate process ...", flush=True)
    figures = run_sampled_worker(args, args.recompute)
    if not args.skip_references:
        add_references(args, plan, figures)
    print("  fixed child ...", flush=True)
    figures["fixed_step_s"], figures["fixed_eval_forward_s"] = measure_fixed_child(plan)
    figures["fixed_peak_device_mb"] = peak_device_mb()
    figures["search_epoch_s"] = search_epoch_split(figures, plan.batch_size, PAPER_EPOCH)
    figures["fixed_epoch_s"] = fixed_epoch_s(figures["fixed_step_s"],
                                             figures["fixed_eval_forward_s"], plan.batch_size)
    if not args.quick and not args.skip_presets:
        print("  CPU presets (cpu_search.flags, cpu_final.flags) ...", flush=True)
        preset = run_sampled_worker(args, "auto", preset=True)
        figures["cpu_preset_search"] = {key: preset[key] for key in (
            "search_step_s", "valid_forward_s", "controller_update_s", "peak_rss_mb")}
        figures["cpu_preset_search_epoch_s"] = search_epoch_split(
            preset, CPU_PRESET.batch_size, CPU_SEARCH_EPOCH)
        fixed_plan = dataclasses.replace(CPU_PRESET, batch_size=CPU_PRESET_FIXED_BATCH,
                                         mixed_precision=plan.mixed_precision)
        step_s, eval_s = measure_fixed_child(fixed_plan)
        figures["cpu_preset_fixed_step_s"] = step_s
        figures["cpu_preset_fixed_epoch_s"] = fixed_epoch_s(step_s, eval_s, fixed_plan.batch_size)
    if "search_step_all_ops_s" in figures:
        figures["all_ops_over_sampled"] = figures["search_step_all_ops_s"] / figures["search_step_s"]
    figures.update(
        fixed_images_per_s=plan.batch_size / figures["fixed_step_s"],
        controller_over_10_forwards=figures["controller_update_s"] / (10 * figures["valid_forward_s"]),
        batch_size=plan.batch_size, quick=args.quick, deterministic=args.deterministic,
        mixed_precision=args.mixed_precision, device=device_name(),
        tf_version=tf.__version__, cpu_count=os.cpu_count())
    print(json.dumps(rounded(figures)))


def rounded(figures):
    if isinstance(figures, dict):
        return {key: rounded(value) for key, value in sorted(figures.items())}
    return round(figures, 4) if isinstance(figures, float) else figures


if __name__ == "__main__":
    main()
