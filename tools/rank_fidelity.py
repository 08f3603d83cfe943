"""Do the shared weights rank cells as training each alone does? (rank fidelity)

    python tools/rank_fidelity.py output/search                 # 8 arcs, the proxy budget
    python tools/rank_fidelity.py output/search --num_arcs 3 --random_arcs 3

Takes K arcs of a finished search's final selection, spread over the range of their
final shared-weight scores (the winner among them), retrains each alone with one short
fixed budget, the proxy below, on the search's data, and compares the two rankings:
Kendall's tau and Spearman's rho with bootstrap 95% intervals. With --random_arcs R it
also retrains R uniformly random arcs (those of main_child_trainer.py --child_fixed_arc
random --seed 1..R) with the same budget: the searched cell against chance.

Writes SEARCH_DIR/rank_fidelity.json, SEARCH_DIR/rank_fidelity.png and one retrain
folder per arc under SEARCH_DIR/rank_fidelity/ (a rerun reuses finished ones).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import sys
import time
from typing import Dict, List, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import cli_common  # noqa: E402

from src import arc as arc_lib  # noqa: E402
from src import data as data_lib  # noqa: E402
from src import fixed_train, reporting, run_dir, stats  # noqa: E402
from src.configs import ChildConfig, DataConfig, FixedTrainConfig, OptimConfig, RunConfig  # noqa: E402


@dataclasses.dataclass(frozen=True)
class ProxyBudget:
    """The "proxy-5ep" budget: the fixed child at about the search's size, 5 epochs of
    the training split, one cosine period, no dropout, drop path or aux head (too short
    to need them), random crops; the same for every arc."""
    name: str = "proxy-5ep"
    num_layers: int = 3
    out_filters: int = 16
    num_epochs: int = 5
    batch_size: int = 64
    lr_max: float = 0.05
    lr_min: float = 0.0005


def spread_picks(num_candidates: int, k: int) -> List[int]:
    """k indices into candidates sorted best first, evenly spread over the ranking from
    the best (index 0, the winner) to the worst; fewer if there are fewer candidates."""
    if num_candidates <= k:
        return list(range(num_candidates))
    return sorted({int(round(i)) for i in np.linspace(0, num_candidates - 1, k)})


def search_data_config(search_dir: str, search_flags: Dict, batch_size: int) -> DataConfig:
    """The search's data: its three folders, or its --data_dir with the split lists it
    wrote."""
    defaults = DataConfig()
    data_dir = search_flags.get("data_dir") or ""
    split_dir = search_flags.get("split_dir") or os.path.join(search_dir, data_lib.SPLIT_LIST_SUBDIR)
    return DataConfig(
        train_dir=search_flags.get("train_data_dir", defaults.train_dir),
        valid_dir=search_flags.get("val_data_dir", defaults.valid_dir),
        test_dir=search_flags.get("test_data_dir", defaults.test_dir),
        channel=int(search_flags.get("channel", defaults.channel)),
        img_size=int(search_flags.get("img_size", defaults.img_size)),
        batch_size=batch_size, eval_batch_size=batch_size,
        data_dir=data_dir, split_list_dir=split_dir if data_dir else "",
        valid_fraction=float(search_flags.get("valid_fraction", defaults.valid_fraction)),
        test_fraction=float(search_flags.get("test_fraction", defaults.test_fraction)),
        cache_dir=search_flags.get("cache_dir") or os.path.join(search_dir, "cache"))


def retrain_alone(arc: str, out: str, data: DataConfig, budget: ProxyBudget,
                  num_cells: int, seed: int) -> Dict:
    """Trains `arc` from scratch with the proxy budget (its log goes to out/stdout, not
    the terminal); returns its results.json."""
    config = FixedTrainConfig(
        arc=arc, data=data,
        child=ChildConfig(num_layers=budget.num_layers, out_filters=budget.out_filters,
                          num_cells=num_cells, use_aux_heads=False, keep_prob=1.0,
                          drop_path_keep_prob=1.0),
        optim=OptimConfig(lr_max=budget.lr_max, lr_min=budget.lr_min,
                          lr_T_0=budget.num_epochs),
        run=RunConfig(output_dir=out, num_epochs=budget.num_epochs, seed=seed, progress=False,
                      log_every=10 ** 6),
        flags={"proxy_budget": dataclasses.asdict(budget)})
    with contextlib.redirect_stdout(io.StringIO()):
        return fixed_train.run(config)


def correlations(shared: Sequence[float], alone: Sequence[float], seed: int) -> Dict:
    tau_ci = stats.bootstrap_interval(stats.kendall_tau, shared, alone, seed=seed)
    rho_ci = stats.bootstrap_interval(stats.spearman_rho, shared, alone, seed=seed)
    return {"kendall_tau": stats.kendall_tau(shared, alone), "kendall_tau_ci95": list(tau_ci),
            "spearman_rho": stats.spearman_rho(shared, alone), "spearman_rho_ci95": list(rho_ci)}


def mean_and_se(values: Sequence[float]) -> Dict:
    values = np.asarray(values, np.float64)
    se = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")
    return {"mean": float(values.mean()), "se": se, "n": int(len(values))}


def run(search_dir: str, num_arcs: int, random_arcs: int, budget: ProxyBudget, seed: int) -> Dict:
    _, search_flags = cli_common.read_finished_search(search_dir)  # ConfigError unless finished
    final = run_dir.read_json(os.path.join(search_dir, "final_selection.json"))
    candidates = final["candidates"]  # best first
    num_cells = int(search_flags.get("child_num_cells", arc_lib.NUM_CELLS))
    data = search_data_config(search_dir, search_flags, budget.batch_size)
    work = os.path.join(search_dir, "rank_fidelity")
    print(f"Rank fidelity of {search_dir}: {num_arcs} of its {len(candidates)} final candidates, "
          f"each retrained alone with the {budget.name} budget ({budget.num_layers} + 2 layers x "
          f"{budget.out_filters} filters, {budget.num_epochs} epochs), on the search's data")
    pairs = []
    for rank in spread_picks(len(candidates), num_arcs):
        entry = candidates[rank]
        started = time.time()
        results = retrain_alone(entry["arc"], os.path.join(work, f"rank{rank + 1:03d}"), data,
                                budget, num_cells, seed)
        pairs.append({"arc": entry["arc"], "final_rank": rank + 1,
                      "shared_accuracy": entry["selection_accuracy"],
                      "alone_test_accuracy": results["test_accuracy"],
                      "alone_valid_accuracy": results["valid_accuracy"]})
        print(f"  rank {rank + 1:3d}: shared {entry['selection_accuracy']:.4f}  alone (test) "
              f"{results['test_accuracy']:.4f}  [{time.time() - started:.0f} s]")
    report = {"search_dir": search_dir, "proxy_budget": dataclasses.asdict(budget),
              "shared_score": "final shared weights, the search's selection half",
              "alone_score": "test accuracy after the proxy budget (no choice is made from it)",
              "pairs": pairs}
    shared = [p["shared_accuracy"] for p in pairs]
    alone = [p["alone_test_accuracy"] for p in pairs]
    report.update(correlations(shared, alone, seed) if len(pairs) >= 2 else {})
    if random_arcs:
        report["random_arcs"] = retrain_random_arcs(random_arcs, work, data, budget, num_cells, seed)
        report["searched_alone_test_accuracy"] = pairs[0]["alone_test_accuracy"]
    if len(pairs) >= 2:
        print(f"Kendall tau {report['kendall_tau']:+.3f} (95% CI {fmt_ci(report['kendall_tau_ci95'])}), "
              f"Spearman rho {report['spearman_rho']:+.3f} (95% CI "
              f"{fmt_ci(report['spearman_rho_ci95'])}), {len(pairs)} arcs")
        reporting.save_scatter(
            os.path.join(search_dir, "rank_fidelity.png"), shared, alone,
            title=f"rank fidelity: Kendall tau {report['kendall_tau']:+.2f}, "
                  f"Spearman rho {report['spearman_rho']:+.2f} ({len(pairs)} arcs)",
            xlabel="shared-weight accuracy (final weights, selection half)",
            ylabel=f"stand-alone test accuracy ({budget.name})",
            highlight=0, highlight_label="the search's best arc")
    run_dir.write_json_atomic(os.path.join(search_dir, "rank_fidelity.json"), report)
    print(f"Wrote {os.path.join(search_dir, 'rank_fidelity.json')}")
    return report


def retrain_random_arcs(count: int, work: str, data: DataConfig, budget: ProxyBudget,
                        num_cells: int, seed: int) -> Dict:
    """Uniformly random arcs (--child_fixed_arc random --seed 1..count) with the budget."""
    runs = []
    for arc_seed in range(1, count + 1):
        arc = arc_lib.seeded_random_arc(arc_seed, num_cells)
        results = retrain_alone(arc, os.path.join(work, f"random{arc_seed}"), data, budget,
                                num_cells, seed)
        runs.append({"seed": arc_seed, "arc": arc, "test_accuracy": results["test_accuracy"]})
        print(f"  random arc (seed {arc_seed}): alone (test) {results['test_accuracy']:.4f}")
    summary = mean_and_se([r["test_accuracy"] for r in runs])
    print(f"  random arcs: mean test accuracy {summary['mean']:.4f} (se {summary['se']:.4f}, "
          f"{summary['n']} arcs)")
    return {"runs": runs, "test_accuracy": summary}


def fmt_ci(interval: Sequence[float]) -> str:
    return f"[{interval[0]:+.3f}, {interval[1]:+.3f}]"


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("search_dir", help="a finished search's output folder")
    parser.add_argument("--num_arcs", type=int, default=8, help="final candidates to retrain "
                        "alone, spread over the ranking, the winner included (default 8)")
    parser.add_argument("--random_arcs", type=int, default=0, help="also retrain this many "
                        "uniformly random arcs with the same budget (default 0)")
    parser.add_argument("--epochs", type=int, default=ProxyBudget.num_epochs,
                        help="proxy budget: epochs of each stand-alone retrain")
    parser.add_argument("--seed", type=int, default=0, help="seed of every retrain and bootstrap")
    args = parser.parse_args(argv)
    if args.num_arcs < 2:
        parser.error("--num_arcs must be at least 2 (a rank correlation needs two)")
    budget = ProxyBudget(num_epochs=args.epochs, name=f"proxy-{args.epochs}ep")
    try:
        return run(args.search_dir, args.num_arcs, args.random_arcs, budget, args.seed)
    except (data_lib.DataError, OSError, ValueError) as error:
        raise SystemExit(f"error: {error}")


if __name__ == "__main__":
    main()
