"""CIFAR-10's official python tarball -> class folders the entry scripts read.

    python tools/cifar10_to_folders.py cifar-10-python.tar.gz cifar10
    python main_controller_child_trainer.py --flagfile presets/photo_search.flags --data_dir cifar10/train

Reads `cifar-10-batches-py/` inside the tarball (data_batch_1..5, test_batch, batches.meta:
python pickles of 32x32 RGB images as rows of 3072 bytes, the red, green and blue planes
one after another) and writes OUT/train/<class>/<nnnnn>.png (50,000 images) and
OUT/test/<class>/<nnnnn>.png (10,000), nnnnn being the image's index in its split. PNG
is lossless: the pixels are the tarball's. The official test images are kept apart: split
OUT/train with --data_dir (train, valid and a test part of it) and keep OUT/test for the
final check.

An OUT that exists and is not empty is refused unless --overwrite, which replaces its
train/ and test/ (nothing else in it). The folders are written under OUT/.incomplete and
moved into place at the end, so an interrupted run leaves no half-filled class folder.
A missing or malformed tarball is one line on stderr and exit 2.
"""
from __future__ import annotations

import argparse
import os
import pickle
import shutil
import sys
import tarfile
import time
import warnings
import zlib
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

BATCH_DIR = "cifar-10-batches-py"
SPLIT_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
META = "batches.meta"
SIDE = 32
ROW_BYTES = 3 * SIDE * SIDE
INCOMPLETE = ".incomplete"


class ConvertError(Exception):
    """A bad tarball or output folder; the message is one line."""


class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays and plain python values only: a tarball from the web must
    not be able to run code through pickle's class loading."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}  # bytes, as python 3 writes them at protocol 2

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected {module}.{name}")
        with warnings.catch_warnings():  # numpy 2 warns about the numpy.core path
            warnings.simplefilter("ignore", DeprecationWarning)
            return super().find_class(module, name)


def read_member(tar: tarfile.TarFile, tarball: str, name: str) -> Dict:
    """One pickle of the tarball, its keys decoded to str."""
    path = f"{BATCH_DIR}/{name}"
    try:
        handle = tar.extractfile(path)
    except KeyError:
        handle = None
    if handle is None:
        raise ConvertError(f"{tarball} holds no {path} (not the CIFAR-10 python version, "
                           "cifar-10-python.tar.gz?)")
    try:
        loaded = _ArraysOnly(handle, encoding="bytes").load()
    except Exception as error:  # any unpickling failure means a damaged file
        raise ConvertError(f"cannot read {path} in {tarball}: {error}") from None
    if not isinstance(loaded, dict):
        raise ConvertError(f"{path} in {tarball} is not a CIFAR-10 batch")
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in loaded.items()}


def class_names(tar: tarfile.TarFile, tarball: str) -> List[str]:
    names = read_member(tar, tarball, META).get("label_names")
    if not isinstance(names, list) or not names:
        raise ConvertError(f"{BATCH_DIR}/{META} in {tarball} has no label_names")
    return [name.decode() if isinstance(name, bytes) else str(name) for name in names]


def batch_images(batch: Dict, name: str, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    """(uint8 RGB images [N, 32, 32, 3], int labels [N]) of one batch, checked."""
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != ROW_BYTES:
        raise ConvertError(f"{name}: expected 'data' of rows of {ROW_BYTES} bytes")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        labels = np.zeros(0, np.int64)  # reported below
    if labels.shape != (len(data),) or labels.min(initial=0) < 0 or labels.max(initial=0) >= num_classes:
        raise ConvertError(f"{name}: 'labels' do not match 'data' or the {num_classes} classes")
    # A row is the red plane, then the green, then the blue, each 32 rows of 32 pixels.
    images = data.astype(np.uint8).reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)
    return images, labels


def write_png(path: str, rgb: np.ndarray) -> None:
    """Writes an RGB image; OpenCV expects BGR."""
    if not cv2.imwrite(path, np.ascontiguousarray(rgb[..., ::-1])):
        raise ConvertError(f"cannot write {path}")


def write_split(tar: tarfile.TarFile, tarball: str, split: str, names: List[str],
                out: str) -> Iterator[int]:
    """Writes one split's images under out/<class>/, yielding the count after each batch."""
    for name in names:
        os.makedirs(os.path.join(out, name), exist_ok=True)
    index = 0
    for batch_name in SPLIT_BATCHES[split]:
        images, labels = batch_images(read_member(tar, tarball, batch_name), batch_name, len(names))
        for image, label in zip(images, labels):
            write_png(os.path.join(out, names[label], f"{index:05d}.png"), image)
            index += 1
        yield index


def check_output_folder(out: str, overwrite: bool) -> None:
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConvertError(f"{out} exists and is not a folder")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise ConvertError(f"{out} is not empty; give --overwrite to replace its train/ and test/")


def open_tarball(tarball: str) -> tarfile.TarFile:
    if not os.path.isfile(tarball):
        raise ConvertError(f"no such file: {tarball} (download cifar-10-python.tar.gz from the "
                           "CIFAR-10 site)")
    try:
        return tarfile.open(tarball, "r:gz")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise ConvertError(f"{tarball} is not a readable .tar.gz ({error})") from None


def convert(tarball: str, out: str, overwrite: bool = False) -> Dict[str, int]:
    """Writes OUT/train and OUT/test; returns the number of images of each split."""
    check_output_folder(out, overwrite)
    staging = os.path.join(out, INCOMPLETE)
    started, counts = time.time(), {}
    with open_tarball(tarball) as tar:
        names = class_names(tar, tarball)
        shutil.rmtree(staging, ignore_errors=True)
        try:
            for split in SPLIT_BATCHES:
                for count in write_split(tar, tarball, split, names, os.path.join(staging, split)):
                    print(f"{split}: {count} images written ({time.time() - started:.0f} s)",
                          file=sys.stderr, flush=True)
                counts[split] = count
        except (tarfile.TarError, OSError, EOFError, zlib.error) as error:  # damaged, disk full
            shutil.rmtree(staging, ignore_errors=True)
            raise ConvertError(f"cannot convert {tarball}: {error}") from None
        except BaseException:  # a bad batch, or interrupted: leave OUT as it was
            shutil.rmtree(staging, ignore_errors=True)
            raise
    for split in SPLIT_BATCHES:  # in place only once both are complete
        shutil.rmtree(os.path.join(out, split), ignore_errors=True)
        os.replace(os.path.join(staging, split), os.path.join(out, split))
    os.rmdir(staging)
    return counts


def one_line(message: str) -> str:
    """Library errors (tarfile's) can span lines; the error is one."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("tarball", help="cifar-10-python.tar.gz, as downloaded")
    parser.add_argument("out", help="Output folder: OUT/train/<class>/ and OUT/test/<class>/")
    parser.add_argument("--overwrite", action="store_true", help="Replace OUT's train/ and "
                        "test/ when OUT is not empty.")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, int]:
    args = parse_args(argv)
    try:
        counts = convert(args.tarball, args.out, args.overwrite)
    except ConvertError as error:
        print(f"error: {one_line(str(error))}", file=sys.stderr)
        sys.exit(2)
    print(f"{counts['train']} training and {counts['test']} test images in "
          f"{os.path.join(args.out, 'train')} and {os.path.join(args.out, 'test')}")
    return counts


if __name__ == "__main__":
    main()
