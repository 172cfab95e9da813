"""A small synthetic ImageFolder whose classes a model can learn (tests and benchmarks).

Class c (folder ``c<c>``) draws a filled square of its own colour (hue c / num_classes), of random size
and position, over grey noise. Writes ``ROOT/train/<class>/<class>_<i>.png``, ``ROOT/val/...`` and the
labelled list ``ROOT/subsets/labelled.txt`` (ImageNet name format, ``subset_per_class`` images of each
class, the first ones by index).
"""
from __future__ import annotations

import colorsys
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from src.atomic_io import write_text_atomic


@dataclass(frozen=True)
class SyntheticPaths:
    root: Path
    train: Path
    val: Path
    subset_file: Path
    classes: tuple[str, ...]


def class_colour(c: int, num_classes: int) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(c / num_classes, 0.9, 0.95)
    return np.array([r, g, b]) * 255.0


def synthetic_image(c: int, num_classes: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One (size, size, 3) uint8 image of class ``c``."""
    image = rng.normal(128.0, 30.0, size=(size, size, 1)).repeat(3, axis=2)
    side = int(rng.integers(size // 3, size // 2 + 2))
    y, x = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    image[y:y + side, x:x + side] = class_colour(c, num_classes) + rng.normal(0.0, 10.0, size=(side, side, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def make_synthetic_imagefolder(root: str | os.PathLike, num_classes: int = 4, train_per_class: int = 16,
                               val_per_class: int = 4, size: int = 32, seed: int = 0,
                               subset_per_class: int = 4) -> SyntheticPaths:
    """Write the dataset (deterministic for a seed) and return its paths."""
    if not 0 < subset_per_class <= train_per_class:
        raise ValueError("subset_per_class must be in [1, train_per_class]")
    root = Path(root)
    rng = np.random.default_rng(seed)
    classes = tuple(f"c{c}" for c in range(num_classes))
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(synthetic_image(c, num_classes, size, rng)).save(folder / f"{name}_{i}.png")
    subset = write_text_atomic(root / "subsets" / "labelled.txt",
                               "".join(f"{name}_{i}.png\n" for name in classes for i in range(subset_per_class)),
                               parents=True)
    return SyntheticPaths(root, root / "train", root / "val", subset, classes)


@dataclass(frozen=True)
class OwnLayoutPaths:
    lab_dir: Path  # lab/<class>/<image>
    unlab_dir: Path  # unlab/<image>, flat, plus unlab/more/<image> (a sub-folder)
    val_dir: Path  # val/<class>/<image>
    lab_csv: Path  # lab.csv: 'path,class' lines, relative to the file, for the images of lab_dir
    unlab_list: Path  # unlab.txt: the unlabelled images, one relative path a line
    classes: tuple[str, ...]


def make_synthetic_own_layout(root: str | os.PathLike, num_classes: int = 4, lab_per_class: int = 4,
                              unlab_per_class: int = 12, val_per_class: int = 4, size: int = 32,
                              seed: int = 0) -> OwnLayoutPaths:
    """The same images as ``make_synthetic_imagefolder`` arranged as own data: labelled images in class
    folders and a CSV, unlabelled ones flat (half in a sub-folder) with no class, and a list file of them."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    classes = tuple(f"c{c}" for c in range(num_classes))
    csv_lines, unlab_lines = ["path,class"], []
    for c, name in enumerate(classes):
        for i in range(lab_per_class + unlab_per_class + val_per_class):
            if i < lab_per_class:
                rel = f"lab/{name}/{name}_{i}.png"
                csv_lines.append(f"{rel},{name}")
            elif i < lab_per_class + unlab_per_class:
                rel = f"unlab/{'more/' if i % 2 else ''}img_{name}_{i}.png"
                unlab_lines.append(rel)
            else:
                rel = f"val/{name}/{name}_{i}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(synthetic_image(c, num_classes, size, rng)).save(root / rel)
    write_text_atomic(root / "lab.csv", "".join(f"{line}\n" for line in csv_lines))
    write_text_atomic(root / "unlab.txt", "".join(f"{line}\n" for line in unlab_lines))
    return OwnLayoutPaths(root / "lab", root / "unlab", root / "val", root / "lab.csv", root / "unlab.txt", classes)
