"""From the parsed flags to the three loaders of a run (unlabelled multi-crop, infinite labelled, validation).

The release built these inline in each ``main_*.py``; here one function serves both methods, which only
supply their unlabelled multi-crop transform, batch sizes and normalisation (``DataConfig.from_args``).
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Callable, Iterator

from torch.utils.data import DataLoader

from src import distributed
from src.data import (IMAGENET_MEAN, InfiniteLabelledLoader, LabelledBatch, LabelledCollate, Normalization,
                      OwnDataSpec, SemiSupervisedData, SkipBadImages, SkippedCollate, UnlabelledBatch,
                      UnlabelledCollate, build_datasets, build_own_datasets, build_unlabelled_loader,
                      build_val_loader, cached_file_lists, dino_multicrop, labelled_transform, swav_multicrop,
                      val_transform)
from src.data.device_aug import DevicePhotometric
from src.data.fast_aug import accelerate, hue_tables
from src.distributed import DistInfo, local_world_size
from src.errors import UserError
from src.logging_utils import get_logger

MultiCropFactory = Callable[[Normalization], Callable]


@dataclass
class DataConfig:
    data_path: str
    labels_perc: str | None
    subset_file: str | None
    multicrop: MultiCropFactory
    unlab_batch_size: int
    lab_batch_size: int
    val_batch_size: int
    workers: int
    seed: int
    normalization: Normalization  # labelled and validation images
    unlab_normalization: Normalization  # unlabelled views
    lab_kind: str
    lab_crop_size: int
    lab_min_scale: float
    simple_crop: bool
    val_resize: int | None
    val_crop: int | None
    mixup_unlab: str | None
    mixup_lab: str | None
    mixup_lab_prob: float
    train_mode: str
    max_iters_per_epoch: int
    sources: OwnDataSpec = OwnDataSpec()  # own-data sources (docs/data.md); inactive: DATA/train + DATA/val
    cache_dir: str | None = None  # where the own-data file lists are cached (the output directory)
    rescan: bool = False
    fast_aug: bool = False  # --fast_aug: src.data.fast_aug
    gpu_aug: bool = False  # --gpu_aug: src.data.device_aug
    order_seed: int = 0  # shuffles both training streams: 0 (the release's DistributedSampler), --order_by_seed: --seed

    @classmethod
    def from_args(cls, args: argparse.Namespace, unlab_batch_size: int, lab_batch_size: int, workers: int,
                  multicrop: MultiCropFactory, default_std: tuple[float, float, float],
                  default_unlab_std: tuple[float, float, float] | None = None) -> "DataConfig":
        lab_kind = "light" if args.light_augment_lab else "augment3" if args.augment3_lab else "standard"
        return cls(
            data_path=os.path.abspath(args.data_path), labels_perc=args.labels_perc, subset_file=args.subset_file,
            multicrop=multicrop, unlab_batch_size=unlab_batch_size, lab_batch_size=lab_batch_size,
            val_batch_size=args.val_batch_size or unlab_batch_size, workers=workers, seed=args.seed,
            normalization=Normalization(tuple(args.mean or IMAGENET_MEAN), tuple(args.std or default_std)),
            unlab_normalization=Normalization(tuple(args.mean or IMAGENET_MEAN),
                                              tuple(args.std or default_unlab_std or default_std)),
            lab_kind=lab_kind, lab_crop_size=args.lab_crop_size, lab_min_scale=args.lab_min_scale, simple_crop=args.simple_crop,
            val_resize=args.val_resize or None, val_crop=args.val_crop or None,
            mixup_unlab=args.mixup_unlab_type if args.mixup_unlab else None,
            mixup_lab=args.mixup_lab_type if args.mixup_lab else None, mixup_lab_prob=args.mixup_lab_prob,
            train_mode=args.train_mode, max_iters_per_epoch=args.max_iters_per_epoch,
            sources=OwnDataSpec.from_args(args), cache_dir=os.path.abspath(args.output_dir),
            rescan=args.rescan_data, fast_aug=args.fast_aug, gpu_aug=args.gpu_aug,
            order_seed=args.seed if args.order_by_seed else 0)


    def eval_preprocessing(self) -> dict:
        """How validation prepares an image (stored in checkpoints; :func:`eval_transform` rebuilds it)."""
        return {"resize": self.val_resize, "crop": self.val_crop, "mean": list(self.normalization.mean),
                "std": list(self.normalization.std)}


def eval_transform(preprocessing: dict) -> Callable:
    """The validation transform described by a checkpoint's ``eval_preprocessing``."""
    return val_transform(preprocessing["resize"], preprocessing["crop"],
                         normalization=Normalization(tuple(preprocessing["mean"]), tuple(preprocessing["std"])))


def swav_multicrop_config(args: argparse.Namespace) -> MultiCropFactory:
    """SwAV multi-crop from Suave's flags (``--nmb_crops``, ``--size_crops``, scales, ``--color_jit_unlab``)."""
    lengths = {len(args.nmb_crops), len(args.size_crops), len(args.min_scale_crops), len(args.max_scale_crops)}
    if len(lengths) != 1:
        raise UserError("--nmb_crops, --size_crops, --min_scale_crops and --max_scale_crops need one value per crop "
                        f"group; got {args.nmb_crops}, {args.size_crops}, {args.min_scale_crops}, {args.max_scale_crops}")
    return lambda norm: swav_multicrop(args.size_crops, args.nmb_crops, args.min_scale_crops, args.max_scale_crops,
                                       color_jitter=args.color_jit_unlab, normalization=norm,
                                       blur_radius=tuple(args.blur_radius))


def dino_multicrop_config(args: argparse.Namespace) -> MultiCropFactory:
    """DINO's global + local crops from Daino's flags."""
    return lambda norm: dino_multicrop(args.global_crops_scale, args.local_crops_scale, args.local_crops_number,
                                       global_size=args.global_crop_size, local_size=args.local_crop_size,
                                       normalization=norm, blur_radius=tuple(args.blur_radius),
                                       color_jitter=args.color_jit_unlab)


@dataclass
class DataBundle:
    unlab_loader: DataLoader | None
    lab_loader: InfiniteLabelledLoader | None
    val_loader: DataLoader | None
    num_classes: int
    class_to_idx: dict[str, int]
    iters_per_epoch: int
    unlab_batch_size: int
    device_stage: DevicePhotometric | None = None  # --gpu_aug: the unlabelled views' photometric ops

    @property
    def class_names(self) -> list[str]:
        """Class names in output order (index i = class_names[i]): what the checkpoint carries."""
        return sorted(self.class_to_idx, key=self.class_to_idx.__getitem__)

    def epoch_batches(self, epoch: int, start_iter: int = 0
                      ) -> Iterator[tuple[LabelledBatch | None, UnlabelledBatch | None]]:
        """(labelled, unlabelled) batches of one epoch from ``start_iter`` on (either may be None by mode)."""
        unlab_iter = None
        if self.unlab_loader is not None:
            self.unlab_loader.sampler.set_epoch(epoch, start=start_iter * self.unlab_batch_size)
            unlab_iter = iter(self.unlab_loader)
        for _ in range(start_iter, self.iters_per_epoch):
            unlab = next(unlab_iter) if unlab_iter is not None else None
            lab = next(self.lab_loader) if self.lab_loader is not None else None
            yield lab, unlab


def capped_workers(requested: int) -> int:
    """The recipes ask for 10 loader workers per process (a GPU node); on a small machine more workers than
    CPU cores per process only slow the run down, so the number is capped there, with a log line."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cap = max(cores // local_world_size() - 1, 0)
    if requested > cap:
        get_logger().info("data loading: %d workers requested, %d CPU cores for %d process(es) here: using %d",
                          requested, cores, local_world_size(), cap)
        return cap
    return requested


def augmentation_pipeline(cfg: DataConfig, dist: DistInfo) -> tuple[Callable, DevicePhotometric | None]:
    """The unlabelled multi-crop transform of the loader workers and, with --gpu_aug, the device stage that
    finishes it (the PIL recipe is the reference both faster paths are built from)."""
    reference = cfg.multicrop(cfg.unlab_normalization)
    get_logger().info("unlabelled augmentation: %s", "crops on the CPU, photometric ops on the device (--gpu_aug)"
                      if cfg.gpu_aug else "fast CPU path (--fast_aug)" if cfg.fast_aug else "PIL (the reference)")
    if cfg.gpu_aug:
        return accelerate(reference, device_photometric=True), DevicePhotometric.from_transform(reference, cfg.seed,
                                                                                                 dist.rank)
    if not cfg.fast_aug:
        return reference, None
    fast = accelerate(reference)
    for table, max_factor in hue_tables(fast):
        table.build(max_factor)  # once, before the loader workers fork (they inherit the tables)
    return fast, None


def build_data(cfg: DataConfig, dist: DistInfo) -> DataBundle:
    """Datasets and loaders for ``cfg.train_mode``: semisup (both streams), supervised (labelled only, the
    baseline), selfsup (unlabelled only). An epoch is one pass over the unlabelled data either way."""
    norm = cfg.normalization
    workers = capped_workers(cfg.workers)
    use_unlab, use_lab = cfg.train_mode != "supervised", cfg.train_mode != "selfsup"
    unlab_transform, device_stage = augmentation_pipeline(cfg, dist) if use_unlab else (None, None)
    lab_transform = labelled_transform(cfg.lab_kind, size=cfg.lab_crop_size, normalization=norm,
                                       simple_crop=cfg.simple_crop, min_scale=cfg.lab_min_scale)
    if cfg.fast_aug and cfg.lab_kind != "augment3":  # 3-Augment's RandomChoice keeps the PIL path
        lab_transform = accelerate(lab_transform)
    data = _datasets(cfg, dist, unlabelled_transform=unlab_transform, labelled_transform=lab_transform,
                     val_transform=val_transform(cfg.val_resize, cfg.val_crop, normalization=norm))
    num_classes = len(data.class_to_idx)
    pin = dist.device.type == "cuda"
    unlab_loader = lab_loader = None
    if use_unlab:  # unreadable images are skipped and reported (src.data.bad_images)
        unlab_loader = build_unlabelled_loader(
            SkipBadImages(data.unlabelled), cfg.unlab_batch_size, dist.rank, dist.world_size, cfg.seed, workers,
            SkippedCollate(UnlabelledCollate(mixup=cfg.mixup_unlab, defer_mix=cfg.gpu_aug)),
                                               pin_memory=pin, order_seed=cfg.order_seed)
        iters = len(unlab_loader)
    else:
        iters = len(data.unlabelled) // (cfg.unlab_batch_size * dist.world_size)
    if use_lab:
        lab_loader = InfiniteLabelledLoader(
            SkipBadImages(data.labelled), cfg.lab_batch_size, dist.rank, dist.world_size, cfg.seed, workers,
            SkippedCollate(LabelledCollate(num_classes=num_classes, mixup=cfg.mixup_lab,
                                           mixup_prob=cfg.mixup_lab_prob)),
            pin_memory=pin, order_seed=cfg.order_seed)
    if cfg.max_iters_per_epoch:
        iters = min(iters, cfg.max_iters_per_epoch)
    if iters == 0:
        raise UserError(f"{len(data.unlabelled)} training images make no batch of {cfg.unlab_batch_size} per "
                        f"process on {dist.world_size} process(es): lower the unlabelled batch size")
    val_loader = None
    if data.val is not None:
        val_loader = build_val_loader(data.val, cfg.val_batch_size, dist.rank, dist.world_size, workers,
                                      pin_memory=pin)
    get_logger().info("data: %d classes, %d unlabelled, %d labelled (%s), %d val images; %d iterations per epoch "
                      "(mode %s)", num_classes, len(data.unlabelled), len(data.labelled), data.subset_file,
                      len(data.val) if data.val is not None else 0, iters, cfg.train_mode)
    if data.val is None:
        get_logger().info("no validation source (--val_dir / --val_csv): this run reports no validation accuracy")
    elif data.val_missing_classes:
        get_logger().warning("validation source has no image of class(es) %s: they are not evaluated; top-1/top-5 "
                             "cover the other %d classes", ", ".join(data.val_missing_classes),
                             num_classes - len(data.val_missing_classes))
    return DataBundle(unlab_loader, lab_loader, val_loader, num_classes, data.class_to_idx, iters,
                      cfg.unlab_batch_size, device_stage)


def _datasets(cfg: DataConfig, dist: DistInfo, unlabelled_transform, labelled_transform,
              val_transform) -> SemiSupervisedData:
    """Today's layout (``DATA/train`` + list + ``DATA/val``) or, when any own-data source is given, those
    sources; rank 0 scans them and caches the file lists in the output directory, the other ranks read the cache."""
    transforms = dict(unlabelled_transform=unlabelled_transform, labelled_transform=labelled_transform,
                      val_transform=val_transform)
    if cfg.sources.active:
        lists = cached_file_lists(cfg.sources, cfg.cache_dir, cfg.rescan) if dist.rank == 0 else None
        distributed.barrier()
        return build_own_datasets(cfg.sources, cache_dir=cfg.cache_dir, lists=lists, **transforms)
    if not os.path.isdir(cfg.data_path):
        raise UserError(f"--data_path {cfg.data_path} does not exist: point it at a folder with train/<class>/ and "
                        "val/<class>/ (e.g. `python -m src.data.fashion_mnist --out data/fashion-mnist`), or give "
                        "your own sources (--unlab_dir/--unlab_list with --lab_dir/--lab_csv, see docs/data.md)")
    return build_datasets(cfg.data_path, labels_perc=cfg.labels_perc, subset_file=cfg.subset_file, **transforms)
