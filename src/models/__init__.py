"""Backbones by `--arch` name, and the Suave / Daino networks.

    build_backbone("resnet50")                      # SwAV-release ResNet-50, 2048 features
    build_backbone("resnet18", small_stem=True)     # 3x3 stem without max-pool for 28-64 px
    build_backbone("vit_small", patch_size=16, drop_path_rate=0.1)

Every backbone has `num_features` and maps (B, 3, H, W) to (B, num_features) pooled features
(ViT: the CLS token after the final norm). Its `state_dict()` keys are the release's backbone keys
without prefix (SwAV: `module.` stripped; DINO: `backbone.` / `module.backbone.` stripped).
"""

from __future__ import annotations

from typing import Callable

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

# name -> (builder, accepted keyword arguments)
_BACKBONES: dict[str, tuple[Callable[..., nn.Module], tuple[str, ...]]] = {
    "resnet18": (resnet.resnet18, _RESNET_KWARGS),
    "resnet34": (resnet.resnet34, _RESNET_KWARGS),
    "resnet50": (resnet.resnet50, _RESNET_KWARGS),
    "resnet50w2": (resnet.resnet50w2, _RESNET_KWARGS),
    "resnet50w4": (resnet.resnet50w4, _RESNET_KWARGS),
    "resnet50w5": (resnet.resnet50w5, _RESNET_KWARGS),
    "tv_resnet18": (resnet.tv_resnet18, _RESNET_KWARGS),
    "tv_resnet34": (resnet.tv_resnet34, _RESNET_KWARGS),
    "tv_resnet50": (resnet.tv_resnet50, _RESNET_KWARGS),
    "cnn6": (small_cnn.cnn6, _CNN_KWARGS),  # small VGG-style CNNs for 28-64 px images on a CPU
    "cnn6w2": (small_cnn.cnn6w2, _CNN_KWARGS),
    "cnn8": (small_cnn.cnn8, _CNN_KWARGS),
    "vit_tiny": (vit.vit_tiny, _VIT_KWARGS),
    "vit_small": (vit.vit_small, _VIT_KWARGS),
    "vit_base": (vit.vit_base, _VIT_KWARGS),
    # the DINO release accepts deit_* and renames them to vit_*
    "deit_tiny": (vit.vit_tiny, _VIT_KWARGS),
    "deit_small": (vit.vit_small, _VIT_KWARGS),
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
    builder, accepted = _BACKBONES[name]
    unexpected = sorted(set(kwargs) - set(accepted))
    if unexpected:
        raise FlagError(
            f"--arch {name!r} does not take {', '.join(unexpected)}; it accepts {', '.join(accepted)}"
        )
    return builder(**kwargs)


__all__ = [
    "DINOHead",
    "DINONetwork",
    "NetworkOutput",
    "SwAVNetwork",
    "available_backbones",
    "build_backbone",
    "build_projection_head",
    "forward_by_resolution",
    "is_head_parameter",
    "normalize_hidden_mlp",
    "resolution_groups",
]
