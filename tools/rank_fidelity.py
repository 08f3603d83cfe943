"""Do the shared weights rank cells as training each alone does? (rank fidelity)

    python tools/rank_fidelity.py output/search                  # 8 arcs x 2 seeds, the proxy
    python tools/rank_fidelity.py output/search --num_arcs 12 --seeds 3 --epochs 8

Takes K arcs of a finished search's final selection, spread over the range of their
final shared-weight scores (the winner among them), trains each alone with S seeds
(1..S) under one short fixed budget, the proxy below, on the search's data, split, cell
size (--child_num_cells) and reduction layout (--child_num_reductions), and reports:
  - each arc's stand-alone test accuracy per seed, their mean and SE (the seeds' SD /
    sqrt(S), floored at the binomial SE sqrt(p(1-p)/(n S)) of the mean; n test images);
  - the NOISE CEILING: Kendall's tau-b between the seed-1 and seed-2 accuracies of the K
    arcs (with more seeds, the mean over seed pairs), with a bootstrap 95% interval over
    arcs: how well one stand-alone ranking predicts another, so about the best tau any
    predictor can reach against a one-seed ranking (the means over S seeds are a little
    more reliable than one seed, so it is a conservative ceiling);
  - Kendall's tau-b and Spearman's rho between the shared-weight scores and the
    stand-alone means, with bootstrap 95% intervals over arcs and ONE-SIDED permutation
    p-values (H1: the shared weights rank positively; exact over all K! orderings up to 7
    arcs, else 10,000 seeded random orderings, p = (1 + count) / (1 + 10,000));
  - a verdict: "inconclusive" when the ceiling is below 0.5 (the ground truth is too
    noisy to judge by); "no signal" when the ceiling is at least 0.5 and tau's interval
    holds 0; otherwise "signal" (tau's interval above 0) or "inverse signal" (below 0).

The proxy budget (defaults): the fixed child with 3 + 2 layers x 16 filters, no dropout,
drop path or aux head, batch 64, one cosine period (lr 0.05 -> 0.0005), the search's
on-the-fly augmentation; 5 epochs on a class-stratified subset of 5,000 training images
(--train_subset; 0 = the whole training split), tested on the search's whole test
split. Sized for CIFAR-10 (32 px colour) on 2 CPU cores: a training image costs 12-32
ms there (3 arcs measured, median 17 ms), so a run is about 25,000 x 17 ms = 7 minutes
plus testing and set-up, and 8 arcs x 2 seeds about 2 hours (projected, not run). The
ceiling needs the arcs' spread in accuracy to be about 1.5 times the noise of one
accuracy (tau 0.5 <-> a correlation of 0.71 between two seeds' accuracies): the test
split (5,000-10,000 images) keeps the binomial part of that noise at 0.005-0.007; if
the ceiling still comes out below 0.5 the verdict is "inconclusive", and more seeds
(--seeds 3) or epochs are the remedy (tools/README.md). On the bundled digits (3,500
training images) the subset is all of them: the README's earlier proxy-5ep.

A subset needs a search on --data_dir (its split lists are cut); a search on three
folders with more training images than --train_subset is an error (--train_subset 0).

Each retrain has its own folder SEARCH_DIR/rank_fidelity/<label>-<hash>, the hash of
every setting that changes it (arc, seed, budget, data and split lists), so a rerun
reuses or resumes only identical runs. Writes SEARCH_DIR/rank_fidelity.json (also kept
per study as rank_fidelity/rank_fidelity-<hash>.json) and SEARCH_DIR/rank_fidelity.png.
With --random_arcs R it also trains R uniformly random arcs (those of
main_child_trainer.py --child_fixed_arc random --seed 1..R) with the same budget and seeds.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import numpy as np  # noqa: E402

import cli_common  # noqa: E402
from src import arc as arc_lib  # noqa: E402
from src import data as data_lib  # noqa: E402
from src import image_cache, run_dir, stats  # noqa: E402
from src.configs import (ChildConfig, ConfigError, DataConfig, FixedTrainConfig,  # noqa: E402
                         OptimConfig, RunConfig, data_config_from_flag_values)
from tools import retrain_folders as folders  # noqa: E402

WORK_SUBDIR = "rank_fidelity"
CEILING_THRESHOLD = 0.5  # below it the stand-alone ranking is too noisy to judge by


@dataclasses.dataclass(frozen=True)
class ProxyBudget:
    """The proxy: the fixed child at about the search's size, `num_epochs` epochs of (a
    subset of) the training split, one cosine period, no dropout, drop path or aux head
    (too short to need them); the same for every arc and seed."""
    name: str = "proxy-5ep"
    num_layers: int = 3
    out_filters: int = 16
    num_epochs: int = 5
    batch_size: int = 64
    lr_max: float = 0.05
    lr_min: float = 0.0005
    train_subset: int = 5000  # training images (class-stratified); 0 = all


def spread_picks(num_candidates: int, k: int) -> List[int]:
    """k indices into candidates sorted best first, evenly spread over the ranking from
    the best (index 0, the winner) to the worst; fewer if there are fewer candidates."""
    if num_candidates <= k:
        return list(range(num_candidates))
    return sorted({int(round(i)) for i in np.linspace(0, num_candidates - 1, k)})


# ---------------------------------------------------------------------------- data


def search_data_config(search_dir: str, search_flags: Dict, batch_size: int) -> DataConfig:
    """The search's data, split and on-the-fly augmentation, read from its recorded flags
    (the shared conversion), with the search's folder as it is now; a --data_dir search
    must still have its split lists (drawn again they could differ)."""
    data = data_config_from_flag_values({**search_flags, "output_dir": search_dir,
                                         "batch_size": batch_size})
    if data.data_dir and data_lib.read_split_lists(data.split_list_dir) is None:
        raise ConfigError(f"the search's split lists are missing from {data.split_list_dir}: "
                          "without them the retrains could not use the search's split")
    return data


def stratified_subset(paths: Sequence[str], size: int, seed: int) -> List[str]:
    """About `size` of the listed paths ('<class>/<file>'), each class in proportion
    (at least one each), drawn with `seed`; in the list's order."""
    classes = sorted({path.split("/")[0] for path in paths})
    rng = np.random.default_rng(seed)
    keep = set()
    for name in classes:
        members = [i for i, path in enumerate(paths) if path.split("/")[0] == name]
        count = max(1, int(round(size * len(members) / len(paths))))
        keep.update(rng.permutation(members)[:count].tolist())
    return [path for i, path in enumerate(paths) if i in keep]


def with_train_subset(data: DataConfig, work: str, size: int, seed: int) -> DataConfig:
    """data with its training split cut to `size` images: new split lists (the search's
    valid and test lists, a stratified subset of its train list) under WORK; unchanged
    if the training split has at most `size` images or size is 0."""
    if size <= 0:
        return data
    if not data.data_dir:
        count = len(image_cache.list_folder(data.train_dir).paths)
        if count > size:
            raise ConfigError(f"--train_subset {size}: the search read three folders "
                              f"({count} training images); a subset needs a search on "
                              "--data_dir, so give --train_subset 0 (all of them)")
        return data
    lists = data_lib.read_split_lists(data.split_list_dir)
    if len(lists["train"]) <= size:
        return data
    lists = {**lists, "train": stratified_subset(lists["train"], size, seed)}
    list_dir = os.path.join(work, f"splits-subset{size}-"
                            f"{folders.settings_hash([lists['train'], lists['valid'], lists['test']])}")
    if data_lib.read_split_lists(list_dir) is None:
        data_lib.write_split_lists(list_dir, lists, {
            "subset_of": os.path.abspath(data.split_list_dir), "train_subset": size,
            "seed": seed, "paths": "one image a line, relative to data_dir"})
    return dataclasses.replace(data, split_list_dir=list_dir)


# ---------------------------------------------------------------------------- the runs


def proxy_config(arc: str, data: DataConfig, budget: ProxyBudget, num_cells: int,
                 num_reductions: int, seed: int, out: str) -> FixedTrainConfig:
    """The retrain of `arc` with the proxy budget; `seed` seeds the initialisation, the
    data order and the augmentation."""
    return FixedTrainConfig(
        arc=arc, data=dataclasses.replace(data, seed=seed),
        child=ChildConfig(num_layers=budget.num_layers, out_filters=budget.out_filters,
                          num_cells=num_cells, num_reductions=num_reductions,
                          use_aux_heads=False, keep_prob=1.0, drop_path_keep_prob=1.0),
        optim=OptimConfig(lr_max=budget.lr_max, lr_min=budget.lr_min,
                          lr_T_0=max(1, budget.num_epochs)),
        run=RunConfig(output_dir=out, num_epochs=budget.num_epochs, seed=seed, progress=False,
                      log_every=10 ** 6),
        flags={"proxy_budget": dataclasses.asdict(budget)})


# Config fields that do not change what a retrain learns or scores: not in its key.
NOT_IN_KEY = {"output_dir", "progress", "log_every", "cache_dir", "split_list_dir",
              "in_memory_max_mb", "started_at", "flags"}


def run_settings(config: FixedTrainConfig, budget: ProxyBudget) -> Dict:
    """Everything that changes a retrain: its configs (less NOT_IN_KEY), the budget's
    name and the content of its split lists."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in NOT_IN_KEY}
        return value
    settings = {"kind": "proxy retrain", "budget": dataclasses.asdict(budget),
                "config": strip(dataclasses.asdict(config))}
    if config.data.data_dir:
        settings["split_lists_sha256"] = folders.split_lists_sha256(config.data.split_list_dir)
    return settings


def train_alone(config: FixedTrainConfig) -> Dict:
    """fixed_train.run with its log going to the folder's stdout file only."""
    from src import fixed_train
    with contextlib.redirect_stdout(io.StringIO()):
        return fixed_train.run(config)


def retrain_seeds(work: str, label: str, arc: str, data: DataConfig, budget: ProxyBudget,
                  num_cells: int, num_reductions: int, seeds: Sequence[int]) -> List[Dict]:
    """The arc trained alone once per seed, each in its keyed folder (or reused)."""
    runs = []
    for seed in seeds:
        started = time.time()
        config = proxy_config(arc, data, budget, num_cells, num_reductions, seed, out="")
        settings = run_settings(config, budget)
        results, folder, reused = folders.run_keyed(
            work, f"{label}-seed{seed}", settings, lambda out: train_alone(dataclasses.replace(
                config, run=dataclasses.replace(config.run, output_dir=out))))
        runs.append({"seed": seed, "test_accuracy": float(results["test_accuracy"]),
                     "num_test_images": int(results["num_test_images"]), "folder": folder,
                     "reused": reused, "seconds": round(time.time() - started, 1)})
    return runs


def arc_entry(arc: str, runs: List[Dict], **extra) -> Dict:
    accuracies = [run["test_accuracy"] for run in runs]
    summary = stats.mean_and_se(accuracies, runs[0]["num_test_images"])
    return {"arc": arc, **extra, "alone_test_accuracies": accuracies,
            "alone_mean": summary["mean"], "alone_se": summary["se"], "alone": summary,
            "runs": runs}


# ---------------------------------------------------------------------------- statistics


def noise_ceiling(entries: Sequence[Dict], seed: int) -> Dict:
    """Seed-to-seed Kendall tau of the arcs' stand-alone accuracies (mean over seed
    pairs), with a bootstrap 95% interval over arcs."""
    table = np.asarray([entry["alone_test_accuracies"] for entry in entries], np.float64)
    if table.shape[1] < 2:
        return {"kendall_tau": float("nan"), "ci95": [float("nan")] * 2,
                "note": "needs 2 or more seeds"}
    low, high = stats.bootstrap_rows_interval(stats.mean_pairwise_kendall, table, seed=seed)
    return {"kendall_tau": stats.mean_pairwise_kendall(table), "ci95": [low, high],
            "what": "Kendall tau-b between the seeds' stand-alone rankings of the arcs "
                    "(mean over seed pairs); bootstrap 95% interval over arcs"}


def correlations(shared: Sequence[float], alone: Sequence[float], seed: int,
                 num_permutations: int) -> Dict:
    """tau-b and rho with bootstrap intervals and one-sided permutation p-values."""
    report = {}
    for name, statistic in (("kendall_tau", stats.kendall_tau),
                            ("spearman_rho", stats.spearman_rho)):
        permutation = stats.permutation_p_value(shared, alone, statistic, num_permutations,
                                                seed=seed, alternative="greater")
        report.update({name: statistic(shared, alone),
                       f"{name}_ci95": list(stats.bootstrap_interval(statistic, shared, alone,
                                                                     seed=seed)),
                       f"{name}_p_value": permutation["p_value"]})
        report["permutation_test"] = {"alternative": "greater (one-sided)",
                                      "method": permutation["method"],
                                      "permutations": permutation["permutations"]}
    return report


def verdict(ceiling: float, tau: float, tau_ci: Sequence[float]) -> str:
    """'inconclusive' when the ceiling is below 0.5 (or undefined); 'no signal' only with
    a ceiling of 0.5 or more and tau's interval holding 0; else the signal found."""
    if not np.isfinite(ceiling) or ceiling < CEILING_THRESHOLD:
        return (f"inconclusive: the noise ceiling (seed-to-seed tau {ceiling:+.2f}) is below "
                f"{CEILING_THRESHOLD}: the stand-alone ranking is too noisy to judge the "
                "shared weights' ranking by")
    if not all(np.isfinite(tau_ci)):
        return "inconclusive: tau's interval is undefined (constant scores)"
    where = (f"tau {tau:+.2f}, 95% CI {folders.fmt_ci(tau_ci, 2)}, noise ceiling "
             f"{ceiling:+.2f}")
    if tau_ci[0] <= 0.0 <= tau_ci[1]:
        return f"no signal: {where}: the interval holds 0"
    if tau_ci[0] > 0.0:
        return f"signal: {where}: the shared weights rank cells as training alone does"
    return f"inverse signal: {where}: the shared weights rank cells the other way round"


# ---------------------------------------------------------------------------- the study


def run(search_dir: str, num_arcs: int, random_arcs: int, budget: ProxyBudget, seeds: int,
        seed: int = 0, num_permutations: int = 10000) -> Dict:
    """The study; returns (and writes) its report."""
    _, search_flags = cli_common.read_finished_search(search_dir)  # ConfigError unless finished
    final = run_dir.read_json(os.path.join(search_dir, "final_selection.json"))
    if not final or not final.get("candidates"):
        raise ConfigError(f"{search_dir} has no final_selection.json with candidates")
    candidates = final["candidates"]  # best first
    num_cells = int(search_flags.get("child_num_cells", arc_lib.NUM_CELLS))
    num_reductions = int(search_flags.get("child_num_reductions", 2))
    work = os.path.join(search_dir, WORK_SUBDIR)
    data = with_train_subset(search_data_config(search_dir, search_flags, budget.batch_size),
                             work, budget.train_subset, seed)
    seed_list = list(range(1, seeds + 1))
    picks = spread_picks(len(candidates), num_arcs)
    print(f"Rank fidelity of {search_dir}: {len(picks)} of its {len(candidates)} final "
          f"candidates x {seeds} seeds, each trained alone with the {budget.name} budget "
          f"({budget.num_layers} + 2 layers x {budget.out_filters} filters, {budget.num_epochs} "
          f"epochs, train subset {budget.train_subset or 'all'}), on the search's data", flush=True)
    entries = []
    for rank in picks:
        candidate = candidates[rank]
        runs = retrain_seeds(work, f"rank{rank + 1:03d}", candidate["arc"], data, budget,
                             num_cells, num_reductions, seed_list)
        entries.append(arc_entry(candidate["arc"], runs, final_rank=rank + 1,
                                 shared_accuracy=candidate["selection_accuracy"]))
        print_arc_line(f"rank {rank + 1:3d}: shared {candidate['selection_accuracy']:.4f}",
                       entries[-1])
    report = summarise(search_dir, entries, budget, seed, num_permutations)
    if random_arcs:
        report["random_arcs"] = retrain_random_arcs(random_arcs, work, data, budget, num_cells,
                                                    num_reductions, seed_list)
    print_summary(report)
    study = {"budget": dataclasses.asdict(budget), "num_arcs": num_arcs, "seeds": seeds,
             "random_arcs": random_arcs, "seed": seed, "arcs": [e["arc"] for e in entries]}
    path = folders.write_summary(search_dir, work, WORK_SUBDIR, study, report)
    if len(entries) >= 2:
        save_plot(os.path.join(search_dir, "rank_fidelity.png"), report, budget)
    print(f"Wrote {path}")
    return report


def summarise(search_dir: str, entries: List[Dict], budget: ProxyBudget, seed: int,
              num_permutations: int) -> Dict:
    report = {"search_dir": search_dir, "proxy_budget": dataclasses.asdict(budget),
              "num_test_images": entries[0]["runs"][0]["num_test_images"],
              "shared_score": "final shared weights, the search's selection half",
              "alone_score": "test accuracy after the proxy budget, mean over seeds (no "
                             "choice is made from it)",
              "arcs": entries}
    if len(entries) >= 2:
        shared = [e["shared_accuracy"] for e in entries]
        alone = [e["alone_mean"] for e in entries]
        report.update(correlations(shared, alone, seed, num_permutations))
        report["noise_ceiling"] = noise_ceiling(entries, seed)
        report["verdict"] = verdict(report["noise_ceiling"]["kendall_tau"],
                                    report["kendall_tau"], report["kendall_tau_ci95"])
    return report


def retrain_random_arcs(count: int, work: str, data: DataConfig, budget: ProxyBudget,
                        num_cells: int, num_reductions: int, seeds: Sequence[int]) -> Dict:
    """Uniformly random arcs (--child_fixed_arc random --seed 1..count) with the budget."""
    entries = []
    for arc_seed in range(1, count + 1):
        arc = arc_lib.seeded_random_arc(arc_seed, num_cells)
        runs = retrain_seeds(work, f"random{arc_seed}", arc, data, budget, num_cells,
                             num_reductions, seeds)
        entries.append(arc_entry(arc, runs, arc_seed=arc_seed))
        print_arc_line(f"random arc (seed {arc_seed})", entries[-1])
    means = [entry["alone_mean"] for entry in entries]
    summary = {"mean": float(np.mean(means)), "n": len(means),
               "se": float(np.std(means, ddof=1) / np.sqrt(len(means))) if len(means) > 1
               else float("nan")}
    return {"arcs": entries, "alone_mean": summary}


def print_arc_line(prefix: str, entry: Dict) -> None:
    runs = "  ".join(f"{run['test_accuracy']:.4f}" for run in entry["runs"])
    took = sum(run["seconds"] for run in entry["runs"] if not run["reused"])
    print(f"  {prefix}  alone (test) {runs}  mean {entry['alone_mean']:.4f} se "
          f"{entry['alone_se']:.4f}  [{took:.0f} s]", flush=True)


def print_summary(report: Dict) -> None:
    if "kendall_tau" not in report:
        return
    ceiling = report["noise_ceiling"]
    print(f"Noise ceiling (seed-to-seed Kendall tau): {ceiling['kendall_tau']:+.3f} (95% CI "
          f"{folders.fmt_ci(ceiling['ci95'])})")
    print(f"Kendall tau {report['kendall_tau']:+.3f} (95% CI "
          f"{folders.fmt_ci(report['kendall_tau_ci95'])}, one-sided permutation p "
          f"{report['kendall_tau_p_value']:.4f}), Spearman rho {report['spearman_rho']:+.3f} "
          f"(95% CI {folders.fmt_ci(report['spearman_rho_ci95'])}, p "
          f"{report['spearman_rho_p_value']:.4f}), {len(report['arcs'])} arcs")
    print(f"Verdict: {report['verdict']}")


def save_plot(path: str, report: Dict, budget: ProxyBudget) -> None:
    """Shared score against the stand-alone mean (95% bars), the winner apart."""
    entries = report["arcs"]
    x = np.asarray([e["shared_accuracy"] for e in entries])
    y = np.asarray([e["alone_mean"] for e in entries])
    bars = 1.96 * np.asarray([e["alone_se"] for e in entries])
    figure = folders.new_figure(7.2, 5.4)
    ax = figure.add_subplot()
    ax.errorbar(x, y, yerr=bars, fmt="o", color="tab:blue", capsize=3, label="arcs (95% bars)")
    winner = [i for i, e in enumerate(entries) if e["final_rank"] == 1]
    if winner:
        ax.scatter(x[winner], y[winner], s=160, marker="*", color="tab:red", zorder=3,
                   label="the search's best arc")
    ceiling = report["noise_ceiling"]["kendall_tau"]
    ax.set_title(f"tau {report['kendall_tau']:+.2f} {folders.fmt_ci(report['kendall_tau_ci95'], 2)}"
                 f", p {report['kendall_tau_p_value']:.3f}; noise ceiling {ceiling:+.2f}\n"
                 f"{report['verdict'].split(':')[0]}", fontsize=10)
    ax.set_xlabel("shared-weight accuracy (final weights, selection half)")
    ax.set_ylabel(f"stand-alone test accuracy, mean of seeds ({budget.name})")
    ax.grid(alpha=0.35)
    ax.legend(loc="best", frameon=False)
    folders.save_png(figure, path)


# ---------------------------------------------------------------------------- command line


def main(argv=None) -> Optional[Dict]:
    defaults = ProxyBudget()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    parser.error = lambda message: cli_common.exit_with(2, f"error: {message}")
    parser.add_argument("search_dir", help="a finished search's output folder")
    parser.add_argument("--num_arcs", type=int, default=8, help="final candidates to retrain "
                        "alone, spread over the ranking, the winner included (default 8)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds of each arc's retrain, "
                        "1..S (default 2; the noise ceiling needs 2)")
    parser.add_argument("--random_arcs", type=int, default=0, help="also retrain this many "
                        "uniformly random arcs with the same budget and seeds (default 0)")
    parser.add_argument("--epochs", type=int, default=defaults.num_epochs,
                        help=f"proxy budget: epochs of each retrain (default {defaults.num_epochs})")
    parser.add_argument("--train_subset", type=int, default=defaults.train_subset,
                        help="proxy budget: training images, a class-stratified subset of the "
                        f"search's training split (default {defaults.train_subset}; 0 = all)")
    parser.add_argument("--num_layers", type=int, default=defaults.num_layers,
                        help=f"proxy budget: normal layers (default {defaults.num_layers})")
    parser.add_argument("--out_filters", type=int, default=defaults.out_filters,
                        help=f"proxy budget: filters of the first cells (default {defaults.out_filters})")
    parser.add_argument("--batch_size", type=int, default=defaults.batch_size,
                        help=f"proxy budget: batch size (default {defaults.batch_size})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subset, the "
                        "bootstraps and the permutations (the retrains use seeds 1..S)")
    parser.add_argument("--permutations", type=int, default=10000, help="random orderings "
                        "of the permutation test above 7 arcs (up to 7: all of them)")
    args = parser.parse_args(argv)
    if args.num_arcs < 2:
        parser.error("--num_arcs must be at least 2 (a rank correlation needs two)")
    if args.seeds < 1 or args.epochs < 1 or args.train_subset < 0 or args.permutations < 1:
        parser.error("--seeds, --epochs and --permutations must be >= 1, --train_subset >= 0")
    budget = ProxyBudget(name=f"proxy-{args.epochs}ep", num_layers=args.num_layers,
                         out_filters=args.out_filters, num_epochs=args.epochs,
                         batch_size=args.batch_size, train_subset=args.train_subset)
    result = {}
    cli_common.run_or_exit(lambda: result.update(report=run(
        args.search_dir, args.num_arcs, args.random_arcs, budget, args.seeds, args.seed,
        args.permutations)))
    return result.get("report")


if __name__ == "__main__":
    main()
