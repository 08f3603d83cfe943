"""Image folders -> uint8 arrays (cached on disk) -> tf.data pipelines.

Layout: DIR/<class>/<image> for each of the train, valid and test folders, or one
such folder (DataConfig.data_dir) split here, stratified by class and seeded, into
three lists of files kept in the output folder (a resume reuses them). Each
folder (or list) is decoded once into a uint8 cache file (src/image_cache.py) that later
runs map instead of decoding; offline augmentation copies go to the cache too.
A split small enough (DataConfig.in_memory_max_mb) is then held in memory as a
uint8 tensor; a larger one is streamed from the mapped file, so memory does not
grow with the data set. Either way the pipelines gather the uint8 rows of a
batch, then scale, normalise (training mean and std) and augment them with
vectorised TensorFlow ops inside tf.data, in parallel and prefetched.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import zlib
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
import tensorflow as tf

from src import configs, image_cache, run_dir
from src.configs import ConfigError, DataConfig
# Re-exported: the folder and image functions live in image_cache, below this module.
from src.image_cache import (IMAGE_EXTENSIONS, DataError, is_image_name, list_classes,  # noqa: F401
                             read_image, read_image_as_opencv, resize_square)

# Offline augmentation (the image-folder variant's n_aug_img copies).
MAX_ZOOM = 1.2
MAX_ROTATION_DEG = 20.0
CONTRAST_RANGE = (0.8, 1.2)  # pixel * contrast + brightness
BRIGHTNESS_RANGE = (-20.0, 20.0)  # in 0..255 pixel levels
NOISE_STD = 4.0  # Gaussian pixel noise, in 0..255 pixel levels
_AUG_CHUNK = 1024  # source images augmented before they are written to the cache

# On-the-fly augmentation (the authors' pipeline).
CROP_PAD = 4

# One folder split into three: the lists of files, one path relative to the folder a line.
SPLIT_NAMES = ("train", "valid", "test")
SPLIT_INFO_FILE = "split.json"  # how the lists were drawn (for the record)
SPLIT_LIST_SUBDIR = configs.SPLIT_LIST_SUBDIR  # the default list folder inside the output folder

BUNDLED_DATA_NOTE = ("Data: the bundled MNIST digits in data/ (data/train, data/valid, data/test). "
                     "For your own images give --data_dir DIR (one folder of class subfolders, "
                     "split for you) or --train_data_dir, --val_data_dir and --test_data_dir.")

_STATS_CHUNK = 1 << 20  # pixels per chunk when summing


@dataclasses.dataclass
class Split:
    """One split: uint8 pixels, normalised in the pipelines with the training statistics."""
    images: np.ndarray  # uint8 [N, H, W, C]: a read-only memmap of the cache file, or an array
    labels: np.ndarray  # int32 [N]
    paths: List[str]  # source image of each row (augmented copies repeat their source)
    mean: Optional[np.ndarray] = None  # float32 [C], training set, pixels in [0, 1]; None = 0
    std: Optional[np.ndarray] = None  # float32 [C]; None = 1
    # The images as a tensor in memory (the small-set path); None = streamed from `images`.
    in_memory: Optional[tf.Tensor] = dataclasses.field(default=None, repr=False)


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
    """A split as read from disk (or the cache), before normalisation."""
    images: np.ndarray  # uint8 [N, H, W, C], usually a read-only memmap
    labels: np.ndarray  # int32 [N]
    paths: List[str]
    class_names: List[str]
    key: Optional[dict] = None  # the cache key of `images` (offline augmentation extends it)


# ----------------------------------------------------------------------------
# Loading


def load_dataset(config: DataConfig, verbose: bool = True, retraining: bool = False) -> Dataset:
    """Reads the three folders, or the three lists of config.data_dir (through the cache),
    trains on train + valid if config.train_on_valid (retraining only), augments the
    training set offline, computes the training set's per-channel mean and std, and holds
    each split in memory or streams it, by its size."""
    check_config(config, retraining)
    if verbose and uses_bundled_data(config):
        print(BUNDLED_DATA_NOTE)
    train, valid, test = read_splits(config, verbose)
    check_same_classes(train, ("valid", valid), ("test", test))
    warning = verbose and image_cache.channel_mismatch_warning(
        train.paths, config.channel, config.data_dir or config.train_dir)
    if warning:
        print(warning)
    if config.train_on_valid:
        train = merged_split(train, valid, config.cache_dir, verbose)
    if config.n_aug_img > 1:
        train = augment_split_offline(train, config.n_aug_img, config.channel, config.seed,
                                      config.cache_dir, verbose)
    mean, std = channel_mean_std(train.images)
    splits = [placed_split(name, raw, mean, std, config.in_memory_max_mb, verbose)
              for name, raw in (("train", train), ("valid", valid), ("test", test))]
    return Dataset(*splits, class_names=train.class_names, mean=mean, std=std)


def check_config(config: DataConfig, retraining: bool = False) -> None:
    if config.train_on_valid and not retraining:
        raise ConfigError("--train_on_valid is for retraining only: the search needs its "
                          "validation split to score the arcs")
    if config.channel not in (1, 3):
        raise DataError(f"channel must be 1 (grey) or 3 (colour), got {config.channel}")
    if config.img_size < 1:
        raise DataError(f"img_size must be at least 1, got {config.img_size}")
    if config.n_aug_img < 1:
        raise DataError(f"n_aug_img must be at least 1 (1 = no offline augmentation), "
                        f"got {config.n_aug_img}")


def uses_bundled_data(config: DataConfig) -> bool:
    """True when no data was given: the default folders, the bundled digits."""
    defaults = (DataConfig.train_dir, DataConfig.valid_dir, DataConfig.test_dir)
    return not config.data_dir and (config.train_dir, config.valid_dir, config.test_dir) == defaults


def read_splits(config: DataConfig,
                verbose: bool = False) -> Tuple[_RawSplit, _RawSplit, _RawSplit]:
    """(train, valid, test): the three folders, or the three lists of config.data_dir."""
    if config.data_dir:
        lists = split_lists(config, verbose)
        return tuple(read_listed_split(name, config.data_dir, lists[name], config, verbose)
                     for name in SPLIT_NAMES)
    return (read_split("train", config.train_dir, config, verbose),
            read_split("valid", config.valid_dir, config, verbose),
            read_split("test", config.test_dir, config, verbose))


def read_split(name: str, directory: str, config: DataConfig, verbose: bool = False) -> _RawSplit:
    """All images of one folder, resized, uint8 [N, img_size, img_size, channel], mapped
    from the cache (decoded into it first if it holds no copy of this folder)."""
    return cached_split(name, image_cache.list_folder(directory), directory, config, verbose)


def read_listed_split(name: str, directory: str, relative_paths: List[str], config: DataConfig,
                      verbose: bool = False) -> _RawSplit:
    """The listed images of `directory` (paths relative to it), like read_split; the cache
    key holds the list, so each list has its own cache file."""
    listing = image_cache.list_files(directory, relative_paths, source=f"the {name} list")
    return cached_split(name, listing, f"{directory} ({name} list)", config, verbose)


def cached_split(name: str, listing: image_cache.Listing, source: str, config: DataConfig,
                 verbose: bool = False) -> _RawSplit:
    """The listed images mapped from the cache (decoded into it first if not there)."""
    cached = image_cache.cached_folder(listing, name, config.img_size, config.channel,
                                       config.cache_dir)
    if verbose:
        print(f"Read {name}: {len(listing.paths)} images in {len(listing.class_names)} classes "
              f"from {source}: {_cache_note(cached)}")
    return _RawSplit(images=cached.images, labels=listing.labels, paths=listing.paths,
                     class_names=listing.class_names,
                     key=image_cache.folder_key(listing, config.img_size, config.channel))


def _cache_note(cached: image_cache.CachedArray) -> str:
    if not cached.path:
        return f"decoded in {cached.seconds:.1f}s (no --cache_dir: not kept)"
    verb = "decoded into the cache" if cached.built else "cache reused"
    return f"{verb} in {cached.seconds:.1f}s ({cached.path})"


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


def merged_split(train: _RawSplit, valid: _RawSplit, cache_dir: str = "",
                 verbose: bool = False) -> _RawSplit:
    """train's images followed by valid's, written to the cache as one array (keyed by
    both), so that a large set is still streamed from a file, never copied into memory."""
    key = {"merge": [train.key, valid.key]}
    shape = (len(train.images) + len(valid.images),) + train.images.shape[1:]
    labels = np.concatenate([train.labels, valid.labels]).astype(np.int32)
    paths = list(train.paths) + list(valid.paths)
    cached = image_cache.cached_array(
        cache_dir, "train-valid", key, shape,
        lambda out: copy_rows(out, [train.images, valid.images]),
        sidecar={"kind": "train + valid", "class_names": train.class_names, "paths": paths,
                 "labels": labels.tolist()})
    if verbose:
        print(f"--train_on_valid: training on train + valid, {shape[0]} images "
              f"({len(train.labels)} + {len(valid.labels)}): {_cache_note(cached)}")
    return _RawSplit(images=cached.images, labels=labels, paths=paths,
                     class_names=train.class_names, key=key)


def copy_rows(out: np.ndarray, sources: List[np.ndarray]) -> None:
    """out [sum N, H, W, C] = the sources one after the other, a chunk at a time."""
    row = 0
    for source in sources:
        for start in range(0, len(source), _AUG_CHUNK):
            block = source[start:start + _AUG_CHUNK]
            out[row:row + len(block)] = block
            row += len(block)


def placed_split(name: str, raw: _RawSplit, mean: np.ndarray, std: np.ndarray,
                 in_memory_max_mb: float, verbose: bool = False) -> Split:
    """The split held in memory as a uint8 tensor if it is at most in_memory_max_mb,
    else streamed from its (mapped) array."""
    split = Split(images=raw.images, labels=raw.labels.astype(np.int32), paths=list(raw.paths),
                  mean=mean, std=std)
    megabytes = raw.images.nbytes / 1e6
    if megabytes <= in_memory_max_mb:
        split = held_in_memory(split)
    if verbose:
        where = ("held in memory (uint8)" if split.in_memory is not None
                 else "streamed from the cache file")
        print(f"Data path of {name}: {where}, {megabytes:.1f} MB "
              f"({'<=' if split.in_memory is not None else '>'} {in_memory_max_mb:g} MB)")
    return split


def held_in_memory(split: Split) -> Split:
    """The split with its images copied into a uint8 tensor (the pipelines gather from it)."""
    return dataclasses.replace(split, in_memory=tf.constant(np.asarray(split.images)))


# ----------------------------------------------------------------------------
# One folder, three splits


def split_lists(config: DataConfig, verbose: bool = False) -> Dict[str, List[str]]:
    """{split name: image paths relative to config.data_dir}: the lists in
    config.split_list_dir if all three are there (a resume, or a retraining given the
    search's lists), else drawn from the folder and written there."""
    list_dir = config.split_list_dir
    saved = read_split_lists(list_dir)
    if saved is not None:
        if verbose:
            print(f"Split of {config.data_dir}: {_split_counts(saved)}, the lists in {list_dir} "
                  f"reused (delete them to draw again)")
        return saved
    listing = image_cache.list_folder(config.data_dir)
    lists = draw_split(listing, config.valid_fraction, config.test_fraction, config.seed)
    if list_dir:
        write_split_lists(list_dir, lists, {
            "data_dir": os.path.abspath(config.data_dir), "seed": config.seed,
            "valid_fraction": config.valid_fraction, "test_fraction": config.test_fraction,
            "counts": {name: len(paths) for name, paths in lists.items()},
            "paths": "one image a line, relative to data_dir"})
    if verbose:
        where = f"lists written to {list_dir}" if list_dir else "lists not kept (no split_list_dir)"
        print(f"Split of {config.data_dir}: {_split_counts(lists)}, drawn with seed {config.seed}, "
              f"stratified by class; {where}")
    return lists


def _split_counts(lists: Dict[str, List[str]]) -> str:
    return " / ".join(f"{len(lists[name])} {name}" for name in SPLIT_NAMES)


def draw_split(listing: image_cache.Listing, valid_fraction: float, test_fraction: float,
               seed: int) -> Dict[str, List[str]]:
    """Each class's images shuffled (seeded by seed and the class name, so another class
    never changes its draw) and cut into valid, test and train (the rest); every list is
    in class then file order, paths relative to the folder with '/'."""
    lists = {name: [] for name in SPLIT_NAMES}
    for label, class_name in enumerate(listing.class_names):
        rows = np.flatnonzero(listing.labels == label)
        n_valid, n_test = class_split_sizes(len(rows), valid_fraction, test_fraction,
                                            class_name, listing.directory)
        class_seed = [seed, zlib.crc32(class_name.encode("utf-8"))]
        order = np.random.default_rng(class_seed).permutation(rows)
        chosen = {"valid": order[:n_valid], "test": order[n_valid:n_valid + n_test],
                  "train": order[n_valid + n_test:]}
        for name, picked in chosen.items():
            lists[name] += [_relative(listing.paths[row], listing.directory)
                            for row in sorted(picked)]
    return lists


def class_split_sizes(n: int, valid_fraction: float, test_fraction: float, class_name: str,
                      directory: str) -> Tuple[int, int]:
    """(valid, test) images of a class of n: the fractions rounded, at least one each, and
    at least one left for train."""
    n_valid = max(1, math.floor(n * valid_fraction + 0.5))
    n_test = max(1, math.floor(n * test_fraction + 0.5))
    if n - n_valid - n_test < 1:
        raise DataError(f"class {class_name!r} of {directory} has {n} image(s): too few to give "
                        f"train, valid and test at least one each (--valid_fraction "
                        f"{valid_fraction:g}, --test_fraction {test_fraction:g})")
    return n_valid, n_test


def _relative(path: str, directory: str) -> str:
    return os.path.relpath(path, directory).replace(os.sep, "/")


def split_list_path(list_dir: str, name: str) -> str:
    return os.path.join(list_dir, f"{name}.txt")


def read_split_lists(list_dir: str) -> Optional[Dict[str, List[str]]]:
    """The three lists in list_dir, or None if any is missing (never drawn, or a run
    killed while writing them: drawn again, the same for the same seed)."""
    if not list_dir or not all(os.path.isfile(split_list_path(list_dir, n)) for n in SPLIT_NAMES):
        return None
    lists = {}
    for name in SPLIT_NAMES:
        path = split_list_path(list_dir, name)
        with open(path, encoding="utf-8") as f:
            lists[name] = [line.strip() for line in f if line.strip()]
        if not lists[name]:
            raise DataError(f"the split list {path} is empty; delete the lists in {list_dir} "
                            "to draw them again")
    return lists


def write_split_lists(list_dir: str, lists: Dict[str, List[str]], info: Dict) -> None:
    """name.txt for each split (atomic), then split.json with how they were drawn."""
    os.makedirs(list_dir, exist_ok=True)
    for name in SPLIT_NAMES:
        text = "".join(f"{path}\n" for path in lists[name])
        run_dir.write_text_atomic(split_list_path(list_dir, name), text)
    run_dir.write_text_atomic(os.path.join(list_dir, SPLIT_INFO_FILE),
                              json.dumps(info, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------
# Offline augmentation


def augment_split_offline(split: _RawSplit, copies: int, channel: int, seed: int,
                          cache_dir: str = "", verbose: bool = False) -> _RawSplit:
    """The originals followed by copies - 1 augmented versions of every image, written
    to the cache chunk by chunk (keyed by the originals' key, copies and seed)."""
    key = {"source": split.key, "copies": copies, "seed": seed, "channel": channel,
           "augmentation": [MAX_ZOOM, MAX_ROTATION_DEG, CONTRAST_RANGE, BRIGHTNESS_RANGE, NOISE_STD]}
    source = split.images
    shape = (len(source) * copies,) + source.shape[1:]
    cached = image_cache.cached_array(
        cache_dir, "train-aug", key, shape,
        lambda out: write_augmented_copies(source, out, copies, channel, seed),
        sidecar={"kind": "offline augmentation", "copies": copies, "seed": seed,
                 "class_names": split.class_names, "paths": split.paths,
                 "labels": split.labels.tolist()})
    if verbose:
        print(f"Offline augmentation x{copies}: train now {shape[0]} images: "
              f"{_cache_note(cached)}")
    return _RawSplit(images=cached.images, labels=np.tile(split.labels, copies),
                     paths=list(split.paths) * copies, class_names=split.class_names, key=key)


def write_augmented_copies(source: np.ndarray, out: np.ndarray, copies: int, channel: int,
                           seed: int) -> None:
    """out [N * copies, H, W, C] = the N originals, then copy 1 of each, copy 2, ...
    (one generator drawn in that order, so the copies depend on the seed only)."""
    n = len(source)
    for start in range(0, n, _AUG_CHUNK):
        end = min(start + _AUG_CHUNK, n)
        out[start:end] = source[start:end]
    rng = np.random.default_rng(seed)
    flip = channel == 3  # a mirrored digit is not the same digit
    for copy in range(1, copies):
        for start in range(0, n, _AUG_CHUNK):
            block = source[start:start + _AUG_CHUNK]
            out[copy * n + start:copy * n + start + len(block)] = np.stack(
                [augment_image(image, rng, flip) for image in block])


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

    One pass in chunks of whole images, with exact integer sums, so that a mapped set
    is read once and never copied whole (no float copy at all)."""
    channels = images.shape[-1]
    pixels_per_image = max(1, int(np.prod(images.shape[1:-1])))
    chunk_images = max(1, _STATS_CHUNK // pixels_per_image)
    total = np.zeros(channels, np.uint64)
    total_sq = np.zeros(channels, np.uint64)
    for start in range(0, len(images), chunk_images):
        chunk = np.asarray(images[start:start + chunk_images]).reshape(-1, channels)  # [P, C]
        wide = chunk.astype(np.uint16)  # 255 * 255 fits in 16 bits
        total += chunk.sum(axis=0, dtype=np.uint64)
        total_sq += (wide * wide).sum(axis=0, dtype=np.uint64)
    count = len(images) * pixels_per_image
    mean = total.astype(np.float64) / (255.0 * count)
    mean_sq = total_sq.astype(np.float64) / (255.0 * 255.0 * count)
    std = np.sqrt(np.maximum(mean_sq - np.square(mean), 0.0))
    std[std < 1e-6] = 1.0  # a constant channel: leave its scale alone
    return mean.astype(np.float32), std.astype(np.float32)


def normalise(images: tf.Tensor, mean, std) -> tf.Tensor:
    """uint8 [B, H, W, C] -> float32, pixels scaled to [0, 1] then standardised per channel."""
    channels = images.shape[-1]
    mean = tf.constant(np.zeros(channels) if mean is None else mean, tf.float32)
    std = tf.constant(np.ones(channels) if std is None else std, tf.float32)
    return (tf.cast(images, tf.float32) * (1.0 / 255.0) - mean) / std


def normalised_level(level: int, mean, std, channels: int) -> np.ndarray:
    """float32 [C]: what normalise() makes of a pixel of `level` (0 = black, 255 = white)
    in every channel; the border that crop and affine add is black."""
    mean = np.zeros(channels, np.float32) if mean is None else np.asarray(mean, np.float32)
    std = np.ones(channels, np.float32) if std is None else np.asarray(std, np.float32)
    return (np.float32(level) * np.float32(1.0 / 255.0) - mean) / std


# ----------------------------------------------------------------------------
# tf.data pipelines


def num_batches(n: int, batch_size: int) -> int:
    return int(math.ceil(n / batch_size))


class TrainBatches:
    """The training split's batches, epoch by epoch.

    Epoch e's order and augmentation depend on (seed, e) only, never on how many
    epochs this process has run, so a resumed run sees the data an uninterrupted
    one would.
    """

    def __init__(self, split: Split, config: DataConfig):
        self.size = _check_not_empty(split)
        self.config = config
        self.batches_per_pass = num_batches(self.size, config.batch_size)
        self._read = batch_reader(split)
        self._black = normalised_level(0, split.mean, split.std, split.images.shape[-1])  # [C]

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

        def read_and_augment(index, batch_id):
            seed = tf.stack([epoch_key, batch_id])
            images, labels = self._read(index)
            return augment_batch(images, seed, self.config, self._black), labels

        return indexed.map(read_and_augment, num_parallel_calls=tf.data.AUTOTUNE,
                           deterministic=True).prefetch(tf.data.AUTOTUNE)


def eval_batches(split: Split, batch_size: int) -> tf.data.Dataset:
    """The split in order, without augmentation."""
    order = tf.data.Dataset.range(len(split.labels)).batch(batch_size)
    return _read_batches(split, order)


def mixed_eval_batches(split: Split, batch_size: int, seed: int = 0) -> tf.data.Dataset:
    """The whole split once, without augmentation, in one fixed shuffled order.

    For the shared child, whose BN uses the statistics of each batch even when it
    evaluates: the folders are read class by class, so in-order batches hold one or
    two classes each, and their statistics would hide what the classes differ in.
    The order depends on `seed` only, so every arc is scored on the same batches.
    """
    order = np.random.default_rng(seed).permutation(len(split.labels))
    return _read_batches(split, tf.data.Dataset.from_tensor_slices(order).batch(batch_size))


def endless_shuffled_batches(split: Split, batch_size: int, seed: int) -> tf.data.Dataset:
    """Full shuffled batches forever, without augmentation (one batch per controller
    reward); a split smaller than batch_size gives batches of the whole split."""
    n = _check_not_empty(split)
    order = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True).repeat()
    return _read_batches(split, order.batch(min(batch_size, n), drop_remainder=True))


def _read_batches(split: Split, index_batches: tf.data.Dataset) -> tf.data.Dataset:
    """Maps batches of row indices to (images, labels) batches of the split."""
    return index_batches.map(batch_reader(split), num_parallel_calls=tf.data.AUTOTUNE,
                             deterministic=True).prefetch(tf.data.AUTOTUNE)


def batch_reader(split: Split):
    """index int64 [B] -> (images float32 [B, H, W, C] normalised, labels int32 [B]): the
    uint8 rows gathered from the in-memory tensor, or read from the mapped array."""
    labels = tf.constant(split.labels)
    if split.in_memory is not None:
        rows = functools.partial(tf.gather, split.in_memory)
    else:
        rows = functools.partial(_streamed_rows, split.images)

    def read(index):
        return normalise(rows(index), split.mean, split.std), tf.gather(labels, index)

    return read


def _streamed_rows(images: np.ndarray, index: tf.Tensor) -> tf.Tensor:
    """uint8 [B, H, W, C] rows `index` of a (mapped) array, read in file order."""
    rows = tf.numpy_function(functools.partial(read_rows, images), [index], tf.uint8,
                             stateful=False)
    return tf.ensure_shape(rows, [None, *images.shape[1:]])  # crop needs static H and W


def read_rows(images: np.ndarray, index: np.ndarray) -> np.ndarray:
    """images[index], reading the rows in ascending order (sequential on disk)."""
    order = np.argsort(index, kind="stable")
    rows = np.empty((len(index),) + images.shape[1:], np.uint8)
    rows[order] = images[index[order]]
    return rows


def _check_not_empty(split: Split) -> int:
    if len(split.labels) == 0:
        raise DataError("cannot make batches from an empty split")
    return len(split.labels)


# ----------------------------------------------------------------------------
# On-the-fly augmentation, vectorised over a batch [B, H, W, C]


def augment_batch(images: tf.Tensor, seed: tf.Tensor, config: DataConfig,
                  black: Optional[np.ndarray] = None) -> tf.Tensor:
    """Random affine, crop, flip and cutout as configured; `seed` is a stateless seed [2];
    `black` float32 [C] is a black pixel normalised (None = 0): the border that the affine
    transform and the crop bring in."""
    crop_seed, flip_seed, cutout_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    if config.random_affine:
        # A seed of its own, folded in, so that the crop, flip and cutout draws stay as they were.
        affine_seed = tf.random.experimental.stateless_fold_in(seed, 3)
        images = random_affine(images, affine_seed, config.affine_rotate_deg, config.affine_scale,
                               config.affine_shift, black)
    if config.random_crop:
        images = random_crop(images, crop_seed, CROP_PAD, black)
    if config.random_flip:
        images = random_flip(images, flip_seed)
    if config.cutout_size > 0:
        images = cutout(images, cutout_seed, config.cutout_size)
    return images


def random_affine(images: tf.Tensor, seed: tf.Tensor, rotate_deg: float, scale: float,
                  shift: float, fill: Optional[np.ndarray] = None) -> tf.Tensor:
    """Rotates each image about its centre by an angle in [-rotate_deg, rotate_deg], scales it
    by a factor in [1 - scale, 1 + scale] and shifts it by up to `shift` x its size on each
    axis, bilinear; what comes in from outside the image is `fill` [C] (None = 0)."""
    batch, height, width = tf.shape(images)[0], tf.shape(images)[1], tf.shape(images)[2]
    draws = tf.random.stateless_uniform([batch, 4], seed, minval=-1.0, maxval=1.0)  # [B, 4]
    angle = draws[:, 0] * (rotate_deg * math.pi / 180.0)
    zoom = 1.0 + draws[:, 1] * scale
    size = tf.cast(tf.stack([width, height]), tf.float32)  # [2]: x, y
    offset = draws[:, 2:] * shift * size  # [B, 2]: x, y in pixels
    transforms = inverse_affine_transforms(angle, zoom, offset, size)
    if fill is None:
        return _projective_transform(images, transforms)
    # The op fills with one scalar: transforming images - fill and filling 0 gives each
    # channel its own fill once it is added back.
    fill = tf.constant(fill, tf.float32)  # [C]
    return _projective_transform(images - fill, transforms) + fill


def inverse_affine_transforms(angle: tf.Tensor, zoom: tf.Tensor, offset: tf.Tensor,
                              size: tf.Tensor) -> tf.Tensor:
    """[B, 8] projective transforms (ImageProjectiveTransformV3's) that map each output pixel
    to the input pixel it reads: the inverse of rotating by `angle` [B] (radians) and scaling
    by `zoom` [B] about the centre, then shifting by `offset` [B, 2] (x, y)."""
    centre = (size - 1.0) / 2.0  # [2]: x, y of the centre pixel
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom  # [B]
    # input = (R(-angle) / zoom) (output - centre - offset) + centre
    moved = centre + offset  # [B, 2]: where the centre goes
    a2 = centre[0] - cos * moved[:, 0] - sin * moved[:, 1]
    b2 = centre[1] + sin * moved[:, 0] - cos * moved[:, 1]
    zeros = tf.zeros_like(angle)
    return tf.stack([cos, sin, a2, -sin, cos, b2, zeros, zeros], axis=1)  # [B, 8]


def _projective_transform(images: tf.Tensor, transforms: tf.Tensor) -> tf.Tensor:
    """images [B, H, W, C] resampled bilinearly by transforms [B, 8], 0 outside."""
    moved = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.shape(images)[1:3],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")
    return tf.ensure_shape(moved, images.shape)  # the op loses the static H and W crop needs


def random_crop(images: tf.Tensor, seed: tf.Tensor, pad: int,
                fill: Optional[np.ndarray] = None) -> tf.Tensor:
    """Pads `pad` pixels of `fill` [C] (None = 0) on each side, then crops each image back to
    H x W at a random offset (H and W must be static, as they are for batches gathered from
    a split)."""
    batch, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
    padding = [[0, 0], [pad, pad], [pad, pad], [0, 0]]
    padded = tf.pad(images, padding)  # [B, H+2p, W+2p, C]
    if fill is not None:
        # tf.pad pads one scalar: the border outside the image takes each channel's fill.
        inside = tf.constant(np.pad(np.ones((1, height, width, 1), bool), padding))
        padded = tf.where(inside, padded, tf.constant(fill, tf.float32))
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

