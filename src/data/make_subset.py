"""Write a class-balanced labelled list for any ImageFolder, reproducibly from a seed.

    python -m src.data.make_subset --data_path DATA --percent 1 --seed 0 --out DATA/subsets/1percent.txt
    python -m src.data.make_subset --data_path DATA --per_class 25 --seed 0 --out my_split.txt
    python -m src.data.make_subset --lab_dir LABELLED --percent 10 --seed 0 --out labelled_10.csv

From an own-data labelled source (``--lab_dir ROOT`` of class folders or ``--lab_csv FILE`` of ``path,class``
lines, docs/data.md) the list is drawn from the labelled images only (never from unlabelled ones) and written
as a ``path,class`` CSV for ``--lab_csv``, paths relative to the CSV's folder.

``--percent p`` keeps ``round(p% of n_c)`` images (at least one) of each class c: a stratified sample, so
the classes keep their share of the data, as in the ImageNet 1%/10% lists. ``--per_class n`` keeps exactly
n images of every class. Within a class the images are drawn by one seeded generator walking the classes
in sorted order, so a given seed always gives the same list, and for one seed a smaller selection is a
prefix of a larger one (the 1% list is inside the 10% list). The list uses the ImageNet name format when
every chosen file is named ``<class>_...`` directly in its class folder, else the ``<class>/<file>`` format.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import numpy as np

from src.atomic_io import write_text_atomic

from .errors import DataError
from .folders import class_index, scan_image_folder
from .sources import read_class_folders, read_labelled_csv


def select_balanced(files_by_class: dict[str, list[str]], *, percent: float | None = None,
                    per_class: int | None = None, seed: int = 0) -> dict[str, list[str]]:
    """Seeded per-class selection (see the module docstring); the chosen files of a class stay sorted."""
    if (percent is None) == (per_class is None):
        raise DataError("give exactly one of --percent and --per_class")
    if percent is not None and not 0 < percent <= 100:
        raise DataError(f"--percent {percent}: must be in (0, 100]")
    if per_class is not None and per_class < 1:
        raise DataError(f"--per_class {per_class}: must be at least 1")
    rng = np.random.default_rng(seed)
    chosen: dict[str, list[str]] = {}
    for name in sorted(files_by_class):
        files = sorted(files_by_class[name])
        order = rng.permutation(len(files))
        if per_class is not None:
            if per_class > len(files):
                raise DataError(f"--per_class {per_class}: class {name!r} has only {len(files)} images")
            k = per_class
        else:
            k = max(1, math.floor(len(files) * percent / 100 + 0.5))
        chosen[name] = sorted(files[i] for i in order[:k])
    return chosen


def subset_lines(chosen: dict[str, list[str]], fmt: str = "auto") -> list[str]:
    """List lines for ``{class: [path relative to the class folder, '/'-separated]}``."""
    imagenet_ok = all("_" not in name and all("/" not in f and f.startswith(name + "_") for f in files)
                      for name, files in chosen.items())
    if fmt == "imagenet" and not imagenet_ok:
        raise DataError("--format imagenet needs files named '<class>_<id>.<ext>' directly in their class folder "
                        "and class names without '_'; use --format path")
    use_imagenet = fmt == "imagenet" or (fmt == "auto" and imagenet_ok)
    return [f if use_imagenet else f"{name}/{f}" for name in sorted(chosen) for f in chosen[name]]


def make_subset(data_path: str, *, percent: float | None = None, per_class: int | None = None,
                seed: int = 0, fmt: str = "auto") -> list[str]:
    """Lines of a balanced labelled list for ``DATA/train``."""
    train_dir = os.path.join(data_path, "train")
    classes = class_index(train_dir)
    files_by_class: dict[str, list[str]] = {name: [] for name in classes}
    names = list(classes)
    for path, label in scan_image_folder(train_dir, classes):
        rel = os.path.relpath(path, os.path.join(train_dir, names[label]))
        files_by_class[names[label]].append(rel.replace(os.sep, "/"))
    return subset_lines(select_balanced(files_by_class, percent=percent, per_class=per_class, seed=seed), fmt)


def make_subset_from_source(lab_dir: str | None = None, lab_csv: str | None = None, *, out: str,
                            percent: float | None = None, per_class: int | None = None, seed: int = 0) -> list[str]:
    """``path,class`` lines (header first) of a balanced draw from a labelled source, paths relative to ``out``."""
    rows = read_class_folders(lab_dir, "--lab_dir") if lab_dir else read_labelled_csv(lab_csv)
    files_by_class: dict[str, list[str]] = {}
    for path, name in rows:
        files_by_class.setdefault(name, []).append(path)
    chosen = select_balanced(files_by_class, percent=percent, per_class=per_class, seed=seed)
    base = os.path.dirname(os.path.abspath(out))
    return ["path,class"] + [f"{os.path.relpath(path, base)},{name}" for name in sorted(chosen) for path in chosen[name]]


def write_subset(lines: list[str], out: str | os.PathLike) -> Path:
    return write_text_atomic(out, "".join(f"{line}\n" for line in lines), parents=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.data.make_subset", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data_path", help="dataset root holding train/<class>/<image>")
    source.add_argument("--lab_dir", help="own data: labelled class folders ROOT/<class>/<image> (writes a CSV)")
    source.add_argument("--lab_csv", help="own data: labelled 'path,class' file (writes a CSV)")
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--percent", type=float, help="keep this percentage of each class (stratified)")
    size.add_argument("--per_class", type=int, help="keep exactly this many images of each class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", dest="fmt", choices=["auto", "imagenet", "path"], default="auto")
    parser.add_argument("--out", required=True, help="list file to write (e.g. DATA/subsets/1percent.txt)")
    args = parser.parse_args(argv)
    try:
        if args.data_path:
            lines = make_subset(args.data_path, percent=args.percent, per_class=args.per_class, seed=args.seed,
                                fmt=args.fmt)
        else:
            lines = make_subset_from_source(args.lab_dir, args.lab_csv, out=args.out, percent=args.percent,
                                            per_class=args.per_class, seed=args.seed)
        out = write_subset(lines, args.out)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    count = len(lines) - (0 if args.data_path else 1)
    print(f"wrote {count} labelled images to {out}" + ("" if args.data_path else f" (train with --lab_csv {out})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
