"""Flags ``eval_semisup.py`` and ``eval_linear.py`` share (names and defaults of the release where it has them).

Each script adds its own optimisation flags; "(new)" marks flags the release does not have.
"""
from __future__ import annotations

import argparse

from src.args import bool_flag


def add_data_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--data_path", type=str, default="/path/to/imagenet",
                   help="dataset root holding train/<class>/<file> and val/<class>/<file>")
    g.add_argument("--crop_size", type=int, default=224,
                   help="(new) side of the training RandomResizedCrop (224 for ImageNet)")
    g.add_argument("--val_resize", type=int, default=256, help="(new) validation Resize; 0 skips it")
    g.add_argument("--val_crop", type=int, default=224, help="(new) validation CenterCrop; 0 skips it")
    g.add_argument("--mean", type=float, nargs=3, default=None, help="(new) normalisation mean (ImageNet's)")
    g.add_argument("--std", type=float, nargs=3, default=None,
                   help="(new) normalisation std (the release's 0.228 0.224 0.225)")
    g.add_argument("--val_batch_size", type=int, default=None,
                   help="(new) validation batch size per process (default: --batch_size, as the release)")


def add_backbone_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("backbone")
    g.add_argument("--arch", default="resnet50", type=str,
                   help="backbone (see src.models.available_backbones(); cnn6/cnn6w2 for CPU runs)")
    g.add_argument("--pretrained", default="", type=str,
                   help="checkpoint to start from: this project's checkpoint.pth, SwAV's or DINO's release files; "
                        "empty: random weights")
    g.add_argument("--checkpoint_key", default="teacher", type=str, choices=["teacher", "student"],
                   help="(new) network of the checkpoint to load: DINO's/Daino's teacher (as DINO's evaluation) or "
                        "the student (Suave without momentum encoder holds only a student)")
    g.add_argument("--patch_size", default=16, type=int, help="(new) ViT patch size")
    g.add_argument("--small_stem", type=bool_flag, default=False, help="(new) small-image ResNet stem")


def add_run_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("run")
    g.add_argument("--dump_path", "--output_dir", dest="output_dir", type=str, default=".",
                   help="experiment dump path for checkpoint.pth, train.log, stats.csv and results.json; "
                        "re-running the same command resumes")
    g.add_argument("--seed", type=int, default=31, help="seed")
    g.add_argument("--workers", default=10, type=int, help="number of data loading workers")
    g.add_argument("--device", type=str, default="auto", choices=["auto", "cpu", "cuda"],
                   help="(new) where to run: auto = CUDA when available")
    g.add_argument("--use_fp16", type=bool_flag, default=False,
                   help="(new) fp16 autocast with gradient scaling on CUDA (the release trains in fp32)")
    g.add_argument("--use_bf16", type=bool_flag, default=False, help="(new) bf16 autocast on CPU or GPU")
    g.add_argument("--log_freq", type=int, default=50, help="(new) log every N iterations (the release's 50)")
    g.add_argument("--max_iters_per_epoch", type=int, default=0,
                   help="(new) cap the training iterations of an epoch (0: one full pass, as the release)")
    g.add_argument("--stop_after_epochs", type=int, default=0,
                   help="(new) leave after this many epochs in this invocation; the same command resumes")
    g.add_argument("--wandb", type=bool_flag, default=False, help="whether to use wandb or not")
    g.add_argument("--wandb_project", type=str, default="semi-self", help="(new) wandb project")


def add_dist_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("distributed")
    g.add_argument("--dist_url", default="env://", type=str, help="kept for the release's scripts; env:// only")
    g.add_argument("--world_size", default=-1, type=int, help="set from the environment; do not pass")
    g.add_argument("--rank", default=0, type=int, help="set from the environment; do not pass")
    g.add_argument("--local_rank", "--local-rank", default=None, type=int,
                   help="given by old launchers; the environment's LOCAL_RANK/SLURM_LOCALID wins")


def add_shared_args(parser: argparse.ArgumentParser) -> None:
    """Every group above, in the order of the release's parsers."""
    add_data_args(parser)
    add_backbone_args(parser)
    add_run_args(parser)
    add_dist_args(parser)
