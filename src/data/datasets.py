"""Datasets of a semi-supervised run: unlabelled = all of ``train``, labelled = a listed subset of
``train``, val = ``val``; one class map (train's sorted folders) for all three.

Items: ``(transform(image), label)`` where ``image`` is the RGB PIL image, so the unlabelled set with a
multi-view transform gives ``(views: list[Tensor], label)``, the labelled set ``(image or list of
repeated views, label)``, the val set ``(image, label)``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch.utils.data import Dataset

from .folders import check_same_classes, class_index, scan_image_folder
from .images import load_rgb
from .subsets import labelled_samples, resolve_subset_file


class ImageDataset(Dataset):
    """``(transform(load_rgb(path)), label)`` for a list of ``(path, label)`` samples."""

    def __init__(self, samples: list[tuple[str, int]], class_to_idx: dict[str, int],
                 transform: Callable | None = None) -> None:
        self.samples = samples
        self.class_to_idx = class_to_idx
        self.classes = sorted(class_to_idx, key=class_to_idx.__getitem__)
        self.transform = transform

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        image = load_rgb(path)
        return (self.transform(image) if self.transform is not None else image), label


@dataclass
class SemiSupervisedData:
    unlabelled: ImageDataset
    labelled: ImageDataset
    val: ImageDataset
    class_to_idx: dict[str, int]
    subset_file: Path


def build_datasets(data_path: str, unlabelled_transform: Callable | None, labelled_transform: Callable | None,
                   val_transform: Callable | None, labels_perc: int | str | None = None,
                   subset_file: str | os.PathLike | None = None,
                   cache_dir: str | os.PathLike | None = None) -> SemiSupervisedData:
    """Scan ``DATA/train`` and ``DATA/val`` (same classes required), read the labelled list
    (``subset_file``, else the ``labels_perc`` list, see ``resolve_subset_file``) and build the three sets."""
    train_dir, val_dir = os.path.join(data_path, "train"), os.path.join(data_path, "val")
    classes = class_index(train_dir)
    check_same_classes(train_dir, val_dir)
    train_samples = scan_image_folder(train_dir, classes)
    subset = resolve_subset_file(data_path, labels_perc, subset_file, cache_dir)
    labelled = labelled_samples(subset, train_dir, classes, known_files={p for p, _ in train_samples})
    return SemiSupervisedData(unlabelled=ImageDataset(train_samples, classes, unlabelled_transform),
                              labelled=ImageDataset(labelled, classes, labelled_transform),
                              val=ImageDataset(scan_image_folder(val_dir, classes), classes, val_transform),
                              class_to_idx=classes, subset_file=subset)
