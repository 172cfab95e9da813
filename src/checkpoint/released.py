"""Importing weights from files this project did not write, and from any checkpoint by network name: the SwAV
and DINO releases, the Suave-Daino release, other trainers' ``{"model": ...}`` files, and (through
:func:`checkpoint_networks`) this project's own run files (:mod:`src.checkpoint.run_file`).

``checkpoint_key`` (``--checkpoint_key``, :func:`load_pretrained_backbone`) names one network:
``student`` or ``teacher``. It loads exactly that network or raises :class:`CheckpointError` (a
``UserError``) naming the networks the file holds; it never falls back to another one. A plain state_dict
(the SwAV release, DINO's backbone-only file) holds a single network and loads whatever the key.

Released containers understood by :func:`extract_state_dict`:

- SwAV release (``swav_800ep_pretrain.pth.tar``): a plain state_dict of the DDP-wrapped model, keys
  ``module.conv1.weight``, ..., ``module.projection_head.*``, ``module.prototypes.weight`` (or the same
  wrapped in ``{"state_dict": ...}``).
- DINO backbone-only release (``dino_deitsmall16_pretrain.pth``): a plain state_dict without prefix.
- DINO full checkpoint: ``{"student": {module.backbone.*, module.head.*}, "teacher": {backbone.*, head.*},
  "optimizer", "epoch", "args" (argparse.Namespace), "dino_loss", "fp16_scaler"}``.
- The Suave-Daino release's own checkpoints: ``{"state_dict" (student), "ema_state_dict" (teacher: the
  momentum encoder, or None), ...}`` (Suave) and the DINO layout above (Daino); recognised as whole runs
  (``--evaluate``, predict, export) by :mod:`src.checkpoint.release_files`.

``module.`` / ``_orig_mod.`` prefixes are stripped on load. Other names of the same tensors are translated to
this project's: legacy ``weight_g`` / ``weight_v`` weight norm, and the Suave release's projection head, an
``nn.ModuleList`` of ``Sequential(Linear, BatchNorm1d, ReLU)`` stages then a ``Linear``
(``projection_head.0.0.weight``, ``projection_head.0.1.running_mean``, ``projection_head.1.weight``), which is
one flat ``nn.Sequential`` here (:func:`flatten_projection_head`).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from src.checkpoint.files import CheckpointError, _describe, read_checkpoint, unwrap_module

logger = logging.getLogger(__name__)

CheckpointSource = Union[str, "os.PathLike[str]", Mapping]

# Prefixes added by wrappers: DistributedDataParallel / DataParallel ("module.") and torch.compile ("_orig_mod.").
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_BACKBONE_PREFIX = "backbone."
# Legacy torch.nn.utils.weight_norm names <-> torch.nn.utils.parametrizations.weight_norm names (dim=0 in both).
_WEIGHT_NORM_ALIASES = {
    "weight_g": "parametrizations.weight.original0",
    "weight_v": "parametrizations.weight.original1",
}
# Where each network lives in a dict container, tried in order: this project (v2, then v1 inside "method"),
# DINO's full checkpoint, the Suave release ("state_dict" / "ema_state_dict"), other trainers ("model").
NETWORK_LOCATIONS: dict[str, tuple[tuple[str, ...], ...]] = {
    "student": (("student",), ("state_dict",), ("model",)),
    "teacher": (("teacher",), ("ema_state_dict",), ("method", "teacher"), ("method", "ema")),
}
_SHOW = 5  # how many key names an error message lists
# The Suave release's projection head (src/resnet50.py: nn.ModuleList of Sequential(Linear, BatchNorm1d, ReLU)
# stages, then a Linear): a stage's tensor "projection_head.<stage>.<layer>.<name>", the last Linear's
# "projection_head.<stages>.<name>".
_RELEASE_STAGE = re.compile(r"projection_head\.(\d+)\.(\d+)\.(.+)")
_RELEASE_LAST = re.compile(r"projection_head\.(\d+)\.([^.]+)")
_STAGE_LAYERS = 3  # Linear, BatchNorm1d, ReLU: the flat Sequential's modules per hidden stage


def _as_checkpoint(source: CheckpointSource, flag: str | None) -> tuple[dict, str]:
    """A checkpoint dict and its description, from a path (read here) or an already-read dict."""
    if isinstance(source, Mapping):
        return dict(source), "<checkpoint dict>"
    return read_checkpoint(source, flag=flag), _describe(source, flag)


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, Mapping) and len(value) > 0 and all(isinstance(v, Tensor) for v in value.values())


def _entry(checkpoint: Mapping, location: Sequence[str]) -> Any:
    value: Any = checkpoint
    for key in location:
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def checkpoint_networks(checkpoint: Mapping) -> dict[str, dict[str, Tensor]]:
    """Network name (``student``, ``teacher``) -> state_dict, for every network a dict container holds.

    Looks where :data:`NETWORK_LOCATIONS` says (this project's v2 and v1 layouts, DINO, the Suave release);
    a plain state_dict is one network, returned as ``{"student": ...}``. Empty or None entries do not count.
    """
    if _is_state_dict(checkpoint):
        return {"student": dict(checkpoint)}
    networks = {}
    for name, locations in NETWORK_LOCATIONS.items():
        for location in locations:
            value = _entry(checkpoint, location)
            if _is_state_dict(value):
                networks[name] = dict(value)
                break
    return networks


def extract_state_dict(checkpoint: Mapping, checkpoint_key: str = "teacher", where: str = "") -> dict[str, Tensor]:
    """The state_dict of network ``checkpoint_key`` inside a checkpoint container (keys unchanged).

    A plain state_dict (SwAV, DINO backbone-only) holds one network and is returned as is, whatever the key;
    so does a container with nothing but a ``state_dict`` or ``model`` entry (SwAV's ``{"state_dict": ...}``:
    no teacher, student or momentum-encoder entry at all). In other dict containers, ``checkpoint_key`` is ``"student"`` or ``"teacher"`` (looked up as
    :func:`checkpoint_networks` does) or the name of an entry holding a state_dict. A network the file does
    not hold is a :class:`CheckpointError` naming the networks it holds: there is no silent fallback.
    """
    if _is_state_dict(checkpoint):
        return dict(checkpoint)
    if _is_state_dict(checkpoint.get(checkpoint_key)):
        return dict(checkpoint[checkpoint_key])
    networks = checkpoint_networks(checkpoint)
    if list(networks) == ["student"] and not set(checkpoint) & {"student", "teacher", "ema_state_dict", "method"}:
        return networks["student"]  # a single-network container
    if checkpoint_key in networks:
        return networks[checkpoint_key]
    where = f" {where}" if where else ""
    if not networks:
        raise CheckpointError(
            f"no state_dict found under {checkpoint_key!r} in checkpoint{where} with entries "
            f"{sorted(map(str, checkpoint))}; pass checkpoint_key naming the entry that holds the weights"
        )
    held, flags = ", ".join(sorted(networks)), checkpoint.get("args")
    why = (" (a Suave run without --use_momentum keeps no teacher / momentum encoder)"
           if checkpoint_key == "teacher" and isinstance(flags, dict) and flags.get("use_momentum") is False else "")
    raise CheckpointError(
        f"checkpoint{where} has no {checkpoint_key!r} network{why}; it holds: {held}. "
        f"Pass --checkpoint_key {sorted(networks)[0]} (checkpoint_key=...) to load that one"
    )


def _strip_prefixes(key: str, prefixes: Sequence[str]) -> str:
    """``key`` without any leading run of ``prefixes`` (in any order, e.g. ``module._orig_mod.``)."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in prefixes:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def strip_wrapper_prefixes(state_dict: Mapping[str, Tensor], where: str = "") -> dict[str, Tensor]:
    """``state_dict`` without the DDP / ``torch.compile`` wrappers' key prefixes (``module.``, ``_orig_mod.``)."""
    return _rename_keys(state_dict, _WRAPPER_PREFIXES, where)


def _rename_keys(state_dict: Mapping[str, Tensor], prefixes: Sequence[str], where: str) -> dict[str, Tensor]:
    """``state_dict`` with ``prefixes`` stripped from every key; CheckpointError if two keys then collide."""
    renamed: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in state_dict.items():
        new_key = _strip_prefixes(key, prefixes)
        if new_key in renamed:
            raise CheckpointError(
                f"checkpoint {where}: keys {origin[new_key]!r} and {key!r} both map to {new_key!r} once the "
                f"prefixes {list(prefixes)} are removed"
            )
        renamed[new_key], origin[new_key] = value, key
    return renamed


def flatten_projection_head(state_dict: Mapping[str, Tensor], where: str = "") -> dict[str, Tensor]:
    """``state_dict`` (wrapper prefixes removed) with the Suave release's ModuleList projection-head names made
    this project's flat ``nn.Sequential`` names: stage ``i`` layer ``j`` -> ``projection_head.{3i + j}``, the last
    Linear (``projection_head.{n}``, n stages) -> ``projection_head.{3n}``. Keys are unchanged when no
    ``projection_head.<i>.<j>.`` key is present (this project's, SwAV's and a linear projection's names, which
    the two layouts share). CheckpointError when the last Linear is not right after the stages."""
    stages = {int(match[1]) for key in state_dict if (match := _RELEASE_STAGE.fullmatch(key))}
    if not stages:
        return dict(state_dict)
    renamed = {}
    for key, value in state_dict.items():
        stage, last = _RELEASE_STAGE.fullmatch(key), _RELEASE_LAST.fullmatch(key)
        if stage:
            key = f"projection_head.{_STAGE_LAYERS * int(stage[1]) + int(stage[2])}.{stage[3]}"
        elif last:
            if int(last[1]) != len(stages):
                raise CheckpointError(f"checkpoint {where}: {key} is not the last layer of a projection head with "
                                      f"{len(stages)} hidden stage(s) (projection_head.0-{len(stages) - 1}.*)")
            key = f"projection_head.{_STAGE_LAYERS * len(stages)}.{last[2]}"
        renamed[key] = value
    return renamed


def _weight_norm_alias(key: str) -> str | None:
    """The same weight-norm tensor under the other naming (legacy weight_g/weight_v <-> parametrizations)."""
    for legacy, modern in _WEIGHT_NORM_ALIASES.items():
        if key.endswith("." + legacy):
            return key[: -len(legacy)] + modern
        if key.endswith("." + modern):
            return key[: -len(modern)] + legacy
    return None


def _list_keys(keys: Sequence[str]) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:_SHOW])
    return f"{len(keys)} key(s): {shown}" + (", ..." if len(keys) > _SHOW else "")


def _check_complete(
    wanted: Mapping[str, Tensor], found: Mapping[str, Tensor], where: str, what: str
) -> None:
    """CheckpointError naming missing keys and shape mismatches between ``wanted`` (model) and ``found`` (file)."""
    missing = [key for key in wanted if key not in found]
    if missing:
        raise CheckpointError(
            f"checkpoint {where} lacks {what} {_list_keys(missing)}. Is it the right file / checkpoint_key / "
            "architecture (--arch, --patch_size, --hidden_mlp)?"
        )
    mismatched = [
        f"{key} {tuple(found[key].shape)} in file vs {tuple(wanted[key].shape)} in model"
        for key in wanted
        if tuple(found[key].shape) != tuple(wanted[key].shape)
    ]
    if mismatched:
        raise CheckpointError(
            f"checkpoint {where} has {what} of the wrong shape, {_list_keys(mismatched)}. Does the model "
            "match the checkpoint's architecture (--arch, --patch_size, --hidden_mlp, --feat_dim, ...)?"
        )


# --------------------------------------------------------------------------------------------------------------
# ViT position embedding
# --------------------------------------------------------------------------------------------------------------


def _grid_side(num_patches: int) -> int | None:
    side = math.isqrt(num_patches)
    return side if side * side == num_patches else None


def resize_pos_embed(pos_embed: Tensor, num_patches: int, num_prefix_tokens: int = 1) -> Tensor:
    """Bicubic interpolation of a ViT position embedding ``(1, prefix + old_patches, D)`` to ``num_patches``.

    The prefix (CLS) tokens are kept; the square grid of patch embeddings is resized with bicubic
    interpolation (align_corners=False), as DINO's ``interpolate_pos_encoding`` and timm's
    ``resample_abs_pos_embed`` do. Both grids must be square.
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old_side, new_side = _grid_side(grid.shape[1]), _grid_side(num_patches)
    if old_side is None or new_side is None:
        raise ValueError(f"cannot resize pos_embed: {grid.shape[1]} -> {num_patches} patches are not square grids")
    dim = grid.shape[-1]
    grid = grid.reshape(1, old_side, old_side, dim).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_side * new_side, dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


def _adapt_pos_embed(found: dict[str, Tensor], wanted: Mapping[str, Tensor], where: str) -> None:
    """Resize ``found['pos_embed']`` in place when only its number of patches differs from the model's."""
    source, target = found.get("pos_embed"), wanted.get("pos_embed")
    if source is None or target is None or source.shape == target.shape:
        return
    if source.dim() != 3 or target.dim() != 3 or source.shape[0] != 1 or source.shape[2] != target.shape[2]:
        return  # a real mismatch, reported by _check_complete
    prefix_tokens = sum(1 for name in ("cls_token", "dist_token") if name in wanted)
    old_patches, new_patches = source.shape[1] - prefix_tokens, target.shape[1] - prefix_tokens
    if _grid_side(old_patches) is None or _grid_side(new_patches) is None:
        return
    found["pos_embed"] = resize_pos_embed(source, new_patches, prefix_tokens)
    old_side, new_side = _grid_side(old_patches), _grid_side(new_patches)
    logger.info(
        "checkpoint %s: resized pos_embed from a %dx%d to a %dx%d patch grid (bicubic) for another image size",
        where, old_side, old_side, new_side, new_side,
    )


# --------------------------------------------------------------------------------------------------------------
# loading into models
# --------------------------------------------------------------------------------------------------------------


def load_pretrained_backbone(
    backbone: nn.Module,
    path: CheckpointSource,
    checkpoint_key: str = "teacher",
    flag: str | None = None,
) -> list[str]:
    """Load the backbone part of a released or of this project's checkpoint into ``backbone``.

    ``path`` may also be a dict already read with :func:`read_checkpoint` (read the file once when loading
    both the backbone and the projection). Keys lose their ``module.`` / ``_orig_mod.`` and then
    ``backbone.`` prefixes; keys the backbone does not have (projection_head, prototypes, head, fc, ...) are
    ignored. Every backbone tensor must be in the file with the model's shape, else CheckpointError names the
    keys and the file; a ViT ``pos_embed`` trained for another image size is interpolated. Returns the loaded
    key names (all of ``backbone.state_dict()``).
    """
    checkpoint, where = _as_checkpoint(path, flag)
    state_dict = extract_state_dict(checkpoint, checkpoint_key, where)
    found = _rename_keys(state_dict, (*_WRAPPER_PREFIXES, _BACKBONE_PREFIX), where)
    module = unwrap_module(backbone)
    wanted = module.state_dict()
    _adapt_pos_embed(found, wanted, where)
    _check_complete(wanted, found, where, "backbone")
    selected = {key: found[key] for key in wanted}
    module.load_state_dict(selected, strict=True)
    ignored = [key for key in found if key not in wanted]
    logger.info(
        "loaded %d backbone tensors from %s (%r); missing: none; ignored (not in the backbone): %s",
        len(selected), where, checkpoint_key, _list_keys(ignored) if ignored else "none",
    )
    return list(selected)


def _projection_prefixes(network: nn.Module) -> tuple[str, str, str]:
    """(projection prefix, classifier prefix, network kind) of a SwAVNetwork or DINONetwork, by attributes."""
    if hasattr(network, "projection_head") and hasattr(network, "prototypes"):
        return "projection_head.", "prototypes.", "SwAV"
    head = getattr(network, "head", None)
    if isinstance(head, nn.Module) and hasattr(head, "mlp") and hasattr(head, "last_layer"):
        return "head.mlp.", "head.last_layer.", "DINO"
    raise TypeError(
        f"{type(network).__name__} has neither 'projection_head' + 'prototypes' (SwAVNetwork) nor "
        "'head.mlp' + 'head.last_layer' (DINONetwork): cannot load a projection into it"
    )


def load_pretrained_projection(
    network: nn.Module,
    path: CheckpointSource,
    checkpoint_key: str = "teacher",
    load_classifier: bool = False,
    flag: str | None = None,
) -> list[str]:
    """Load the projection MLP of a released or of this project's checkpoint (``--init_proj``).

    SwAVNetwork: ``projection_head.*`` (``module.projection_head.*`` in the SwAV file; the Suave release's
    ModuleList names are translated by :func:`flatten_projection_head`). DINONetwork:
    ``head.mlp.*`` (``module.head.mlp.*`` in the DINO student, ``head.mlp.*`` in the teacher). The
    prototypes / ``head.last_layer`` (K outputs) are left untouched unless ``load_classifier`` is True
    (fine-tuning one of this project's checkpoints with the same classes), in which case they must match
    in shape. Weight-norm tensors are accepted under either naming (legacy ``weight_g``/``weight_v`` or
    ``parametrizations.weight.original0``/``original1``) and converted to the model's. Missing keys or
    shape mismatches raise CheckpointError naming the keys and the file. Returns the loaded key names.
    """
    checkpoint, where = _as_checkpoint(path, flag)
    state_dict = extract_state_dict(checkpoint, checkpoint_key, where)
    found = flatten_projection_head(strip_wrapper_prefixes(state_dict, where), where)
    module = unwrap_module(network)
    projection, classifier, kind = _projection_prefixes(module)
    prefixes = (projection, classifier) if load_classifier else (projection,)
    wanted = {key: value for key, value in module.state_dict().items() if key.startswith(prefixes)}
    for key in wanted:
        alias = _weight_norm_alias(key)
        if key not in found and alias is not None and alias in found:
            found[key] = found[alias]
    what = f"{kind} projection" + (" / classifier" if load_classifier else "")
    _check_complete(wanted, found, where, what)
    selected = {key: found[key] for key in wanted}
    if not selected:
        logger.warning("%s has no %s parameters: nothing loaded from %s", type(module).__name__, what, where)
        return []
    module.load_state_dict(selected, strict=False)  # only the selected part; the rest stays as it is
    _warn_frozen_norm(module, selected, classifier)
    logger.info(
        "loaded %d %s tensors from %s (%r): %s", len(selected), what, where, checkpoint_key, _list_keys(list(selected))
    )
    return list(selected)


def _warn_frozen_norm(module: nn.Module, loaded: Mapping[str, Tensor], classifier: str) -> None:
    """Warn when a frozen weight-norm magnitude (DINO ``norm_last_layer``) was loaded with values other than 1."""
    parameters = dict(module.named_parameters())
    for key, value in loaded.items():
        if not key.startswith(classifier) or not key.endswith(("weight_g", "original0")):
            continue
        parameter = parameters.get(key)
        if parameter is not None and not parameter.requires_grad and not torch.all(value == 1):
            logger.warning(
                "%s is frozen (norm_last_layer) but the checkpoint's values are not all 1: the loaded "
                "magnitudes stay fixed during training", key,
            )
