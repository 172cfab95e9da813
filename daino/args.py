"""Daino's command line: every flag of the released ``main_daino.py`` parser, plus the shared ones."""
from __future__ import annotations

import argparse

from src.args import (FlagParser, add_backbone_args, add_data_args, add_run_args, bool_flag, check_arch, check_init_flags,
                      check_shared_args)
from src.flag_checks import (FRACTION_BELOW_1, NON_NEGATIVE, POSITIVE, PROBABILITY, at_least, refuse, require,
                             require_scale_range, within_epochs)
from src.release_fixes import add_fix_args


def get_args_parser() -> FlagParser:
    parser = FlagParser("Daino", add_help=False, check=check_args)
    add_data_args(parser)
    add_run_args(parser)
    add_fix_args(parser, "mix_weight_rows", "mix_own_bn_batch", "student_train_mode", "seed_per_rank",
                 "dino_std_everywhere", "amp_eval")
    parser.set_defaults(seed=0)

    g = parser.add_argument_group("model")
    add_backbone_args(g, "vit_small")
    g.add_argument("--out_dim", default=None, type=int,
                   help="DINO head outputs = number of classes (default: the number of classes; "
                        "a different value is an error outside --train_mode selfsup)")
    g.add_argument("--norm_last_layer", default=True, type=bool_flag, help="weight-normalised last layer with fixed norm")
    g.add_argument("--momentum_teacher", default=0.996, type=float, help="base teacher EMA momentum (cosine to 1)")
    g.add_argument("--use_bn_in_head", default=False, type=bool_flag, help="BatchNorm in the DINO head")
    g.add_argument("--warmup_teacher_temp", default=0.04, type=float, help="initial teacher temperature")
    g.add_argument("--teacher_temp", default=0.04, type=float, help="teacher temperature after warm-up")
    g.add_argument("--warmup_teacher_temp_epochs", default=0, type=int, help="teacher temperature warm-up epochs")
    g.add_argument("--temperature", default=0.1, type=float, help="student temperature (both terms)")
    g.add_argument("--label_smoothing", type=float, default=0.01, help="label smoothing of the labelled term")

    g = parser.add_argument_group("optimisation")
    g.add_argument("--weight_decay", type=float, default=0.04, help="initial weight decay (cosine schedule)")
    g.add_argument("--weight_decay_end", type=float, default=0.4, help="final weight decay")
    g.add_argument("--clip_grad", type=float, default=3.0, help="per-parameter gradient norm clip (0: off)")
    g.add_argument("--batch_size_per_gpu", default=64, type=int, help="unlabelled images per process")
    g.add_argument("--lab_batch_size_per_gpu", default=50, type=int, help="labelled images per process")
    g.add_argument("--epochs", default=100, type=int, help="epochs (passes over the unlabelled data)")
    g.add_argument("--freeze_last_layer", default=0, type=int, help="epochs with the last layer frozen")
    g.add_argument("--lr", default=0.0005, type=float,
                   help="peak learning rate for a global unlabelled batch of 256 (linear scaling)")
    g.add_argument("--warmup_epochs", default=10, type=int, help="linear warm-up epochs")
    g.add_argument("--min_lr", type=float, default=1e-6, help="final learning rate (cosine)")
    g.add_argument("--optimizer", default="adamw", type=str, choices=["adamw", "sgd", "lars"], help="optimiser")
    g.add_argument("--drop_path_rate", type=float, default=0.1, help="stochastic depth rate of the student")
    g.add_argument("--init_proj", type=bool_flag, default=False, help="also load the DINO head's MLP")
    g.add_argument("--init_prototypes", type=bool_flag, default=False,
                   help="(new) also load the last layer when its shape matches (fine-tuning our own checkpoint)")
    g.add_argument("--dino_init_ckpt", type=str, default=None,
                   help="DINO (or Daino) checkpoint to start from; none: train from scratch")
    g.add_argument("--checkpoint_key", type=str, default="student",
                   help="(new) which network of a full DINO checkpoint to start from (the release loads the student)")

    g = parser.add_argument_group("multi-crop (unlabelled views)")
    g.add_argument("--global_crops_scale", type=float, nargs="+", default=(0.4, 1.0), help="global crop scales")
    g.add_argument("--local_crops_number", type=int, default=8, help="number of local crops")
    g.add_argument("--local_crops_scale", type=float, nargs="+", default=(0.05, 0.4), help="local crop scales")
    g.add_argument("--color_jit_unlab", type=bool_flag, default=True,
                   help="(new) DINO's colour jitter, grayscale, blur and solarisation on unlabelled views "
                        "(false: crops and flips only, e.g. for grey images)")
    g.add_argument("--global_crop_size", type=int, default=224, help="(new) global crop size")
    g.add_argument("--local_crop_size", type=int, default=96, help="(new) local crop size")

    g.add_argument("--require_init_ckpt", type=bool_flag, default=False,
                   help="(new) refuse to start without --dino_init_ckpt (the fine-tuning recipes set it)")

    g = parser.add_argument_group("misc")
    g.add_argument("--saveckp_freq", default=20, type=int, help="keep a snapshot every N epochs")
    g.add_argument("--num_workers", default=10, type=int, help="data-loading workers per process")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Every value Daino cannot train with, refused before any data is read (src.flag_checks)."""
    check_shared_args(args)
    require(args, at_least(1), "epochs", "batch_size_per_gpu", "lab_batch_size_per_gpu", "patch_size", "out_dim",
            "global_crop_size", "local_crop_size")
    require(args, POSITIVE, "temperature", why="the student's scores are divided by it, so the loss is undefined "
            "at 0; the release's 0.1")
    require(args, POSITIVE, "warmup_teacher_temp", "teacher_temp", why="the teacher's centred outputs are divided "
            "by it; the release's 0.04 rising to 0.07")
    require(args, NON_NEGATIVE, "local_crops_number", "weight_decay", "weight_decay_end", "clip_grad",
            "freeze_last_layer", "lr", "min_lr", "saveckp_freq", "num_workers")
    require(args, PROBABILITY, "momentum_teacher", "label_smoothing")
    require(args, FRACTION_BELOW_1, "drop_path_rate")
    within_epochs(args, "warmup_epochs")
    within_epochs(args, "warmup_teacher_temp_epochs")
    require_scale_range(args, "global_crops_scale")
    require_scale_range(args, "local_crops_scale")
    smallest = min(args.global_crop_size, args.local_crop_size if args.local_crops_number else args.global_crop_size)
    if args.arch.startswith("vit") and args.patch_size > smallest:
        refuse(f"--patch_size {args.patch_size} is larger than the {smallest}-px crops (--global_crop_size, "
               "--local_crop_size): use a patch size that fits them")
    if args.mixup_unlab and args.mixup_unlab_type == "all" and args.local_crops_number % 2:
        refuse(f"--mixup_unlab_type all mixes consecutive crops of one size: --local_crops_number "
               f"{args.local_crops_number} must be even (or use --mixup_unlab_type globals)")
    check_init_flags(args, "dino_init_ckpt",
                     "EXP/checkpoint.pth of a Daino run, or dino_deitsmall16_pretrain_full_checkpoint.pth")
    check_arch(args.arch)
