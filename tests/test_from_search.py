"""--from_search against a retrain preset: the search's image size, channels, reductions
and data win over the preset's, only the command line overrides them; the search's flips
carry over. And the one-line warning for a colour folder read grey, or a grey one read in
colour."""
import json

import cv2
import numpy as np

from src import arc as arc_lib
from src import data as data_lib
from src import image_cache
from src.configs import ChildConfig, DataConfig
from src.fixed_child import FixedChild
from tests.test_cli import finished_search
from tests.test_end_to_end import read, run_script

# A retrain preset whose sizes differ from the search's (16 px, grey, 3 reductions).
RETRAIN_PRESET = """--img_size=12
--channel=3
--child_num_reductions=2
--child_num_layers=4
--child_out_filters=4
--batch_size=12
--num_epochs=0
--child_random_affine
"""


def three_reduction_search(folders, out):
    """A finished search's folder (the files --from_search reads: results.json with the
    flags the search script records, best_arc.txt) at 16 px, grey, with the 3-reduction
    layout and flips; a real search would add a minute and nothing --from_search reads."""
    search_flags = {"train_data_dir": str(folders / "train"), "val_data_dir": str(folders / "valid"),
                    "test_data_dir": str(folders / "test"), "data_dir": "", "img_size": 16,
                    "channel": 1, "child_num_cells": 5, "child_num_reductions": 3,
                    "child_num_layers": 2, "child_random_flip": True, "child_random_crop": True,
                    "child_random_affine": False, "flagfile": []}
    return finished_search(out, search_flags=search_flags)


def test_a_retrain_preset_cannot_change_the_searched_size_colour_or_reductions(tiny_folders,
                                                                              tmp_path):
    out = three_reduction_search(tiny_folders, tmp_path / "search")
    preset = tmp_path / "final.flags"
    preset.write_text(RETRAIN_PRESET)
    retrain = run_script("main_child_trainer.py", "--flagfile", str(preset), "--from_search",
                         str(out), "--nochild_random_crop", "--output_dir", str(tmp_path / "final"))
    assert retrain.returncode == 0, retrain.stderr[-2000:]
    results = json.loads(read(tmp_path / "final" / "results.json"))
    used = results["flags"]
    # The search's, whatever the preset says.
    assert (used["img_size"], used["channel"], used["child_num_reductions"]) == (16, 1, 3)
    assert "--img_size=16" in retrain.stdout and "--child_num_reductions=3" in retrain.stdout
    assert used["train_data_dir"] == str(tiny_folders / "train")
    # Augmentation: the search's flips (the preset is silent), the preset's affine, and
    # the crop the command line turned off.
    assert used["child_random_flip"] is True and used["child_random_affine"] is True
    assert used["child_random_crop"] is False
    # The model built is the 3-reduction one.
    arc = arc_lib.parse_arc(read(out / "best_arc.txt").strip())
    params = {reductions: FixedChild(ChildConfig(num_classes=3, channel=1, img_size=16,
                                                 num_layers=4, out_filters=4,
                                                 num_reductions=reductions), arc).num_params()
              for reductions in (2, 3)}
    assert params[2] != params[3] and results["params"] == params[3]
    assert "warning:" not in retrain.stdout  # grey digits, read grey


def write_images(folder, colour: bool, count: int = 4, ext: str = ".png"):
    """`count` 8x8 images per class a, b: random colours, or random greys stored with three
    equal channels (a JPEG of them has a little chroma noise)."""
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
        for i in range(count):
            grey = rng.integers(0, 256, (8, 8, 1), dtype=np.uint8)
            image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) if colour else np.repeat(grey, 3, 2)
            assert cv2.imwrite(str(folder / name / f"{i}{ext}"), image)
    return folder


def test_a_folder_read_in_the_wrong_colour_gets_a_warning_naming_the_right_channel(tmp_path):
    colour = image_cache.list_folder(str(write_images(tmp_path / "colour", colour=True))).paths
    grey = image_cache.list_folder(str(write_images(tmp_path / "grey", colour=False,
                                                    ext=".jpg"))).paths
    warning = image_cache.channel_mismatch_warning(colour, 1, "photos")
    assert warning.startswith("warning: photos holds colour images (8 of 8 sampled)")
    assert warning.endswith("give --channel 3 to train in colour")
    assert image_cache.channel_mismatch_warning(colour, 3, "photos") == ""
    assert "give --channel 1" in image_cache.channel_mismatch_warning(grey, 3, "digits")
    assert image_cache.channel_mismatch_warning(grey, 1, "digits") == ""


def test_loading_a_colour_folder_grey_prints_one_warning_line(tmp_path, capsys):
    for split in ("train", "valid", "test"):
        write_images(tmp_path / split, colour=True, count=2)
    config = DataConfig(train_dir=str(tmp_path / "train"), valid_dir=str(tmp_path / "valid"),
                        test_dir=str(tmp_path / "test"), channel=1, img_size=8, batch_size=2,
                        eval_batch_size=2, cache_dir=str(tmp_path / "cache"))
    data_lib.load_dataset(config, verbose=True)
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert warnings == [f"warning: {tmp_path / 'train'} holds colour images (4 of 4 sampled), "
                        "read grey with --channel 1: give --channel 3 to train in colour"]
