"""A/B of `python -m src.benchmark` between two checkouts, run alternately A, B, A, B.

    git worktree add ../enas-base <commit>     # the version to compare with
    python tools/ab_benchmark.py ../enas-base [--candidate .] [--rounds 2] [--quick]

Each round runs A's benchmark, then B's (fresh processes), so slow spells of a
shared machine hit both alike; the table gives the median of each figure over
the rounds and B / A. Extra arguments after `--` go to B's benchmark only (A may
be a version without them). The issue's targets are printed beside the ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

FIGURES = ["search_step_s", "valid_forward_s", "controller_update_s", "fixed_step_s",
           "peak_rss_mb", "traces_after_warmup", "startup_s"]
B_ONLY = ["search_step_recompute_on_s", "peak_rss_recompute_on_mb", "search_step_recompute_off_s",
          "peak_rss_recompute_off_mb", "fixed_epoch_s"]
TARGETS = {"search_step_s": "<= 0.5x", "valid_forward_s": "<= 0.5x", "fixed_step_s": "<= 0.6x",
           "peak_rss_mb": "<= 2500 MB", "traces_after_warmup": "0"}


def run_benchmark(checkout: str, args) -> dict:
    command = [sys.executable, "-m", "src.benchmark"] + args
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(command, cwd=checkout, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-3000:])
        raise SystemExit(f"benchmark in {checkout} failed with exit code {result.returncode}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def shown(value) -> str:
    """A figure for the table: 4 significant digits, '-' when missing."""
    return "-" if value is None else f"{value:.4g}"


def median(runs, key):
    values = [run[key] for run in runs if isinstance(run.get(key), (int, float))]
    return statistics.median(values) if values else None


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    b_extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("baseline", help="checkout A, the reference (e.g. a git worktree of "
                        "the previous version)")
    parser.add_argument("--candidate", default=".", help="checkout B, the candidate")
    parser.add_argument("--rounds", type=int, default=2, help="A, B pairs to run")
    parser.add_argument("--quick", action="store_true", help="the benchmarks' --quick sizes")
    args = parser.parse_args(argv)
    common = ["--quick"] if args.quick else []
    runs = {"A": [], "B": []}
    for round_id in range(args.rounds):
        for name, checkout, extra in (("A", args.baseline, []), ("B", args.candidate, b_extra)):
            figures = run_benchmark(checkout, common + extra)
            runs[name].append(figures)
            print(f"round {round_id + 1} {name}: " + ", ".join(
                f"{key} {figures.get(key)}" for key in FIGURES), flush=True)
    print(json.dumps({"A": runs["A"], "B": runs["B"]}), flush=True)
    print(f"\nmedian of {args.rounds} rounds (A = {args.baseline}, B = {args.candidate})")
    print(f"{'figure':<28} {'A':>10} {'B':>10} {'B / A':>8}  target")
    for key in FIGURES:
        a, b = median(runs["A"], key), median(runs["B"], key)
        ratio = f"{b / a:.2f}" if a and b is not None else "-"
        print(f"{key:<28} {shown(a):>10} {shown(b):>10} {ratio:>8}  {TARGETS.get(key, '')}")
    for key in B_ONLY:
        b = median(runs["B"], key)
        if b is not None:
            print(f"{key:<28} {'':>10} {shown(b):>10}")


if __name__ == "__main__":
    main()
