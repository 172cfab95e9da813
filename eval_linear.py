"""Linear classification on frozen features: the release's ``eval_linear.py`` (SwAV lineage) on this
project's ``src/``.

    python eval_linear.py --data_path /path/to/imagenet --pretrained swav_800ep_pretrain.pth.tar
    python job_launcher.py --method eval_linear --script_file scripts/eval_linear.sh --data_dir DATA \\
        --num_gpus 8 -- --pretrained EXP/checkpoint.pth --checkpoint_key teacher

The backbone is frozen in eval mode (BatchNorm keeps its running statistics). The classifier (the release's
``RegLog``) reads the globally pooled features (ViT: the CLS token), or with --global_pooling false the last
feature map average-pooled 6x6 with stride 1 (then --use_bn adds a BatchNorm2d), and trains on the whole train
split with SGD (momentum 0.9, --nesterov, --wd) and cross-entropy; its learning rate follows a per-epoch cosine
(CosineAnnealingLR to --final_lr) or step (MultiStepLR at --decay_epochs, x --gamma) schedule.
"""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

import torch

from src.cli import run_main
from src.distributed import DistInfo, wrap_ddp
from src.downstream.args import linear_args_parser as get_args_parser

if TYPE_CHECKING:  # the data and model modules are imported once the flags are checked (src.cli)
    from src.downstream.backbone import Pretrained
    from src.downstream.data import EvalData
    from src.downstream.runner import EvalTask

NAME = "eval_linear"


@torch.no_grad()
def feature_shape(backbone: torch.nn.Module, args: argparse.Namespace, device: torch.device) -> tuple[int, ...]:
    """Shape of one sample of the probe's input at the training crop size."""
    from src.downstream.models import frozen_features
    probe = torch.zeros(1, 3, args.crop_size, args.crop_size, device=device)
    return tuple(frozen_features(backbone, probe, args.global_pooling).shape[1:])


def build_task(args: argparse.Namespace, dist: DistInfo, data: EvalData, pretrained: Pretrained) -> EvalTask:
    from src.downstream.models import LinearProbe, frozen_features
    from src.downstream.runner import EvalTask
    backbone, _ = pretrained
    backbone.to(dist.device).eval()
    for p in backbone.parameters():
        p.requires_grad = False
    probe = LinearProbe(feature_shape(backbone, args, dist.device), data.num_classes, args.global_pooling,
                        args.use_bn).to(dist.device)
    probe, ddp = wrap_ddp(probe, dist)
    optimizer = torch.optim.SGD(probe.parameters(), lr=args.lr, nesterov=args.nesterov, momentum=0.9,
                                weight_decay=args.wd)
    if args.scheduler_type == "step":
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, args.decay_epochs, gamma=args.gamma)
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs, eta_min=args.final_lr)

    def forward(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = frozen_features(backbone, images, args.global_pooling)
        return ddp(features)

    return EvalTask(
        name=NAME, model=probe, forward=forward, set_mode=probe.train, optimizer=optimizer, scheduler=scheduler,
        summary=lambda top1, top5: ("Training of the supervised linear classifier on frozen features completed. "
                                    f"Top-1 test accuracy: {top1:.1f}"))


def build_data(args: argparse.Namespace, dist: DistInfo) -> EvalData:
    from src.downstream.data import build_eval_data
    return build_eval_data(args, dist, labelled_subset=False, drop_last=False)


def main(args: argparse.Namespace) -> dict[str, Any]:
    from src.downstream.runner import run_evaluation
    return run_evaluation(args, build_data, build_task)


if __name__ == "__main__":
    sys.exit(run_main(get_args_parser, main, NAME))
