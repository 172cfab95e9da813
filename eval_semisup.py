"""Fine-tune a pretrained backbone on 1% / 10% of the labels (or any --subset_file): the release's
``eval_semisup.py`` (SwAV lineage) on this project's ``src/``.

    python eval_semisup.py --data_path /path/to/imagenet --pretrained swav_800ep_pretrain.pth.tar --labels_perc 1
    python job_launcher.py --method eval_semisup --script_file scripts/eval_semisup_1perc.sh --data_dir DATA \\
        --num_gpus 8 -- --pretrained EXP/checkpoint.pth --checkpoint_key teacher

Network: backbone -> [Linear, BatchNorm1d, ReLU] per --hidden_mlp width -> Linear to the K classes; the hidden
layers start from the checkpoint's projection head where names and shapes match (--load_hidden_mlp), the
rest from scratch. Training: SGD (momentum 0.9, --wd) on every parameter, cross-entropy (with the release's
Mixup/CutMix collate under --mixup), per-iteration learning rate: linear warm-up then cosine from --lr to
--final_lr. As in the release, that schedule sets the lr of both parameter groups, so --lr_last_layer has no
effect unless --apply_lr_last_layer true (then the head, the projection_head, gets schedule x lr_last_layer/lr).
``--scheduler_type step`` is SwAV's original schedule: --lr (head: --lr_last_layer) times --gamma at each of
--decay_epochs. Validation every epoch; the best top-1 (and its top-5) is reported.
"""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from src.cli import run_main
from src.distributed import DistInfo, wrap_ddp
from src.downstream.args import applies_lr_last_layer
from src.downstream.args import semisup_args_parser as get_args_parser
from src.optim import cosine_schedule, param_groups

if TYPE_CHECKING:  # the data and model modules are imported once the flags are checked (src.cli)
    from src.downstream.backbone import Pretrained
    from src.downstream.data import EvalData
    from src.downstream.runner import EvalTask

NAME = "eval_semisup"


def lr_schedule(args: argparse.Namespace, iters_per_epoch: int) -> np.ndarray:
    """The trunk's learning rate at every iteration."""
    if args.scheduler_type == "cosine":
        return cosine_schedule(args.lr, args.final_lr, args.epochs, iters_per_epoch, args.warmup_epochs)
    epochs = np.arange(args.epochs * iters_per_epoch) // iters_per_epoch
    decays = sum((epochs >= milestone).astype(np.int64) for milestone in args.decay_epochs)
    return args.lr * args.gamma ** decays


def head_lr_scale(args: argparse.Namespace) -> float:
    return args.lr_last_layer / args.lr if applies_lr_last_layer(args) else 1.0


def build_task(args: argparse.Namespace, dist: DistInfo, data: EvalData, pretrained: Pretrained) -> EvalTask:
    from src.downstream.backbone import load_matching_head
    from src.downstream.models import HEAD_PREFIX, FineTuneNetwork
    from src.downstream.runner import EvalTask
    backbone, checkpoint = pretrained
    model = FineTuneNetwork(backbone, args.hidden_mlp, data.num_classes)
    if checkpoint is not None and args.load_hidden_mlp:
        load_matching_head(model, checkpoint, args.checkpoint_key, HEAD_PREFIX)
    model.to(dist.device)
    model, ddp = wrap_ddp(model, dist)
    groups = param_groups(model, args.wd, no_decay_bias_and_norm=False, lr_overrides={HEAD_PREFIX: head_lr_scale(args)})
    optimizer = torch.optim.SGD(groups, lr=args.lr, momentum=0.9, weight_decay=args.wd)
    what = f"the labels of {args.subset_file}" if args.subset_file else f"{args.labels_perc}% of labels"
    return EvalTask(
        name=NAME, model=model, forward=ddp, set_mode=model.train, optimizer=optimizer,
        lr_schedule=lr_schedule(args, data.iters_per_epoch),
        summary=lambda top1, top5: (f"Fine-tuning with {what} completed. "
                                    f"Test accuracies: top-1 {top1:.1f}, top-5 {top5:.1f}"))


def build_data(args: argparse.Namespace, dist: DistInfo) -> EvalData:
    from src.downstream.data import build_eval_data
    return build_eval_data(args, dist, labelled_subset=True, light_augment=args.light_augment,
                           mixup=args.mixup_type if args.mixup else None, drop_last=True)


def main(args: argparse.Namespace) -> dict[str, Any]:
    from src.downstream.runner import run_evaluation
    return run_evaluation(args, build_data, build_task)


if __name__ == "__main__":
    sys.exit(run_main(get_args_parser, main, NAME))
