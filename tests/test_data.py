"""Image folders -> cached arrays -> tf.data: loading, the cache, errors, offline and
on-the-fly augmentation, in-memory and streamed pipelines."""
import dataclasses
import glob
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tensorflow as tf

from src import data, image_cache
from src.configs import ConfigError, DataConfig
from tests.conftest import ROOT


def write_image(path, image) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return str(path)


def grey(value, height=8, width=8):
    return np.full((height, width), value, np.uint8)


def make_split(root, name, classes):
    """Writes root/name/<class>/<i>.png from {class: [images]}; returns the folder."""
    for class_name, images in classes.items():
        for i, image in enumerate(images):
            write_image(os.path.join(root, name, class_name, f"{i}.png"), image)
    return os.path.join(root, name)


def make_dataset_dirs(root, classes, valid=None, test=None):
    """Three splits; valid and test default to the training classes."""
    return dict(train_dir=make_split(root, "train", classes),
                valid_dir=make_split(root, "valid", valid or classes),
                test_dir=make_split(root, "test", test or classes))


def three_grey_classes():
    # Created out of order; each class has its own grey level so labels can be checked.
    return {"b": [grey(100), grey(110, 20, 30)], "a": [grey(10), grey(20), grey(30)], "c": [grey(200)]}


def config_for(dirs, **overrides):
    base = dict(channel=1, img_size=12, n_aug_img=1, batch_size=4, random_crop=False, seed=0)
    base.update(overrides)
    return DataConfig(**dirs, **base)


def levels(images):
    """Pipeline output of a split without mean and std (pixels / 255) back to 0..255."""
    return np.rint(images * 255)


def indexed_split(n, size=6):
    """A split whose image i is filled with i and whose label is i (streamed: no tensor)."""
    images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, size, size, 1))
    return data.Split(images=images.copy(), labels=np.arange(n, dtype=np.int32),
                      paths=[f"{i}.png" for i in range(n)])


def normalised(split):
    """The split's images as the evaluation pipeline gives them, in order."""
    return collect(data.eval_batches(split, 64))[0]


def collect(dataset):
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in dataset])
    return np.concatenate(images), np.concatenate(labels)


# ----------------------------------------------------------------------------
# Loading


def test_grey_loading_infers_sorted_classes_labels_and_resizes(tmp_path):
    dirs = make_dataset_dirs(tmp_path, three_grey_classes())
    write_image(tmp_path / "train" / "a" / ".hidden.png", grey(255))  # hidden: skipped
    (tmp_path / "train" / "a" / "notes.txt").write_text("not an image")  # not an image: skipped
    dataset = data.load_dataset(config_for(dirs), verbose=False)
    assert dataset.class_names == ["a", "b", "c"] and dataset.num_classes == 3
    train = dataset.train
    assert train.images.shape == (6, 12, 12, 1) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int32
    np.testing.assert_array_equal(train.labels, [0, 0, 0, 1, 1, 2])
    assert [os.path.relpath(p, dirs["train_dir"]) for p in train.paths] == [
        "a/0.png", "a/1.png", "a/2.png", "b/0.png", "b/1.png", "c/0.png"]
    np.testing.assert_allclose(train.images.mean(axis=(1, 2, 3)), [10, 20, 30, 100, 110, 200], atol=0.5)
    images = normalised(train) * dataset.std + dataset.mean  # the pipelines normalise
    np.testing.assert_allclose(images.mean(axis=(1, 2, 3)) * 255, [10, 20, 30, 100, 110, 200], atol=0.5)


def test_colour_loading_is_rgb(tmp_path):
    blue_bgr = np.zeros((10, 10, 3), np.uint8)
    blue_bgr[..., 0] = 255
    path = write_image(tmp_path / "blue.png", blue_bgr)
    rgb = data.read_image(path, channel=3, size=6)
    assert rgb.shape == (6, 6, 3)
    assert rgb[..., 2].min() == 255 and rgb[..., :2].max() == 0

    dirs = make_dataset_dirs(tmp_path, {"blue": [blue_bgr], "black": [np.zeros_like(blue_bgr)]})
    dataset = data.load_dataset(config_for(dirs, channel=3, img_size=6), verbose=False)
    assert dataset.train.images.shape == (2, 6, 6, 3) and dataset.mean.shape == (3,)
    blue = dataset.train.images[dataset.class_names.index("blue")]
    np.testing.assert_array_equal(blue.mean(axis=(0, 1)), [0, 0, 255])


def test_resize_shrinks_and_grows():
    assert data.resize_square(grey(5, 40, 30), 16).shape == (16, 16)
    assert data.resize_square(grey(5, 4, 6), 16).shape == (16, 16)


def test_mean_std_from_train_applied_to_all_splits(tmp_path):
    rng = np.random.default_rng(0)
    train = {"x": [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(4)]}
    constant = {"x": [np.full((8, 8, 3), 128, np.uint8)]}
    dirs = make_dataset_dirs(tmp_path, train, valid=constant, test=constant)
    dataset = data.load_dataset(config_for(dirs, channel=3, img_size=8), verbose=False)
    train = normalised(dataset.train).reshape(-1, 3)
    np.testing.assert_allclose(train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(train.std(axis=0), 1, atol=1e-4)
    expected = (128 / 255 - dataset.mean) / dataset.std  # train statistics, not valid's own
    for split in (dataset.valid, dataset.test):
        np.testing.assert_allclose(normalised(split)[0, 0, 0], expected, rtol=1e-5)


def test_offline_augmentation_multiplies_train_only(tmp_path):
    rng = np.random.default_rng(0)
    classes = {"x": [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(3)], "y": [grey(50)]}
    dirs = make_dataset_dirs(tmp_path, classes)
    plain = data.load_dataset(config_for(dirs, img_size=8), verbose=False)
    augmented = data.load_dataset(config_for(dirs, img_size=8, n_aug_img=3), verbose=False)
    assert augmented.train.images.shape == (12, 8, 8, 1)
    np.testing.assert_array_equal(augmented.train.labels, np.tile(plain.train.labels, 3))
    assert augmented.train.paths == plain.train.paths * 3
    assert len(augmented.valid.labels) == len(augmented.test.labels) == 4
    # The originals come first, unchanged; the copies differ from them.
    originals = augmented.train.images[:4]
    np.testing.assert_array_equal(originals, plain.train.images)
    assert not np.allclose(augmented.train.images[4:8], originals, atol=12)
    again = data.load_dataset(config_for(dirs, img_size=8, n_aug_img=3), verbose=False)
    np.testing.assert_array_equal(again.train.images, augmented.train.images)  # seeded


def test_offline_augmentation_flips_colour_only():
    image = np.zeros((8, 8, 1), np.uint8)
    rng = np.random.default_rng(0)
    out = data.augment_image(image, rng, allow_flip=False)
    assert out.shape == (8, 8, 1) and out.dtype == np.uint8
    # A 3-channel image with a bright left half: some of 20 copies end up bright on the right.
    colour = np.zeros((16, 16, 3), np.uint8)
    colour[:, :8] = 255
    copies = [data.augment_image(colour, rng, allow_flip=True) for _ in range(20)]
    assert any(c[:, 12:].mean() > c[:, :4].mean() for c in copies)
    assert not any(data.augment_image(colour, rng, allow_flip=False)[:, 12:].mean() > 128
                   for _ in range(20))


# ----------------------------------------------------------------------------
# The cache


def cache_files(cache_dir, pattern="*.npy"):
    return sorted(glob.glob(os.path.join(str(cache_dir), pattern)))


def count_decodes(monkeypatch):
    """Counts the images the cache decodes from now on."""
    calls = []
    real = image_cache.read_image

    def counting(*args):
        calls.append(args[0])
        return real(*args)

    monkeypatch.setattr(image_cache, "read_image", counting)
    return calls


def test_cache_is_built_once_then_reused(tmp_path, monkeypatch, capsys):
    dirs = make_dataset_dirs(tmp_path, three_grey_classes())
    config = config_for(dirs, cache_dir=str(tmp_path / "cache"))
    decodes = count_decodes(monkeypatch)
    first = data.load_dataset(config)
    assert len(decodes) == 6 + 6 + 6  # train, valid, test
    files = cache_files(tmp_path / "cache")
    assert len(files) == 3 and len(cache_files(tmp_path / "cache", "*.json")) == 3
    assert capsys.readouterr().out.count("decoded into the cache") == 3
    mtimes = [os.stat(f).st_mtime_ns for f in files]
    decodes.clear()
    again = data.load_dataset(config)
    assert decodes == [] and capsys.readouterr().out.count("cache reused") == 3
    assert [os.stat(f).st_mtime_ns for f in cache_files(tmp_path / "cache")] == mtimes
    assert isinstance(again.train.images, np.memmap)
    np.testing.assert_array_equal(again.train.images, first.train.images)
    np.testing.assert_array_equal(again.train.labels, first.train.labels)
    assert again.train.paths == first.train.paths and again.class_names == first.class_names


def test_cache_key_follows_files_size_and_channel(tmp_path):
    dirs = make_dataset_dirs(tmp_path, three_grey_classes())
    train = dirs["train_dir"]

    def key_file(img_size=12, channel=1):
        listing = image_cache.list_folder(train)
        return image_cache.cache_paths(str(tmp_path / "cache"), "train",
                                       image_cache.folder_key(listing, img_size, channel))[0]

    before = key_file()
    assert key_file() == before  # the same inputs, the same file
    assert len({before, key_file(img_size=16), key_file(channel=3)}) == 3
    touched = os.path.join(train, "a", "0.png")
    stat = os.stat(touched)
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))
    after_touch = key_file()
    assert after_touch != before
    write_image(os.path.join(train, "c", "9.png"), grey(77))
    assert key_file() not in (before, after_touch)
    # Through load_dataset: the added image gets a new file and is in it.
    config = config_for(dirs, cache_dir=str(tmp_path / "cache"))
    dataset = data.load_dataset(config, verbose=False)
    assert len(dataset.train.labels) == 7 and os.path.isfile(key_file())


def test_a_cache_killed_while_building_is_never_used(tmp_path, monkeypatch):
    dirs = make_dataset_dirs(tmp_path, three_grey_classes())
    cache_dir = str(tmp_path / "cache")
    build = ("import sys; from src import image_cache as c; l = c.list_folder(sys.argv[1]); "
             "c.cached_folder(l, 'train', 12, 1, sys.argv[2])")
    killed = subprocess.run([sys.executable, "-c", build, dirs["train_dir"], cache_dir], cwd=ROOT,
                            env={**os.environ, "ENAS_FAILPOINT": "cache_built"})
    assert killed.returncode == -9  # killed after filling, before the rename
    assert cache_files(cache_dir) == [] and len(cache_files(cache_dir, ".*.tmp")) == 1
    decodes = count_decodes(monkeypatch)
    config = config_for(dirs, cache_dir=cache_dir)
    data.load_dataset(config, verbose=False)
    assert len(decodes) == 18  # built again, not taken from the half-built file
    assert cache_files(cache_dir, ".*.tmp") == []  # the dead builder's file is gone
    # A cache file whose sidecar was never written (killed between the two) is rebuilt.
    for sidecar in cache_files(cache_dir, "train-*.json"):
        os.remove(sidecar)
    decodes.clear()
    data.load_dataset(config, verbose=False)
    assert len(decodes) == 6


def test_offline_augmentation_copies_are_cached(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    classes = {"x": [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(3)], "y": [grey(50)]}
    dirs = make_dataset_dirs(tmp_path, classes)
    config = config_for(dirs, img_size=8, n_aug_img=3, cache_dir=str(tmp_path / "cache"))
    built = data.load_dataset(config, verbose=False)
    [aug_file] = cache_files(tmp_path / "cache", "train-aug-*.npy")
    assert np.load(aug_file, mmap_mode="r").shape == (12, 8, 8, 1)
    np.testing.assert_array_equal(np.load(aug_file), built.train.images)

    def no_augmentation(*args):
        raise AssertionError("augmented again instead of reusing the cache")

    monkeypatch.setattr(data, "augment_image", no_augmentation)
    reused = data.load_dataset(config, verbose=False)
    np.testing.assert_array_equal(reused.train.images, built.train.images)
    # Another seed is another cache file.
    monkeypatch.undo()
    data.load_dataset(dataclasses.replace(config, seed=1), verbose=False)
    assert len(cache_files(tmp_path / "cache", "train-aug-*.npy")) == 2


def old_channel_mean_std(images):
    """The computation before the cache: float64 over the whole set in memory."""
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    mean = pixels.mean(axis=0)
    std = np.sqrt(np.maximum(np.square(pixels).mean(axis=0) - np.square(mean), 0.0))
    std[std < 1e-6] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def test_mean_std_in_chunks_equal_the_in_memory_computation(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_STATS_CHUNK", 3 * 64)  # 3 images a chunk: 11 images, 4 chunks
    images = np.random.default_rng(0).integers(0, 256, (11, 8, 8, 3), dtype=np.uint8)
    images[..., 2] = 7  # a constant channel keeps std 1
    np.save(tmp_path / "images.npy", images)
    mapped = np.load(tmp_path / "images.npy", mmap_mode="r")
    for got, expected in zip(data.channel_mean_std(mapped), old_channel_mean_std(images)):
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert data.channel_mean_std(mapped)[1][2] == 1.0


def test_streamed_and_in_memory_splits_give_identical_batches(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (13, 10, 10, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    streamed = data.Split(images=np.load(tmp_path / "images.npy", mmap_mode="r"),
                          labels=np.arange(13, dtype=np.int32), paths=[""] * 13,
                          mean=np.array([0.4, 0.5, 0.6], np.float32),
                          std=np.array([0.2, 0.25, 0.3], np.float32))
    in_memory = data.held_in_memory(streamed)
    assert streamed.in_memory is None and in_memory.in_memory is not None
    config = DataConfig(batch_size=4, random_crop=True, random_flip=True, cutout_size=3, seed=5)
    pipelines = [lambda s: data.TrainBatches(s, config).epoch(2),
                 lambda s: data.TrainBatches(s, config).epoch(1, steps=5),
                 lambda s: data.eval_batches(s, 4),
                 lambda s: data.mixed_eval_batches(s, 4, seed=2),
                 lambda s: data.endless_shuffled_batches(s, 4, seed=3).take(6)]
    for make in pipelines:
        for a, b in zip(collect(make(streamed)), collect(make(in_memory))):
            np.testing.assert_array_equal(a, b)
    expected = (images / 255.0 - streamed.mean) / streamed.std
    np.testing.assert_allclose(normalised(streamed), expected, rtol=1e-5, atol=1e-5)


def test_the_data_path_follows_the_split_size(tmp_path, capsys):
    dirs = make_dataset_dirs(tmp_path, three_grey_classes())
    small = data.load_dataset(config_for(dirs), verbose=True)
    assert all(s.in_memory is not None for s in (small.train, small.valid, small.test))
    assert "Data path of train: held in memory" in capsys.readouterr().out
    # 6 images of 12 x 12 x 1 = 864 bytes: over a limit of 0.0005 MB, streamed.
    large = data.load_dataset(config_for(dirs, in_memory_max_mb=0.0005), verbose=True)
    assert all(s.in_memory is None for s in (large.train, large.valid, large.test))
    assert "Data path of train: streamed from the cache file" in capsys.readouterr().out
    for a, b in zip(collect(data.eval_batches(small.train, 4)), collect(data.eval_batches(large.train, 4))):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------
# Errors


def test_corrupt_image_is_named(tmp_path):
    dirs = make_dataset_dirs(tmp_path, three_grey_classes())
    bad = tmp_path / "train" / "b" / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(data.DataError, match="broken.png"):
        data.load_dataset(config_for(dirs), verbose=False)


def test_missing_and_empty_folders(tmp_path):
    dirs = make_dataset_dirs(tmp_path, three_grey_classes())
    with pytest.raises(data.DataError, match="not found.*nowhere"):
        data.load_dataset(config_for({**dirs, "valid_dir": str(tmp_path / "nowhere")}), verbose=False)
    (tmp_path / "flat").mkdir()
    with pytest.raises(data.DataError, match="no class subfolders.*flat"):
        data.load_dataset(config_for({**dirs, "test_dir": str(tmp_path / "flat")}), verbose=False)
    (tmp_path / "train" / "d").mkdir()
    with pytest.raises(data.DataError, match="no images.*train.d"):
        data.load_dataset(config_for(dirs), verbose=False)


def test_class_mismatch_names_split_and_classes(tmp_path):
    classes = three_grey_classes()
    dirs = make_dataset_dirs(tmp_path, classes, test={"a": classes["a"], "z": classes["c"]})
    with pytest.raises(data.DataError, match=r"test split.*missing \[b, c\].*extra \[z\]"):
        data.load_dataset(config_for(dirs), verbose=False)


@pytest.mark.parametrize("overrides, message", [
    (dict(channel=2), "channel"), (dict(n_aug_img=0), "n_aug_img"), (dict(img_size=0), "img_size")])
def test_bad_config_values(tmp_path, overrides, message):
    dirs = make_dataset_dirs(tmp_path, three_grey_classes())
    with pytest.raises(data.DataError, match=message):
        data.load_dataset(config_for(dirs, **overrides), verbose=False)


# ----------------------------------------------------------------------------
# Pipelines


def test_train_batches_cover_every_example_once_and_reshuffle_each_epoch():
    split = indexed_split(10)
    batches = data.TrainBatches(split, DataConfig(batch_size=4, random_crop=False))
    first = [(x.numpy(), y.numpy()) for x, y in batches.epoch(0)]
    assert [len(y) for _, y in first] == [4, 4, 2] == [len(x) for x, _ in first]
    assert first[0][0].shape[1:] == (6, 6, 1) and first[0][0].dtype == np.float32
    assert first[0][1].dtype == np.int32
    images, labels = collect(batches.epoch(1))
    first_labels = np.concatenate([y for _, y in first])
    assert sorted(first_labels) == sorted(labels) == list(range(10))
    assert not np.array_equal(first_labels, labels)
    np.testing.assert_array_equal(levels(images[:, 0, 0, 0]), labels)  # images travel with labels
    assert data.num_batches(10, 4) == 3 and data.num_batches(8, 4) == 2


def test_an_epoch_depends_on_the_seed_and_its_number_only():
    config = DataConfig(batch_size=4, random_crop=True, random_flip=True, cutout_size=2, seed=3)
    split = indexed_split(10)
    late = data.TrainBatches(split, config)
    for epoch in range(3):  # a process that has already run epochs 0-2 ...
        collect(late.epoch(epoch))
    fresh = collect(data.TrainBatches(split, config).epoch(3))  # ... and a resumed one
    for a, b in zip(collect(late.epoch(3)), fresh):
        np.testing.assert_array_equal(a, b)
    other_seed = collect(data.TrainBatches(split, dataclasses.replace(config, seed=4)).epoch(3))
    assert not np.array_equal(other_seed[1], fresh[1])


def test_step_sized_epochs_take_full_batches_across_passes():
    batches = data.TrainBatches(indexed_split(10), DataConfig(batch_size=4, random_crop=False))
    labels = [y.numpy() for _, y in batches.epoch(2, steps=5)]
    assert [len(y) for y in labels] == [4, 4, 4, 4, 4]
    assert sorted(np.concatenate(labels)[:10]) == list(range(10))  # the first pass is whole


def test_random_crop_keeps_shape_and_shifts_content():
    ones = tf.ones([32, 10, 10, 1])
    cropped = data.random_crop(ones, tf.constant([1, 2], tf.int64), pad=4).numpy()
    assert cropped.shape == (32, 10, 10, 1)
    assert set(np.unique(cropped)) <= {0.0, 1.0}
    kept = cropped.sum(axis=(1, 2, 3))
    assert kept.min() >= 6 * 6 and kept.max() == 100 and kept.min() < 100
    split = indexed_split(5, size=10)
    images, _ = collect(data.TrainBatches(split, DataConfig(batch_size=2, random_crop=True)).epoch(0))
    assert images.shape == (5, 10, 10, 1)


def test_random_flip_mirrors_some_images():
    image = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    flipped = data.random_flip(tf.constant(np.repeat(image, 32, axis=0)), tf.constant([0, 1], tf.int64))
    mirrored = [np.array_equal(x, image[0, :, ::-1]) for x in flipped.numpy()]
    unchanged = [np.array_equal(x, image[0]) for x in flipped.numpy()]
    assert all(m or u for m, u in zip(mirrored, unchanged)) and any(mirrored) and any(unchanged)


def test_cutout_zeros_a_square_clipped_at_the_border():
    out = data.cutout(tf.ones([64, 16, 16, 2]), tf.constant([5, 6], tf.int64), size=4).numpy()
    for image in out:
        rows, cols = np.nonzero(image[..., 0] == 0)
        assert 2 <= np.ptp(rows) + 1 <= 4 and 2 <= np.ptp(cols) + 1 <= 4
        assert len(rows) == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)  # a filled rectangle
        np.testing.assert_array_equal(image[..., 0], image[..., 1])  # all channels
    assert any(np.sum(image == 0) == 16 * 2 for image in out)  # an unclipped 4 x 4 square


def test_eval_batches_keep_order():
    split = indexed_split(7)
    batches = list(data.eval_batches(split, 3))
    assert [len(y) for _, y in batches] == [3, 3, 1]
    images, labels = collect(data.eval_batches(split, 3))
    np.testing.assert_array_equal(labels, split.labels)
    np.testing.assert_array_equal(levels(images), split.images)


def test_mixed_eval_batches_cover_the_split_once_in_a_fixed_mixed_order():
    split = indexed_split(20)
    images, labels = collect(data.mixed_eval_batches(split, 6, seed=3))
    assert sorted(labels.tolist()) == sorted(split.labels.tolist())  # every row once
    assert labels.tolist() != split.labels.tolist()  # not the folder order
    again = collect(data.mixed_eval_batches(split, 6, seed=3))[1]
    np.testing.assert_array_equal(again, labels)  # the same batches for every arc
    assert [len(y) for _, y in data.mixed_eval_batches(split, 6)] == [6, 6, 6, 2]


def test_endless_shuffled_batches_are_full_and_never_end():
    it = iter(data.endless_shuffled_batches(indexed_split(10), 4, seed=0))
    labels = [next(it)[1].numpy() for _ in range(10)]  # 40 examples > 10
    assert all(len(y) == 4 for y in labels)
    small = iter(data.endless_shuffled_batches(indexed_split(3), 8, seed=0))
    x, y = next(small)
    assert x.shape[0] == 3 and sorted(y.numpy()) == [0, 1, 2]


# ----------------------------------------------------------------------------
# The bundled data


@pytest.mark.skipif(not os.path.isdir(os.path.join(ROOT, "data", "train")), reason="no bundled data")
def test_bundled_data_loads():
    dirs = {name: os.path.join(ROOT, "data", split)
            for name, split in (("train_dir", "train"), ("valid_dir", "valid"), ("test_dir", "test"))}
    dataset = data.load_dataset(DataConfig(**dirs), verbose=False)
    assert dataset.class_names == [str(i) for i in range(10)]
    assert [len(s.labels) for s in (dataset.train, dataset.valid, dataset.test)] == [3500, 500, 1000]
    assert dataset.train.images.shape == (3500, 32, 32, 1) and dataset.train.images.dtype == np.uint8
    assert np.bincount(dataset.train.labels).tolist() == [350] * 10


# ----------------------------------------------------------------------------
# The border that crop and affine bring in: black, normalised


def stats(channels):
    mean = np.array([0.2, 0.5, 0.7][:channels], np.float32)
    std = np.array([0.3, 0.25, 0.1][:channels], np.float32)
    return mean, std


def constant_split(level, n, channels, size=10):
    """n images of `level` in every pixel, with the statistics of stats(channels)."""
    mean, std = stats(channels)
    return data.Split(images=np.full((n, size, size, channels), level, np.uint8),
                      labels=np.zeros(n, np.int32), paths=[""] * n, mean=mean, std=std)


def test_normalised_black_is_what_normalise_makes_of_0():
    mean, std = stats(3)
    black = data.normalised_level(0, mean, std, 3)
    np.testing.assert_array_equal(black, data.normalise(tf.zeros([1, 1, 1, 3], tf.uint8), mean, std)[0, 0, 0])
    np.testing.assert_allclose(black, -mean / std, rtol=1e-6)
    np.testing.assert_array_equal(data.normalised_level(0, None, None, 1), [0.0])


@pytest.mark.parametrize("channels", [1, 3])
def test_crop_pads_with_normalised_black_per_channel(channels):
    split = constant_split(255, 16, channels)
    black = data.normalised_level(0, split.mean, split.std, channels)
    white = data.normalised_level(255, split.mean, split.std, channels)
    config = DataConfig(batch_size=16, random_crop=True, random_flip=False)
    images, _ = collect(data.TrainBatches(split, config).epoch(0))
    is_black = np.all(images == black, axis=-1)  # [N, H, W]: every channel its own black
    is_white = np.all(np.isclose(images, white, rtol=1e-6), axis=-1)
    assert np.all(is_black | is_white)
    assert is_black.any() and is_white.any()
    assert not np.any(np.all(images == 0, axis=-1))  # not the mean grey of a 0 pad


# ----------------------------------------------------------------------------
# Random affine


def affine_inputs(channels=3, n=16, size=12):
    """Normalised images of pixels in 50..200 (never black), their black and their maximum."""
    mean, std = stats(channels)
    pixels = np.random.default_rng(0).integers(50, 201, (n, size, size, channels), dtype=np.uint8)
    images = data.normalise(tf.constant(pixels), mean, std)
    return images, data.normalised_level(0, mean, std, channels), images.numpy().max(axis=(0, 1, 2))


def test_random_affine_is_off_by_default():
    assert DataConfig().random_affine is False


def test_random_affine_is_seeded_and_keeps_shape_and_dtype():
    images, black, _ = affine_inputs()
    seed = tf.constant([3, 4], tf.int64)
    out = data.random_affine(images, seed, 20.0, 0.2, 0.2, black)
    assert out.shape == images.shape and out.dtype == tf.float32
    np.testing.assert_array_equal(out, data.random_affine(images, seed, 20.0, 0.2, 0.2, black))
    other = data.random_affine(images, tf.constant([3, 5], tf.int64), 20.0, 0.2, 0.2, black)
    assert not np.allclose(out, other)
    assert not np.allclose(out, images)
    # Each image gets its own draw: identical inputs come out different.
    same = data.random_affine(tf.repeat(images[:1], 8, axis=0), seed, 20.0, 0.2, 0.2, black).numpy()
    assert not np.allclose(same[0], same[1])


@pytest.mark.parametrize("channels", [1, 3])
def test_random_affine_stays_in_range_and_fills_normalised_black(channels):
    images, black, top = affine_inputs(channels)
    out = data.random_affine(images, tf.constant([1, 2], tf.int64), 30.0, 0.2, 0.2, black).numpy()
    tolerance = 1e-5
    assert np.all(out >= black - tolerance) and np.all(out <= top + tolerance)  # per channel
    border = np.all(np.isclose(out, black, atol=tolerance), axis=-1)  # [N, H, W]
    assert border.any()  # the corners that came from outside: each channel's own black


def test_random_affine_with_all_magnitudes_0_is_the_identity():
    images, black, _ = affine_inputs()
    seed = tf.constant([7, 8], tf.int64)
    np.testing.assert_allclose(data.random_affine(images, seed, 0.0, 0.0, 0.0, black), images,
                               atol=1e-5)
    np.testing.assert_array_equal(data.random_affine(images, seed, 0.0, 0.0, 0.0), images)


def test_random_affine_in_the_pipeline_leaves_the_other_draws_alone():
    split = constant_split(0, 12, 3)
    split.images[:] = np.random.default_rng(1).integers(0, 256, split.images.shape, dtype=np.uint8)
    base = DataConfig(batch_size=4, random_crop=True, random_flip=True, cutout_size=3, seed=2)
    plain = collect(data.TrainBatches(split, base).epoch(1))[0]
    no_op = dataclasses.replace(base, random_affine=True, affine_rotate_deg=0.0, affine_scale=0.0,
                                affine_shift=0.0)
    np.testing.assert_allclose(collect(data.TrainBatches(split, no_op).epoch(1))[0], plain, atol=1e-5)
    affine = dataclasses.replace(base, random_affine=True)
    moved = collect(data.TrainBatches(split, affine).epoch(1))[0]
    assert moved.shape == plain.shape and not np.allclose(moved, plain)
    np.testing.assert_array_equal(collect(data.TrainBatches(split, affine).epoch(1))[0], moved)


@pytest.mark.parametrize("overrides, message", [
    (dict(affine_rotate_deg=-1.0), "rotate_deg"), (dict(affine_rotate_deg=181.0), "rotate_deg"),
    (dict(affine_scale=-0.1), "affine_scale"), (dict(affine_scale=1.0), "affine_scale"),
    (dict(affine_shift=-0.1), "affine_shift"), (dict(affine_shift=0.5), "affine_shift")])
def test_bad_affine_values_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        DataConfig(**overrides)


# ----------------------------------------------------------------------------
# Training on train + valid (--train_on_valid)


def test_train_on_valid_merges_valid_into_train_and_leaves_test_alone(tmp_path):
    rng = np.random.default_rng(0)
    classes = {"x": [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(3)], "y": [grey(50)]}
    valid = {"x": [grey(7)], "y": [grey(90), grey(91)]}
    dirs = make_dataset_dirs(tmp_path, classes, valid=valid)
    config = config_for(dirs, img_size=8, cache_dir=str(tmp_path / "cache"))
    plain = data.load_dataset(config, verbose=False)
    merged = data.load_dataset(dataclasses.replace(config, train_on_valid=True), verbose=False,
                               retraining=True)
    assert len(merged.train.labels) == len(plain.train.labels) + len(plain.valid.labels) == 7
    assert merged.train.paths == plain.train.paths + plain.valid.paths
    assert set(plain.valid.paths) <= set(merged.train.paths)
    np.testing.assert_array_equal(merged.train.labels,
                                  np.concatenate([plain.train.labels, plain.valid.labels]))
    np.testing.assert_array_equal(merged.train.images,
                                  np.concatenate([plain.train.images, plain.valid.images]))
    for got, expected in zip((merged.mean, merged.std), data.channel_mean_std(
            np.concatenate([plain.train.images, plain.valid.images]))):
        np.testing.assert_array_equal(got, expected)  # statistics of the merged training set
    assert merged.test.paths == plain.test.paths
    np.testing.assert_array_equal(merged.test.images, plain.test.images)
    assert len(cache_files(tmp_path / "cache", "train-valid-*.npy")) == 1


def test_train_on_valid_is_refused_outside_retraining(tmp_path):
    dirs = make_dataset_dirs(tmp_path, three_grey_classes())
    with pytest.raises(ConfigError, match="train_on_valid.*retraining only"):
        data.load_dataset(config_for(dirs, train_on_valid=True), verbose=False)


def test_retraining_on_valid_reports_no_valid_accuracy(tiny_folders, tmp_path, capsys):
    from src import fixed_train
    from tests.test_end_to_end import fixed_config
    config = fixed_config(tiny_folders, tmp_path / "final", num_epochs=1)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, train_on_valid=True))
    results = fixed_train.run(config)
    assert results["valid_accuracy"] is None and results["test_accuracy"] is not None
    assert results["num_train_images"] == 3 * (16 + 4)
    with open(tmp_path / "final" / "results.json") as f:
        assert '"valid_accuracy": null' in f.read()
    assert fixed_train.VALID_TRAINED_ON in capsys.readouterr().out
    assert fixed_train.VALID_TRAINED_ON == ("valid_accuracy: n/a (--train_on_valid: the "
                                            "validation images are trained on)")
