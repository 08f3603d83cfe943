"""The README's three commands for one's own images: search with --data_dir and the CPU
preset, retrain with --from_search, predict.py on new images (tiny sizes)."""
import csv
import io
import json
import os
import shutil

from tests.conftest import CLASSES
from tests.test_end_to_end import read, run_script

TINY = ("--img_size", "16", "--batch_size", "12", "--child_num_layers", "1",
        "--child_out_filters", "4", "--num_epochs", "1")


def one_folder_of_classes(tiny_folders, root):
    """The tiny train, valid and test images of each class in one folder per class."""
    for name in CLASSES:
        os.makedirs(root / name)
        for split in ("train", "valid", "test"):
            for file in os.listdir(tiny_folders / split / name):
                shutil.copy(tiny_folders / split / name / file, root / name / f"{split}_{file}")
    return root


def test_own_folder_to_predictions_in_three_commands(tiny_folders, tmp_path):
    images = one_folder_of_classes(tiny_folders, tmp_path / "my_images")
    search_out, final_out = tmp_path / "my_search", tmp_path / "my_final"
    searched = run_script("main_controller_child_trainer.py", "--flagfile",
                          "presets/cpu_search.flags", "--data_dir", str(images), *TINY,
                          "--child_steps_per_epoch", "2", "--controller_start_epoch", "0",
                          "--controller_train_steps", "1", "--num_lift_arcs", "2",
                          "--num_final_arcs", "2", "--output_dir", str(search_out))
    assert searched.returncode == 0, searched.stderr[-2000:]
    assert json.loads(read(search_out / "results.json"))["final_selection"] is True
    held_out = read(search_out / "splits" / "test.txt").split()
    assert held_out and "--from_search" in read(search_out / "summary.md")

    retrained = run_script("main_child_trainer.py", "--flagfile", "presets/cpu_final.flags",
                           "--from_search", str(search_out), *TINY,
                           "--output_dir", str(final_out))
    assert retrained.returncode == 0, retrained.stderr[-2000:]
    results = json.loads(read(final_out / "results.json"))
    assert results["arc"] == read(search_out / "best_arc.txt").strip()
    # The retrain read the search's split lists: it tests on the images the search held out.
    assert results["flags"]["split_dir"] == str(search_out / "splits")
    assert results["flags"]["data_dir"] == str(images)
    assert f"python predict.py --model {final_out / 'model'}" in retrained.stdout

    predicted = run_script("predict.py", "--model", str(final_out / "model"),
                           str(images / CLASSES[0]))
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    rows = list(csv.DictReader(io.StringIO(predicted.stdout)))
    assert len(rows) == len(os.listdir(images / CLASSES[0]))
