"""Backbones by `--arch` name, and the Suave / Daino networks.

    build_backbone("resnet50")                      # SwAV-release ResNet-50, 2048 features
    build_backbone("resnet18", small_stem=True)     # 3x3 stem without max-pool for 28-64 px
    build_backbone("vit_small", patch_size=16, drop_path_rate=0.1)

Every backbone has `num_features` and maps (B, 3, H, W) to (B, num_features) pooled features
(ViT: the CLS token after the final norm). Its `state_dict()` keys are the release's backbone keys
without prefix (SwAV: `module.` stripped; DINO: `backbone.` / `module.backbone.` stripped).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable

import torch.nn as nn

from src.errors import FlagError

from . import resnet, small_cnn, vit
from .heads import DINOHead, build_projection_head, normalize_hidden_mlp
from .networks import (
    DINONetwork,
    NetworkOutput,
    SwAVNetwork,
    forward_by_resolution,
    is_head_parameter,
    resolution_groups,
)

_RESNET_KWARGS = ("small_stem", "zero_init_residual")
_CNN_KWARGS = ("in_channels",)
_VIT_KWARGS = ("patch_size", "drop_path_rate", "img_size", "drop_rate", "attn_drop_rate", "qk_scale")

_TV, _TIMM = "torchvision:{}", "timm:{}_patch{{patch_size}}_224"
# name -> (builder, accepted keyword arguments, the public model with the same state_dict keys: "library:model",
# "" when there is none; src.export loads the exported backbone into it)
_BACKBONES: dict[str, tuple[Callable[..., nn.Module], tuple[str, ...], str]] = {
    "resnet18": (resnet.resnet18, _RESNET_KWARGS, _TV.format("resnet18")),
    "resnet34": (resnet.resnet34, _RESNET_KWARGS, _TV.format("resnet34")),
    "resnet50": (resnet.resnet50, _RESNET_KWARGS, _TV.format("resnet50")),
    "resnet50w2": (resnet.resnet50w2, _RESNET_KWARGS, ""),
    "resnet50w4": (resnet.resnet50w4, _RESNET_KWARGS, ""),
    "resnet50w5": (resnet.resnet50w5, _RESNET_KWARGS, ""),
    "tv_resnet18": (resnet.tv_resnet18, _RESNET_KWARGS, _TV.format("resnet18")),
    "tv_resnet34": (resnet.tv_resnet34, _RESNET_KWARGS, _TV.format("resnet34")),
    "tv_resnet50": (resnet.tv_resnet50, _RESNET_KWARGS, _TV.format("resnet50")),
    "cnn6": (small_cnn.cnn6, _CNN_KWARGS, ""),  # small VGG-style CNNs for 28-64 px images on a CPU
    "cnn6w2": (small_cnn.cnn6w2, _CNN_KWARGS, ""),
    "cnn8": (small_cnn.cnn8, _CNN_KWARGS, ""),
    "vit_tiny": (vit.vit_tiny, _VIT_KWARGS, _TIMM.format("vit_tiny")),
    "vit_small": (vit.vit_small, _VIT_KWARGS, _TIMM.format("vit_small")),
    "vit_base": (vit.vit_base, _VIT_KWARGS, _TIMM.format("vit_base")),
    # the DINO release accepts deit_* and renames them to vit_*
    "deit_tiny": (vit.vit_tiny, _VIT_KWARGS, _TIMM.format("vit_tiny")),
    "deit_small": (vit.vit_small, _VIT_KWARGS, _TIMM.format("vit_small")),
}


def available_backbones() -> list[str]:
    """Every name `build_backbone` accepts, sorted."""
    return sorted(_BACKBONES)


def build_backbone(name: str, **kwargs) -> nn.Module:
    """A freshly initialised bare backbone for `--arch name`.

    ResNets accept small_stem, zero_init_residual; ViTs accept patch_size, drop_path_rate,
    img_size, drop_rate, attn_drop_rate, qk_scale. Anything else is a FlagError (a ValueError) naming the
    accepted arguments; an unknown name is a FlagError listing the valid names.
    """
    if name not in _BACKBONES:
        raise FlagError(f"unknown --arch {name!r}; choose one of {', '.join(available_backbones())}")
    builder, accepted, _ = _BACKBONES[name]
    unexpected = sorted(set(kwargs) - set(accepted))
    if unexpected:
        raise FlagError(
            f"--arch {name!r} does not take {', '.join(unexpected)}; it accepts {', '.join(accepted)}"
        )
    return builder(**kwargs)


@dataclass(frozen=True)
class BackboneFlags:
    """The backbone flags every parser has (``src.args.add_backbone_args``): ``--arch``, ``--patch_size`` (ViTs),
    ``--small_stem`` (ResNets; any other --arch refuses it)."""

    arch: str
    patch_size: int = 16
    small_stem: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BackboneFlags:
        return cls(args.arch, args.patch_size, bool(args.small_stem))

    @property
    def is_vit(self) -> bool:
        return self.arch.startswith(("vit", "deit"))

    def kwargs(self, drop_path_rate: float = 0.0) -> dict[str, Any]:
        """``build_backbone``'s keyword arguments for these flags (``drop_path_rate``: ViTs only)."""
        if self.is_vit:
            return {"patch_size": self.patch_size, "drop_path_rate": drop_path_rate}
        return {"small_stem": True} if self.small_stem else {}

    def public_model(self) -> tuple[str, str]:
        """(library, model) of the torchvision / timm model with this backbone's state_dict keys; ("", arch)
        when there is none."""
        public = _BACKBONES[self.arch][2] if self.arch in _BACKBONES else ""
        return tuple(public.format(patch_size=self.patch_size).split(":")) if public else ("", self.arch)


def backbone_from_flags(args: argparse.Namespace, drop_path_rate: float = 0.0) -> nn.Module:
    """The bare backbone of a parser's ``--arch`` / ``--patch_size`` / ``--small_stem`` (every method and
    evaluation script builds its backbone here)."""
    flags = BackboneFlags.from_args(args)
    return build_backbone(flags.arch, **flags.kwargs(drop_path_rate))


__all__ = [
    "BackboneFlags",
    "DINOHead",
    "DINONetwork",
    "NetworkOutput",
    "SwAVNetwork",
    "available_backbones",
    "backbone_from_flags",
    "build_backbone",
    "build_projection_head",
    "forward_by_resolution",
    "is_head_parameter",
    "normalize_hidden_mlp",
    "resolution_groups",
]
