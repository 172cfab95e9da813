"""Command-line flags both entry points share (data, mixup, augmentation, run, logging, distributed).

The names and meanings are the released recipes' (``suave/scripts/*.sh``, ``daino/scripts/*.sh``); flags this
project adds are marked "(new)". Each method adds its own flags in ``suave/args.py`` / ``daino/args.py``, and
declares there the one check of their values (``FlagParser.check``); ``check_shared_args`` checks the flags below.
"""
from __future__ import annotations

import argparse
from typing import Callable

from src.flag_checks import NON_NEGATIVE, POSITIVE, PROBABILITY, SCALE, at_least, refuse, require


class FlagParser(argparse.ArgumentParser):
    """An entry point's parser with the check of its flags' values (ranges, lengths that must agree, combinations
    that cannot work), which raises ``src.errors.FlagError``. ``src.cli.run_main`` and
    ``launch.script_file.validate_flags`` run ``check`` on the parsed flags before anything reads data."""

    def __init__(self, *args, check: Callable[[argparse.Namespace], None], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.check = check


def add_dist_timeout_arg(group: argparse._ArgumentGroup) -> None:
    """``--dist_timeout``, for every entry point that may run on several processes."""
    group.add_argument("--dist_timeout", type=float, default=1800, metavar="SECONDS",
                       help="(new) how long a collective waits for a rank that stopped answering (a lost node) "
                            "before the run stops on every rank, naming that rank and its node (also how long the "
                            "other ranks wait while rank 0 alone first scans own-data folders)")


def check_dist_timeout(args: argparse.Namespace) -> None:
    """The value of ``--dist_timeout`` (every parser that has it runs this rule)."""
    require(args, POSITIVE, "dist_timeout", why="seconds a collective waits for a rank")


def bool_flag(value: str | bool) -> bool:
    """Parse the release's boolean flags: on/true/1 and off/false/0 (case-insensitive)."""
    if isinstance(value, bool):
        return value
    lowered = value.lower()
    if lowered in {"on", "true", "1", "yes"}:
        return True
    if lowered in {"off", "false", "0", "no"}:
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value {value!r}: use true/false (or on/off, 1/0)")


def bf16_flag(value: str | bool) -> bool | str:
    """``--use_bf16``: true/false as ``bool_flag``, or ``auto`` (bf16 only where the device computes it natively,
    see ``src.train_step.Precision``)."""
    if isinstance(value, str) and value.lower() == "auto":
        return "auto"
    try:
        return bool_flag(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"invalid --use_bf16 value {value!r}: use true, false or auto") from None


def add_data_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--data_path", type=str, default="/path/to/imagenet",
                   help="dataset root holding train/<class>/<file> and val/<class>/<file>")
    g.add_argument("--labels_perc", type=str, default="10",
                   help="percentage of labelled images: 1 or 10 use the standard ImageNet lists "
                        "(DATA/subsets/{1,10}percent.txt); other datasets use --subset_file")
    g.add_argument("--subset_file", type=str, default=None,
                   help="(new) list of labelled files, one per line: ImageNet style '<wnid>_<n>.JPEG' or "
                        "'<class>/<file>'; overrides --labels_perc")
    g.add_argument("--unlab_dir", type=str, nargs="+", default=None,
                   help="(new) own data: folder(s) of unlabelled images, searched recursively, no class structure "
                        "(with --lab_dir/--lab_csv; replaces DATA/train, see docs/data.md)")
    g.add_argument("--unlab_list", type=str, nargs="+", default=None,
                   help="(new) own data: file(s) listing unlabelled image paths, one a line (relative to the file)")
    g.add_argument("--unlab_include_labelled", type=bool_flag, default=True,
                   help="(new) own data: also train the unlabelled term on the labelled images (true: as the paper, "
                        "whose unlabelled stream is the whole train set) or drop them from it (false)")
    g.add_argument("--lab_dir", type=str, default=None,
                   help="(new) own data: labelled images in class folders ROOT/<class>/<image>")
    g.add_argument("--lab_csv", type=str, default=None,
                   help="(new) own data: labelled images as 'path,class' lines (paths relative to the file)")
    g.add_argument("--val_dir", type=str, default=None,
                   help="(new) own data: validation images in class folders ROOT/<class>/<image> (optional)")
    g.add_argument("--val_csv", type=str, default=None,
                   help="(new) own data: validation images as 'path,class' lines (optional)")
    g.add_argument("--rescan_data", type=bool_flag, default=False,
                   help="(new) own data: scan the sources again instead of reading the cached file lists")
    g.add_argument("--max_bad_images", type=int, default=100,
                   help="(new) unreadable training images skipped (with a warning naming each) before the run "
                        "stops with their list")
    g.add_argument("--mean", type=float, nargs=3, default=None,
                   help="(new) normalisation mean (default: ImageNet's)")
    g.add_argument("--std", type=float, nargs=3, default=None,
                   help="(new) normalisation std (default: the method release's ImageNet values)")
    g.add_argument("--lab_crop_size", type=int, default=224,
                   help="(new) size of the labelled crops (224 for ImageNet)")
    g.add_argument("--lab_min_scale", type=float, default=0.08,
                   help="(new) lower scale of the labelled RandomResizedCrop (0.08 as torchvision/the release)")
    g.add_argument("--blur_radius", type=float, nargs=2, default=(0.1, 2.0),
                   help="(new) Gaussian blur radius range of the unlabelled views (the release's 0.1 2.0 at 224 px)")
    g.add_argument("--fast_aug", type=bool_flag, default=False,
                   help="(new) faster CPU augmentation with the same random draws: hue shift by colour table "
                        "(within a few 8-bit levels of PIL's), fused normalisation (benchmarks/README.md)")
    g.add_argument("--gpu_aug", type=bool_flag, default=False,
                   help="(new) apply the unlabelled views' colour jitter, grey, blur, solarise and normalisation on "
                        "the training device, per image, to whole batches; loader workers only decode, crop, flip")
    g.add_argument("--val_resize", type=int, default=256, help="(new) validation Resize (256 for ImageNet)")
    g.add_argument("--val_crop", type=int, default=224, help="(new) validation CenterCrop (224 for ImageNet)")
    g.add_argument("--mixup_unlab", type=bool_flag, default=False, help="mixup/cutmix on unlabelled views")
    g.add_argument("--mixup_unlab_type", type=str, default="all", choices=["all", "globals"],
                   help="mix every view or only the global views")
    g.add_argument("--mixup_lab", type=bool_flag, default=False, help="mixup/cutmix on labelled images")
    g.add_argument("--mixup_lab_type", type=str, default="extend", choices=["extend", "replace"],
                   help="extend the labelled batch with mixed copies or replace it")
    g.add_argument("--mixup_lab_prob", type=float, default=0.5,
                   help="probability of mixing the labelled batch with --mixup_lab_type replace")
    g.add_argument("--augment3_lab", type=bool_flag, default=False,
                   help="3-Augment (DeiT III) on labelled images")
    g.add_argument("--simple_crop", type=bool_flag, default=False,
                   help="simple resized crop inside 3-Augment")
    g.add_argument("--light_augment_lab", type=bool_flag, default=False,
                   help="lighter augmentation on labelled images")
    g.add_argument("--val_batch_size", type=int, default=None,
                   help="(new) validation batch size per process (default: the unlabelled batch size)")


def add_backbone_args(group: argparse._ArgumentGroup, default_arch: str) -> None:
    """``--arch``, ``--patch_size`` and ``--small_stem``: every parser's backbone flags
    (``src.models.backbone_from_flags`` reads them)."""
    group.add_argument("--arch", default=default_arch, type=str,
                       help="backbone (see src.models.available_backbones())")
    group.add_argument("--patch_size", default=16, type=int, help="ViT patch size (16)")
    group.add_argument("--small_stem", type=bool_flag, default=False,
                       help="(new) 3x3 stride-1 stem without max-pool for 28-64 px images (ResNets)")


def add_run_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("run")
    g.add_argument("--output_dir", type=str, default=".",
                   help="experiment directory: checkpoints, train.log, stats.csv; re-running resumes")
    g.add_argument("--seed", type=int, default=31, help="random seed")
    g.add_argument("--order_by_seed", type=bool_flag, default=False,
                   help="(new) shuffle the unlabelled and labelled training streams with --seed (false: with seed 0, "
                        "the release's DistributedSampler default); augmentations follow --seed either way")
    g.add_argument("--evaluate", type=str, default=None, metavar="CKPT",
                   help="(new) only evaluate checkpoint CKPT on DATA/val (top-1/top-5 of every head) and write "
                        "eval.json beside it (or in --output_dir); the other flags come from the checkpoint")
    g.add_argument("--use_fp16", type=bool_flag, default=True,
                   help="fp16 autocast with gradient scaling (CUDA only; ignored with a warning on CPU)")
    g.add_argument("--use_bf16", type=bf16_flag, default=False,
                   help="(new) bf16 autocast on CPU or GPU (takes precedence over --use_fp16); auto: only where "
                        "the device computes bf16 natively (a CUDA GPU with bf16, a CPU with AVX-512/AMX), "
                        "else fp32: CPUs with only AVX2 emulate bf16 over 10x slower than fp32")
    g.add_argument("--device", type=str, default="auto", choices=["auto", "cpu", "cuda"],
                   help="(new) where to train: auto = CUDA when available")
    g.add_argument("--train_mode", type=str, default="semisup", choices=["semisup", "supervised", "selfsup"],
                   help="(new) semisup: both terms (the paper); supervised: labelled term only (baseline); "
                        "selfsup: unlabelled term only (plain SwAV/DINO pre-training)")
    g.add_argument("--channels_last", type=bool_flag, default=False,
                   help="(new) channels-last memory format for the networks and images (faster convolutions "
                        "with bf16 on recent CPUs, and with fp16 on tensor-core GPUs)")
    g.add_argument("--checkpoint_every_iters", type=int, default=0,
                   help="(new) also write checkpoint.pth every N iterations (0: only at epoch ends)")
    g.add_argument("--max_iters_per_epoch", type=int, default=0,
                   help="(new) cap iterations per epoch (0: one full pass over the unlabelled data)")
    g.add_argument("--time_budget_min", type=float, default=0,
                   help="(new) stop cleanly (checkpoint + validation) after this many minutes (0: no limit)")
    g.add_argument("--eval_every_min", type=float, default=0,
                   help="(new) also validate every N minutes of training, into evals.csv (accuracy vs time; "
                        "evaluation time is not counted in --time_budget_min)")
    g.add_argument("--stop_after_epochs", type=int, default=0,
                   help="(new) leave after this many epochs in this invocation (fixed-length queue slots); "
                        "the same command resumes")
    g.add_argument("--log_freq", type=int, default=50, help="(new) log every N iterations")
    g.add_argument("--wandb", type=bool_flag, default=False, help="log to Weights & Biases")
    g.add_argument("--wandb_project", type=str, default="simple-semi-self", help="(new) wandb project")
    g.add_argument("--wandb_entity", type=str, default=None, help="(new) wandb entity")
    g.add_argument("--wandb_mode", type=str, default="online", choices=["online", "offline", "disabled"],
                   help="(new) wandb mode; offline works without network")
    g.add_argument("--dist_url", type=str, default="env://",
                   help="ignored (kept so the release's scripts run): processes meet through the environment "
                        "(MASTER_ADDR, MASTER_PORT), as torchrun and job_launcher.py set it")
    add_dist_timeout_arg(g)
    g.add_argument("--world_size", type=int, default=-1,
                   help="ignored (kept so the release's scripts run): the environment's WORLD_SIZE counts processes")
    g.add_argument("--rank", type=int, default=0,
                   help="ignored (kept so the release's scripts run): each process's rank is the environment's RANK")
    g.add_argument("--local_rank", "--local-rank", type=int, default=None,
                   help="given by old launchers; the environment's LOCAL_RANK/SLURM_LOCALID wins")
    add_speed_args(parser)


def add_speed_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("speed (new)")
    g.add_argument("--cudnn_benchmark", type=bool_flag, default=True,
                   help="(new) let cuDNN time and pick convolution algorithms (the release's setting; CUDA only)")
    g.add_argument("--tf32", type=bool_flag, default=True,
                   help="(new) TF32 tensor-core matmuls in fp32 code on CUDA (Ampere or newer), as the release's "
                        "PyTorch 1.11 did by default; false: full fp32 matmuls (changes results at the 1e-3 relative "
                        "level; Daino's fp32 recipe about 2x slower). fp32 convolutions use TF32 by PyTorch's default")
    g.add_argument("--compile", type=bool_flag, default=False,
                   help="(new) torch.compile the student's forward (first steps slower while it compiles)")
    g.add_argument("--fused_optimizer", type=bool_flag, default=False,
                   help="(new) fused AdamW kernel on CUDA (Daino's optimiser; rounding-level differences; LARS "
                        "and SGD unchanged)")
    g.add_argument("--nan_check_every", type=int, default=1,
                   help="(new) check the loss is finite every N steps instead of every step: the check is kept on "
                        "the device in between, so the step does not wait for the GPU (1: as Daino's release)")


def check_shared_args(args: argparse.Namespace) -> None:
    """The values of the flags above (every method's parser has them)."""
    own_data = (args.unlab_dir or args.unlab_list, args.lab_dir, args.lab_csv, args.val_dir, args.val_csv)
    if any(own_data) and (problem := own_data_problem(*own_data)):
        refuse(problem)
    require(args, NON_NEGATIVE, "max_bad_images", "val_resize", "val_crop", "checkpoint_every_iters",
            "max_iters_per_epoch", "time_budget_min", "eval_every_min", "stop_after_epochs",
            why="0 turns it off")
    require(args, POSITIVE, "std", why="the images are divided by it")
    check_dist_timeout(args)
    require(args, at_least(1), "lab_crop_size", "val_batch_size", "log_freq", "nan_check_every")
    require(args, SCALE, "lab_min_scale", why="a fraction of the image's area")
    require(args, PROBABILITY, "mixup_lab_prob")
    if not 0 <= args.blur_radius[0] <= args.blur_radius[1]:
        refuse(f"--blur_radius {args.blur_radius[0]:g} {args.blur_radius[1]:g}: use 0 <= MIN <= MAX (the Gaussian "
               "blur's radius is drawn between them; the release's 0.1 2.0)")
    if args.light_augment_lab and args.augment3_lab:
        refuse("--light_augment_lab true and --augment3_lab true: choose one labelled augmentation")
    if args.simple_crop and not args.augment3_lab:
        refuse("--simple_crop true: it replaces the crop of 3-Augment only; add --augment3_lab true or drop it")


def own_data_problem(unlabelled: object, lab_dir: str | None, lab_csv: str | None, val_dir: str | None,
                     val_csv: str | None) -> str | None:
    """What is wrong with a set of own-data sources (docs/data.md), or None; ``unlabelled``: any unlabelled
    source. The flags' check and ``src.data.sources.OwnDataSpec.check`` both ask it."""
    if lab_dir and lab_csv:
        return ("give one labelled source: --lab_dir ROOT (ROOT/<class>/<image>) or --lab_csv FILE (path,class "
                "lines), not both")
    if not (lab_dir or lab_csv):
        return ("own-data sources need a labelled source (it defines the classes): add --lab_dir ROOT "
                "(ROOT/<class>/<image>) or --lab_csv FILE (path,class lines)")
    if not unlabelled:
        return ("own-data sources need unlabelled images: add --unlab_dir FOLDER [FOLDER ...] (searched "
                "recursively) or --unlab_list FILE (one path a line)")
    if val_dir and val_csv:
        return "give one validation source: --val_dir ROOT or --val_csv FILE, not both"
    return None


def check_arch(arch: str) -> None:
    """``--arch`` names a backbone of ``src.models`` (imported here: torch, not the data stack)."""
    from src.models import available_backbones
    if arch not in available_backbones():
        refuse(f"--arch {arch}: unknown backbone; choose one of {', '.join(available_backbones())}")


def check_hidden_mlp(hidden_mlp: list[int]) -> None:
    """``--hidden_mlp``: positive widths, or a single 0 (a linear projection), as the head builder reads it."""
    from src.models import normalize_hidden_mlp
    normalize_hidden_mlp(hidden_mlp)


def check_init_flags(args: argparse.Namespace, checkpoint_flag: str, example: str) -> None:
    """``--require_init_ckpt``, ``--init_proj`` and ``--init_prototypes`` need the method's start checkpoint
    (``--swav_init_ckpt`` / ``--dino_init_ckpt``)."""
    if args.require_init_ckpt and not getattr(args, checkpoint_flag):
        refuse(f"--require_init_ckpt true: this recipe fine-tunes a checkpoint: pass --{checkpoint_flag} PATH "
               f"(e.g. {example})")
    for flag in ("init_proj", "init_prototypes"):
        if getattr(args, flag) and not getattr(args, checkpoint_flag):
            refuse(f"--{flag} true loads from --{checkpoint_flag}, which is not given: pass it or drop --{flag}")
