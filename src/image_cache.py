"""Image folders -> keyed uint8 arrays on disk (memory-mapped), decoded once.

A folder DIR/<class>/<image> is listed, every image decoded with OpenCV and
resized, and the result written as one uint8 [N, size, size, channel] .npy file
in the cache folder. Its name holds a hash of everything the pixels depend on
(the file list with sizes and modification times, the size, the channel), so a
later run with the same inputs maps the file instead of decoding again, and a
changed, added or removed image makes a new one. A JSON sidecar next to it
holds the labels, paths and class names; it is written last, and a cache file
without it is never trusted.

Arrays are built under a temporary name and renamed when complete, so a run
killed while building leaves no file a later run would use. Nothing here
holds a whole data set in memory: images go from the decoder to the mapped
file in chunks, and readers get read-only memory maps (file-backed pages that
the kernel can drop, not anonymous memory).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from typing import Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np
from numpy.lib.format import open_memmap

from src import configs, run_dir

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
# Part of every key: bump it when the decoding (or the file layout) changes.
CACHE_FORMAT = 1
CACHE_SUBDIR = configs.CACHE_SUBDIR  # the default cache folder inside the output folder

_READ_THREADS = min(8, os.cpu_count() or 1)  # cv2 releases the GIL while decoding
_DECODE_CHUNK = 1024  # images decoded before they are written to the mapped file


class DataError(ValueError):
    """The data cannot be used; the message names the problem in one line."""


@dataclasses.dataclass
class Listing:
    """The images of one folder, in class then file name order."""
    directory: str
    class_names: List[str]
    paths: List[str]
    labels: np.ndarray  # int32 [N]
    stats: List[Tuple[int, int]]  # (size in bytes, mtime in ns) of each path


@dataclasses.dataclass
class CachedArray:
    """A complete cache file, mapped read-only."""
    images: np.memmap  # uint8 [N, H, W, C]
    path: str  # the .npy file ('' when the cache is not kept)
    built: bool  # False: reused from an earlier run
    seconds: float  # to build it, or to find and map it


# ----------------------------------------------------------------------------
# Listing


def list_folder(directory: str) -> Listing:
    """The images of DIR/<class>/<image>, with the sizes and times that key the cache."""
    class_names = list_classes(directory)
    paths, labels, stats = [], [], []
    for label, class_name in enumerate(class_names):
        for path, stat in list_images(os.path.join(directory, class_name)):
            paths.append(path)
            labels.append(label)
            stats.append((stat.st_size, stat.st_mtime_ns))
    return Listing(directory=directory, class_names=class_names, paths=paths,
                   labels=np.asarray(labels, np.int32), stats=stats)


def list_files(directory: str, relative_paths: List[str], source: str = "a list") -> Listing:
    """The listed images of DIR/<class>/<image> (paths relative to DIR, '/'-separated), in
    the list's order, labelled by their class folder; the classes are all of DIR's."""
    class_names = list_classes(directory)
    label_of = {name: label for label, name in enumerate(class_names)}
    paths, labels, stats = [], [], []
    for relative in relative_paths:
        parts = relative.split("/")
        if len(parts) != 2 or parts[0] not in label_of:
            raise DataError(f"{source} names {relative!r}, not an image in a class folder of "
                            f"{directory} (the lists were drawn from another folder?)")
        path = os.path.join(directory, *parts)
        try:
            stat = os.stat(path)
        except OSError:
            raise DataError(f"{source} names a missing image: {path}") from None
        paths.append(path)
        labels.append(label_of[parts[0]])
        stats.append((stat.st_size, stat.st_mtime_ns))
    return Listing(directory=directory, class_names=class_names, paths=paths,
                   labels=np.asarray(labels, np.int32), stats=stats)


def list_classes(directory: str) -> List[str]:
    """Sorted names of the visible subfolders of `directory`."""
    if not os.path.isdir(directory):
        raise DataError(f"data folder not found: {directory}")
    names = sorted(name for name in os.listdir(directory)
                   if not name.startswith(".") and os.path.isdir(os.path.join(directory, name)))
    if not names:
        raise DataError(f"no class subfolders in {directory} (expected {directory}/<class>/<image>)")
    return names


def list_images(class_dir: str) -> List[Tuple[str, os.stat_result]]:
    """Sorted (path, stat) of the visible image files in one class folder."""
    with os.scandir(class_dir) as entries:
        found = sorted((os.path.join(class_dir, entry.name), entry.stat()) for entry in entries
                       if is_image_name(entry.name) and entry.is_file())
    if not found:
        raise DataError(f"no images in class folder {class_dir} "
                        f"(extensions: {' '.join(sorted(IMAGE_EXTENSIONS))})")
    return found


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


# ----------------------------------------------------------------------------
# Decoding


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


def decode_into(out: np.ndarray, paths: List[str], channel: int, size: int) -> None:
    """Decodes `paths` into the rows of `out`, a chunk of threads at a time."""
    with concurrent.futures.ThreadPoolExecutor(_READ_THREADS) as pool:
        for start in range(0, len(paths), _DECODE_CHUNK):
            chunk = paths[start:start + _DECODE_CHUNK]
            for row, image in enumerate(pool.map(lambda p: read_image(p, channel, size), chunk)):
                out[start + row] = image


# Colour or grey: a few images of a folder are decoded in colour to tell which it holds.
CHANNEL_SAMPLE = 8
# A pixel is coloured when its channels differ by more than COLOUR_LEVELS (a grey JPEG's
# chroma noise stays below); an image is colour when over COLOUR_SHARE of its pixels are.
COLOUR_LEVELS = 12
COLOUR_SHARE = 0.02


def looks_colour(path: str) -> Optional[bool]:
    """True if the image at `path` is in colour, False if grey, None if unreadable."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)  # a grey file comes back with 3 equal channels
    if image is None:
        return None
    spread = image.max(axis=2).astype(np.int16) - image.min(axis=2)
    return float(np.mean(spread > COLOUR_LEVELS)) > COLOUR_SHARE


def channel_mismatch_warning(paths: List[str], channel: int, source: str) -> str:
    """One warning line naming the right --channel if most of up to CHANNEL_SAMPLE of
    `paths` (spread over the list, so over its classes) are colour and `channel` is 1, or
    grey and it is 3; else ''."""
    step = max(1, len(paths) // CHANNEL_SAMPLE)
    verdicts = [v for v in map(looks_colour, paths[::step][:CHANNEL_SAMPLE]) if v is not None]
    colour = sum(verdicts)
    if not verdicts or channel not in (1, 3) or (colour * 2 > len(verdicts)) == (channel == 3):
        return ""
    if channel == 1:
        return (f"warning: {source} holds colour images ({colour} of {len(verdicts)} sampled), "
                "read grey with --channel 1: give --channel 3 to train in colour")
    return (f"warning: {source} holds grey images ({len(verdicts) - colour} of {len(verdicts)} "
            "sampled), read as colour with --channel 3: give --channel 1 (the same pixels, a "
            "third of the input)")


# ----------------------------------------------------------------------------
# The cache


def folder_key(listing: Listing, img_size: int, channel: int) -> Dict:
    """What the decoded pixels depend on."""
    root = os.path.abspath(listing.directory)
    files = [[os.path.relpath(os.path.abspath(p), root), size, mtime]
             for p, (size, mtime) in zip(listing.paths, listing.stats)]
    return {"format": CACHE_FORMAT, "folder": root, "img_size": img_size, "channel": channel,
            "files": files}


def digest(key: Dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:20]


def cached_folder(listing: Listing, name: str, img_size: int, channel: int,
                  cache_dir: str) -> CachedArray:
    """The folder's images decoded into the cache (built now, or reused)."""
    shape = (len(listing.paths), img_size, img_size, channel)
    sidecar = {"kind": "folder", "class_names": listing.class_names, "paths": listing.paths,
               "labels": listing.labels.tolist()}
    return cached_array(cache_dir, name, folder_key(listing, img_size, channel), shape,
                        lambda out: decode_into(out, listing.paths, channel, img_size), sidecar)


def cached_array(cache_dir: str, name: str, key: Dict, shape: Tuple[int, ...],
                 fill: Callable[[np.ndarray], None], sidecar: Optional[Dict] = None) -> CachedArray:
    """The uint8 array of `shape` stored under `key`: mapped from the cache if a complete
    one is there, else made by `fill(out)` (out: a writable uint8 memmap of `shape`).

    cache_dir '' keeps nothing: the array is built in a temporary file that is deleted
    at once (the mapping keeps its data until the array is dropped)."""
    start = time.time()
    if not cache_dir:
        return _uncached_array(name, shape, fill, start)
    array_path, sidecar_path = cache_paths(cache_dir, name, key)
    images = _complete_cache(array_path, sidecar_path, shape)
    if images is not None:
        return CachedArray(images, array_path, built=False, seconds=time.time() - start)
    os.makedirs(cache_dir, exist_ok=True)
    remove_dead_temp_files(cache_dir)
    _build(array_path, shape, fill)
    # The sidecar is written last: a cache file without it is rebuilt, never trusted.
    _write_atomic(sidecar_path, json.dumps({**(sidecar or {}), "key_digest": digest(key),
                                            "shape": list(shape)}).encode("utf-8"))
    return CachedArray(open_memmap(array_path, mode="r"), array_path, built=True,
                       seconds=time.time() - start)


def cache_paths(cache_dir: str, name: str, key: Dict) -> Tuple[str, str]:
    """(the .npy file, its .json sidecar) of `key`."""
    stem = os.path.join(cache_dir, f"{name}-{digest(key)}")
    return stem + ".npy", stem + ".json"


def _complete_cache(array_path: str, sidecar_path: str, shape) -> Optional[np.memmap]:
    """The mapped array if both files are there and agree, else None."""
    if not (os.path.isfile(array_path) and os.path.isfile(sidecar_path)):
        return None
    try:
        with open(sidecar_path, encoding="utf-8") as f:
            recorded = json.load(f)
        images = open_memmap(array_path, mode="r")
    except (OSError, ValueError):
        return None  # unreadable: built again
    if tuple(recorded.get("shape", ())) != tuple(shape) or images.shape != tuple(shape) \
            or images.dtype != np.uint8:
        return None
    return images


def _build(array_path: str, shape, fill: Callable[[np.ndarray], None]) -> None:
    """Fills a temporary file, then renames it to `array_path` (atomic)."""
    tmp_path = _temp_name(array_path)
    try:
        out = open_memmap(tmp_path, mode="w+", dtype=np.uint8, shape=shape)
        fill(out)
        out.flush()
        del out
        _fsync(tmp_path)
        run_dir.failpoint("cache_built")
        os.replace(tmp_path, array_path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def _uncached_array(name: str, shape, fill, start: float) -> CachedArray:
    folder = tempfile.mkdtemp(prefix=f"enas-{name}-")
    try:
        path = os.path.join(folder, f"{name}.npy")
        out = open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
        fill(out)
        out.flush()
        del out
        images = open_memmap(path, mode="r")
    finally:
        shutil.rmtree(folder)  # the open mapping keeps the data (POSIX)
    return CachedArray(images, "", built=True, seconds=time.time() - start)


def _write_atomic(path: str, data: bytes) -> None:
    tmp_path = _temp_name(path)
    try:
        with open(tmp_path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def _temp_name(path: str) -> str:
    """.NAME.PID.RANDOM.tmp next to `path`: the pid tells a dead builder's leftovers."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def remove_dead_temp_files(cache_dir: str) -> None:
    """Deletes the temporary files of builders that are gone (killed mid-build); those
    of a live process (another run sharing the cache folder) are left alone."""
    for name in os.listdir(cache_dir):
        parts = name.split(".")
        if not (name.startswith(".") and name.endswith(".tmp") and len(parts) >= 4):
            continue
        pid = parts[-3]
        if pid.isdigit() and not run_dir.process_alive(int(pid)):
            try:
                os.remove(os.path.join(cache_dir, name))
            except FileNotFoundError:
                pass  # removed by another run meanwhile


    return True


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def default_cache_dir(output_dir: str) -> str:
    return os.path.join(output_dir, CACHE_SUBDIR)
