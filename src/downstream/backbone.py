"""``--arch`` + ``--pretrained`` + ``--checkpoint_key``: the backbone both evaluation scripts start from.

Accepts this project's ``checkpoint.pth`` (Suave / Daino / plain SwAV or DINO runs), the SwAV release's
``swav_800ep_pretrain.pth.tar`` and DINO's backbone-only or full checkpoints; the weights themselves are loaded
by ``src.checkpoint.load_pretrained_backbone``. Before that, two checks give a one-line error instead of a
wrong start: the requested network must be in the file, and a checkpoint of this project must have been
trained with the same ``--arch`` (files of the releases are checked tensor by tensor by the loader).
"""
from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any, Optional, Tuple

import torch
from torch import nn

from src.checkpoint import CheckpointError, extract_state_dict, load_pretrained_backbone, read_checkpoint
from src.errors import UserError
from src.logging_utils import get_logger
from src.models import build_backbone

_VIT_ALIASES = {"deit_tiny": "vit_tiny", "deit_small": "vit_small"}
# Where each network of --checkpoint_key can sit: top-level entries (DINO, the Suave-Daino release, this
# project) and this project's method state (Daino's teacher, Suave's momentum encoder).
_NETWORK_PLACES = {"teacher": (("teacher",), ("ema_state_dict",), ("method", "teacher"), ("method", "ema")),
                   "student": (("student",), ("state_dict",), ("model",))}
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def backbone_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments ``build_backbone`` takes for ``--arch`` (patch size for ViTs, stem for ResNets)."""
    if args.arch.startswith(("vit", "deit")):
        return {"patch_size": args.patch_size}
    if "resnet" in args.arch:
        return {"small_stem": args.small_stem}
    return {}


def _lookup(checkpoint: Mapping, place: tuple[str, ...]) -> Any:
    value: Any = checkpoint
    for key in place:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def _is_plain_state_dict(checkpoint: Mapping) -> bool:
    return len(checkpoint) > 0 and all(isinstance(v, torch.Tensor) for v in checkpoint.values())


def networks_in(checkpoint: Mapping) -> list[str]:
    """The ``--checkpoint_key`` values a container can serve (a plain state_dict serves any)."""
    if _is_plain_state_dict(checkpoint):
        return list(_NETWORK_PLACES)
    return [name for name, places in _NETWORK_PLACES.items()
            if any(isinstance(_lookup(checkpoint, p), Mapping) and _lookup(checkpoint, p) for p in places)]


def check_checkpoint_key(checkpoint: Mapping, key: str, path: str) -> None:
    """CheckpointError when the file does not hold the network ``key`` names (no silent fallback)."""
    held = networks_in(checkpoint)
    if key not in held:
        fix = f"pass --checkpoint_key {held[0]}" if held else "is it a checkpoint of a network?"
        raise CheckpointError(f"--pretrained {path} holds no {key} network (it holds: {', '.join(held) or 'none'}, "
                              f"entries {sorted(map(str, checkpoint))}); {fix}")


def check_arch(checkpoint: Mapping, args: argparse.Namespace, path: str) -> None:
    """This project's checkpoints record their flags: refuse another ``--arch`` / ``--patch_size`` by name."""
    trained = checkpoint.get("args")
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
        backbone = build_backbone(args.arch, **backbone_kwargs(args))
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if not args.pretrained:
        get_logger().warning("no --pretrained checkpoint: training from random weights")
        return backbone, None
    checkpoint = read_checkpoint(args.pretrained, flag="--pretrained")
    check_checkpoint_key(checkpoint, args.checkpoint_key, args.pretrained)
    check_arch(checkpoint, args, args.pretrained)
    load_pretrained_backbone(backbone, args.pretrained, checkpoint_key=args.checkpoint_key, flag="--pretrained")
    return backbone, checkpoint


def load_matching_head(module: nn.Module, checkpoint: Mapping, checkpoint_key: str, prefix: str) -> list[str]:
    """Load the tensors of ``module`` under ``prefix`` that the checkpoint's network has with the same name and
    shape; the rest keep their initialisation (the release's ``--load_hidden_mlp``: a K-way last layer never
    matches a 128-d projection). Returns the loaded names."""
    found = {}
    for key, value in extract_state_dict(checkpoint, checkpoint_key).items():
        while key.startswith(_WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        found[key] = value
    own = module.state_dict()
    loaded = {k: found[k] for k, v in own.items()
              if k.startswith(prefix) and k in found and tuple(found[k].shape) == tuple(v.shape)}
    module.load_state_dict(loaded, strict=False)
    skipped = [k for k in own if k.startswith(prefix) and k not in loaded]
    get_logger().info("head: loaded %d tensors from the checkpoint (%s); initialised here: %s", len(loaded),
                      ", ".join(loaded) or "none", ", ".join(skipped) or "none")
    return list(loaded)
