"""Memory and speed of the data path: the decoded-image cache and streamed batches.

    python tools/memory_benchmark.py                  # the issue's figures (~10 min on 2 cores)
    python tools/memory_benchmark.py --images 8000 --baseline_images 800   # a quick look

1. Memory: a 1-epoch retrain (main_child_trainer.py, a tiny child) on --images
   synthetic colour images, and the same on --baseline_images; each run's peak
   anonymous resident memory (RssAnon, polled from /proc/PID/status every 50 ms)
   is kept. The issue's target: the large run peaks at most 250 MB above the small.
   The large run builds its cache (build time from its log); a second run on the
   same --cache_dir with --num_epochs 0 shows the reused load time.
2. Throughput: training epochs of a tiny fixed child on the bundled data (data/),
   with the splits held in memory and streamed from the cache, alternately; the
   best epoch of each, in images/s (target: streamed within 10% of in memory).

Synthetic images (class-dependent colour and random blobs, so they are learnable)
are written once as PNGs under --work and reused. The last line is one JSON object.
Timings are wall-clock and depend on what else runs on the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 10
POLL_S = 0.05
LOG_EVERY = 10  # steps between the retrain's log lines


# ----------------------------------------------------------------------------
# Synthetic data


def synthetic_image(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    """BGR uint8 [size, size, 3]: noise, and blobs whose hue depends on the class."""
    image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    hue = int(180 * label / NUM_CLASSES)
    for _ in range(rng.integers(2, 5)):
        colour = cv2.cvtColor(np.uint8([[[hue, rng.integers(150, 256), rng.integers(150, 256)]]]),
                              cv2.COLOR_HSV2BGR)[0, 0]
        centre = tuple(int(c) for c in rng.integers(0, size, 2))
        cv2.circle(image, centre, int(rng.integers(size // 10, size // 4)),
                   tuple(int(c) for c in colour), -1)
    return image


def write_images(folder: str, count: int, size: int, seed: int) -> None:
    """folder/<class>/<i>.png, count images in all, classes in turn; skipped if done."""
    done = os.path.join(folder, ".complete")
    if os.path.isfile(done):
        return
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(seed)
    for label in range(NUM_CLASSES):
        os.makedirs(os.path.join(folder, str(label)))
    for i in range(count):
        label = i % NUM_CLASSES
        cv2.imwrite(os.path.join(folder, str(label), f"{i:06d}.png"), synthetic_image(rng, label, size))
    open(done, "w").close()


def linked_subset(source: str, folder: str, count: int) -> None:
    """The first count images of `source` (hard links, classes in turn)."""
    done = os.path.join(folder, ".complete")
    if os.path.isfile(done):
        return
    shutil.rmtree(folder, ignore_errors=True)
    for label in range(NUM_CLASSES):
        os.makedirs(os.path.join(folder, str(label)))
        names = sorted(os.listdir(os.path.join(source, str(label))))[:count // NUM_CLASSES]
        for name in names:
            os.link(os.path.join(source, str(label), name), os.path.join(folder, str(label), name))
    open(done, "w").close()


# ----------------------------------------------------------------------------
# Memory of a retrain


def rss_anon_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def run_measured(command, log_path: str, timeout_s: float = 0) -> dict:
    """Runs `command`, polling its RssAnon; returns peak (MB), wall time and its output.
    timeout_s > 0: SIGTERM after that long (the trainer stops after its current step);
    the figures are then of a partial epoch (cut_short)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    start = time.time()
    cut_short = False
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        peak = 0
        while process.poll() is None:
            try:
                peak = max(peak, rss_anon_kb(process.pid))
            except (FileNotFoundError, ProcessLookupError):
                break
            if timeout_s and not cut_short and time.time() - start > timeout_s:
                process.terminate()
                cut_short = True
            time.sleep(POLL_S)
        process.wait()
    with open(log_path) as f:
        output = f.read()
    if cut_short:
        steps = re.findall(r"ch_step=(\d+)", output)  # one line every LOG_EVERY steps
        return {"peak_rss_anon_mb": peak / 1024, "wall_s": time.time() - start, "output": output,
                "cut_short": True, "steps_done": f">={steps[-1]}" if steps else f"<{LOG_EVERY}"}
    if process.returncode != 0:
        sys.exit(f"error: {' '.join(command[:2])} failed ({process.returncode}); see {log_path}\n"
                 + output[-2000:])
    return {"peak_rss_anon_mb": peak / 1024, "wall_s": time.time() - start, "output": output,
            "cut_short": False}


def retrain_command(train_dir: str, valid_dir: str, test_dir: str, out: str, cache_dir: str,
                    args, epochs: int):
    return [sys.executable, "main_child_trainer.py", "--output_dir", out, "--reset_output_dir",
            "--cache_dir", cache_dir, "--train_data_dir", train_dir, "--val_data_dir", valid_dir,
            "--test_data_dir", test_dir, "--channel", "3", "--img_size", str(args.img_size),
            "--num_epochs", str(epochs), "--child_num_layers", "1", "--child_out_filters", "4",
            "--batch_size", str(args.batch_size), "--log_every", str(LOG_EVERY)]


def seconds_in(output: str, pattern: str) -> float:
    """The seconds in the log line that matches `pattern` (one group around them)."""
    match = re.search(pattern, output)
    return float(match.group(1)) if match else float("nan")


# ----------------------------------------------------------------------------
# Throughput on the bundled data (run in a subprocess: TensorFlow stays out of this one)


def throughput(epochs: int, batch_size: int) -> dict:
    import dataclasses

    import tensorflow as tf

    sys.path.insert(0, REPO_ROOT)
    from src import arc as arc_lib
    from src import data
    from src.configs import ChildConfig, DataConfig, OptimConfig
    from src.fixed_child import FixedChild
    from src.child_steps import FixedChildSteps
    from src.harness import seed_everything

    cache_dir = tempfile.mkdtemp(prefix="enas-throughput-")
    try:
        config = DataConfig(train_dir=os.path.join(REPO_ROOT, "data", "train"),
                            valid_dir=os.path.join(REPO_ROOT, "data", "valid"),
                            test_dir=os.path.join(REPO_ROOT, "data", "test"),
                            batch_size=batch_size, cache_dir=cache_dir)
        in_memory = data.load_dataset(config, verbose=False)
        streamed = data.load_dataset(dataclasses.replace(config, in_memory_max_mb=0), verbose=False)
        assert in_memory.train.in_memory is not None and streamed.train.in_memory is None
        seed_everything(0, False)
        child = ChildConfig(num_classes=10, channel=1, img_size=32, num_layers=1, out_filters=4)
        model = FixedChild(child, arc_lib.parse_arc(arc_lib.DEFAULT_ARC, child.num_cells), seed=0)
        steps = FixedChildSteps(model, OptimConfig(), in_memory.train.images.shape[1:])
        progress = tf.constant(0.5)

        def epoch_rate(split, epoch, train):
            batches = data.TrainBatches(split, config).epoch(epoch)
            start, seen = time.time(), 0
            for images, labels in batches:
                if train:
                    float(steps.train_step(images, labels, progress)["loss"])
                seen += int(labels.shape[0])
            return seen / (time.time() - start)

        figures = {}
        for train in (False, True):
            kind = "train_epoch" if train else "pipeline_only"
            rates = {"in_memory": [], "streamed": []}
            for epoch in range(epochs + 1):  # epoch 0: warm-up (tracing), not counted
                for name, dataset in (("in_memory", in_memory), ("streamed", streamed)):
                    rate = epoch_rate(dataset.train, epoch, train)
                    if epoch:
                        rates[name].append(rate)
            for name, values in rates.items():
                figures[f"{kind}_{name}_images_per_s"] = max(values)
            figures[f"{kind}_streamed_vs_in_memory"] = (figures[f"{kind}_streamed_images_per_s"]
                                                        / figures[f"{kind}_in_memory_images_per_s"])
        return figures
    finally:
        shutil.rmtree(cache_dir)


# ----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50_000, help="training images of the large run")
    parser.add_argument("--baseline_images", type=int, default=5_000, help="of the small run")
    parser.add_argument("--eval_images", type=int, default=200, help="valid and test images each")
    parser.add_argument("--img_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--throughput_epochs", type=int, default=3, help="timed epochs per path")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "enas-memory-benchmark"),
                        help="synthetic images and run folders (the images are reused)")
    parser.add_argument("--large_timeout_s", type=float, default=0, help="stop the large run's "
                        "epoch after this long (0 = never); its figures are then marked partial")
    parser.add_argument("--skip_baseline", action="store_true", help="measure the large run only")
    parser.add_argument("--skip_memory", action="store_true")
    parser.add_argument("--skip_throughput", action="store_true")
    parser.add_argument("--throughput_only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.throughput_only:
        print(json.dumps(throughput(args.throughput_epochs, args.batch_size)))
        return

    results = {"cpu_count": os.cpu_count()}
    if not args.skip_memory:
        results.update(memory_figures(args))
    if not args.skip_throughput:
        done = subprocess.run([sys.executable, os.path.abspath(__file__), "--throughput_only",
                               "--throughput_epochs", str(args.throughput_epochs),
                               "--batch_size", str(args.batch_size)], cwd=REPO_ROOT,
                              capture_output=True, text=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        if done.returncode != 0:
            sys.exit("error: throughput run failed\n" + done.stderr[-2000:])
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        for key, value in figures.items():
            print(f"{key}: {value:.3f}" if "vs" in key else f"{key}: {value:.0f}")
        results.update(figures)
    print(json.dumps({key: round(value, 3) if isinstance(value, float) else value
                      for key, value in results.items()}))


def memory_figures(args) -> dict:
    work = args.work
    os.makedirs(work, exist_ok=True)
    start = time.time()
    big = os.path.join(work, f"train-{args.images}-{args.img_size}")
    write_images(big, args.images, args.img_size, seed=0)
    small = os.path.join(work, f"train-{args.baseline_images}-{args.img_size}")
    linked_subset(big, small, args.baseline_images)
    valid = os.path.join(work, f"valid-{args.eval_images}-{args.img_size}")
    test = os.path.join(work, f"test-{args.eval_images}-{args.img_size}")
    write_images(valid, args.eval_images, args.img_size, seed=1)
    write_images(test, args.eval_images, args.img_size, seed=2)
    print(f"synthetic images ready in {time.time() - start:.1f}s: {big}")

    figures = {}
    runs = {}
    plan = [("baseline", small, args.baseline_images), ("large", big, args.images)]
    for name, train, count in plan[args.skip_baseline:]:
        cache_dir = os.path.join(work, f"cache-{name}")
        shutil.rmtree(cache_dir, ignore_errors=True)  # the first run builds its cache
        out = os.path.join(work, f"run-{name}")
        run = run_measured(retrain_command(train, valid, test, out, cache_dir, args, epochs=1),
                           os.path.join(work, f"{name}.log"),
                           args.large_timeout_s if name == "large" else 0)
        runs[name] = run
        build = seconds_in(run["output"], r"Read train: .*decoded into the cache in ([\d.]+)s")
        paths = re.findall(r"Data path of train: (held in memory|streamed)", run["output"])
        print(f"{name}: {count} images: peak RssAnon {run['peak_rss_anon_mb']:.0f} MB, "
              f"wall {run['wall_s']:.1f}s, train cache built in {build:.1f}s, "
              f"train {paths[0] if paths else '?'}"
              + (f"; STOPPED after {run['steps_done']} steps (--large_timeout_s)" if run["cut_short"] else ""))
        figures[f"{name}_cut_short"] = run["cut_short"]
        if run["cut_short"]:
            figures[f"{name}_steps_done"] = run["steps_done"]
        figures[f"{name}_images"] = count
        figures[f"{name}_peak_rss_anon_mb"] = run["peak_rss_anon_mb"]
        figures[f"{name}_wall_s"] = run["wall_s"]
        figures[f"{name}_train_cache_build_s"] = build
        figures[f"{name}_train_path"] = paths[0] if paths else "?"
    # The large set again, on the same cache: load time when the cache is reused.
    reuse = run_measured(retrain_command(big, valid, test, os.path.join(work, "run-reuse"),
                                         os.path.join(work, "cache-large"), args, epochs=0),
                         os.path.join(work, "reuse.log"))
    reused = seconds_in(reuse["output"], r"Read train: .*cache reused in ([\d.]+)s")
    print(f"large again (--num_epochs 0, same cache): train cache reused in {reused:.2f}s, "
          f"peak RssAnon {reuse['peak_rss_anon_mb']:.0f} MB, wall {reuse['wall_s']:.1f}s")
    figures["large_train_cache_reuse_s"] = reused
    if not args.skip_baseline:
        above = figures["large_peak_rss_anon_mb"] - figures["baseline_peak_rss_anon_mb"]
        figures["large_minus_baseline_rss_anon_mb"] = above
        print(f"peak RssAnon of the large run above the baseline: {above:.0f} MB (target <= 250 MB)")
    return figures


if __name__ == "__main__":
    main()
