"""FixMatch's command line: the shared data/run flags (src/args.py) and the paper's hyperparameters as defaults
(Sohn et al., NeurIPS 2020, Sec. 4 and App. B: tau 0.95, lambda_u 1, mu 7, B 64, SGD nesterov 0.9, lr 0.03,
weight decay 5e-4, EMA 0.999; BatchNorm momentum 0.999 in TF's convention, from the reference code)."""
from __future__ import annotations

import argparse

from src.args import (FlagParser, add_backbone_args, add_data_args, add_run_args, bool_flag, check_arch,
                      check_shared_args)
from src.flag_checks import (FRACTION_BELOW_1, NON_NEGATIVE, PROBABILITY, SCALE, at_least, ignored_unless_default,
                             refuse, require)
from src.release_fixes import add_fix_args


def get_args_parser() -> FlagParser:
    parser = FlagParser("FixMatch", add_help=False, check=check_args)
    add_data_args(parser)
    add_run_args(parser)
    add_fix_args(parser)  # only --all_fixes applies: validation under autocast (--amp_eval), as Suave
    parser.set_defaults(seed=31, temperature=1.0)  # the classifier's logits are the scores (src.trained reads it)

    g = parser.add_argument_group("fixmatch")
    g.add_argument("--threshold", type=float, default=0.95,
                   help="confidence threshold tau: a pseudo-label counts where max softmax(weak view) >= tau")
    g.add_argument("--lambda_u", type=float, default=1.0, help="weight of the unlabelled loss")
    g.add_argument("--mu", type=int, default=7, help="unlabelled images per labelled image in a step")
    g.add_argument("--crop_size", type=int, default=32, help="side of the weak and strong views (28 for Fashion-MNIST)")
    g.add_argument("--translate", type=float, default=0.125,
                   help="weak view: random translation by up to this fraction of the side (reflect padding)")
    g.add_argument("--randaugment_ops", type=int, default=2, help="strong view: RandAugment ops per image")
    g.add_argument("--cutout", type=float, default=0.5, help="strong view: largest Cutout side, fraction of the width")

    g = parser.add_argument_group("model")
    add_backbone_args(g, "resnet50")

    g = parser.add_argument_group("optimisation")
    g.add_argument("--epochs", default=100, type=int, help="epochs (passes over the unlabelled data)")
    g.add_argument("--lab_batch_size", default=64, type=int, help="labelled images per process (B)")
    g.add_argument("--lr", default=0.03, type=float, help="SGD learning rate, decayed as lr * cos(7 pi k / 16 K)")
    g.add_argument("--momentum", default=0.9, type=float, help="SGD (Nesterov) momentum")
    g.add_argument("--nesterov", type=bool_flag, default=True, help="Nesterov momentum")
    g.add_argument("--wd", default=5e-4, type=float, help="weight decay (conv/linear weights; not biases, norms)")
    g.add_argument("--ema_decay", default=0.999, type=float,
                   help="decay of the EMA of the weights that validation reports as main (0: no EMA)")
    g.add_argument("--bn_momentum", default=0.001, type=float,
                   help="BatchNorm running-statistics momentum, PyTorch's convention (new = (1 - m) old + m batch); "
                        "the reference TF code's 0.999 is 0.001 here. The EMA model validates with the student's "
                        "statistics, so they should average over as many steps as --ema_decay does (m = 1 - decay)")

    g = parser.add_argument_group("misc")
    g.add_argument("--workers", default=10, type=int, help="data-loading workers per process")
    g.add_argument("--checkpoint_freq", type=int, default=0, help="keep a snapshot every N epochs (0: none)")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Every value FixMatch cannot train with, refused before any data is read (src.flag_checks)."""
    check_shared_args(args)
    if args.train_mode == "selfsup":
        refuse("--train_mode selfsup: FixMatch needs labels (its pseudo-labels come from a classifier); use "
               "--train_mode semisup or supervised")
    if args.mixup_unlab:
        refuse("--mixup_unlab true: FixMatch has no unlabelled mixup (its strong view is the perturbation); drop it")
    ignored_unless_default(args, "mixup_unlab_type", "all", "FixMatch has no unlabelled mixup")
    for flag in ("fast_aug", "gpu_aug"):
        if getattr(args, flag):
            refuse(f"--{flag} true: FixMatch's weak and strong views (padded crop, RandAugment, Cutout) have no faster "
                   f"version; drop --{flag}")
    ignored_unless_default(args, "blur_radius", [0.1, 2.0], "FixMatch's weak and strong views have no Gaussian blur")
    require(args, at_least(1), "epochs", "lab_batch_size", "crop_size", "mu")
    require(args, PROBABILITY, "threshold", why="a pseudo-label counts where its softmax probability reaches it; "
            "the paper's 0.95")
    require(args, NON_NEGATIVE, "lambda_u", "randaugment_ops", "lr", "wd", "workers", "checkpoint_freq")
    require(args, FRACTION_BELOW_1, "translate", why="a fraction of the side; the paper's 0.125")
    require(args, PROBABILITY, "cutout", why="a fraction of the width; the paper's 0.5")
    require(args, FRACTION_BELOW_1, "momentum", "ema_decay")
    require(args, SCALE, "bn_momentum", why="PyTorch's convention; the reference code's 0.001, or 1 - --ema_decay")
    check_arch(args.arch)
