"""Weighted k-NN classification on frozen features: DINO's ``eval_knn.py`` (facebookresearch/dino) on this
project's ``src/``.

    python eval_knn.py --data_path /path/to/imagenet --pretrained EXP/checkpoint.pth --checkpoint_key teacher
    python job_launcher.py --method eval_knn --script_file scripts/eval_knn.sh --data_dir DATA --num_gpus 8 \\
        -- --pretrained dino_deitsmall16_pretrain.pth

The ``--arch`` backbone with the ``--pretrained`` weights (this project's checkpoints, SwAV's or DINO's files;
``--checkpoint_key`` picks the student or the teacher), in eval mode, gives one feature per image: the pooled
features (ViT: the CLS token after the last LayerNorm), L2-normalised. Images: Resize(--val_resize, bicubic as
DINO) + CenterCrop(--val_crop), for the training images as for ``val``. Each ``val`` image takes the --nb_knn
training images of highest cosine similarity, which vote for their class with weight exp(similarity /
--temperature); top-1 and top-5 are the share of ``val`` images whose class ranks first / in the first five
(``src.downstream.knn``). Feature extraction is sharded across processes (torchrun or Slurm), without
duplicates; the training features are gathered on every process, each classifies its shard of ``val``.

Training images: ``--train_subset labelled`` (default) uses the labelled list (--subset_file, else
--labels_perc's DATA/subsets/<p>percent.txt), as ``eval_semisup.py`` fine-tunes on: the labels a semi-supervised
run may use. ``--train_subset all`` uses every image of ``train/`` with its label, as DINO's evaluation (the
recipe ``scripts/eval_knn.sh``). ``results.json`` / ``results.csv`` (one row per k) and ``knn.log`` go to
--output_dir.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from typing import TYPE_CHECKING

from src.cli import run_main
from src.downstream.args import knn_args_parser as get_args_parser

if TYPE_CHECKING:  # the data and model modules are imported once the flags are checked (src.cli)
    from src.data import ImageDataset

NAME = "eval_knn"
LOG_NAME = "knn.log"


def datasets(args: argparse.Namespace) -> tuple[ImageDataset, ImageDataset, str]:
    """The voting training images, ``val``, and where the training images came from."""
    from src.data import (DINO_STD, IMAGENET_MEAN, ImageDataset, Normalization, build_datasets, check_same_classes,
                          class_index, scan_image_folder, val_transform)
    mean, std = tuple(args.mean or IMAGENET_MEAN), tuple(args.std or DINO_STD)
    transform = val_transform(args.val_resize or None, args.val_crop or None, Normalization(mean, std),
                              interpolation=args.val_interpolation)
    data_path = os.path.abspath(args.data_path)
    if args.train_subset == "labelled":
        data = build_datasets(data_path, None, transform, transform, labels_perc=args.labels_perc,
                              subset_file=args.subset_file)
        return data.labelled, data.val, f"labelled list {data.subset_file}"
    train_dir, val_dir = os.path.join(data_path, "train"), os.path.join(data_path, "val")
    classes = class_index(train_dir)
    check_same_classes(train_dir, val_dir)
    return (ImageDataset(scan_image_folder(train_dir, classes), classes, transform),
            ImageDataset(scan_image_folder(val_dir, classes), classes, transform), f"all of {train_dir}")


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Extract, classify and write the results; collective when a process group exists."""
    import torch

    from src import distributed
    from src.atomic_io import write_json_atomic, write_text_atomic
    from src.downstream.backbone import build_pretrained_backbone
    from src.downstream.knn import (check_k, extract_shard, gather_shards, knn_classify, normalize, shard_of,
                                    sum_over_ranks)
    from src.logging_utils import format_seconds, setup_logging
    with torch.no_grad():  # frozen features only
        started = time.perf_counter()
        dist = distributed.init_distributed(args.local_rank, args.device, args.dist_timeout)
        logger = setup_logging(args.output_dir, dist.rank, log_name=LOG_NAME)
        backbone, _ = build_pretrained_backbone(args)  # before the data: a bad --pretrained fails at once
        backbone.to(dist.device).eval()
        train_set, val_set, source = datasets(args)
        check_k(args.nb_knn, len(train_set))
        logger.info("k-NN: %d training images (%s), %d val images, %d classes, k = %s, T = %g, %d process(es)",
                    len(train_set), source, len(val_set), len(train_set.classes),
                    " ".join(map(str, args.nb_knn)), args.temperature, dist.world_size)
        store = dist.device if args.use_cuda else torch.device("cpu")
        extract = dict(batch_size=args.batch_size, workers=args.workers, device=dist.device, store=store,
                       log_freq=args.log_freq)
        train = gather_shards(extract_shard(backbone, train_set, what="train", **extract), len(train_set))
        test = extract_shard(backbone, val_set, what="val", **extract)
        counts = knn_classify(normalize(train), torch.tensor(train_set.targets), normalize(test),
                              shard_of(torch.tensor(val_set.targets)), args.nb_knn, args.temperature,
                              len(train_set.classes))
        rows = []
        for count in sum_over_ranks(counts):
            top1, top5 = count.accuracies()
            logger.info("%d-NN classifier result: Top1: %s, Top5: %s", count.k, top1, top5)
            rows.append({"k": count.k, "top1": top1, "top5": top5, "val_images": count.total})
        results = {"script": NAME, "knn": rows, "temperature": args.temperature, "train_images": len(train_set),
                   "train_source": source, "val_images": len(val_set), "pretrained": args.pretrained,
                   "checkpoint_key": args.checkpoint_key, "arch": args.arch, "processes": dist.world_size,
                   "wall_time_s": round(time.perf_counter() - started, 1)}
        if distributed.is_main_process():
            json_path, csv_path = os.path.join(args.output_dir, "results.json"), os.path.join(args.output_dir,
                                                                                             "results.csv")
            write_json_atomic(json_path, results)
            write_text_atomic(csv_path, "k,top1,top5,train_images,val_images\n" + "".join(
                f"{r['k']},{r['top1']},{r['top5']},{len(train_set)},{len(val_set)}\n" for r in rows))
            logger.info("done in %s | results: %s, %s | log: %s", format_seconds(time.perf_counter() - started),
                        json_path, csv_path, os.path.join(args.output_dir, LOG_NAME))
        return results


def main(args: argparse.Namespace) -> dict[str, Any]:
    from src import distributed
    try:
        return evaluate(args)
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    sys.exit(run_main(get_args_parser, main, NAME))
