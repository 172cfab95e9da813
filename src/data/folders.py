"""The ImageFolder layout ``DATA/{train,val}/<class>/<image>``: class map and file scan.

Same rules as torchvision's ``ImageFolder`` (class index = position of the folder name in sorted order,
image extensions, recursive walk following links), except that hidden folders (name starting with
``.``) are never classes, and that empty class folders and mismatched train/val classes stop with an
error naming the folder instead of a bare exception.
"""
from __future__ import annotations

import os

from .errors import DataError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
LAYOUT_HINT = "expected the ImageFolder layout DATA/train/<class>/<image> and DATA/val/<class>/<image>"


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def list_class_folders(root: str) -> list[str]:
    """Sorted names of the class folders directly under ``root`` (hidden folders skipped)."""
    if not os.path.isdir(root):
        raise DataError(f"{root} is not a directory; {LAYOUT_HINT} (check --data_path)")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"{root} has no class folders; {LAYOUT_HINT}")
    return classes


def class_index(train_dir: str) -> dict[str, int]:
    """Class name -> index, from the sorted class folders of the train split (as ImageFolder).

    The one map used for the unlabelled, labelled and validation sets.
    """
    return {name: i for i, name in enumerate(list_class_folders(train_dir))}


def check_same_classes(train_dir: str, val_dir: str) -> None:
    """Stop with an error naming the class and both folders when train and val hold different classes."""
    train, val = set(list_class_folders(train_dir)), set(list_class_folders(val_dir))
    missing_in_val, missing_in_train = sorted(train - val), sorted(val - train)
    problems = []
    if missing_in_val:
        problems.append(f"class folder(s) {_short(missing_in_val)} exist in {train_dir} but not in {val_dir}")
    if missing_in_train:
        problems.append(f"class folder(s) {_short(missing_in_train)} exist in {val_dir} but not in {train_dir}")
    if problems:
        raise DataError("; ".join(problems) + ". The train and val splits must have the same class folders "
                        "(the class index is the folder's position in sorted order): add or remove folders so "
                        "that both list the same classes.")


def scan_image_folder(root: str, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """``[(path, class_index)]`` for every image under ``root/<class>/`` (sorted, recursive).

    Every class of ``class_to_idx`` must have a folder under ``root`` holding at least one image.
    """
    samples: list[tuple[str, int]] = []
    for name in sorted(class_to_idx, key=class_to_idx.__getitem__):
        folder = os.path.join(root, name)
        if not os.path.isdir(folder):
            raise DataError(f"class folder {folder} is missing ({LAYOUT_HINT})")
        found = [(os.path.join(dirpath, f), class_to_idx[name])
                 for dirpath, _, files in sorted(os.walk(folder, followlinks=True))
                 for f in sorted(files) if is_image_file(f)]
        if not found:
            raise DataError(f"class folder {folder} holds no image (extensions {', '.join(IMG_EXTENSIONS)}): "
                            "add its images or remove the empty folder from every split")
        samples.extend(found)
    return samples


def _short(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
