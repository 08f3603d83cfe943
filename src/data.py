"""Image folders -> in-memory arrays -> tf.data pipelines.

Layout: DIR/<class>/<image> for each of the train, valid and test folders. The
whole data set is read once into memory (resized, optionally multiplied by
offline augmentation, normalised per channel with the training statistics); the
pipelines then only gather batches by index and augment them with vectorised
TensorFlow ops, so no Python runs per step.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import os
import time
from typing import List, Tuple

import cv2
import numpy as np
import tensorflow as tf

from src.configs import DataConfig

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})

# Offline augmentation (the image-folder variant's n_aug_img copies).
MAX_ZOOM = 1.2
MAX_ROTATION_DEG = 20.0
CONTRAST_RANGE = (0.8, 1.2)  # pixel * contrast + brightness
BRIGHTNESS_RANGE = (-20.0, 20.0)  # in 0..255 pixel levels
NOISE_STD = 4.0  # Gaussian pixel noise, in 0..255 pixel levels

# On-the-fly augmentation (the authors' pipeline).
CROP_PAD = 4

_READ_THREADS = min(8, os.cpu_count() or 1)  # cv2 releases the GIL while decoding
_STATS_CHUNK = 1 << 22  # pixels per chunk when summing in float64


class DataError(ValueError):
    """The data cannot be used; the message names the problem in one line."""


@dataclasses.dataclass
class Split:
    images: np.ndarray  # float32 [N, H, W, C], normalised
    labels: np.ndarray  # int32 [N]
    paths: List[str]  # source image of each row (augmented copies repeat their source)


@dataclasses.dataclass
class Dataset:
    train: Split
    valid: Split
    test: Split
    class_names: List[str]
    mean: np.ndarray  # float32 [C], training set, pixels in [0, 1]
    std: np.ndarray  # float32 [C], training set, pixels in [0, 1]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclasses.dataclass
class _RawSplit:
    """A split as read from disk, before normalisation."""
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int32 [N]
    paths: List[str]
    class_names: List[str]


# ----------------------------------------------------------------------------
# Loading


def load_dataset(config: DataConfig, verbose: bool = True) -> Dataset:
    """Reads the three folders, augments the training set offline and normalises all
    splits with the training set's per-channel mean and std."""
    check_config(config)
    train = read_split("train", config.train_dir, config, verbose)
    valid = read_split("valid", config.valid_dir, config, verbose)
    test = read_split("test", config.test_dir, config, verbose)
    check_same_classes(train, ("valid", valid), ("test", test))
    if config.n_aug_img > 1:
        start = time.time()
        train = augment_split_offline(train, config.n_aug_img, config.channel, config.seed)
        if verbose:
            print(f"Offline augmentation x{config.n_aug_img}: train now {len(train.labels)} "
                  f"images ({time.time() - start:.1f}s)")
    mean, std = channel_mean_std(train.images)
    return Dataset(train=normalised_split(train, mean, std), valid=normalised_split(valid, mean, std),
                   test=normalised_split(test, mean, std), class_names=train.class_names,
                   mean=mean, std=std)


def check_config(config: DataConfig) -> None:
    if config.channel not in (1, 3):
        raise DataError(f"channel must be 1 (grey) or 3 (colour), got {config.channel}")
    if config.img_size < 1:
        raise DataError(f"img_size must be at least 1, got {config.img_size}")
    if config.n_aug_img < 1:
        raise DataError(f"n_aug_img must be at least 1 (1 = no offline augmentation), "
                        f"got {config.n_aug_img}")


def read_split(name: str, directory: str, config: DataConfig, verbose: bool = False) -> _RawSplit:
    """All images of one folder, resized, uint8 [N, img_size, img_size, channel]."""
    start = time.time()
    class_names = list_classes(directory)
    paths, labels = [], []
    for label, class_name in enumerate(class_names):
        class_paths = list_images(os.path.join(directory, class_name))
        paths += class_paths
        labels += [label] * len(class_paths)
    with concurrent.futures.ThreadPoolExecutor(_READ_THREADS) as pool:
        images = list(pool.map(lambda path: read_image(path, config.channel, config.img_size), paths))
    if verbose:
        print(f"Read {name}: {len(paths)} images in {len(class_names)} classes from {directory} "
              f"({time.time() - start:.1f}s)")
    return _RawSplit(images=np.stack(images), labels=np.asarray(labels, np.int32), paths=paths,
                     class_names=class_names)


def list_classes(directory: str) -> List[str]:
    """Sorted names of the visible subfolders of `directory`."""
    if not os.path.isdir(directory):
        raise DataError(f"data folder not found: {directory}")
    names = sorted(name for name in os.listdir(directory)
                   if not name.startswith(".") and os.path.isdir(os.path.join(directory, name)))
    if not names:
        raise DataError(f"no class subfolders in {directory} (expected {directory}/<class>/<image>)")
    return names


def list_images(class_dir: str) -> List[str]:
    """Sorted paths of the visible image files in one class folder."""
    paths = sorted(os.path.join(class_dir, name) for name in os.listdir(class_dir)
                   if is_image_name(name) and os.path.isfile(os.path.join(class_dir, name)))
    if not paths:
        raise DataError(f"no images in class folder {class_dir} "
                        f"(extensions: {' '.join(sorted(IMAGE_EXTENSIONS))})")
    return paths


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def read_image(path: str, channel: int, size: int) -> np.ndarray:
    """One image as uint8 [size, size, channel]: grey, or colour in RGB order."""
    image = read_image_as_opencv(path, channel, size)
    return image[..., ::-1] if channel == 3 else image  # OpenCV's BGR -> RGB


def read_image_as_opencv(path: str, channel: int, size: int) -> np.ndarray:
    """One image as OpenCV reads it, resized: uint8 [size, size, channel], grey or BGR.

    This is the exported model's input (see src/serving.py)."""
    if not os.path.isfile(path):
        raise DataError(f"no such file: {path}")
    image = cv2.imread(path, cv2.IMREAD_GRAYSCALE if channel == 1 else cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"cannot read image (corrupt or unsupported): {path}")
    return resize_square(image, size).reshape(size, size, channel)  # grey [H, W] -> [H, W, 1]


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resizes to size x size: area averaging when shrinking, bilinear when growing."""
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return image
    shrinking = height * width > size * size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def check_same_classes(train: _RawSplit, *others: Tuple[str, _RawSplit]) -> None:
    """Every split must have exactly the training set's classes."""
    expected = set(train.class_names)
    for name, split in others:
        if split.class_names == train.class_names:
            continue
        found = set(split.class_names)
        problems = []
        if expected - found:
            problems.append(f"missing {_short_list(expected - found)}")
        if found - expected:
            problems.append(f"extra {_short_list(found - expected)}")
        raise DataError(f"classes of the {name} split differ from train: {', '.join(problems)}")


def _short_list(names, limit: int = 5) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)})"


# ----------------------------------------------------------------------------
# Offline augmentation


def augment_split_offline(split: _RawSplit, copies: int, channel: int, seed: int) -> _RawSplit:
    """The originals followed by copies - 1 augmented versions of every image."""
    rng = np.random.default_rng(seed)
    flip = channel == 3  # a mirrored digit is not the same digit
    blocks = [split.images]
    for _ in range(copies - 1):
        blocks.append(np.stack([augment_image(image, rng, flip) for image in split.images]))
    return _RawSplit(images=np.concatenate(blocks), labels=np.tile(split.labels, copies),
                     paths=list(split.paths) * copies, class_names=split.class_names)


def augment_image(image: np.ndarray, rng: np.random.Generator, allow_flip: bool) -> np.ndarray:
    """uint8 [H, W, C] -> uint8 [H, W, C]: random zoom-in and rotation about the centre,
    contrast/brightness jitter, Gaussian noise, and a horizontal flip if allowed."""
    height, width, channels = image.shape
    zoom = rng.uniform(1.0, MAX_ZOOM)
    angle = rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG)
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), angle, zoom)
    warped = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    out = warped.reshape(height, width, channels).astype(np.float32)  # cv2 drops a C of 1
    out = out * rng.uniform(*CONTRAST_RANGE) + rng.uniform(*BRIGHTNESS_RANGE)
    out += rng.normal(0.0, NOISE_STD, out.shape).astype(np.float32)
    if allow_flip and rng.random() < 0.5:
        out = out[:, ::-1]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------
# Normalisation


def channel_mean_std(images: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 [N, H, W, C] images, pixels scaled to [0, 1].

    Summed in float64 chunks so that a large set needs no full float64 copy."""
    channels = images.shape[-1]
    pixels = images.reshape(-1, channels)  # [N*H*W, C]
    total = np.zeros(channels, np.float64)
    total_sq = np.zeros(channels, np.float64)
    for start in range(0, len(pixels), _STATS_CHUNK):
        chunk = pixels[start:start + _STATS_CHUNK].astype(np.float64) / 255.0
        total += chunk.sum(axis=0)
        total_sq += np.square(chunk).sum(axis=0)
    mean = total / len(pixels)
    std = np.sqrt(np.maximum(total_sq / len(pixels) - np.square(mean), 0.0))
    std[std < 1e-6] = 1.0  # a constant channel: leave its scale alone
    return mean.astype(np.float32), std.astype(np.float32)


def normalised_split(split: _RawSplit, mean: np.ndarray, std: np.ndarray) -> Split:
    images = split.images.astype(np.float32)
    images *= 1.0 / 255.0  # in place: one float32 copy only
    images -= mean
    images /= std
    return Split(images=images, labels=split.labels.astype(np.int32), paths=list(split.paths))


# ----------------------------------------------------------------------------
# tf.data pipelines


def num_batches(n: int, batch_size: int) -> int:
    return int(math.ceil(n / batch_size))


class TrainBatches:
    """The training split's batches, epoch by epoch.

    Epoch e's order and augmentation depend on (seed, e) only, never on how many
    epochs this process has run, so a resumed run sees the data an uninterrupted
    one would. The split is copied into tensors once.
    """

    def __init__(self, split: Split, config: DataConfig):
        self.size = _check_not_empty(split)
        self.config = config
        self.batches_per_pass = num_batches(self.size, config.batch_size)
        self._images, self._labels = tf.constant(split.images), tf.constant(split.labels)

    def epoch(self, epoch: int, steps: int = 0) -> tf.data.Dataset:
        """(images float32 [B, H, W, C], labels int32 [B]) batches of epoch `epoch`: one
        pass (the last batch may be smaller), or `steps` batches from as many shuffled
        passes as they need."""
        passes = 1 if steps == 0 else math.ceil(steps / self.batches_per_pass)
        order = np.concatenate([np.random.default_rng([self.config.seed, epoch, p]).permutation(self.size)
                                for p in range(passes)])
        batches = tf.data.Dataset.from_tensor_slices(order).batch(self.config.batch_size)
        if steps:
            batches = batches.take(steps)
        # Augmentation seed of batch i: [epoch key, i], a stateless seed [2].
        epoch_key = tf.constant(np.random.default_rng([self.config.seed, epoch]).integers(2 ** 62))
        indexed = tf.data.Dataset.zip(batches, tf.data.Dataset.range(2 ** 62))

        def gather_and_augment(index, batch_id):
            seed = tf.stack([epoch_key, batch_id])
            images = augment_batch(tf.gather(self._images, index), seed, self.config)
            return images, tf.gather(self._labels, index)

        return indexed.map(gather_and_augment, num_parallel_calls=tf.data.AUTOTUNE,
                           deterministic=True).prefetch(tf.data.AUTOTUNE)


def eval_batches(split: Split, batch_size: int) -> tf.data.Dataset:
    """The split in order, without augmentation."""
    order = tf.data.Dataset.range(len(split.labels)).batch(batch_size)
    return _gather_batches(split, order)


def mixed_eval_batches(split: Split, batch_size: int, seed: int = 0) -> tf.data.Dataset:
    """The whole split once, without augmentation, in one fixed shuffled order.

    For the shared child, whose BN uses the statistics of each batch even when it
    evaluates: the folders are read class by class, so in-order batches hold one or
    two classes each, and their statistics would hide what the classes differ in.
    The order depends on `seed` only, so every arc is scored on the same batches.
    """
    order = np.random.default_rng(seed).permutation(len(split.labels))
    return _gather_batches(split, tf.data.Dataset.from_tensor_slices(order).batch(batch_size))


def endless_shuffled_batches(split: Split, batch_size: int, seed: int) -> tf.data.Dataset:
    """Full shuffled batches forever, without augmentation (one batch per controller
    reward); a split smaller than batch_size gives batches of the whole split."""
    n = _check_not_empty(split)
    order = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True).repeat()
    return _gather_batches(split, order.batch(min(batch_size, n), drop_remainder=True))


def _gather_batches(split: Split, index_batches: tf.data.Dataset) -> tf.data.Dataset:
    """Maps batches of row indices to (images, labels) batches of the split."""
    images, labels = tf.constant(split.images), tf.constant(split.labels)

    def gather(index):
        return tf.gather(images, index), tf.gather(labels, index)

    return index_batches.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _check_not_empty(split: Split) -> int:
    if len(split.labels) == 0:
        raise DataError("cannot make batches from an empty split")
    return len(split.labels)


# ----------------------------------------------------------------------------
# On-the-fly augmentation, vectorised over a batch [B, H, W, C]


def augment_batch(images: tf.Tensor, seed: tf.Tensor, config: DataConfig) -> tf.Tensor:
    """Random crop, flip and cutout as configured; `seed` is a stateless seed [2]."""
    crop_seed, flip_seed, cutout_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    if config.random_crop:
        images = random_crop(images, crop_seed, CROP_PAD)
    if config.random_flip:
        images = random_flip(images, flip_seed)
    if config.cutout_size > 0:
        images = cutout(images, cutout_seed, config.cutout_size)
    return images


def random_crop(images: tf.Tensor, seed: tf.Tensor, pad: int) -> tf.Tensor:
    """Pads `pad` zeros on each side, then crops each image back to H x W at a random offset
    (H and W must be static, as they are for batches gathered from a split)."""
    batch, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])  # [B, H+2p, W+2p, C]
    offsets = tf.random.stateless_uniform([batch, 2], seed, minval=0, maxval=2 * pad + 1, dtype=tf.int32)
    rows = offsets[:, :1] + tf.range(height)[tf.newaxis]  # [B, H]
    cols = offsets[:, 1:] + tf.range(width)[tf.newaxis]  # [B, W]
    cropped = tf.gather(padded, rows, axis=1, batch_dims=1)  # [B, H, W+2p, C]
    return tf.gather(cropped, cols, axis=2, batch_dims=1)  # [B, H, W, C]


def random_flip(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Mirrors each image left-right with probability 1/2."""
    flip = tf.random.stateless_uniform([tf.shape(images)[0]], seed) < 0.5  # [B]
    return tf.where(flip[:, tf.newaxis, tf.newaxis, tf.newaxis], tf.reverse(images, axis=[2]), images)


def cutout(images: tf.Tensor, seed: tf.Tensor, size: int) -> tf.Tensor:
    """Sets a size x size square, centred anywhere in each image, to 0 (clipped at the border)."""
    batch, height, width = tf.shape(images)[0], tf.shape(images)[1], tf.shape(images)[2]
    extent = tf.cast(tf.stack([height, width]), tf.float32)
    centres = tf.cast(tf.random.stateless_uniform([batch, 2], seed) * extent, tf.int32)  # [B, 2]
    top_left = centres - size // 2
    in_rows = _in_range(tf.range(height), top_left[:, :1], size)  # [B, H]
    in_cols = _in_range(tf.range(width), top_left[:, 1:], size)  # [B, W]
    square = tf.logical_and(in_rows[:, :, tf.newaxis], in_cols[:, tf.newaxis, :])  # [B, H, W]
    return tf.where(square[..., tf.newaxis], tf.zeros_like(images), images)


def _in_range(positions: tf.Tensor, start: tf.Tensor, size: int) -> tf.Tensor:
    """[B, L] mask of positions [L] inside [start, start + size) with start [B, 1]."""
    positions = positions[tf.newaxis]
    return tf.logical_and(positions >= start, positions < start + size)

