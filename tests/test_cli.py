"""The entry scripts' command lines: --help, which script takes which flag,
--child_fixed_arc random and --from_search."""
import ast
import json
import os
import re

import pytest

import cli_common
from src import arc as arc_lib
from src.arc import ArcError
from src.configs import ConfigError, DataConfig, data_config_from_flag_values
from tests.conftest import ROOT
from tests.test_end_to_end import read, run_script

RETRAIN, SEARCH = "main_child_trainer.py", "main_controller_child_trainer.py"
SEARCH_ONLY, RETRAIN_ONLY = ("recompute", "memory_budget_mb"), ("child_drop_path_keep_prob",
                                                                 "sync_batch_norm")


# ----------------------------------------------------------------------------
# --child_fixed_arc random


def test_random_arc_is_reproducible_from_the_seed_and_differs_between_seeds():
    first = arc_lib.seeded_random_arc(seed=3, num_cells=5)
    assert arc_lib.seeded_random_arc(seed=3, num_cells=5) == first
    arc_lib.parse_arc(first)  # 40 valid integers
    others = {arc_lib.seeded_random_arc(seed=seed, num_cells=5) for seed in range(4, 10)}
    assert first not in others and len(others) == 6
    arc_lib.parse_arc(arc_lib.seeded_random_arc(seed=3, num_cells=4), num_cells=4)


# ----------------------------------------------------------------------------
# --help, and each script takes only the flags it uses


def defined_flag_names(script: str) -> set:
    """The flags a script defines: its own DEFINE_* calls and those of the cli_common
    functions it calls (and those call), read from the source."""
    common = {node.name: node for node in ast.parse(read(os.path.join(ROOT, "cli_common.py"))).body
              if isinstance(node, ast.FunctionDef)}
    script_tree = ast.parse(read(os.path.join(ROOT, script)))
    called = {node.func.attr for node in ast.walk(script_tree) if isinstance(node, ast.Call)
              and isinstance(node.func, ast.Attribute) and node.func.attr in common
              and isinstance(node.func.value, ast.Name) and node.func.value.id == "cli_common"}
    pending, trees = list(called), [script_tree]
    while pending:
        function = common[pending.pop()]
        trees.append(function)
        inner = {node.func.id for node in ast.walk(function) if isinstance(node, ast.Call)
                 and isinstance(node.func, ast.Name) and node.func.id in common}
        pending += sorted(inner - called)
        called |= inner
    return {node.args[0].value for tree in trees for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr.startswith("DEFINE_") and node.args
            and isinstance(node.args[0], ast.Constant)}


def listed(name: str, help_text: str) -> bool:
    return re.search(rf"--(\[no\])?{re.escape(name)}:", help_text) is not None


@pytest.mark.parametrize("script, others", [(RETRAIN, SEARCH_ONLY), (SEARCH, RETRAIN_ONLY)],
                         ids=["retrain", "search"])
def test_help_lists_every_flag_of_the_script_and_exits_0(script, others):
    names = defined_flag_names(script)
    assert {"output_dir", "train_data_dir", "seed", "child_num_layers"} <= names  # the common ones
    result = run_script(script, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    missing = [name for name in sorted(names | {"flagfile"}) if not listed(name, result.stdout)]
    assert missing == []
    assert not any(listed(name, result.stdout) for name in others)
    assert "Try --helpfull" not in result.stdout


def test_each_script_defines_only_the_flags_it_uses():
    assert not set(SEARCH_ONLY) & defined_flag_names(RETRAIN)
    assert set(RETRAIN_ONLY) <= defined_flag_names(RETRAIN)
    assert not set(RETRAIN_ONLY) & defined_flag_names(SEARCH)
    assert set(SEARCH_ONLY) <= defined_flag_names(SEARCH)


def test_a_search_only_flag_is_unknown_to_the_retrain(tmp_path):
    result = run_script(RETRAIN, "--recompute", "on", "--num_epochs", "0",
                        "--output_dir", str(tmp_path / "out"))
    assert result.returncode != 0
    assert "Unknown command line flag 'recompute'" in result.stderr


# ----------------------------------------------------------------------------
# --from_search

SEARCH_FLAGS = {"train_data_dir": "/s/train", "val_data_dir": "/s/valid",
                "test_data_dir": "/s/test", "data_dir": "", "valid_fraction": 0.1, "test_fraction": 0.1, "channel": 3,
                "img_size": 24, "child_num_cells": 5, "child_num_layers": 6, "seed": 4}
# A retrain's flag values before --from_search (the defaults, as flag_values() gives them).
RETRAIN_VALUES = {"train_data_dir": "data/train", "val_data_dir": "data/valid",
                  "test_data_dir": "data/test", "data_dir": "", "valid_fraction": 0.1,
                  "test_fraction": 0.1, "split_dir": "", "channel": 1, "img_size": 32,
                  "child_num_cells": 5, "child_num_layers": 15, "seed": 0}


def finished_search(folder, search_flags=SEARCH_FLAGS, final_selection=True, best_arc=True):
    """A search's output folder as a finished search leaves it (the files read here)."""
    folder.mkdir(parents=True)
    results = {"final_selection": final_selection, "best_arc": arc_lib.DEFAULT_ARC,
               "epochs_done": 2, "num_epochs": 2, "flags": search_flags}
    (folder / "results.json").write_text(json.dumps(results))
    if best_arc:
        (folder / "best_arc.txt").write_text(arc_lib.DEFAULT_ARC + "\n")
    return folder


def test_from_search_reads_the_best_arc_and_takes_the_search_data_flags(tmp_path):
    folder = finished_search(tmp_path / "search")
    arc, search_flags = cli_common.read_finished_search(str(folder))
    assert arc == arc_lib.DEFAULT_ARC and search_flags == SEARCH_FLAGS
    taken = cli_common.from_search_flag_values(str(folder), search_flags, set(), RETRAIN_VALUES)
    # The data, image size and colour and the arc's nodes per cell; not the model or seed.
    assert taken == {"train_data_dir": "/s/train", "val_data_dir": "/s/valid",
                     "test_data_dir": "/s/test", "data_dir": "", "valid_fraction": 0.1,
                     "test_fraction": 0.1, "channel": 3, "img_size": 24, "child_num_cells": 5}


def test_a_flag_given_to_the_retrain_overrides_the_search(tmp_path):
    folder = str(finished_search(tmp_path / "search"))
    taken = cli_common.from_search_flag_values(folder, SEARCH_FLAGS, {"img_size", "test_data_dir"},
                                               RETRAIN_VALUES)
    assert "img_size" not in taken and taken["channel"] == 3
    # A data folder given: the data source is the command line's as a whole.
    assert "train_data_dir" not in taken and "data_dir" not in taken
    taken = cli_common.from_search_flag_values(folder, SEARCH_FLAGS, {"data_dir"}, RETRAIN_VALUES)
    assert not set(cli_common.DATA_SOURCE_FLAGS) & set(taken) and taken["img_size"] == 24


def test_a_search_flag_the_search_did_not_record_is_left_as_it_is(tmp_path):
    older = {name: value for name, value in SEARCH_FLAGS.items()
             if name not in ("data_dir", "valid_fraction", "test_fraction")}
    folder = str(finished_search(tmp_path / "search", search_flags=older))
    taken = cli_common.from_search_flag_values(folder, older, set(), RETRAIN_VALUES)
    assert "data_dir" not in taken and taken["train_data_dir"] == "/s/train"


def write_split_lists(folder):
    (folder / "splits").mkdir()
    for name in ("train", "valid", "test"):
        (folder / "splits" / f"{name}.txt").write_text(f"0/{name}.png\n")


def test_the_retrain_reuses_the_split_lists_of_a_data_dir_search(tmp_path):
    search_flags = dict(SEARCH_FLAGS, data_dir="/s/all", split_dir="")
    folder = finished_search(tmp_path / "search", search_flags=search_flags)
    write_split_lists(folder)
    taken = cli_common.from_search_flag_values(str(folder), search_flags, set(), RETRAIN_VALUES)
    assert taken["data_dir"] == "/s/all" and taken["split_dir"] == str(folder / "splits")
    # Another fraction, or a --split_dir given: not the search's lists.
    taken = cli_common.from_search_flag_values(str(folder), search_flags, {"valid_fraction"},
                                               dict(RETRAIN_VALUES, valid_fraction=0.2))
    assert "split_dir" not in taken
    taken = cli_common.from_search_flag_values(str(folder), search_flags, {"split_dir"},
                                               RETRAIN_VALUES)
    assert "split_dir" not in taken


AUGMENTED_SEARCH = dict(SEARCH_FLAGS, child_num_reductions=3, child_random_flip=True,
                        child_random_crop=True, child_random_affine=False)


def test_the_search_shape_wins_over_a_preset_and_its_augmentation_over_the_defaults(tmp_path):
    folder = str(finished_search(tmp_path / "search", search_flags=AUGMENTED_SEARCH))
    # A preset set --img_size, --child_num_reductions and --child_random_affine; the command
    # line typed --child_random_crop=false.
    taken = cli_common.from_search_flag_values(
        folder, AUGMENTED_SEARCH, given={"child_random_crop"}, values=dict(
            RETRAIN_VALUES, child_num_reductions=2, child_random_flip=False,
            child_random_crop=False, child_random_affine=True),
        preset={"img_size", "child_num_reductions", "child_random_affine"})
    assert taken["img_size"] == 24 and taken["child_num_reductions"] == 3  # the search's
    assert taken["child_random_flip"] is True  # the preset said nothing: the search's flips
    assert "child_random_affine" not in taken  # the preset's choice of augmentation stays
    assert "child_random_crop" not in taken  # typed on the command line


def test_the_recorded_flagfiles_are_those_on_the_command_line():
    argv = ["prog", "--flagfile=presets/a.flags", "--img_size", "16", "--flagfile",
            "presets/b.flags", "--", "--flagfile=c"]
    assert cli_common.command_line_flagfiles(argv) == ["presets/a.flags", "presets/b.flags"]
    assert cli_common.command_line_flagfiles(["prog", "--img_size=3"]) == []


def test_one_conversion_from_flag_values_to_a_data_config():
    values = {"train_data_dir": "/t", "val_data_dir": "/v", "test_data_dir": "/s",
              "channel": 3, "img_size": 24, "batch_size": 7, "child_random_flip": True,
              "child_cutout_size": 8, "seed": 5, "data_dir": "/all", "valid_fraction": 0.2,
              "output_dir": "out", "cache_dir": "", "split_dir": "", "unrelated_flag": 1}
    config = data_config_from_flag_values(values)
    assert (config.train_dir, config.valid_dir, config.test_dir) == ("/t", "/v", "/s")
    assert (config.channel, config.img_size, config.batch_size, config.eval_batch_size) == (3, 24, 7, 7)
    assert (config.random_flip, config.cutout_size, config.seed) == (True, 8, 5)
    assert (config.data_dir, config.valid_fraction) == ("/all", 0.2)
    assert config.cache_dir == os.path.join("out", "cache")
    assert config.split_list_dir == os.path.join("out", "splits")
    # Flags not given keep DataConfig's defaults; no output folder, no kept cache or lists.
    bare = data_config_from_flag_values({"img_size": 12})
    assert bare == DataConfig(img_size=12)
    # An explicit cache or list folder is kept as given.
    kept = data_config_from_flag_values(dict(values, cache_dir="/c", split_dir="/l"))
    assert (kept.cache_dir, kept.split_list_dir) == ("/c", "/l")


@pytest.mark.parametrize("make, why", [
    (lambda tmp: tmp / "nothing", "no such folder"),
    (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "no results.json"),
    (lambda tmp: finished_search(tmp / "s", final_selection=False), '"final_selection": true'),
    (lambda tmp: finished_search(tmp / "s", best_arc=False), "no best_arc.txt"),
], ids=["missing", "empty", "unfinished", "no-best-arc"])
def test_a_folder_that_is_not_a_finished_search_is_a_one_line_error(make, why, tmp_path):
    folder = str(make(tmp_path))
    with pytest.raises(ConfigError) as error:
        cli_common.read_finished_search(folder)
    message = str(error.value)
    assert message.startswith(f"{folder} is not a finished search: ") and why in message
    assert "\n" not in message


def test_from_search_takes_no_other_arc():
    cli_common.check_one_arc_source("output/search", None, None)
    cli_common.check_one_arc_source(None, "random", None)
    with pytest.raises(ArcError, match="not --from_search and --child_fixed_arc$"):
        cli_common.check_one_arc_source("output/search", "random", None)
    with pytest.raises(ArcError, match="not --child_fixed_arc and --child_fixed_arc_file$"):
        cli_common.check_one_arc_source(None, "1 2", "arc.txt")


@pytest.mark.parametrize("setup, message", [
    (lambda tmp: tmp / "nothing", "is not a finished search: no such folder"),
    # The search's --channel reaches the data config: 2 is refused there.
    (lambda tmp: finished_search(tmp / "s", search_flags=dict(SEARCH_FLAGS, channel=2)),
     "channel must be 1 (grey) or 3 (colour), got 2"),
], ids=["missing", "flags-applied"])
def test_from_search_errors_exit_2_with_one_line(setup, message, tmp_path):
    result = run_script(RETRAIN, "--from_search", str(setup(tmp_path)), "--num_epochs", "0",
                        "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last
    assert "Traceback" not in result.stderr
