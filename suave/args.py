"""Suave's command line: every flag of the released ``main_suave.py`` parser, plus the shared ones."""
from __future__ import annotations

import argparse

from src.args import (FlagParser, add_backbone_args, add_data_args, add_run_args, bool_flag, check_arch,
                      check_hidden_mlp, check_init_flags, check_shared_args)
from src.flag_checks import (NON_NEGATIVE, POSITIVE, PROBABILITY, SCALE, at_least, ignored_unless_default, refuse,
                             require, within_epochs)
from src.release_fixes import add_fix_args


def get_args_parser() -> FlagParser:
    parser = FlagParser("Suave", add_help=False, check=check_args)
    add_data_args(parser)
    add_run_args(parser)
    add_fix_args(parser, "mix_weight_rows", "mix_own_bn_batch", "seed_per_rank", "amp_eval", "ensemble_scaled",
                 "probes_clean_rows")
    parser.set_defaults(seed=31)

    g = parser.add_argument_group("multi-crop (unlabelled views)")
    g.add_argument("--nmb_crops", type=int, default=[2], nargs="+", help="number of crops per size, e.g. 2 8")
    g.add_argument("--size_crops", type=int, default=[224], nargs="+", help="crop sizes, e.g. 224 96")
    g.add_argument("--min_scale_crops", type=float, default=[0.14], nargs="+", help="RandomResizedCrop min scales")
    g.add_argument("--max_scale_crops", type=float, default=[1.0], nargs="+", help="RandomResizedCrop max scales")
    g.add_argument("--color_jit_unlab", type=bool_flag, default=True,
                   help="SwAV colour distortion and blur on unlabelled views")

    g = parser.add_argument_group("swav")
    g.add_argument("--crops_for_assign", type=int, nargs="+", default=[0, 1],
                   help="crops whose Sinkhorn assignments are the targets")
    g.add_argument("--temperature", default=0.1, type=float, help="temperature of the prototype scores")
    g.add_argument("--epsilon", default=0.05, type=float, help="Sinkhorn-Knopp regularisation")
    g.add_argument("--sinkhorn_iterations", default=3, type=int, help="Sinkhorn-Knopp iterations")
    g.add_argument("--feat_dim", default=128, type=int, help="embedding (projection output) dimension")
    g.add_argument("--nmb_prototypes", default=None, type=int,
                   help="number of prototypes = number of classes (default: the number of classes; "
                        "a different value is an error outside --train_mode selfsup)")
    g.add_argument("--queue_length", type=int, default=0, help="queue of embeddings, all ranks together (0: none)")
    g.add_argument("--epoch_queue_starts", type=int, default=15, help="epoch from which the queue is used")
    g.add_argument("--label_smoothing", type=float, default=0.01, help="label smoothing of the labelled term")

    g = parser.add_argument_group("model")
    add_backbone_args(g, "resnet50")
    g.add_argument("--hidden_mlp", default=[2048], type=int, nargs="+", help="hidden sizes of the projection head")
    g.add_argument("--multihead_eval", type=bool_flag, default=False,
                   help="online linear probes on each projection stage (detached)")
    g.add_argument("--ensemble_eval", type=bool_flag, default=False,
                   help="a linear classifier on the concatenation of all stages' features")
    g.add_argument("--bn_ensemble", type=bool_flag, default=False, help="BatchNorm before the ensemble classifier")
    g.add_argument("--detach_ensemble", type=bool_flag, default=True, help="ensemble classifier on detached features")
    g.add_argument("--use_momentum", type=bool_flag, default=False,
                   help="an EMA copy of the student computes the Sinkhorn targets")
    g.add_argument("--momentum_encoder", default=0.996, type=float,
                   help="base EMA momentum, raised to 1 with a cosine schedule")

    g = parser.add_argument_group("optimisation")
    g.add_argument("--epochs", default=100, type=int, help="epochs (passes over the unlabelled data)")
    g.add_argument("--batch_size", default=64, type=int, help="unlabelled images per process")
    g.add_argument("--lab_batch_size", default=50, type=int, help="labelled images per process")
    g.add_argument("--base_lr", default=4.8, type=float, help="learning rate after warm-up")
    g.add_argument("--final_lr", type=float, default=0, help="final learning rate (cosine)")
    g.add_argument("--lr_last_layer", type=float, default=None,
                   help="learning rate of the prototypes (the released finetune scripts pass it; the released "
                        "parser lacked it). Follows the same schedule, scaled by lr_last_layer / base_lr")
    g.add_argument("--freeze_prototypes_niters", default=0, type=int, help="no prototype gradient for N iterations")
    g.add_argument("--wd", default=1e-6, type=float, help="weight decay (LARS, every parameter)")
    g.add_argument("--warmup_epochs", default=10, type=int, help="linear warm-up epochs")
    g.add_argument("--start_warmup", default=0, type=float, help="learning rate at the start of warm-up")
    g.add_argument("--warmup_proj_nepochs", default=2, type=int,
                   help="epochs during which only the projection head and prototypes learn")
    g.add_argument("--clip_grad", type=float, default=0.0, help="(new) per-parameter gradient norm clip (0: off)")
    g.add_argument("--init_proj", type=bool_flag, default=False, help="also load the projection head")
    g.add_argument("--init_prototypes", type=bool_flag, default=False,
                   help="(new) also load the prototypes when their shape matches (fine-tuning our own checkpoint)")
    g.add_argument("--init_probes", type=bool_flag, default=True,
                   help="(new) also load the online probes (--multihead_eval / --ensemble_eval) the start checkpoint "
                        "holds, as the release's fine-tuning loaded everything but the prototypes; false: they "
                        "restart (a SwAV file holds none)")
    g.add_argument("--swav_init_ckpt", type=str, default=None,
                   help="SwAV (or Suave) checkpoint to start from; none: train from scratch")
    g.add_argument("--checkpoint_key", type=str, default="student", choices=["student", "teacher"],
                   help="(new) which network of --swav_init_ckpt to start from: student (the release loads its "
                        "'state_dict'), or teacher (the momentum encoder); a plain SwAV state_dict is one network")

    g.add_argument("--require_init_ckpt", type=bool_flag, default=False,
                   help="(new) refuse to start without --swav_init_ckpt (the fine-tuning recipes set it)")

    g = parser.add_argument_group("misc")
    g.add_argument("--workers", default=10, type=int, help="data-loading workers per process")
    g.add_argument("--checkpoint_freq", type=int, default=25, help="keep a snapshot every N epochs")
    g.add_argument("--sync_bn", type=str, default="pytorch", help="pytorch: SyncBatchNorm on GPUs; none: off")
    g.add_argument("--syncbn_process_group_size", type=int, default=8,
                   help="kept for the release's scripts: its default only (apex's SyncBatchNorm groups; "
                        "PyTorch's SyncBatchNorm here spans all processes)")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Every value Suave cannot train with, refused before any data is read (src.flag_checks)."""
    check_shared_args(args)
    require(args, at_least(1), "epochs", "batch_size", "lab_batch_size", "nmb_crops", "size_crops")
    require(args, at_least(1), "sinkhorn_iterations", why="Sinkhorn-Knopp needs at least one normalisation to "
            "give targets that sum to 1; the release's 3")
    require(args, POSITIVE, "temperature", why="the scores are divided by it, so the loss is undefined at 0; "
            "the release's 0.1")
    require(args, POSITIVE, "epsilon", why="Sinkhorn-Knopp computes exp(scores / epsilon); the release's 0.05")
    require(args, at_least(1), "nmb_prototypes")
    require(args, NON_NEGATIVE, "feat_dim", "queue_length", "epoch_queue_starts", "freeze_prototypes_niters",
            "warmup_proj_nepochs", "base_lr", "final_lr", "lr_last_layer", "wd", "start_warmup", "clip_grad",
            "workers", "checkpoint_freq")
    require(args, PROBABILITY, "label_smoothing", "momentum_encoder")
    require(args, SCALE, "min_scale_crops", "max_scale_crops", why="a fraction of the image's area")
    within_epochs(args, "warmup_epochs")
    groups = [args.nmb_crops, args.size_crops, args.min_scale_crops, args.max_scale_crops]
    if len({len(values) for values in groups}) != 1:
        refuse("--nmb_crops, --size_crops, --min_scale_crops and --max_scale_crops need one value per crop group; "
               f"got {' / '.join(str(values) for values in groups)}")
    if any(low > high for low, high in zip(args.min_scale_crops, args.max_scale_crops)):
        refuse(f"--min_scale_crops {args.min_scale_crops} exceeds --max_scale_crops {args.max_scale_crops} in a "
               "crop group: each group's min scale must be <= its max scale")
    views = sum(args.nmb_crops)
    if not args.crops_for_assign or not all(0 <= crop < views for crop in args.crops_for_assign):
        refuse(f"--crops_for_assign {args.crops_for_assign}: name crops 0 to {views - 1} (--nmb_crops "
               f"{args.nmb_crops} makes {views} crops)")
    if args.train_mode != "supervised" and views < 2:
        refuse(f"--nmb_crops {args.nmb_crops}: the assigned crops' targets are predicted by the other crops, so "
               "the unlabelled term needs at least 2 crops")
    if args.use_momentum and max(args.crops_for_assign) >= args.nmb_crops[0]:
        refuse("--use_momentum true computes targets from the first --nmb_crops group only: "
               f"--crops_for_assign {args.crops_for_assign} must be < {args.nmb_crops[0]}")
    if 0 < args.queue_length < args.batch_size:
        refuse(f"--queue_length {args.queue_length} is shorter than one batch (--batch_size {args.batch_size}): "
               "use 0 (no queue) or at least the global batch")
    if args.mixup_unlab and args.mixup_unlab_type == "globals" and args.nmb_crops[0] < 2:
        refuse(f"--mixup_unlab_type globals mixes crops 0 and 1, which --nmb_crops {args.nmb_crops} does not make "
               "of one size: use a first group of at least 2 crops")
    if args.mixup_unlab and args.mixup_unlab_type == "all" and any(n % 2 for n in args.nmb_crops):
        refuse(f"--mixup_unlab_type all mixes consecutive crops of one size: --nmb_crops {args.nmb_crops} needs "
               "even groups (or use --mixup_unlab_type globals)")
    check_init_flags(args, "swav_init_ckpt", "EXP/checkpoint.pth of a Suave run, or swav_800ep_pretrain.pth.tar")
    if args.sync_bn not in ("pytorch", "none"):
        refuse(f"--sync_bn {args.sync_bn}: use pytorch (SyncBatchNorm across GPUs) or none")
    ignored_unless_default(args, "syncbn_process_group_size", 8, "it sized apex's SyncBatchNorm groups; PyTorch's "
                           "SyncBatchNorm here spans all processes")
    check_arch(args.arch)
    check_hidden_mlp(args.hidden_mlp)
