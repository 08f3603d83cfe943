"""Builds the bundled data folders data/{train,valid,test}/<class>/<name>.png from a zip
of MNIST PNGs laid out as <class>/<name>.png.

Each class gives 350 train, 50 valid and 100 test images (3,500 / 500 / 1,000 over
10 classes), chosen deterministically: the names in sorted order, then a seeded
shuffle. The PNG bytes are copied unchanged.

    python tools/make_bundled_data.py [ZIP] [--out data] [--seed 0] [--force]
"""
from __future__ import annotations

import argparse
import os
import posixpath
import shutil
import sys
import zipfile
from typing import Dict, List, NoReturn

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_ZIP = "/work/shared/data/mnist-png-5000.zip"
SPLIT_SIZES = {"train": 350, "valid": 50, "test": 100}  # images per class


def fail(message: str) -> NoReturn:
    """Stops with a one-line message and exit status 2, like the entry scripts."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("zip_path", nargs="?", default=DEFAULT_ZIP, help="zip of <class>/<name>.png")
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "data"), help="folder for the splits")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-class shuffle")
    parser.add_argument("--force", action="store_true", help="replace existing split folders")
    return parser.parse_args(argv)


def pngs_by_class(archive: zipfile.ZipFile) -> Dict[str, List[str]]:
    """Member names of the zip grouped by their top folder, each list sorted."""
    groups: Dict[str, List[str]] = {}
    for name in archive.namelist():
        parts = name.split("/")
        if len(parts) == 2 and parts[1].lower().endswith(".png") and not parts[1].startswith("."):
            groups.setdefault(parts[0], []).append(name)
    return {label: sorted(names) for label, names in sorted(groups.items())}


def choose_splits(names: List[str], rng: np.random.Generator) -> Dict[str, List[str]]:
    """Shuffles one class's names and cuts them into the splits, in SPLIT_SIZES order."""
    needed = sum(SPLIT_SIZES.values())
    if len(names) < needed:
        fail(f"class folder {posixpath.dirname(names[0])} has {len(names)} images, {needed} needed")
    shuffled = [names[i] for i in rng.permutation(len(names))]
    chosen, start = {}, 0
    for split, size in SPLIT_SIZES.items():
        chosen[split] = shuffled[start:start + size]
        start += size
    return chosen


def check_can_write(out: str, force: bool) -> None:
    """Refuses to replace a non-empty split folder unless forced."""
    for split in SPLIT_SIZES:
        path = os.path.join(out, split)
        if os.path.isdir(path) and os.listdir(path) and not force:
            fail(f"{path} exists and is not empty (use --force to replace it)")


def write_split(archive: zipfile.ZipFile, out: str, split: str, chosen: Dict[str, List[str]]) -> int:
    """Copies the chosen members to out/split/<class>/<name>.png; returns the count."""
    split_dir = os.path.join(out, split)
    shutil.rmtree(split_dir, ignore_errors=True)
    for label, names in chosen.items():
        class_dir = os.path.join(split_dir, label)
        os.makedirs(class_dir)
        for name in names:
            with open(os.path.join(class_dir, posixpath.basename(name)), "wb") as file:
                file.write(archive.read(name))
    return sum(len(names) for names in chosen.values())


def main(argv: List[str]) -> None:
    args = parse_args(argv)
    if not zipfile.is_zipfile(args.zip_path):
        fail(f"not a readable zip file: {args.zip_path}")
    check_can_write(args.out, args.force)
    rng = np.random.default_rng(args.seed)
    with zipfile.ZipFile(args.zip_path) as archive:
        groups = pngs_by_class(archive)
        if not groups:
            fail(f"no <class>/<name>.png members in {args.zip_path}")
        per_class = {label: choose_splits(names, rng) for label, names in groups.items()}
        for split in SPLIT_SIZES:
            chosen = {label: splits[split] for label, splits in per_class.items()}
            count = write_split(archive, args.out, split, chosen)
            print(f"{split}: {count} images in {len(chosen)} classes -> {os.path.join(args.out, split)}")


if __name__ == "__main__":
    main(sys.argv[1:])
