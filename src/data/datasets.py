"""Datasets of a semi-supervised run: unlabelled = all of ``train``, labelled = a listed subset of
``train``, val = ``val``; one class map (train's sorted folders) for all three. Or, from your own separate
sources (``build_own_datasets``, see ``src.data.sources``): the classes are the labelled source's and the
validation set is optional.

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
from .sources import FileLists, OwnDataSpec, cached_file_lists
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
    val: ImageDataset | None  # None: no validation source (own data only)
    class_to_idx: dict[str, int]
    subset_file: Path | str  # where the labelled images came from
    val_missing_classes: tuple[str, ...] = ()  # classes with no validation image

    @property
    def class_names(self) -> list[str]:
        """Class names in index order (what a checkpoint carries to name its outputs)."""
        return sorted(self.class_to_idx, key=self.class_to_idx.__getitem__)


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


def build_own_datasets(spec: OwnDataSpec, unlabelled_transform: Callable | None, labelled_transform: Callable | None,
                       val_transform: Callable | None, cache_dir: str | None = None, rescan: bool = False,
                       lists: FileLists | None = None) -> SemiSupervisedData:
    """The three sets from separate sources (``src.data.sources``); file lists cached in ``cache_dir``."""
    if lists is None:
        lists = cached_file_lists(spec, cache_dir, rescan)
    classes = {name: i for i, name in enumerate(lists.classes)}
    val = ImageDataset(lists.val, classes, val_transform) if lists.val is not None else None
    return SemiSupervisedData(unlabelled=ImageDataset(lists.unlabelled, classes, unlabelled_transform),
                              labelled=ImageDataset(lists.labelled, classes, labelled_transform),
                              val=val, class_to_idx=classes, subset_file=spec.lab_dir or spec.lab_csv or "",
                              val_missing_classes=tuple(lists.val_missing_classes))
