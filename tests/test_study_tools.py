"""tools/rank_fidelity.py and tools/search_vs_random.py at tiny sizes, on a finished
search's files written by hand (what the tools read: results.json with its flags and
"final_selection": true, best_arc.txt, final_selection.json), and their keyed folders."""
import json
import os
import subprocess
import sys

import pytest

from src import arc as arc_lib
from src.configs import ConfigError
from tests.conftest import ROOT
from tools import rank_fidelity, retrain_folders, search_vs_random

IMG_SIZE = 8
TINY_BUDGET = rank_fidelity.ProxyBudget(name="tiny", num_layers=1, out_filters=4, num_epochs=1,
                                        batch_size=12, train_subset=0)


def write_finished_search(folder, tiny_folders, num_candidates=5, num_reductions=2):
    """A search folder as a finished search leaves it, candidates best first."""
    os.makedirs(folder, exist_ok=True)
    arcs = [arc_lib.seeded_random_arc(100 + i) for i in range(num_candidates)]
    candidates = [{"arc": arc, "selection_accuracy": round(0.9 - 0.1 * i, 2)}
                  for i, arc in enumerate(arcs)]
    flags = {"train_data_dir": str(tiny_folders / "train"),
             "val_data_dir": str(tiny_folders / "valid"),
             "test_data_dir": str(tiny_folders / "test"), "data_dir": "", "img_size": IMG_SIZE,
             "channel": 1, "child_num_cells": 5, "child_num_reductions": num_reductions,
             "seed": 0}
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump({"final_selection": True, "best_arc": arcs[0], "flags": flags}, f)
    with open(os.path.join(folder, "best_arc.txt"), "w") as f:
        f.write(arcs[0] + "\n")
    with open(os.path.join(folder, "final_selection.json"), "w") as f:
        json.dump({"candidates": candidates}, f)
    return arcs


# ---------------------------------------------------------------------------- keyed folders


def test_seeds_and_budgets_give_distinct_folders_and_a_rerun_reuses_only_identical_runs(tmp_path):
    calls = []

    def train(folder):
        calls.append(folder)
        return {"test_accuracy": 0.5, "num_test_images": 10}

    base = {"arc": "0 1", "seed": 1, "budget": {"num_epochs": 5}}
    first, folder, reused = retrain_folders.run_keyed(str(tmp_path), "rank001-seed1", base, train)
    assert not reused and calls == [folder] and first["test_accuracy"] == 0.5
    assert retrain_folders.run_keyed(str(tmp_path), "rank001-seed1", dict(base), train)[1:] == (
        folder, True)
    assert len(calls) == 1  # identical settings: reused, not trained again
    for changed in ({**base, "seed": 2}, {**base, "budget": {"num_epochs": 6}},
                    {**base, "arc": "1 0"}):
        _, other, reused = retrain_folders.run_keyed(str(tmp_path), "rank001-seed1", changed, train)
        assert not reused and other != folder
    assert len(calls) == 4 and len(set(calls)) == 4
    # An unfinished run (no finished.json) is run again in its folder: the trainer resumes.
    os.remove(os.path.join(folder, retrain_folders.FINISHED_FILE))
    assert retrain_folders.run_keyed(str(tmp_path), "rank001-seed1", base, train)[1:] == (
        folder, False)
    # A folder holding other settings is never taken over.
    with open(os.path.join(folder, retrain_folders.SETTINGS_FILE), "w") as f:
        json.dump({"arc": "edited"}, f)
    with pytest.raises(ConfigError, match="other settings"):
        retrain_folders.run_keyed(str(tmp_path), "rank001-seed1", base, train)


def test_rank_fidelity_keys_its_folders_by_seed_epochs_and_reductions(tiny_folders, tmp_path):
    arcs = write_finished_search(tmp_path / "search", tiny_folders)
    data = rank_fidelity.search_data_config(str(tmp_path / "search"), {
        "train_data_dir": str(tiny_folders / "train"), "val_data_dir": str(tiny_folders / "valid"),
        "test_data_dir": str(tiny_folders / "test"), "img_size": IMG_SIZE}, 12)

    def folder(budget=TINY_BUDGET, seed=1, reductions=2):
        config = rank_fidelity.proxy_config(arcs[0], data, budget, 5, reductions, seed, out="x")
        return retrain_folders.keyed_folder("w", "rank001", rank_fidelity.run_settings(config, budget))

    longer = rank_fidelity.ProxyBudget(**{**TINY_BUDGET.__dict__, "num_epochs": 2})
    names = {folder(), folder(seed=2), folder(budget=longer), folder(reductions=3)}
    assert len(names) == 4
    assert folder() == folder()  # the output folder itself is not part of the key


def test_search_vs_random_keys_the_preset_by_content_and_needs_the_split_lists(tmp_path):
    preset = tmp_path / "a.flags"
    preset.write_text("--num_epochs=1\n")
    first = retrain_folders.file_sha256(str(preset))
    preset.write_text("--num_epochs=2\n")
    assert retrain_folders.file_sha256(str(preset)) != first
    with pytest.raises(ConfigError, match="split lists are missing"):
        search_vs_random.search_data_flags(str(tmp_path), {"data_dir": "images", "img_size": 8})
    taken = search_vs_random.search_data_flags(str(tmp_path), {
        "train_data_dir": "t", "val_data_dir": "v", "test_data_dir": "s", "data_dir": "",
        "img_size": 8, "channel": 3, "child_num_reductions": 3, "batch_size": 64})
    assert taken == {"train_data_dir": "t", "val_data_dir": "v", "test_data_dir": "s",
                     "img_size": 8, "channel": 3, "child_num_reductions": 3}


def test_rank_fidelity_verdicts():
    assert rank_fidelity.verdict(0.3, 0.9, [0.5, 1.0]).startswith("inconclusive")
    assert rank_fidelity.verdict(float("nan"), 0.9, [0.5, 1.0]).startswith("inconclusive")
    assert rank_fidelity.verdict(0.6, 0.1, [-0.3, 0.5]).startswith("no signal")
    assert rank_fidelity.verdict(0.5, 0.6, [0.1, 0.9]).startswith("signal")
    assert rank_fidelity.verdict(0.7, -0.6, [-0.9, -0.1]).startswith("inverse signal")


def test_spread_picks_include_the_winner_and_the_worst():
    assert rank_fidelity.spread_picks(100, 8)[0] == 0
    assert rank_fidelity.spread_picks(100, 8)[-1] == 99 and len(rank_fidelity.spread_picks(100, 8)) == 8
    assert rank_fidelity.spread_picks(3, 8) == [0, 1, 2]


def test_stratified_subset_keeps_every_class_in_proportion():
    paths = [f"a/{i}.png" for i in range(60)] + [f"b/{i}.png" for i in range(40)]
    subset = rank_fidelity.stratified_subset(paths, 10, seed=0)
    assert sum(p.startswith("a/") for p in subset) == 6 and sum(p.startswith("b/") for p in subset) == 4
    assert subset == [p for p in paths if p in set(subset)]  # the list's order
    assert rank_fidelity.stratified_subset(paths, 10, seed=0) == subset
    assert rank_fidelity.stratified_subset(paths, 10, seed=1) != subset


# ---------------------------------------------------------------------------- bad input


def test_not_a_finished_search_is_one_line_and_exit_2(tmp_path, capsys):
    for main, args in ((rank_fidelity.main, []), (search_vs_random.main, ["--skip_cnn"])):
        with pytest.raises(SystemExit) as stopped:
            main([str(tmp_path / "nothing"), *args])
        assert stopped.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is not a finished search" in err[0]
    with pytest.raises(SystemExit) as stopped:
        search_vs_random.main(["--winner_seeds", "2", str(tmp_path)])
    assert stopped.value.code == 2 and "SEARCH_DIR first" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        rank_fidelity.main([str(tmp_path), "--num_arcs", "1"])
    assert stopped.value.code == 2 and capsys.readouterr().err.startswith("error: --num_arcs")


# ---------------------------------------------------------------------------- end to end


def fake_trainer(accuracy_of, calls):
    """A stand-in for rank_fidelity.train_alone: accuracy_of(arc, seed) on 100 test
    images, and every call recorded."""
    def train(config):
        calls.append((config.arc, config.run.seed, config.run.output_dir))
        assert config.child.num_reductions == 3 and config.child.num_cells == 5  # the search's
        assert config.data.seed == config.run.seed  # the seed also orders the data
        return {"test_accuracy": accuracy_of(config.arc, config.run.seed), "num_test_images": 100}
    return train


def test_rank_fidelity_study_on_known_accuracies_and_its_reuse(tiny_folders, tmp_path,
                                                               monkeypatch):
    out = str(tmp_path / "search")
    # Shared scores .9 .8 .7 .6 .5; the 3-reduction layout, which every retrain must take.
    arcs = write_finished_search(out, tiny_folders, num_candidates=5, num_reductions=3)
    calls = []
    # Stand-alone accuracy falls with the shared rank, the same for both seeds (+- 0.001):
    # ceiling 1, tau 1, exact one-sided p = 1/4! over the 4 arcs picked (ranks 1, 2, 4, 5).
    monkeypatch.setattr(rank_fidelity, "train_alone", fake_trainer(
        lambda arc, seed: 0.8 - 0.05 * arcs.index(arc) + (0.001 if seed == 1 else -0.001), calls))
    report = rank_fidelity.run(out, num_arcs=4, random_arcs=0, budget=TINY_BUDGET, seeds=2)
    saved = json.loads(open(os.path.join(out, "rank_fidelity.json")).read())
    assert [entry["final_rank"] for entry in saved["arcs"]] == [1, 2, 4, 5]
    assert saved["arcs"][0]["arc"] == arcs[0] and len(calls) == 8
    assert len({folder for _, _, folder in calls}) == 8  # one folder per arc and seed
    first = saved["arcs"][0]
    assert first["alone_test_accuracies"] == pytest.approx([0.801, 0.799])
    assert first["alone_mean"] == pytest.approx(0.8)
    # The seeds' SE (0.001) is below the binomial floor sqrt(0.8 * 0.2 / 100 / 2).
    assert first["alone_se"] == pytest.approx((0.8 * 0.2 / 100 / 2) ** 0.5)
    assert saved["noise_ceiling"]["kendall_tau"] == pytest.approx(1.0)
    assert saved["kendall_tau"] == pytest.approx(1.0) and saved["spearman_rho"] == pytest.approx(1.0)
    assert saved["kendall_tau_p_value"] == pytest.approx(1 / 24)
    assert saved["permutation_test"] == {"alternative": "greater (one-sided)",
                                         "method": "exhaustive", "permutations": 24}
    assert saved["verdict"].startswith("signal")
    assert os.path.getsize(os.path.join(out, "rank_fidelity.png")) > 0
    assert saved["kendall_tau"] == report["kendall_tau"]

    # The same study again: every run reused, nothing trained.
    again = rank_fidelity.run(out, num_arcs=4, random_arcs=0, budget=TINY_BUDGET, seeds=2)
    assert len(calls) == 8 and all(run["reused"] for e in again["arcs"] for run in e["runs"])
    # A third seed trains only seed 3; a longer budget trains everything anew.
    rank_fidelity.run(out, num_arcs=4, random_arcs=0, budget=TINY_BUDGET, seeds=3)
    assert [seed for _, seed, _ in calls[8:]] == [3, 3, 3, 3]
    longer = rank_fidelity.ProxyBudget(**{**TINY_BUDGET.__dict__, "num_epochs": 2})
    rank_fidelity.run(out, num_arcs=4, random_arcs=0, budget=longer, seeds=2)
    assert len(calls) == 20

    # Seeds that disagree (seed 2 reverses seed 1): the ceiling is -1, the verdict inconclusive.
    monkeypatch.setattr(rank_fidelity, "train_alone", fake_trainer(
        lambda arc, seed: 0.8 + 0.05 * arcs.index(arc) * (1 if seed == 1 else -1), calls))
    noisy = rank_fidelity.run(out, num_arcs=4, random_arcs=0,
                              budget=rank_fidelity.ProxyBudget(**{**TINY_BUDGET.__dict__,
                                                                  "name": "other"}), seeds=2)
    assert noisy["noise_ceiling"]["kendall_tau"] == pytest.approx(-1.0)
    assert noisy["verdict"].startswith("inconclusive")


def test_search_vs_random_end_to_end_in_one_process(tiny_folders, tmp_path):
    out = tmp_path / "search"
    arcs = write_finished_search(out, tiny_folders)
    preset = tmp_path / "tiny.flags"
    preset.write_text("--child_num_layers=1\n--child_out_filters=4\n--num_epochs=1\n"
                      "--batch_size=12\n--nochild_use_aux_heads\n--child_drop_path_keep_prob=1\n"
                      "--img_size=28\n")  # the search's 8 px must win over the preset's 28
    command = [sys.executable, os.path.join(ROOT, "tools", "search_vs_random.py"), str(out),
               "--preset", str(preset), "--random_arcs", "2", "--child_lr_T_0", "1"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((out / "search_vs_random.json").read_text())
    winner, randoms = saved["winner"], saved["random_arcs"]
    assert [run["seed"] for run in winner["runs"]] == [1, 2]
    assert {run["arc"] for run in winner["runs"]} == {arcs[0]}
    assert [run["arc"] for run in randoms["runs"]] == [arc_lib.seeded_random_arc(k) for k in (1, 2)]
    folders = [run["folder"] for run in winner["runs"] + randoms["runs"]] + [saved["cnn"]["folder"]]
    assert len(set(folders)) == 5 and all(os.path.dirname(f) == str(out / "search_vs_random")
                                          for f in folders)
    for run in winner["runs"] + randoms["runs"] + [saved["cnn"]]:
        assert run["num_test_images"] == 12 and 0.0 <= run["test_accuracy"] <= 1.0
        p = run["test_accuracy"]
        assert run["binomial_se"] == pytest.approx((p * (1 - p) / 12) ** 0.5)
    retrained = json.loads(open(os.path.join(folders[0], "results.json")).read())
    assert retrained["flags"]["img_size"] == IMG_SIZE and retrained["flags"]["child_num_layers"] == 1
    difference = saved["winner_minus_random"]
    assert difference["difference"] == pytest.approx(winner["mean"] - randoms["mean"])
    assert difference["ci"][0] <= difference["difference"] <= difference["ci"][1]
    assert saved["verdict"].startswith("winner - random mean")
    assert saved["cnn"]["budget_minutes"] > 0
    assert "Verdict:" in result.stdout and (out / "search_vs_random.png").stat().st_size > 0
