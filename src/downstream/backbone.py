"""``--arch`` + ``--pretrained`` + ``--checkpoint_key``: the backbone both evaluation scripts start from.

Accepts this project's ``checkpoint.pth`` (Suave / Daino / plain SwAV or DINO runs), the SwAV release's
``swav_800ep_pretrain.pth.tar``, DINO's backbone-only or full checkpoints and the Suave-Daino release's files
(Suave's ``checkpoint.pth.tar`` / ``ckp-N.pth``, Daino's ``checkpoint.pth``); the weights themselves are loaded
by ``src.checkpoint.load_pretrained_backbone``, which refuses a ``--checkpoint_key`` the file does not hold.
Before that, a checkpoint that stores its flags (this project's, DINO's and Daino's) must have been trained with
the same ``--arch`` (one-line error; the other files are checked tensor by tensor by the loader).
"""
from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Optional, Tuple

from torch import nn

from src.checkpoint import (CheckpointError, extract_state_dict, flatten_projection_head, load_pretrained_backbone,
                            read_checkpoint, strip_wrapper_prefixes)
from src.errors import UserError
from src.logging_utils import get_logger
from src.models import backbone_from_flags

_VIT_ALIASES = {"deit_tiny": "vit_tiny", "deit_small": "vit_small"}


def check_arch(checkpoint: Mapping, args: argparse.Namespace, path: str) -> None:
    """Checkpoints that record their flags (a dict here, DINO's and Daino's ``argparse.Namespace``): refuse
    another ``--arch`` / ``--patch_size`` by name."""
    trained = checkpoint.get("args")
    trained = vars(trained) if isinstance(trained, argparse.Namespace) else trained
    if not isinstance(trained, Mapping) or not isinstance(trained.get("arch"), str):
        return
    arch, wanted = _VIT_ALIASES.get(trained["arch"], trained["arch"]), _VIT_ALIASES.get(args.arch, args.arch)
    if arch != wanted:
        raise CheckpointError(f"--arch {args.arch} does not match --pretrained {path}, a {trained['arch']} "
                              f"checkpoint: pass --arch {trained['arch']}")
    patch = trained.get("patch_size")
    if arch.startswith("vit") and isinstance(patch, int) and patch != args.patch_size:
        raise CheckpointError(f"--patch_size {args.patch_size} does not match --pretrained {path}, trained with "
                              f"--patch_size {patch}: pass --patch_size {patch}")


Pretrained = Tuple[nn.Module, Optional[dict]]  # the backbone and the checkpoint it came from (None: random)


def build_pretrained_backbone(args: argparse.Namespace) -> Pretrained:
    """The ``--arch`` backbone with the ``--pretrained`` weights, and the checkpoint read (None without one).

    An empty ``--pretrained`` trains from random weights, as the release (with a warning); a path that does not
    exist is an error (the release silently trained from random weights).
    """
    try:
        backbone = backbone_from_flags(args)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if not args.pretrained:
        get_logger().warning("no --pretrained checkpoint: training from random weights")
        return backbone, None
    checkpoint = read_checkpoint(args.pretrained, flag="--pretrained")
    check_arch(checkpoint, args, args.pretrained)
    load_pretrained_backbone(backbone, args.pretrained, checkpoint_key=args.checkpoint_key, flag="--pretrained")
    return backbone, checkpoint


def load_matching_head(module: nn.Module, checkpoint: Mapping, checkpoint_key: str, prefix: str) -> list[str]:
    """Load the tensors of ``module`` under ``prefix`` that the checkpoint's network has with the same name and
    shape; the rest keep their initialisation (the release's ``--load_hidden_mlp``: a K-way last layer never
    matches a 128-d projection; the Suave release's ModuleList names are read as this project's). Returns the
    loaded names."""
    found = flatten_projection_head(strip_wrapper_prefixes(extract_state_dict(checkpoint, checkpoint_key)))
    own = module.state_dict()
    loaded = {k: found[k] for k, v in own.items()
              if k.startswith(prefix) and k in found and tuple(found[k].shape) == tuple(v.shape)}
    module.load_state_dict(loaded, strict=False)
    skipped = [k for k in own if k.startswith(prefix) and k not in loaded]
    get_logger().info("head: loaded %d tensors from the checkpoint (%s); initialised here: %s", len(loaded),
                      ", ".join(loaded) or "none", ", ".join(skipped) or "none")
    return list(loaded)
