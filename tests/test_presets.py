"""The presets: each loads into its script (one launch per script for all of them), the
command line overrides it, each search preset names its retrain preset, and the authors'
CIFAR-10 presets hold their scripts' values."""
import glob
import json
import os
import subprocess
import sys

import pytest

from src.configs import retrain_preset_for
from tests.conftest import ROOT

SEARCH, RETRAIN = "main_controller_child_trainer.py", "main_child_trainer.py"
SCRIPT_OF_SUFFIX = {"_search.flags": SEARCH, "_final.flags": RETRAIN}
PRESETS = sorted(os.path.relpath(path, ROOT) for path in glob.glob(os.path.join(ROOT, "presets", "*.flags")))
TIME_FLAGS = ("num_epochs", "budget_minutes")  # a preset is sized by one of them


def preset_lines(preset):
    """The '--name=value' (or bare '--name') lines of a preset."""
    with open(os.path.join(ROOT, preset)) as f:
        return [line.strip() for line in f if line.strip().startswith("--")]


def preset_values(preset):
    """{name: value as written} of a preset; a bare boolean flag is 'true'."""
    pairs = (line[2:].partition("=") for line in preset_lines(preset))
    return {name: value if equals else "true" for name, equals, value in pairs}


def header(preset):
    with open(os.path.join(ROOT, preset)) as f:
        return "".join(line for line in f if line.startswith("#"))


def parsed_flag_sets(script, arg_lists):
    """The flag values `script` ends up with after parsing each list of args (nothing
    runs): one process for all of them."""
    code = (f"import json, sys\nimport {script[:-3]} as m\nout = []\n"
            "for args in json.loads(sys.stdin.read()):\n"
            "    m.FLAGS.unparse_flags()\n"
            "    m.FLAGS(['prog'] + args)\n"
            "    out.append({name: m.FLAGS[name].value for name in m.FLAGS})\n"
            "print(json.dumps(out, default=str))")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", code], input=json.dumps(arg_lists), cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def time_flag(preset):
    """The one of --num_epochs and --budget_minutes the preset sets."""
    found = [name for name in TIME_FLAGS if name in preset_values(preset)]
    assert len(found) == 1, f"{preset} sets {found}: a preset is sized by epochs or a budget"
    return found[0]


def test_every_preset_is_a_search_or_a_retrain_preset():
    assert len(PRESETS) >= 8
    for preset in PRESETS:
        assert any(preset.endswith(suffix) for suffix in SCRIPT_OF_SUFFIX), preset


@pytest.mark.parametrize("suffix", sorted(SCRIPT_OF_SUFFIX))
def test_every_preset_loads_and_the_command_line_overrides_it(suffix):
    script = SCRIPT_OF_SUFFIX[suffix]
    presets = [preset for preset in PRESETS if preset.endswith(suffix)]
    runs = [["--flagfile", preset, f"--{time_flag(preset)}", "3"] for preset in presets]
    variant = f"presets/variant{suffix}"
    parsed = parsed_flag_sets(script, [[], ["--flagfile", variant]] + runs)
    defaults, variant_values = parsed[0], parsed[1]
    for preset, values in zip(presets, parsed[2:]):
        for name, value in preset_values(preset).items():
            if name == time_flag(preset):
                continue
            assert (str(values[name]).lower() == value.lower()
                    or float(values[name]) == float(value)), (preset, name)
        assert float(values[time_flag(preset)]) == 3  # the command line after --flagfile wins
    # The variant's presets write out the scripts' defaults (the final one but its folder:
    # the default output/child is not where the README reads the model).
    differ = {name for name in defaults if defaults[name] != variant_values[name]} - {"flagfile"}
    assert differ == (set() if suffix == "_search.flags" else {"output_dir"})


def test_each_search_preset_names_its_retrain_preset_and_from_search():
    searches = [preset for preset in PRESETS if preset.endswith("_search.flags")]
    assert {"presets/cpu_search.flags", "presets/photo_search.flags",
            "presets/paper_cifar10_search.flags", "presets/variant_search.flags"} <= set(searches)
    for search_preset in searches:
        final = search_preset.replace("_search.flags", "_final.flags")
        assert final in PRESETS, f"{search_preset} has no {final}"
        command = f"python main_child_trainer.py --flagfile {final} --from_search "
        assert command in header(search_preset) and command in header(final), search_preset


def test_retrain_preset_for_follows_the_search_preset_else_the_colour(monkeypatch):
    monkeypatch.chdir(ROOT)  # the preset paths are relative to the repository, as recorded
    for search_preset in [preset for preset in PRESETS if preset.endswith("_search.flags")]:
        expected = search_preset.replace("_search.flags", "_final.flags")
        assert retrain_preset_for({"flagfile": [search_preset], "channel": 1}) == expected
    # The last search preset given wins, as absl applies flagfiles in order.
    assert retrain_preset_for({"flagfile": ["presets/cpu_search.flags",
                                            "presets/photo_search.flags"]}) == "presets/photo_final.flags"
    # No preset recorded, or one without a matching final preset: by colour.
    assert retrain_preset_for({"channel": 3}) == "presets/photo_final.flags"
    assert retrain_preset_for({"channel": 1}) == "presets/cpu_final.flags"
    assert retrain_preset_for({"flagfile": "mine/x_search.flags", "channel": 3}) == "presets/photo_final.flags"
    assert retrain_preset_for({}) == "presets/cpu_final.flags"


def test_the_authors_cifar10_presets_hold_their_scripts_values():
    search = preset_values("presets/paper_cifar10_search.flags")
    assert search.items() >= {
        "batch_size": "160", "num_epochs": "150", "child_num_layers": "6",
        "child_out_filters": "20", "child_l2_reg": "0.0001", "child_keep_prob": "0.9",
        "child_lr_max": "0.05", "child_lr_min": "0.0005", "child_lr_T_0": "10",
        "child_lr_T_mul": "2", "child_use_aux_heads": "true", "child_num_cells": "5",
        "controller_train_steps": "30", "controller_num_aggregate": "10",
        "controller_lr": "0.0035", "controller_tanh_constant": "1.1",
        "controller_op_tanh_reduce": "2.5", "controller_entropy_weight": "0.0001",
        "channel": "3", "img_size": "32", "child_random_flip": "true",
        "child_random_crop": "true"}.items()
    final = preset_values("presets/paper_cifar10_final.flags")
    assert final.items() >= {
        "batch_size": "144", "num_epochs": "630", "child_num_layers": "15",
        "child_out_filters": "36", "child_lr_min": "0.0001", "child_keep_prob": "0.8",
        "child_drop_path_keep_prob": "0.6", "child_l2_reg": "0.0002",
        "child_use_aux_heads": "true", "channel": "3", "img_size": "32",
        "child_random_flip": "true", "train_on_valid": "true"}.items()
    # Cutout is the paper's option, named in the header, off in the released script.
    assert "--child_cutout_size=16" in header("presets/paper_cifar10_final.flags")
    assert "child_cutout_size" not in final


@pytest.mark.parametrize("preset", ["presets/photo_search.flags", "presets/photo_final.flags"])
def test_the_photo_presets_are_colour_and_sized_by_a_45_minute_budget(preset):
    values = preset_values(preset)
    assert values.items() >= {"channel": "3", "img_size": "32", "child_random_flip": "true",
                              "child_random_crop": "true", "budget_minutes": "45"}.items()
    assert "num_epochs" not in values and "provisional" in header(preset).lower()
