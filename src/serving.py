"""The retrained model as a SavedModel, and predictions from it on image files.

Both sides of one contract live here. The model's serving signature takes a
batch of raw images exactly as OpenCV gives them after resizing: uint8
[N, img_size, img_size, channel], colour in OpenCV's BGR order. Everything
else happens inside the model, so any TensorFlow user (or TF Serving) can run
it without this code:

  * colour images go from BGR to RGB (training reads them as RGB);
  * pixels are scaled to [0, 1] and normalised with the training mean and std;
  * the fixed child runs in inference mode (moving-average BN, no dropout), in
    the precision it was trained in (--mixed_precision);
  * the outputs are `probabilities` float32 [N, classes], `classes` int32 [N]
    and `class_names` string [N]; the whole list is `model.class_names`.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import uuid
from typing import Iterable, Iterator, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from src import data as data_lib

MODEL_DIR = "model"
SIGNATURE = "serving_default"
CSV_HEADER = ("path", "class_name", "probability", "error")


class ModelError(ValueError):
    """The model folder cannot be used; the message says why in one line."""


class ServingModel(tf.Module):
    """A trained classifier wrapped with its input contract and class names."""

    def __init__(self, classifier: tf.Module, mean: np.ndarray, std: np.ndarray,
                 class_names: Sequence[str], img_size: int, channel: int):
        super().__init__(name="serving_model")
        self.classifier = classifier
        self.mean = tf.constant(mean, tf.float32)  # [C], pixels in [0, 1]
        self.std = tf.constant(std, tf.float32)
        self.class_names = tf.Variable(list(class_names), trainable=False, name="class_names")
        self.serve = tf.function(self._serve, input_signature=[
            tf.TensorSpec([None, img_size, img_size, channel], tf.uint8, name="images")])

    def _serve(self, images):
        x = tf.cast(images, tf.float32)
        if images.shape[-1] == 3:
            x = tf.reverse(x, axis=[-1])  # OpenCV's BGR -> the RGB the model was trained on
        x = (x / 255.0 - self.mean) / self.std
        logits, _ = self.classifier(x, training=False)  # the child casts x to its compute dtype
        probabilities = tf.nn.softmax(tf.cast(logits, tf.float32))  # float32 either way
        classes = tf.argmax(probabilities, axis=1, output_type=tf.int32)
        return {"probabilities": probabilities, "classes": classes,
                "class_names": tf.gather(self.class_names, classes)}


def export_model(classifier: tf.Module, dataset: data_lib.Dataset, img_size: int, channel: int,
                 path: str) -> str:
    """Writes the SavedModel to `path`, replacing an earlier export only once the new one
    is complete (a run killed mid-write leaves the previous model intact)."""
    module = ServingModel(classifier, dataset.mean, dataset.std, dataset.class_names, img_size,
                          channel)
    staging = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    tf.saved_model.save(module, staging, signatures={SIGNATURE: module.serve})
    if os.path.isdir(path):
        previous = f"{path}.old-{uuid.uuid4().hex[:8]}"
        os.replace(path, previous)
        os.replace(staging, path)
        shutil.rmtree(previous)
    else:
        os.replace(staging, path)
    return path


@dataclasses.dataclass
class LoadedModel:
    """A SavedModel written by export_model, with its input contract read back."""
    signature: object  # the concrete serving function
    class_names: List[str]
    img_size: int
    channel: int

    def predict(self, images: np.ndarray) -> dict:
        """uint8 [N, S, S, C] -> {'probabilities', 'classes', 'class_names'} as numpy."""
        outputs = self.signature(images=tf.constant(images, tf.uint8))
        return {name: value.numpy() for name, value in outputs.items()}


def load_model(path: str) -> LoadedModel:
    if not os.path.isdir(path):
        raise ModelError(f"model folder not found: {path}")
    if not tf.saved_model.contains_saved_model(path):
        raise ModelError(f"not a SavedModel folder (no saved_model.pb): {path}")
    module = tf.saved_model.load(path)
    if SIGNATURE not in module.signatures or not hasattr(module, "class_names"):
        raise ModelError(f"{path} is not a model exported by main_child_trainer.py")
    signature = module.signatures[SIGNATURE]
    _, img_size, _, channel = signature.structured_input_signature[1]["images"].shape
    names = [name.decode("utf-8") for name in module.class_names.numpy()]
    return LoadedModel(signature=signature, class_names=names, img_size=int(img_size),
                       channel=int(channel))


def list_files(inputs: Iterable[str]) -> List[str]:
    """The given files, and every visible file under the given folders (recursively,
    sorted by path). A path that does not exist is kept: it gets an error row."""
    files = []
    for path in inputs:
        if not os.path.isdir(path):
            files.append(path)
            continue
        found = []
        for root, dirs, names in os.walk(path):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            found += [os.path.join(root, name) for name in names if not name.startswith(".")]
        files += sorted(found)
    return files


def prediction_rows(model: LoadedModel, files: Sequence[str],
                    batch_size: int = 256) -> Iterator[tuple]:
    """One (path, class_name, probability, error) row per file, in order. A file that
    cannot be read as an image gets an empty prediction and the error."""
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        images, errors = _read_chunk(chunk, model.img_size, model.channel)
        readable = [i for i, error in enumerate(errors) if error is None]
        outputs = model.predict(np.stack([images[i] for i in readable])) if readable else None
        best = {i: row for row, i in enumerate(readable)}
        for i, path in enumerate(chunk):
            if errors[i] is not None:
                yield path, "", "", errors[i]
                continue
            row = best[i]
            class_id = int(outputs["classes"][row])
            yield (path, model.class_names[class_id],
                   f"{outputs['probabilities'][row, class_id]:.6f}", "")


def _read_chunk(paths: Sequence[str], size: int, channel: int):
    images: List[Optional[np.ndarray]] = []
    errors: List[Optional[str]] = []
    for path in paths:
        try:
            images.append(data_lib.read_image_as_opencv(path, channel, size))
            errors.append(None)
        except data_lib.DataError as error:
            images.append(None)
            errors.append(str(error))
    return images, errors
