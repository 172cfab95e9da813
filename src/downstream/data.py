"""Loaders of the evaluation scripts: one training pass per epoch and the ``val`` split.

As the release: a DistributedSampler over the training images (shuffled, seeded, ``set_epoch`` every epoch),
``drop_last`` for fine-tuning and not for the linear probe; the training transform is RandomResizedCrop + flip
(+ the light jitter with ``--light_augment``), validation Resize + CenterCrop. The images of each sample and
the Mixup/CutMix of each batch are seeded from (seed, epoch, index) (``src.data.seeding``), so a resumed run
sees the batches an uninterrupted one would.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from torch.utils.data import DataLoader

from src.data import (IMAGENET_MEAN, SWAV_STD, ImageDataset, LabelledCollate, Normalization, build_datasets,
                      build_unlabelled_loader, build_val_loader, check_same_classes, class_index,
                      labelled_transform, scan_image_folder, val_transform)
from src.data_setup import capped_workers
from src.distributed import DistInfo
from src.errors import UserError
from src.logging_utils import get_logger


@dataclass
class EvalData:
    train_loader: DataLoader
    val_loader: DataLoader
    class_names: list[str]
    iters_per_epoch: int  # len(train_loader), or --max_iters_per_epoch when smaller

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def normalization(args: argparse.Namespace) -> Normalization:
    return Normalization(tuple(args.mean or IMAGENET_MEAN), tuple(args.std or SWAV_STD))


def build_eval_data(args: argparse.Namespace, dist: DistInfo, labelled_subset: bool, light_augment: bool = False,
                    mixup: str | None = None, drop_last: bool = True) -> EvalData:
    """Training images = the labelled list (``labelled_subset``: ``--subset_file`` or ``--labels_perc``) or the
    whole train split; ``mixup`` = None, "extend" or "replace" (the release's CollateMixup: mixup alpha 0.8,
    CutMix alpha 1, switch 0.5, every batch mixed, no label smoothing)."""
    data_path = os.path.abspath(args.data_path)
    if not os.path.isdir(data_path):
        raise UserError(f"--data_path {data_path} does not exist: point it at a folder with train/<class>/ and "
                        "val/<class>/ (e.g. `python -m src.data.fashion_mnist --out data/fashion-mnist`)")
    norm = normalization(args)
    train_tf = labelled_transform("light" if light_augment else "plain", size=args.crop_size, normalization=norm)
    val_tf = val_transform(args.val_resize or None, args.val_crop or None, normalization=norm)
    if labelled_subset:
        data = build_datasets(data_path, None, train_tf, val_tf, labels_perc=args.labels_perc,
                              subset_file=args.subset_file)
        train, val, classes, source = data.labelled, data.val, data.class_to_idx, str(data.subset_file)
    else:
        train_dir, val_dir = os.path.join(data_path, "train"), os.path.join(data_path, "val")
        classes = class_index(train_dir)
        check_same_classes(train_dir, val_dir)
        train = ImageDataset(scan_image_folder(train_dir, classes), classes, train_tf)
        val = ImageDataset(scan_image_folder(val_dir, classes), classes, val_tf)
        source = "all of train"
    per_rank = -(-len(train) // dist.world_size)
    if drop_last and per_rank < args.batch_size:
        raise UserError(f"{len(train)} training images ({source}) make no batch of --batch_size {args.batch_size} "
                        f"on {dist.world_size} process(es): lower --batch_size")
    workers = capped_workers(args.workers)
    pin = dist.device.type == "cuda"
    collate = LabelledCollate(num_classes=len(classes), mixup=mixup, mixup_prob=1.0, mixup_alpha=0.8,
                              cutmix_alpha=1.0, switch_prob=0.5)
    train_loader = build_unlabelled_loader(train, args.batch_size, dist.rank, dist.world_size, args.seed, workers,
                                           collate, pin_memory=pin, drop_last=drop_last)
    val_loader = build_val_loader(val, args.val_batch_size or args.batch_size, dist.rank, dist.world_size, workers,
                                  pin_memory=pin)
    iters = min(len(train_loader), args.max_iters_per_epoch or len(train_loader))
    get_logger().info("data: %d classes, %d training images (%s), %d val images; %d iterations per epoch",
                      len(classes), len(train), source, len(val), iters)
    return EvalData(train_loader, val_loader, train.classes, iters)
