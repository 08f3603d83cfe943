"""A plain hand-designed CNN baseline, trained on the same splits as the retrain.

Five 3x3 conv layers (32-32-64-64-128 filters, BN + ReLU, max-pool after the 2nd and
the 4th), global average pool, dropout, dense: 0.14M parameters at 28x28x1 and 10
classes. SGD with Nesterov momentum 0.9 and L2, a cosine learning rate over the run
(one step per epoch, from --lr_max to --lr_min); random translation (0.1), rotation
(10 degrees) and zoom (0.1) on the fly, filled with black. Evaluated once on the test
split at the end.

The number of epochs fits a wall-clock budget: with --epochs 0 (the default) the first
epoch is timed and the total is set to as many such epochs as the budget holds (counted
from the start, data loading included), then never changed, so the cosine schedule ends
at the budget. The first epoch includes tracing and is the slowest: a run ends a little
under --budget_minutes. --epochs N trains exactly N epochs (the budget is then only
recorded).

    python tools/baseline_cnn.py                                # bundled digits, 28 px, 45 min
    python tools/baseline_cnn.py --budget_minutes 10
    python tools/baseline_cnn.py --budget_minutes 25 --train_on_valid   # as cpu_final.flags
    python tools/baseline_cnn.py --data_dir DIR --split_dir output/search/splits

Prints one line per epoch, then one JSON line, also written to OUTPUT_DIR/results.json:
test_accuracy, test_errors, valid_accuracy, params, epochs, wall_time_s, budget.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from typing import Dict, List, Optional, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from src import data as data_lib  # noqa: E402
from src import run_dir  # noqa: E402
from src.configs import ConfigError, DataConfig, data_config_from_flag_values  # noqa: E402

FILTERS = (32, 32, 64, 64, 128)
POOL_AFTER = (1, 3)  # max-pool after the 2nd and the 4th conv
RESULTS_FILE = "results.json"


@dataclasses.dataclass(frozen=True)
class BaselineConfig:
    data: DataConfig
    output_dir: str = "output/baseline_cnn"
    budget_minutes: float = 45.0
    epochs: int = 0  # 0 = as many as the budget holds, from the first epoch's time
    lr_max: float = 0.05
    lr_min: float = 0.0
    l2_reg: float = 5e-4
    dropout: float = 0.3
    seed: int = 0


def parse_args(argv: Optional[List[str]] = None) -> BaselineConfig:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--train_data_dir", default="data/train", help="Training images, one subfolder per class.")
    add("--val_data_dir", default="data/valid", help="Validation images, same classes.")
    add("--test_data_dir", default="data/test", help="Test images, same classes.")
    add("--data_dir", default="", help="One folder of images instead of the three, split as the "
        "entry scripts split it (--valid_fraction, --test_fraction, --seed); give --split_dir "
        "the search's or retrain's OUTPUT_DIR/splits to train on its split.")
    add("--valid_fraction", type=float, default=0.1, help="--data_dir: validation fraction.")
    add("--test_fraction", type=float, default=0.1, help="--data_dir: test fraction.")
    add("--split_dir", default="", help="--data_dir: the folder of the split's lists; lists "
        "there are used as they are. Empty = OUTPUT_DIR/splits.")
    add("--img_size", type=int, default=28, help="Every image is resized to img_size x img_size.")
    add("--channel", type=int, default=1, help="1 reads images grey, 3 in colour.")
    add("--batch_size", type=int, default=64, help="Training and evaluation batch size.")
    add("--budget_minutes", type=float, default=45.0, help="Wall-clock budget of the whole run "
        "(data loading included) that --epochs 0 fits the number of epochs to.")
    add("--epochs", type=int, default=0, help="Epochs to train; 0 = as many as --budget_minutes "
        "holds, from the first epoch's time.")
    add("--lr_max", type=float, default=0.05, help="Cosine schedule: the first epoch's rate.")
    add("--lr_min", type=float, default=0.0, help="Cosine schedule: the rate it ends at.")
    add("--l2_reg", type=float, default=5e-4, help="L2 weight decay on the conv and dense kernels.")
    add("--dropout", type=float, default=0.3, help="Dropout rate before the classifier.")
    add("--train_on_valid", action="store_true", help="Train on train + valid, as "
        "presets/cpu_final.flags retrains (the validation accuracy is then not reported).")
    add("--seed", type=int, default=0, help="Seed of the initialisation, data order and "
        "augmentation (and of the split, with --data_dir).")
    add("--output_dir", default="output/baseline_cnn", help="Folder of results.json (and the "
        "decoded-image cache, OUTPUT_DIR/cache).")
    args = parser.parse_args(argv)
    # The arguments are named as the entry scripts' flags: one conversion for all of them.
    data = data_config_from_flag_values(vars(args))
    return BaselineConfig(data=data, output_dir=args.output_dir,
                          budget_minutes=args.budget_minutes, epochs=args.epochs,
                          lr_max=args.lr_max, lr_min=args.lr_min, l2_reg=args.l2_reg,
                          dropout=args.dropout, seed=args.seed)


def build_model(img_size: int, channel: int, num_classes: int, l2_reg: float = 5e-4,
                dropout: float = 0.3, seed: int = 0) -> keras.Model:
    """Augmentation (training only), 5 conv-BN-ReLU layers, global average pool, dropout,
    dense logits; input pixels in [0, 1]."""
    regularizer = keras.regularizers.L2(l2_reg) if l2_reg else None
    inputs = keras.Input((img_size, img_size, channel))
    x = keras.layers.RandomTranslation(0.1, 0.1, fill_mode="constant", fill_value=0.0,
                                       seed=seed)(inputs)
    x = keras.layers.RandomRotation(10 / 360, fill_mode="constant", fill_value=0.0,
                                    seed=seed + 1)(x)
    x = keras.layers.RandomZoom(0.1, fill_mode="constant", fill_value=0.0, seed=seed + 2)(x)
    for index, filters in enumerate(FILTERS):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False,
                                kernel_regularizer=regularizer)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
        if index in POOL_AFTER:
            x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(dropout, seed=seed + 3)(x)
    outputs = keras.layers.Dense(num_classes, kernel_regularizer=regularizer)(x)
    return keras.Model(inputs, outputs, name="baseline_cnn")


def trainable_params(model: keras.Model) -> int:
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def cosine_lr(epoch: int, epochs: int, lr_max: float, lr_min: float) -> float:
    """From lr_max at epoch 0 down to lr_min at the last epoch's end (one period)."""
    return lr_min + 0.5 * (lr_max - lr_min) * (1 + math.cos(math.pi * epoch / max(1, epochs)))


def batches(split: data_lib.Split, batch_size: int, shuffle_seed: Optional[int] = None
            ) -> tf.data.Dataset:
    """(float images in [0, 1], labels) batches of a split, reshuffled every pass if seeded."""
    images = tf.data.Dataset.from_tensor_slices((np.asarray(split.images), split.labels))
    if shuffle_seed is not None:
        images = images.shuffle(len(split.labels), seed=shuffle_seed, reshuffle_each_iteration=True)
    return images.batch(batch_size).map(
        lambda x, y: (tf.cast(x, tf.float32) / 255.0, y),
        num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def epochs_for_budget(budget_s: float, setup_s: float, first_epoch_s: float) -> int:
    """How many epochs as long as the first fit in the budget after the set-up (at least 1)."""
    return max(1, int((budget_s - setup_s) // max(first_epoch_s, 1e-6)))


def predictions(model: keras.Model, split: data_lib.Split, batch_size: int) -> np.ndarray:
    logits = model.predict(batches(split, batch_size), verbose=0)
    return np.argmax(logits, axis=1)


def train(model: keras.Model, dataset: data_lib.Dataset, config: BaselineConfig,
          start: float) -> Tuple[int, Optional[float], float]:
    """Trains epoch by epoch, one line each; returns (epochs, first epoch's seconds, last
    validation accuracy, None under --train_on_valid)."""
    batch_size = config.data.batch_size
    train_data = batches(dataset.train, batch_size, shuffle_seed=config.seed)
    epochs, first_epoch_s, setup_s = config.epochs, None, time.time() - start
    valid_acc, epoch = None, 0
    while epoch < max(1, epochs):
        lr = cosine_lr(epoch, max(1, epochs), config.lr_max, config.lr_min)
        model.optimizer.learning_rate.assign(lr)
        began = time.time()
        history = model.fit(train_data, epochs=1, verbose=0, shuffle=False).history
        if not config.data.train_on_valid:  # else the validation images are trained on
            valid_acc = accuracy(predictions(model, dataset.valid, batch_size), dataset.valid.labels)
        seconds = time.time() - began
        if epoch == 0 and config.epochs == 0:
            first_epoch_s = seconds
            epochs = epochs_for_budget(60 * config.budget_minutes, setup_s, seconds)
            print(f"First epoch {seconds:.1f} s: {epochs} epochs fit the "
                  f"{config.budget_minutes:g}-minute budget")
        epoch += 1
        print(f"epoch {epoch}/{epochs} lr {lr:.4f} loss {history['loss'][-1]:.4f} "
              f"train_accuracy {history['accuracy'][-1]:.4f} valid_accuracy "
              f"{'n/a' if valid_acc is None else f'{valid_acc:.4f}'} "
              f"{seconds:.1f} s (elapsed {time.time() - start:.0f} s)", flush=True)
    return max(1, epochs), first_epoch_s, valid_acc


def accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(predicted == labels)) if len(labels) else 0.0


def run(config: BaselineConfig) -> Dict:
    """Loads the splits, trains, evaluates on test once; writes and returns the results."""
    start = time.time()
    keras.utils.set_random_seed(config.seed)
    dataset = data_lib.load_dataset(config.data, retraining=True)
    model = build_model(config.data.img_size, config.data.channel, dataset.num_classes,
                        config.l2_reg, config.dropout, config.seed)
    model.compile(optimizer=keras.optimizers.SGD(config.lr_max, momentum=0.9, nesterov=True),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    print(f"Baseline CNN: {trainable_params(model)} params, {len(dataset.train.labels)} training "
          f"images, {dataset.num_classes} classes")
    epochs, first_epoch_s, valid_acc = train(model, dataset, config, start)
    test_pred = predictions(model, dataset.test, config.data.batch_size)
    results = {
        "test_accuracy": accuracy(test_pred, dataset.test.labels),
        "test_errors": int(np.sum(test_pred != dataset.test.labels)),
        "num_test_images": int(len(dataset.test.labels)), "valid_accuracy": valid_acc,
        "params": trainable_params(model), "epochs": epochs,
        "wall_time_s": round(time.time() - start, 2),
        "budget": {"minutes": config.budget_minutes, "epochs_from": "--epochs" if config.epochs
                   else "budget", "first_epoch_s": None if first_epoch_s is None
                   else round(first_epoch_s, 2)},
        "img_size": config.data.img_size, "channel": config.data.channel, "seed": config.seed,
        "train_on_valid": config.data.train_on_valid,
    }
    os.makedirs(config.output_dir, exist_ok=True)
    run_dir.write_json_atomic(os.path.join(config.output_dir, RESULTS_FILE), results)
    print(json.dumps(results, sort_keys=True))
    return results


def main(argv: Optional[List[str]] = None) -> Dict:
    """Runs; bad data or settings are one line on stderr and exit 2."""
    try:
        return run(parse_args(argv))
    except (ConfigError, data_lib.DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
