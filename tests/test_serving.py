"""The exported SavedModel and predict.py: same predictions as training, outside this code."""
import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from src import fixed_train, serving
from src.data import Dataset, Split
from tests.conftest import ROOT, without_tf_startup_lines
from tests.test_end_to_end import fixed_config

# Loads the model with plain TensorFlow (no src/ import) and prints its test predictions.
FRESH_PROCESS_PREDICT = """
import json, os, sys
import cv2, numpy as np, tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
serve = model.signatures["serving_default"]
size = serve.structured_input_signature[1]["images"].shape[1]
paths = sorted(os.path.join(root, name) for root, _, names in os.walk(sys.argv[2]) for name in names)
images = np.stack([cv2.resize(cv2.imread(p, cv2.IMREAD_GRAYSCALE), (size, size),
                              interpolation=cv2.INTER_AREA)[..., None] for p in paths])
out = serve(images=tf.constant(images))
names = [n.decode() for n in model.class_names.numpy()]
print(json.dumps({"paths": paths, "classes": out["classes"].numpy().tolist(),
                  "class_names": [n.decode() for n in out["class_names"].numpy()],
                  "probabilities": out["probabilities"].numpy().tolist(), "names": names}))
"""


@pytest.fixture(scope="module")
def trained_run(tiny_folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("serving") / "fixed"
    results = fixed_train.run(fixed_config(tiny_folders, out, num_epochs=2))
    return out, results


def run_predict(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "predict.py"), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_saved_model_predicts_as_training_did_in_a_fresh_process(trained_run, tiny_folders):
    out, results = trained_run
    done = subprocess.run([sys.executable, "-c", FRESH_PROCESS_PREDICT, str(out / "model"),
                           str(tiny_folders / "test")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    served = json.loads(done.stdout.strip().splitlines()[-1])
    assert served["names"] == results["class_names"]
    true = [os.path.basename(os.path.dirname(p)) for p in served["paths"]]
    predicted = [served["names"][c] for c in served["classes"]]
    assert served["class_names"] == predicted
    np.testing.assert_allclose(np.sum(served["probabilities"], axis=1), 1.0, rtol=1e-5)
    # Training's own predictions: its accuracy, and each wrong image with its predicted class.
    assert np.mean(np.equal(true, predicted)) == pytest.approx(results["test_accuracy"])
    with open(out / "misclassified.csv") as f:
        wrong = {(os.path.basename(row["path"]), row["predicted_class"]) for row in csv.DictReader(f)}
    assert wrong == {(os.path.basename(p), c) for p, t, c in zip(served["paths"], true, predicted)
                     if t != c}


def test_predict_cli_writes_a_row_per_file_and_keeps_going_after_a_bad_one(trained_run,
                                                                            tiny_folders, tmp_path):
    out, results = trained_run
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    digit = sorted((tiny_folders / "test" / "1").iterdir())[0]
    (folder / "nested" / "digit.png").write_bytes(digit.read_bytes())
    (folder / "notes.txt").write_text("not an image")
    csv_path = tmp_path / "predictions.csv"
    done = run_predict("--model", str(out / "model"), str(folder), str(tmp_path / "missing.png"),
                       "--output", str(csv_path))
    assert done.returncode == 0, done.stderr
    assert without_tf_startup_lines(done.stderr) == []
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert [os.path.basename(r["path"]) for r in rows] == ["digit.png", "notes.txt", "missing.png"]
    good, not_image, missing = rows
    assert good["class_name"] in results["class_names"] and good["error"] == ""
    assert 0.0 < float(good["probability"]) <= 1.0
    assert not_image["class_name"] == "" and "cannot read image" in not_image["error"]
    assert "no such file" in missing["error"]


def test_predict_cli_without_a_model_is_a_one_line_error(tmp_path):
    done = run_predict("--model", str(tmp_path / "nowhere"), str(tmp_path))
    assert done.returncode == 2
    assert without_tf_startup_lines(done.stderr) == [f"error: model folder not found: {tmp_path / 'nowhere'}"]
    assert done.stdout == ""


class ChannelMeans(tf.Module):
    """A stand-in classifier whose logits are the mean of each input channel."""

    def __call__(self, images, training):
        return tf.reduce_mean(images, axis=[1, 2]), None


def test_colour_model_takes_opencv_bgr_and_normalises_inside(tmp_path):
    split = Split(images=np.zeros([1, 4, 4, 3], np.float32), labels=np.zeros([1], np.int32), paths=[])
    dataset = Dataset(train=split, valid=split, test=split, class_names=["red", "green", "blue"],
                      mean=np.full(3, 0.5, np.float32), std=np.full(3, 0.25, np.float32))
    path = serving.export_model(ChannelMeans(), dataset, 4, 3, str(tmp_path / "model"))
    model = serving.load_model(path)
    assert (model.img_size, model.channel, model.class_names) == (4, 3, ["red", "green", "blue"])
    bgr = np.zeros([1, 4, 4, 3], np.uint8)
    bgr[..., 0] = 255  # blue, in OpenCV's channel order
    outputs = model.predict(bgr)
    assert outputs["class_names"].tolist() == [b"blue"]
    # (255 / 255 - 0.5) / 0.25 = 2 for blue, (0 - 0.5) / 0.25 = -2 for the others.
    np.testing.assert_allclose(outputs["probabilities"][0], tf.nn.softmax([-2.0, -2.0, 2.0]),
                               rtol=1e-5)


def test_export_replaces_an_earlier_model_and_leaves_no_staging_folders(tmp_path):
    split = Split(images=np.zeros([1, 4, 4, 1], np.float32), labels=np.zeros([1], np.int32), paths=[])
    dataset = Dataset(train=split, valid=split, test=split, class_names=["a"],
                      mean=np.zeros(1, np.float32), std=np.ones(1, np.float32))
    for _ in range(2):
        serving.export_model(ChannelMeans(), dataset, 4, 1, str(tmp_path / "model"))
    assert sorted(os.listdir(tmp_path)) == ["model"]
    assert serving.load_model(str(tmp_path / "model")).class_names == ["a"]


def test_load_model_rejects_a_folder_that_is_not_a_saved_model(tmp_path):
    with pytest.raises(serving.ModelError, match="not a SavedModel"):
        serving.load_model(str(tmp_path))
