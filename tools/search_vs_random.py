"""Did searching pay? The search's winner against uniformly random cells and a plain CNN.

    python tools/search_vs_random.py SEARCH_DIR              # the search's retrain preset
    python tools/search_vs_random.py SEARCH_DIR --preset presets/cpu_final.flags --num_epochs 20
    python tools/search_vs_random.py SEARCH_DIR --preset PHOTO_FINAL --budget_minutes 15
    python tools/search_vs_random.py SEARCH_DIR --winner_seeds 3 --random_arcs 8 --skip_cnn

SEARCH_DIR comes first. Retrains, each with main_child_trainer.py's code (in this
process) and the same settings: the --preset flagfile (default: the retrain preset that
fits the search, src/configs.py retrain_preset_for), then the search's data source
(its folders, or its --data_dir with the split lists it wrote), --img_size, --channel,
--child_num_cells and --child_num_reductions, then every other flag given here (any flag
of main_child_trainer.py, e.g. --num_epochs 20 or --budget_minutes 15):
  - the search's winner (its results.json "best_arc") with --winner_seeds seeds (1..S);
  - --random_arcs uniformly random arcs k = 1..R, each the arc of
    `main_child_trainer.py --child_fixed_arc random --seed k`, trained with seed k;
  - tools/baseline_cnn.py on the same split and images (train + valid if the preset
    says --train_on_valid), with --budget_minutes if given, else the winner's mean
    training time as its budget (--skip_cnn: not trained).

Reports each model's test accuracy with its binomial SE sqrt(p(1-p)/n) (n test images),
the random arcs' mean and SE, and the winner's mean minus the random mean with a 95%
interval (src/stats.py difference_interval):

    v_g  = max(s_g^2, p_g (1 - p_g) / n)   the variance of one run's accuracy in group g
                                           (winner seeds, random arcs): the runs' sample
                                           variance, floored at the binomial variance
    se^2 = v_w / S + v_r / R
    df   = se^4 / ((v_w/S)^2 / (S - 1) + (v_r/R)^2 / (R - 1))    (Welch-Satterthwaite)
    95% CI = (mean_w - mean_r) +- t(0.975, df) * se

The winner's variance is seed-to-seed variance (2 seeds: 1 degree of freedom, often near
0 by chance, hence the floor); the random arcs' also holds the arc-to-arc spread, which
is what the random mean is uncertain by. Both groups are scored on the same test
images, so the test sample's share of the noise partly cancels in the difference: on
that account the interval is conservative.

Each retrain has its own folder SEARCH_DIR/search_vs_random/<label>-<hash>, the hash of
every setting that changes it (arc, seed, the preset's content, the flags given, the
search's data flags and split lists): a rerun reuses finished runs with identical
settings, resumes unfinished ones, and trains anything changed in a new folder. Writes
SEARCH_DIR/search_vs_random.json (also kept per study as
search_vs_random/search_vs_random-<hash>.json) and SEARCH_DIR/search_vs_random.png.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import numpy as np  # noqa: E402

import cli_common  # noqa: E402
from src import arc as arc_lib  # noqa: E402
from src import run_dir, stats  # noqa: E402
from src import configs  # noqa: E402
from src.configs import ConfigError  # noqa: E402
from tools import retrain_folders as folders  # noqa: E402

WORK_SUBDIR = "search_vs_random"
# Flags the tool sets for each retrain; given here they would break the comparison.
TOOL_FLAGS = ("child_fixed_arc", "child_fixed_arc_file", "from_search", "seed", "output_dir",
              "reset_output_dir", "flagfile")
TRAINER = "main_child_trainer.py"


# ---------------------------------------------------------------------------- the search


def search_data_flags(search_dir: str, search_flags: Dict) -> Dict:
    """{flag: value} of main_child_trainer.py that put a retrain on the search's data and
    layout: its folders or its --data_dir (with its fractions and the split lists it
    wrote, which must be there: drawn again they could differ), --img_size, --channel,
    --child_num_cells and --child_num_reductions."""
    taken = {name: search_flags[name] for name in
             ("img_size", "channel", "child_num_cells", "child_num_reductions")
             if name in search_flags}
    if search_flags.get("data_dir"):
        list_dir = search_flags.get("split_dir") or os.path.join(search_dir, "splits")
        if not all(os.path.isfile(os.path.join(list_dir, f"{name}.txt"))
                   for name in ("train", "valid", "test")):
            raise ConfigError(f"the search's split lists are missing from {list_dir}: without "
                              "them the retrains could not use the search's split")
        taken.update(data_dir=search_flags["data_dir"], split_dir=list_dir,
                     valid_fraction=search_flags.get("valid_fraction", 0.1),
                     test_fraction=search_flags.get("test_fraction", 0.1))
    else:
        for name in cli_common.DATA_FOLDER_FLAGS[:3]:
            if name in search_flags:
                taken[name] = search_flags[name]
    return taken


def data_key(data_flags: Dict) -> Dict:
    """What identifies the data in a folder's key: the data flags, with the split lists'
    content in place of their folder's path."""
    key = {name: value for name, value in data_flags.items() if name != "split_dir"}
    if "split_dir" in data_flags:
        key["split_lists_sha256"] = folders.split_lists_sha256(data_flags["split_dir"])
    return key


# ---------------------------------------------------------------------------- the retrain's flags


def parse_trainer_flags(argv: Sequence[str]):
    """Parses argv as main_child_trainer.py's flags (imported here: it defines them) and
    returns its module; a flag it does not know, or a bad value, is a ConfigError."""
    from absl import flags as absl_flags
    import main_child_trainer as trainer
    trainer.FLAGS.unparse_flags()
    try:
        leftover = trainer.FLAGS([TRAINER, *argv])
    except absl_flags.Error as error:
        raise ConfigError(f"{TRAINER}'s flags: {error}") from None
    if len(leftover) > 1:
        raise ConfigError(f"unexpected argument {leftover[1]!r} (the retrain's flags are "
                          f"--name=value or --name value, after SEARCH_DIR)")
    return trainer


def check_overrides(overrides: Sequence[str]) -> None:
    """The flags given after SEARCH_DIR must be main_child_trainer.py's, and not those
    the tool sets itself."""
    for token in overrides:
        if token.split("=")[0].lstrip("-") == "flagfile":
            raise ConfigError("give the retrain's flagfile as --preset FILE (its content "
                              "keys the retrain folders)")
    trainer = parse_trainer_flags(overrides)
    taken = [f"--{name}" for name in TOOL_FLAGS
             if name in trainer.FLAGS and trainer.FLAGS[name].present]
    if taken:
        raise ConfigError(f"{', '.join(taken)}: set by the tool for each retrain, not a "
                          "setting to give")


def search_cache_dir(search_dir: str, search_flags: Dict) -> str:
    """The search's decoded-image cache: the retrains read the same images, so they share
    it instead of decoding the data set once per retrain (it changes no result)."""
    return search_flags.get("cache_dir") or os.path.join(search_dir, "cache")


def trainer_argv(preset: str, data_flags: Dict, overrides: Sequence[str], arc: str, seed: int,
                 output_dir: str, cache_dir: str = "") -> List[str]:
    """main_child_trainer.py's command line for one retrain: later flags win, so the
    search's data beats the preset's and the flags given here beat both."""
    return ([f"--flagfile={preset}"] if preset else []) + [
        f"--{name}={value}" for name, value in sorted(data_flags.items())] + (
        [f"--cache_dir={cache_dir}"] if cache_dir else []) + list(overrides) + [
        f"--child_fixed_arc={arc}", f"--seed={seed}", f"--output_dir={output_dir}"]


def check_retrain_settings(argv: Sequence[str]) -> None:
    """Builds one retrain's configs without training: a bad preset, flag value or arc
    stops the tool before hours of training."""
    trainer = parse_trainer_flags(argv)
    arc_lib.parse_arc(trainer.FLAGS.child_fixed_arc, trainer.FLAGS.child_num_cells)
    with as_command_line(argv), open(os.devnull, "w") as quiet, \
            contextlib.redirect_stdout(quiet):  # run_config's notices come again in the runs
        cli_common.data_config(), cli_common.child_config(), cli_common.optim_config()
        cli_common.run_config()


@contextlib.contextmanager
def as_command_line(argv: Sequence[str]):
    """sys.argv = main_child_trainer.py's command line for the block: cli_common reads it
    (which flags were typed, e.g. whether --num_epochs overrides --budget_minutes, and
    the flagfiles given), so that in-process it sees what `python main_child_trainer.py
    ARGV` would."""
    saved = sys.argv
    sys.argv = [TRAINER, *argv]
    try:
        yield
    finally:
        sys.argv = saved


def train_cell(argv: Sequence[str]) -> Dict:
    """One retrain, configured by main_child_trainer.py's flags as its main() does (its
    log goes to the folder's stdout file, not the terminal); returns its results.json."""
    from src import fixed_train
    from src.configs import FixedTrainConfig
    trainer = parse_trainer_flags(argv)
    with as_command_line(argv):
        run_config = cli_common.run_config()
        if hasattr(run_config, "started_at"):
            # A budget counts from this retrain's start, not from this process's.
            run_config = dataclasses.replace(run_config, started_at=time.time())
        config = FixedTrainConfig(
            arc=trainer.FLAGS.child_fixed_arc, data=cli_common.data_config(),
            child=cli_common.child_config(), optim=cli_common.optim_config(), run=run_config,
            flags=cli_common.flag_values())
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        return fixed_train.run(config)


# ---------------------------------------------------------------------------- the runs


def run_record(label: str, arc: Optional[str], seed: int, results: Dict, folder: str,
               reused: bool) -> Dict:
    accuracy, n = float(results["test_accuracy"]), int(results["num_test_images"])
    budget = results.get("budget") or {}
    return {"label": label, "arc": arc, "seed": seed, "test_accuracy": accuracy,
            "num_test_images": n, "binomial_se": stats.binomial_se(accuracy, n),
            "wall_time_s": results.get("wall_time_s"), "params": results.get("params"),
            "epochs": results.get("epochs_done", results.get("epochs")),
            "budget_minutes": budget.get("budget_minutes"), "folder": folder, "reused": reused}


def retrain_cells(work: str, arcs_and_seeds: Sequence, settings_base: Dict,
                  argv_for: Callable[[str, int, str], List[str]]) -> List[Dict]:
    """Retrains each (arc, seed, label) in its keyed folder (or reuses it); one line each."""
    records = []
    for arc, seed, run_label in arcs_and_seeds:
        settings = {**settings_base, "kind": "cell", "arc": arc, "seed": seed}
        started = time.time()
        results, folder, reused = folders.run_keyed(
            work, run_label, settings, lambda out: train_cell(argv_for(arc, seed, out)))
        record = run_record(run_label, arc, seed, results, folder, reused)
        records.append(record)
        print(f"  {run_label:<16} test {record['test_accuracy']:.4f} (se "
              f"{record['binomial_se']:.4f})  {'reused' if reused else f'{time.time() - started:.0f} s'}"
              f"  {folder}", flush=True)
    return records


def cnn_argv(data_flags: Dict, img_size: int, channel: int, train_on_valid: bool,
             budget_minutes: float, output_dir: str) -> List[str]:
    """tools/baseline_cnn.py's command line on the search's data, split and image size."""
    argv = [f"--{name}={data_flags[name]}" for name in
            ("data_dir", "valid_fraction", "test_fraction", "split_dir",
             "train_data_dir", "val_data_dir", "test_data_dir") if name in data_flags]
    argv += [f"--img_size={img_size}", f"--channel={channel}",
             f"--budget_minutes={budget_minutes:g}", "--seed=0", f"--output_dir={output_dir}"]
    return argv + (["--train_on_valid"] if train_on_valid else [])


def train_cnn(argv: Sequence[str], folder: str) -> Dict:
    """tools/baseline_cnn.py in this process; its log goes to FOLDER/stdout."""
    from tools import baseline_cnn
    with open(os.path.join(folder, run_dir.STDOUT_FILE), "a") as log, \
            contextlib.redirect_stdout(log):
        return baseline_cnn.run(baseline_cnn.parse_args(list(argv)))


def cnn_budget_minutes(winner_runs: Sequence[Dict]) -> float:
    """The retrains' --budget_minutes if they had one (results.json "budget"), else the
    winner's mean training time (its wall_time_s), in minutes."""
    budgets = [run["budget_minutes"] for run in winner_runs if run.get("budget_minutes")]
    if budgets:
        return float(budgets[0])
    seconds = np.mean([run["wall_time_s"] or 0.0 for run in winner_runs])
    return max(0.1, round(float(seconds) / 60.0, 1))


# ---------------------------------------------------------------------------- the study


def run(search_dir: str, preset: str, overrides: Sequence[str], winner_seeds: int,
        random_arcs: int, train_cnn_too: bool = True) -> Dict:
    winner_arc, search_flags = cli_common.read_finished_search(search_dir)
    if preset is None:  # the retrain preset beside the search's, or by its colour
        preset = configs.retrain_preset_for(search_flags)
    if preset and not os.path.isfile(preset):
        raise ConfigError(f"--preset: no such file: {preset}")
    check_overrides(overrides)
    data_flags = search_data_flags(search_dir, search_flags)
    num_cells = int(search_flags.get("child_num_cells", arc_lib.NUM_CELLS))
    work = os.path.join(search_dir, WORK_SUBDIR)
    settings_base = {"preset_sha256": folders.file_sha256(preset) if preset else None,
                     "overrides": list(overrides), "data": data_key(data_flags)}

    def argv_for(arc: str, seed: int, out: str) -> List[str]:
        return trainer_argv(preset, data_flags, overrides, arc, seed, out,
                            search_cache_dir(search_dir, search_flags))

    check_retrain_settings(argv_for(winner_arc, 1, os.path.join(work, "check")))
    print(f"Search against random cells: {search_dir}'s winner x {winner_seeds} seeds, "
          f"{random_arcs} random arcs{', the baseline CNN' if train_cnn_too else ''}; each "
          f"`{TRAINER} --flagfile={preset or '(none)'} "
          f"{' '.join(overrides)}` on the search's data", flush=True)
    winner = retrain_cells(work, [(winner_arc, s, f"winner-seed{s}")
                                            for s in range(1, winner_seeds + 1)],
                           settings_base, argv_for)
    randoms = retrain_cells(work, [
        (arc_lib.seeded_random_arc(k, num_cells), k, f"random{k}-seed{k}")
        for k in range(1, random_arcs + 1)], settings_base, argv_for)
    cnn = None
    if train_cnn_too:
        cnn = retrain_cnn(work, data_flags, argv_for(winner_arc, 1, work), winner)
    report = summarise(search_dir, winner, randoms, cnn)
    report.update(preset=preset, preset_sha256=settings_base["preset_sha256"],
                  overrides=list(overrides), search_data_flags=data_flags)
    study = {**settings_base, "winner_seeds": winner_seeds, "random_arcs": random_arcs,
             "cnn": train_cnn_too}
    path = folders.write_summary(search_dir, work, WORK_SUBDIR, study, report)
    save_plot(os.path.join(search_dir, "search_vs_random.png"), report)
    print_report(report)
    print(f"Wrote {path} and {os.path.join(search_dir, 'search_vs_random.png')}")
    return report


def retrain_cnn(work: str, data_flags: Dict, reference_argv: List[str],
                winner: Sequence[Dict]) -> Dict:
    trainer = parse_trainer_flags(reference_argv)
    img_size, channel = trainer.FLAGS.img_size, trainer.FLAGS.channel
    train_on_valid = trainer.FLAGS.train_on_valid
    budget = cnn_budget_minutes(winner)
    settings = {"kind": "cnn", "data": data_key(data_flags),
                "cnn_argv": cnn_argv(data_flags, img_size, channel, train_on_valid, budget, "")}
    started = time.time()
    results, folder, reused = folders.run_keyed(
        work, "cnn", settings, lambda out: train_cnn(
            cnn_argv(data_flags, img_size, channel, train_on_valid, budget, out), out))
    record = run_record("cnn", None, 0, results, folder, reused)
    record["budget_minutes"] = budget
    print(f"  {'cnn':<16} test {record['test_accuracy']:.4f} (se {record['binomial_se']:.4f})  "
          f"{'reused' if reused else f'{time.time() - started:.0f} s'}  {folder}", flush=True)
    return record


def summarise(search_dir: str, winner: List[Dict], randoms: List[Dict],
              cnn: Optional[Dict]) -> Dict:
    """The report: every run, each group's mean and SE, the difference and a verdict."""
    num_test = winner[0]["num_test_images"]
    if any(run["num_test_images"] != num_test for run in winner + randoms):
        raise ConfigError("the retrains were tested on different numbers of images")
    accuracies = {name: [run["test_accuracy"] for run in runs]
                  for name, runs in (("winner", winner), ("random", randoms))}
    report = {"search_dir": search_dir, "num_test_images": num_test,
              "winner": {"arc": winner[0]["arc"], "runs": winner,
                         **stats.mean_and_se(accuracies["winner"], num_test)},
              "random_arcs": {"runs": randoms, **stats.mean_and_se(accuracies["random"], num_test)},
              "cnn": cnn,
              "interval_formula": "Welch t interval on per-run test accuracies, each group's "
                                  "variance floored at the binomial p(1-p)/n "
                                  "(src/stats.py difference_interval)"}
    if len(winner) >= 2 and len(randoms) >= 2:
        report["winner_minus_random"] = stats.difference_interval(
            accuracies["winner"], accuracies["random"], num_test)
    if cnn is not None:
        se = float(np.hypot(report["winner"]["se"], cnn["binomial_se"]))
        report["winner_minus_cnn"] = {"difference": report["winner"]["mean"] - cnn["test_accuracy"],
                                      "se": se}
    report["verdict"] = verdict(report)
    return report


def verdict(report: Dict) -> str:
    difference = report.get("winner_minus_random")
    if difference is None:
        return "no interval: needs 2 or more winner seeds and random arcs"
    low, high = difference["ci"]
    text = (f"winner - random mean = {difference['difference']:+.4f}, 95% CI "
            f"{folders.fmt_ci(difference['ci'], 4)}: ")
    if low > 0:
        return text + "the searched cell beat the random cells"
    if high < 0:
        return text + "the searched cell did worse than the random cells"
    return text + "no difference shown (the interval holds 0)"


def print_report(report: Dict) -> None:
    print(f"Test accuracy on {report['num_test_images']} images (se: binomial for one run):")
    for name in ("winner", "random_arcs"):
        group = report[name]
        for run in group["runs"]:
            print(f"  {run['label']:<16} {run['test_accuracy']:.4f}  se {run['binomial_se']:.4f}")
        print(f"  {name + ' mean':<16} {group['mean']:.4f}  se {group['se']:.4f} ({group['n']} runs)")
    if report["cnn"] is not None:
        cnn = report["cnn"]
        print(f"  {'cnn':<16} {cnn['test_accuracy']:.4f}  se {cnn['binomial_se']:.4f} "
              f"({cnn['budget_minutes']:g}-minute budget)")
        print(f"  winner - cnn     {report['winner_minus_cnn']['difference']:+.4f}  se "
              f"{report['winner_minus_cnn']['se']:.4f}")
    print(f"Verdict: {report['verdict']}")


def save_plot(path: str, report: Dict) -> None:
    """Each run and each group's mean with 95% error bars (1.96 se), the CNN beside them."""
    rows = [(run["label"], run["test_accuracy"], run["binomial_se"], "tab:red")
            for run in report["winner"]["runs"]]
    rows.append(("winner mean", report["winner"]["mean"], report["winner"]["se"], "darkred"))
    rows += [(run["label"], run["test_accuracy"], run["binomial_se"], "tab:blue")
             for run in report["random_arcs"]["runs"]]
    rows.append(("random mean", report["random_arcs"]["mean"], report["random_arcs"]["se"],
                 "navy"))
    if report["cnn"] is not None:
        rows.append(("CNN", report["cnn"]["test_accuracy"], report["cnn"]["binomial_se"], "gray"))
    figure = folders.new_figure(max(6.0, 0.55 * len(rows) + 2), 4.8)
    ax = figure.add_subplot()
    for x, (_, accuracy, se, colour) in enumerate(rows):
        ax.errorbar([x], [accuracy], yerr=[1.96 * se], fmt="o", color=colour, capsize=4)
    ax.set_xticks(range(len(rows)), [row[0] for row in rows], rotation=45, ha="right")
    ax.set_ylabel(f"test accuracy ({report['num_test_images']} images), 95% bars")
    ax.set_title("\n".join(report["verdict"].rsplit(": ", 1)), fontsize=9)  # fits the width
    ax.grid(alpha=0.35, axis="y")
    folders.save_png(figure, path)


# ---------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str]):
    """(the tool's arguments, the retrain's flags): SEARCH_DIR first, then the tool's
    flags and any of main_child_trainer.py's."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], allow_abbrev=False,
        usage="search_vs_random.py SEARCH_DIR [--preset FILE] [--winner_seeds S] "
              "[--random_arcs R] [--skip_cnn] [main_child_trainer.py flags ...]")
    parser.error = lambda message: cli_common.exit_with(2, f"error: {message}")
    parser.add_argument("search_dir", help="a finished search's output folder (first)")
    parser.add_argument("--preset", default=None, help="the retrain's flagfile (default: the "
                        "NAME_final.flags beside the search's NAME_search.flags, else "
                        "presets/photo_final.flags for a colour search, presets/cpu_final.flags "
                        "for a grey one; '' = main_child_trainer.py's defaults)")
    parser.add_argument("--winner_seeds", type=int, default=2,
                        help="seeds of the winner's retrain, 1..S (at least 2; default 2)")
    parser.add_argument("--random_arcs", type=int, default=5,
                        help="uniformly random arcs, 1..R (at least 2; default 5)")
    parser.add_argument("--skip_cnn", action="store_true", help="do not train the baseline CNN")
    if argv and argv[0] in ("-h", "--help"):
        parser.print_help()
        sys.exit(0)
    if not argv or argv[0].startswith("-"):
        parser.error("give SEARCH_DIR first, then the tool's and the retrain's flags")
    args, overrides = parser.parse_known_args(argv)
    if args.winner_seeds < 2 or args.random_arcs < 2:
        parser.error("--winner_seeds and --random_arcs must be at least 2 (an interval "
                     "needs two runs a group)")
    return args, overrides


def main(argv: Optional[Sequence[str]] = None) -> None:
    args, overrides = parse_args(list(sys.argv[1:] if argv is None else argv))
    cli_common.run_or_exit(lambda: run(args.search_dir, args.preset, overrides,
                                       args.winner_seeds, args.random_arcs,
                                       train_cnn_too=not args.skip_cnn))


if __name__ == "__main__":
    main()
