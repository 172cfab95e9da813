"""Flags ``eval_semisup.py`` and ``eval_linear.py`` share (names and defaults of the release where it has them).

``semisup_args_parser`` and ``linear_args_parser`` are the two scripts' whole parsers (the launcher imports them),
each with the check of its flags' values (``check_semisup_args``, ``check_linear_args``); "(new)" marks flags the
release does not have.
"""
from __future__ import annotations

import argparse

from src.args import add_backbone_args as shared_backbone_args
from src.args import (FlagParser, add_dist_timeout_arg, bf16_flag, bool_flag, check_arch, check_dist_timeout,
                      check_hidden_mlp)
from src.flag_checks import NON_NEGATIVE, POSITIVE, at_least, ignored_unless_default, refuse, require, within_epochs


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
    shared_backbone_args(g, "resnet50")
    g.add_argument("--pretrained", default="", type=str,
                   help="checkpoint to start from: this project's checkpoint.pth, SwAV's or DINO's release files; "
                        "empty: random weights")
    g.add_argument("--checkpoint_key", default="teacher", type=str, choices=["teacher", "student"],
                   help="(new) network of the checkpoint to load: DINO's/Daino's teacher (as DINO's evaluation) or "
                        "the student (Suave without momentum encoder holds only a student)")


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
    g.add_argument("--use_bf16", type=bf16_flag, default=False,
                   help="(new) bf16 autocast on CPU or GPU; auto: only where the device computes bf16 natively")
    g.add_argument("--log_freq", type=int, default=50, help="(new) log every N iterations (the release's 50)")
    g.add_argument("--max_iters_per_epoch", type=int, default=0,
                   help="(new) cap the training iterations of an epoch (0: one full pass, as the release)")
    g.add_argument("--stop_after_epochs", type=int, default=0,
                   help="(new) leave after this many epochs in this invocation; the same command resumes")
    g.add_argument("--wandb", type=bool_flag, default=False, help="whether to use wandb or not")
    g.add_argument("--wandb_project", type=str, default="semi-self", help="(new) wandb project")


def add_dist_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("distributed")
    g.add_argument("--dist_url", default="env://", type=str,
                   help="ignored (kept so the release's scripts run): processes meet through the environment "
                        "(MASTER_ADDR, MASTER_PORT), as torchrun and job_launcher.py set it")
    g.add_argument("--world_size", default=-1, type=int,
                   help="ignored (kept so the release's scripts run): the environment's WORLD_SIZE counts processes")
    g.add_argument("--rank", default=0, type=int,
                   help="ignored (kept so the release's scripts run): each process's rank is the environment's RANK")
    g.add_argument("--local_rank", "--local-rank", default=None, type=int,
                   help="given by old launchers; the environment's LOCAL_RANK/SLURM_LOCALID wins")
    add_dist_timeout_arg(g)


def add_shared_args(parser: argparse.ArgumentParser) -> None:
    """Every group above, in the order of the release's parsers."""
    add_data_args(parser)
    add_backbone_args(parser)
    add_run_args(parser)
    add_dist_args(parser)


def check_shared_args(args: argparse.Namespace) -> None:
    """The values of the flags both evaluation scripts have (``add_shared_args``) and of their optimisation."""
    require(args, at_least(1), "crop_size", "val_batch_size", "patch_size", "log_freq", "epochs", "batch_size")
    require(args, NON_NEGATIVE, "val_resize", "val_crop", "workers", "max_iters_per_epoch", "stop_after_epochs",
            "lr", "final_lr", "wd", "decay_epochs")
    require(args, POSITIVE, "std", why="the images are divided by it")
    check_dist_timeout(args)
    require(args, POSITIVE, "gamma", why="the learning rate is multiplied by it at each of --decay_epochs")


def applies_lr_last_layer(args: argparse.Namespace) -> bool:
    """Whether the head trains at --lr_last_layer (x the schedule / --lr): ``--apply_lr_last_layer``, by default
    only with SwAV's step schedule (the release's cosine gave the head the trunk's lr)."""
    return args.apply_lr_last_layer if args.apply_lr_last_layer is not None else args.scheduler_type == "step"


def check_semisup_args(args: argparse.Namespace) -> None:
    """Every value eval_semisup.py cannot fine-tune with, refused before any data is read (src.flag_checks)."""
    check_shared_args(args)
    require(args, NON_NEGATIVE, "lr_last_layer")
    within_epochs(args, "warmup_epochs")
    if args.scheduler_type == "step" and args.warmup_epochs:
        refuse(f"--warmup_epochs {args.warmup_epochs}: it applies to --scheduler_type cosine only (SwAV's step "
               "schedule has none); drop it or use --scheduler_type cosine")
    if applies_lr_last_layer(args) and args.lr == 0:
        refuse("--lr 0 with --lr_last_layer applied (--apply_lr_last_layer or --scheduler_type step): the head's lr "
               "is the schedule x lr_last_layer / lr; use --lr > 0")
    if args.ensemble_eval:
        refuse("--ensemble_eval true is not supported: the release's eval_semisup builds that classifier with 0 "
               "inputs; fine-tune without it")
    ignored_unless_default(args, "bn_ensemble", False, "it configured the --ensemble_eval classifier, which is not "
                           "supported")
    if args.mixup_type != "extend" and not args.mixup:
        refuse(f"--mixup_type {args.mixup_type} applies with --mixup true only: add it or drop --mixup_type")
    check_arch(args.arch)
    check_hidden_mlp(args.hidden_mlp)


def check_linear_args(args: argparse.Namespace) -> None:
    """Every value eval_linear.py cannot train with, refused before any data is read (src.flag_checks)."""
    check_shared_args(args)
    if args.use_bn and args.global_pooling:
        refuse("--use_bn true applies with --global_pooling false only (the BatchNorm2d of the pooled feature "
               "map; the release ignored it): add --global_pooling false or drop --use_bn")
    check_arch(args.arch)


def semisup_args_parser() -> FlagParser:
    """eval_semisup.py's flags: the release's fine-tuning parser (SwAV lineage), plus the shared ones."""
    parser = FlagParser("Fine-tuning with 1% or 10% of the labels", add_help=False, check=check_semisup_args)
    g = parser.add_argument_group("labels")
    g.add_argument("--labels_perc", type=str, default="10", choices=["1", "10"],
                   help="fine-tune on either 1%% or 10%% of labels (DATA/subsets/{1,10}percent.txt)")
    g.add_argument("--subset_file", type=str, default=None,
                   help="(new) list of labelled files ('<wnid>_<n>.JPEG' or '<class>/<file>'); overrides --labels_perc")
    g = parser.add_argument_group("head")
    g.add_argument("--hidden_mlp", default=[2048], type=int, nargs="+",
                   help="hidden layer dimensions of the head (0: a linear classifier)")
    g.add_argument("--load_hidden_mlp", type=bool_flag, default=True,
                   help="load the head layers whose names and shapes match the checkpoint's projection head")
    g.add_argument("--ensemble_eval", type=bool_flag, default=False, help="kept for the release's scripts: false only")
    g.add_argument("--bn_ensemble", type=bool_flag, default=False, help="kept for the release's scripts: false only")
    g = parser.add_argument_group("optimisation")
    g.add_argument("--epochs", default=50, type=int, help="number of total epochs to run")
    g.add_argument("--batch_size", default=64, type=int, help="batch size per process")
    g.add_argument("--lr", default=0.02, type=float, help="initial learning rate - trunk")
    g.add_argument("--lr_last_layer", default=0.02, type=float, help="initial learning rate - head")
    g.add_argument("--apply_lr_last_layer", type=bool_flag, default=None,
                   help="(new) give the head --lr_last_layer (times the schedule); default: false with the "
                        "release's cosine schedule (where it had no effect), true with SwAV's step schedule")
    g.add_argument("--final_lr", type=float, default=0, help="final learning rate value (cosine)")
    g.add_argument("--warmup_epochs", default=0, type=int, help="number of warmup epochs (cosine)")
    g.add_argument("--wd", default=0., type=float, help="weight decay")
    g.add_argument("--scheduler_type", default="cosine", type=str, choices=["cosine", "step"],
                   help="(new here) cosine: the release's; step: SwAV's original MultiStepLR")
    g.add_argument("--decay_epochs", type=int, nargs="+", default=[12, 16],
                   help="(new here) epochs at which --scheduler_type step multiplies the lr by --gamma")
    g.add_argument("--gamma", type=float, default=0.2, help="(new here) decay factor of --scheduler_type step")
    g = parser.add_argument_group("augmentation")
    g.add_argument("--mixup", type=bool_flag, default=False, help="whether to use mixup on labeled images")
    g.add_argument("--mixup_type", type=str, default="extend", choices=["extend", "replace"],
                   help="whether to extend or replace the batch with mixed imgs")
    g.add_argument("--light_augment", type=bool_flag, default=False,
                   help="color jitter (0.1, 0.1, 0.1, 0.1) with p = 0.8 after crop and flip")
    add_shared_args(parser)
    return parser


def linear_args_parser() -> FlagParser:
    """eval_linear.py's flags: the release's linear-classification parser, plus the shared ones."""
    parser = FlagParser("Linear classification on frozen features", add_help=False, check=check_linear_args)
    g = parser.add_argument_group("classifier")
    g.add_argument("--global_pooling", default=True, type=bool_flag,
                   help="if True, we use the backbone's global average pooling (ViT: the CLS token)")
    g.add_argument("--use_bn", default=False, type=bool_flag,
                   help="optionally add a batchnorm layer before the linear classifier (without global pooling)")
    g = parser.add_argument_group("optimisation")
    g.add_argument("--epochs", default=100, type=int, help="number of total epochs to run")
    g.add_argument("--batch_size", default=32, type=int, help="batch size per process")
    g.add_argument("--lr", default=0.3, type=float, help="initial learning rate")
    g.add_argument("--wd", default=1e-6, type=float, help="weight decay")
    g.add_argument("--nesterov", default=False, type=bool_flag, help="nesterov momentum")
    g.add_argument("--scheduler_type", default="cosine", type=str, choices=["step", "cosine"])
    g.add_argument("--decay_epochs", type=int, nargs="+", default=[60, 80],
                   help="Epochs at which to decay learning rate.")
    g.add_argument("--gamma", type=float, default=0.1, help="decay factor")
    g.add_argument("--final_lr", type=float, default=0, help="final learning rate")
    add_shared_args(parser)
    return parser


def check_knn_args(args: argparse.Namespace) -> None:
    """Every value eval_knn.py cannot classify with, refused before any data is read (src.flag_checks)."""
    require(args, at_least(1), "nb_knn", "batch_size")
    require(args, NON_NEGATIVE, "workers", "log_freq", "val_resize", "val_crop")
    require(args, POSITIVE, "temperature", why="the votes are exp(similarity / T); DINO's 0.07")
    check_dist_timeout(args)
    if args.train_subset == "all" and args.subset_file:
        refuse(f"--subset_file {args.subset_file} is read with --train_subset labelled only: drop one")
    check_arch(args.arch)


def knn_args_parser() -> FlagParser:
    """eval_knn.py's flags: DINO's eval_knn flags (names and defaults where it has them), plus the shared backbone
    and distributed ones; "(new)" marks flags DINO's script does not have."""
    parser = FlagParser("Evaluation with weighted k-NN on frozen features", add_help=False, check=check_knn_args)
    g = parser.add_argument_group("data")
    g.add_argument("--data_path", type=str, default="/path/to/imagenet",
                   help="dataset root holding train/<class>/<file> and val/<class>/<file>")
    g.add_argument("--train_subset", type=str, default="labelled", choices=["labelled", "all"],
                   help="(new) the training images that vote: the labelled list (--subset_file or --labels_perc), "
                        "the labels a semi-supervised run may use; or all of train/ (DINO's evaluation)")
    g.add_argument("--labels_perc", type=str, default="10", choices=["1", "10"],
                   help="(new) with --train_subset labelled: DATA/subsets/{1,10}percent.txt")
    g.add_argument("--subset_file", type=str, default=None,
                   help="(new) with --train_subset labelled: list of labelled files ('<wnid>_<n>.JPEG' or "
                        "'<class>/<file>'); overrides --labels_perc")
    g.add_argument("--val_resize", type=int, default=256, help="(new) Resize of every image; 0 skips it")
    g.add_argument("--val_crop", type=int, default=224, help="(new) CenterCrop of every image; 0 skips it")
    g.add_argument("--val_interpolation", type=str, default="bicubic", choices=["bicubic", "bilinear"],
                   help="(new) interpolation of the Resize (DINO's: bicubic)")
    g.add_argument("--mean", type=float, nargs=3, default=None, help="(new) normalisation mean (ImageNet's)")
    g.add_argument("--std", type=float, nargs=3, default=None, help="(new) normalisation std (DINO's 0.229 0.224 0.225)")
    g = parser.add_argument_group("k-NN")
    g.add_argument("--nb_knn", default=[20], nargs="+", type=int,
                   help="number of nearest neighbours, one or several (DINO's script: 10 20 100 200; its paper "
                        "reports 20)")
    g.add_argument("--temperature", default=0.07, type=float, help="temperature of the votes' exp(sim / T)")
    g.add_argument("--use_cuda", default=True, type=bool_flag,
                   help="keep the features on the GPU (on a CUDA run); false if it runs out of memory")
    g.add_argument("--pretrained_weights", dest="pretrained", type=str, default=argparse.SUPPRESS,
                   help="DINO's name of --pretrained")
    add_backbone_args(parser)
    g = parser.add_argument_group("run")
    g.add_argument("--batch_size_per_gpu", "--batch_size", dest="batch_size", default=128, type=int,
                   help="images per forward pass, per process")
    g.add_argument("--num_workers", "--workers", dest="workers", default=10, type=int,
                   help="data loading workers per process")
    g.add_argument("--dump_path", "--output_dir", dest="output_dir", type=str, default=".",
                   help="(new) where results.json, results.csv and knn.log go")
    g.add_argument("--device", type=str, default="auto", choices=["auto", "cpu", "cuda"],
                   help="(new) where to run: auto = CUDA when available")
    g.add_argument("--log_freq", type=int, default=50, help="(new) log every N batches of feature extraction")
    add_dist_args(parser)
    return parser
