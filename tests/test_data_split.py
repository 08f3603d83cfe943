"""One folder in, three splits out (--data_dir): stratified and seeded lists of files,
written to the output folder and reused, the errors, and the command-line checks."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest

from src import data
from src.configs import ConfigError, DataConfig
from tests.conftest import CLASSES, ROOT


@pytest.fixture
def one_folder(tiny_folders, tmp_path):
    """tiny_folders' train, valid and test in one folder: 24 images in each of 3 classes."""
    root = tmp_path / "all"
    for split in ("train", "valid", "test"):
        for name in CLASSES:
            os.makedirs(root / name, exist_ok=True)
            for file in os.listdir(tiny_folders / split / name):
                shutil.copy(tiny_folders / split / name / file, root / name / f"{split}-{file}")
    return root


def split_config(folder, list_dir="", **overrides):
    base = dict(data_dir=str(folder), split_list_dir=str(list_dir), valid_fraction=0.25,
                test_fraction=0.125, channel=1, img_size=8, batch_size=8, seed=0)
    base.update(overrides)
    return DataConfig(**base)


def every_file(folder):
    return sorted(f"{name}/{file}" for name in os.listdir(folder)
                  for file in os.listdir(os.path.join(folder, name)))


def drawn(config):
    return data.split_lists(config)


def test_the_split_is_stratified_disjoint_and_covers_every_file(one_folder):
    lists = drawn(split_config(one_folder))
    for name in CLASSES:  # 24 a class: 25% = 6 valid, 12.5% = 3 test, 15 train
        counts = [sum(p.startswith(f"{name}/") for p in lists[split])
                  for split in ("train", "valid", "test")]
        assert counts == [15, 6, 3], name
    names = [set(lists[split]) for split in ("train", "valid", "test")]
    assert sum(len(n) for n in names) == len(set.union(*names))  # disjoint
    assert sorted(set.union(*names)) == every_file(one_folder)  # every file once
    # Each list in class then file order, as the folders are read.
    assert all(lists[split] == sorted(lists[split]) for split in lists)
    # A split of all three folders: valid and test draw from every part, not one block.
    assert any(p.split("/")[1].startswith("train-") for p in lists["test"] + lists["valid"])


def test_the_split_is_seeded(one_folder):
    first = drawn(split_config(one_folder, seed=3))
    assert drawn(split_config(one_folder, seed=3)) == first
    assert drawn(split_config(one_folder, seed=4))["valid"] != first["valid"]


def test_the_lists_are_written_and_a_second_load_reuses_them(one_folder, tmp_path, capsys):
    list_dir = tmp_path / "out" / "splits"
    config = split_config(one_folder, list_dir, cache_dir=str(tmp_path / "cache"))
    dataset = data.load_dataset(config)
    out = capsys.readouterr().out
    assert "45 train / 18 valid / 9 test" in out and "lists written to" in out
    written = {}
    for split in ("train", "valid", "test"):
        with open(list_dir / f"{split}.txt") as f:
            written[split] = f.read().splitlines()
    assert written == drawn(config)
    assert json.loads((list_dir / "split.json").read_text())["seed"] == 0
    assert dataset.class_names == list(CLASSES)
    assert dataset.train.paths == [os.path.join(str(one_folder), *p.split("/")) for p in written["train"]]
    assert [dataset.class_names[label] for label in dataset.test.labels] == [
        p.split("/")[0] for p in written["test"]]
    assert dataset.train.images.shape == (45, 8, 8, 1)

    # A resume with another seed and fractions: the lists are read, not drawn again.
    again = data.load_dataset(dataclasses.replace(config, seed=9, valid_fraction=0.5))
    out = capsys.readouterr().out
    assert "reused" in out and out.count("cache reused") == 3
    assert again.valid.paths == dataset.valid.paths and again.test.paths == dataset.test.paths

    # A list is the split: edit it, and the split follows.
    with open(list_dir / "test.txt", "w") as f:
        f.write("".join(f"{p}\n" for p in written["test"][:2]))
    assert len(data.load_dataset(config, verbose=False).test.labels) == 2


def test_a_list_naming_a_missing_image_is_a_data_error(one_folder, tmp_path):
    list_dir = tmp_path / "splits"
    config = split_config(one_folder, list_dir)
    data.load_dataset(config, verbose=False)
    victim = (list_dir / "valid.txt").read_text().splitlines()[0]
    os.remove(os.path.join(one_folder, victim))
    with pytest.raises(data.DataError, match="valid list names a missing image"):
        data.load_dataset(config, verbose=False)
    with pytest.raises(data.DataError, match="not an image in a class folder"):
        data.read_listed_split("test", str(one_folder), ["elsewhere/x.png"], config)


@pytest.mark.parametrize("fractions", [(0.0, 0.1), (0.1, 0.0), (1.0, 0.1), (0.1, -0.2), (0.5, 0.5),
                                       (0.6, 0.45)])
def test_fractions_outside_0_1_or_summing_to_1_are_config_errors(fractions):
    with pytest.raises(ConfigError, match="fraction"):
        DataConfig(valid_fraction=fractions[0], test_fraction=fractions[1])


def test_a_class_too_small_for_three_splits_is_a_data_error_and_nothing_is_written(one_folder, tmp_path):
    small = one_folder / "9"
    os.makedirs(small)
    for file in sorted(os.listdir(one_folder / "0"))[:2]:
        shutil.copy(one_folder / "0" / file, small / file)
    before = every_file(one_folder)
    list_dir = tmp_path / "splits"
    with pytest.raises(data.DataError, match=r"class '9' .* has 2 image\(s\): too few"):
        data.load_dataset(split_config(one_folder, list_dir), verbose=False)
    assert not os.path.exists(list_dir) and every_file(one_folder) == before


def test_each_class_draws_on_its_own(one_folder):
    """Adding a class leaves the other classes' draws as they were."""
    before = drawn(split_config(one_folder))
    os.makedirs(one_folder / "extra")
    for file in sorted(os.listdir(one_folder / "1"))[:8]:
        shutil.copy(one_folder / "1" / file, one_folder / "extra" / file)
    after = drawn(split_config(one_folder))
    for split in before:
        assert [p for p in after[split] if not p.startswith("extra/")] == before[split]


def test_no_data_given_says_the_bundled_digits_are_used(monkeypatch, capsys):
    assert data.uses_bundled_data(DataConfig())
    assert not data.uses_bundled_data(DataConfig(data_dir="mine"))
    assert not data.uses_bundled_data(DataConfig(train_dir="mine/train"))

    def stop(*args):
        raise StopIteration

    monkeypatch.setattr(data, "read_splits", stop)
    with pytest.raises(StopIteration):
        data.load_dataset(DataConfig())
    out = capsys.readouterr().out
    assert "bundled MNIST digits in data/" in out and "--data_dir" in out
    with pytest.raises(StopIteration):
        data.load_dataset(DataConfig(data_dir="mine"))
    assert "bundled" not in capsys.readouterr().out


# The command line: what data_config() makes of the flags, in one process for every case.
CLI_CASES = {
    "defaults": [],
    "data_dir": ["--data_dir", "mine", "--output_dir", "runs/a"],
    "data_dir and split_dir": ["--data_dir", "mine", "--split_dir", "runs/search/splits"],
    "data_dir with a folder": ["--data_dir", "mine", "--val_data_dir", "data/valid"],
    "bad fraction": ["--valid_fraction", "1.5"],
    "bad affine": ["--child_random_affine", "--child_affine_shift", "0.5"],
    "on": ["--child_random_affine", "--train_on_valid"],
}
CLI_CODE = """
import dataclasses, json, sys
import main_child_trainer as m, cli_common
out = {}
for name, args in json.loads(sys.stdin.read()).items():
    m.FLAGS.unparse_flags()
    m.FLAGS(['prog'] + args)
    try:
        out[name] = dataclasses.asdict(cli_common.data_config())
    except cli_common.USER_ERRORS as error:
        out[name] = f"error: {error}"
print(json.dumps(out))
"""


def test_the_command_line_data_flags():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", CLI_CODE], input=json.dumps(CLI_CASES), cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    defaults = got["defaults"]
    assert defaults["random_affine"] is False and defaults["train_on_valid"] is False
    assert (defaults["affine_rotate_deg"], defaults["affine_scale"], defaults["affine_shift"]) == (
        10.0, 0.1, 0.1)
    assert defaults["data_dir"] == "" and defaults["train_dir"] == "data/train"
    assert (defaults["valid_fraction"], defaults["test_fraction"]) == (0.1, 0.1)
    assert got["data_dir"]["data_dir"] == "mine"
    assert got["data_dir"]["split_list_dir"] == os.path.join("runs/a", "splits")
    assert got["data_dir and split_dir"]["split_list_dir"] == "runs/search/splits"
    assert got["data_dir with a folder"] == ("error: give --data_dir (one folder, split for you) "
                                             "or --train_data_dir, --val_data_dir and "
                                             "--test_data_dir, not both")
    assert got["bad fraction"].startswith("error: --valid_fraction and --test_fraction")
    assert got["bad affine"].startswith("error: --child_affine_shift")
    assert got["on"]["random_affine"] is True and got["on"]["train_on_valid"] is True
