"""Evaluation only: ``python main_suave.py --evaluate CKPT [--data_path DATA] [--output_dir DIR]`` (and Daino,
FixMatch).

Rebuilds the run from the checkpoint alone (its flags, classes and eval preprocessing: ``src.trained``; a file the
Suave-Daino release wrote takes its classes from ``--data_path`` and the network flags given here), then
runs the one validation (``src.validation.validate``: training's loader order, batch size, precision and heads)
on ``DATA/val``: top-1/top-5 of every head (Suave: the prototypes, the online probes and their ensemble;
Daino: the teacher, ``main``, and the student; FixMatch: the EMA model, ``main``, and the student). Writes
``eval.json`` next to the checkpoint or in ``--output_dir``. Runs on the CPU, one GPU or under torchrun (the val
set is sharded and the counts summed).
"""
from __future__ import annotations

import argparse
import os
from typing import Any

from src import distributed, registry
from src.atomic_io import write_json_atomic
from src.data import ImageDataset, build_val_loader, class_index, scan_image_folder
from src.data_setup import capped_workers, eval_transform
from src.errors import UserError
from src.logging_utils import setup_logging
from src.trained import TrainedModel, given_flags, load_trained, method_parts
from src.validation import validate

EVAL_NAME = "eval.json"
# Flags that may change how a checkpoint is evaluated (when given on the command line); every other flag
# comes from the checkpoint (a file the release wrote: every flag given replaces the recipe's or its own).
EVAL_FLAGS = ("data_path", "val_batch_size", "workers", "num_workers", "use_fp16", "use_bf16", "channels_last")
_NOT_FLAGS_OF_THE_RUN = ("evaluate", "output_dir", "dump_path", "local_rank", "device")


def val_dataset(data_path: str, trained: TrainedModel) -> ImageDataset:
    """``DATA/val`` with the checkpoint's class order and eval preprocessing; its classes must be the model's."""
    val_dir = os.path.join(data_path, "val")
    if not os.path.isdir(val_dir):
        raise UserError(f"{val_dir} does not exist: pass --data_path DATA with val/<class>/ folders "
                        f"(the checkpoint's data path was {trained.args.data_path})")
    found = sorted(class_index(val_dir))
    if found != sorted(trained.classes):
        missing, extra = sorted(set(trained.classes) - set(found)), sorted(set(found) - set(trained.classes))
        raise UserError(f"the classes of {val_dir} are not the checkpoint's: missing {missing[:5]}, unknown "
                        f"{extra[:5]}; pass the --data_path of the data the model was trained on")
    class_to_idx = {name: index for index, name in enumerate(trained.classes)}
    return ImageDataset(scan_image_folder(val_dir, class_to_idx), class_to_idx, eval_transform(trained.preprocessing))


def evaluate_checkpoint(cli_args: argparse.Namespace, method_name: str) -> dict[str, Any]:
    """Evaluate ``cli_args.evaluate`` on the val split; returns (and writes to eval.json) the stats."""
    path = os.path.abspath(cli_args.evaluate)
    parts = method_parts(method_name)
    parser = parts.get_args_parser()
    overrides = given_flags(cli_args, parser, EVAL_FLAGS)
    network_flags = [name for name in vars(cli_args) if name not in (*EVAL_FLAGS, *_NOT_FLAGS_OF_THE_RUN)]
    output_dir = cli_args.output_dir if given_flags(cli_args, parser, ("output_dir",)) else os.path.dirname(path)
    dist = distributed.init_distributed(cli_args.local_rank, cli_args.device, cli_args.dist_timeout)
    try:
        logger = setup_logging(output_dir, dist.rank, log_name="eval.log")
        trained = load_trained(path, dist.device, expect_method=method_name, data_path=overrides.get("data_path"),
                               overrides=overrides, command_line=given_flags(cli_args, parser, network_flags))
        args = trained.args
        config = parts.data_config(args)
        dataset = val_dataset(args.data_path, trained)
        loader = build_val_loader(dataset, config.val_batch_size, dist.rank, dist.world_size,
                                  capped_workers(config.workers), pin_memory=dist.device.type == "cuda")
        logger.info("evaluating %s (%s, epoch %d) on %d images of %s", path, method_name, trained.epoch,
                    len(dataset), os.path.join(args.data_path, "val"))
        stats = validate(trained.method.eval_scores, trained.method.eval_modules(), loader, dist.device,
                         trained.eval_precision(), args.channels_last)
        results = {"checkpoint": path, "method": method_name, "epoch": trained.epoch,
                   "data_path": args.data_path, "val_images": len(dataset), **stats}
        if distributed.is_main_process():
            report_path = os.path.join(output_dir, EVAL_NAME)
            write_json_atomic(report_path, results)
            print(format_table(stats, main_head_name(trained)))
            print(f"wrote {report_path}")
        return results
    finally:
        distributed.cleanup()


def main_head_name(trained: TrainedModel) -> str:
    """What the table calls the ``main`` head: the registry entry's ``main_head`` when validation used its
    ``main_network`` (FixMatch with --ema_decay 0 keeps no EMA model: then the student)."""
    entry = registry.entry(trained.method_name)
    return entry.main_head if trained.main_network == entry.main_network else trained.main_network


def format_table(stats: dict[str, float], main_name: str) -> str:
    """One line per head: ``head  top-1  top-5`` (the ``main`` head shown as ``main_name``)."""
    heads = [key[: -len("_acc1")] for key in stats if key.endswith("_acc1")]
    lines = [f"{'head':<16}{'top-1':>8}{'top-5':>8}"]
    for head in heads:
        name = main_name if head == "val" else head[len("val_"):]
        lines.append(f"{name:<16}{stats[head + '_acc1']:>8.2f}{stats[head + '_acc5']:>8.2f}")
    return "\n".join(lines)
