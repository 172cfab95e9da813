"""The two networks the evaluation scripts train.

- ``FineTuneNetwork`` (``eval_semisup.py``): backbone -> ``projection_head`` = for each ``--hidden_mlp`` width
  Linear -> BatchNorm1d -> ReLU, then Linear to the K classes (the release builds its ResNet with
  ``output_dim=1000`` and no prototypes, so the projection's last layer is the classifier). Every parameter
  trains; the release's "head" parameters (``'head' in name``) are the ``projection_head``'s.
- ``LinearProbe`` (``eval_linear.py``, the release's ``RegLog``): a linear layer (weights N(0, 0.01), bias 0)
  on the frozen backbone's globally pooled features, or with ``--global_pooling false`` on the last feature map
  average-pooled with a 6x6 window, stride 1 (ResNet-50 at 224: 7x7 -> 2x2 x 2048 = 8192 inputs), optionally
  after a BatchNorm2d (``--use_bn``, which the release only honours without global pooling).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from src.errors import UserError
from src.models import build_projection_head, normalize_hidden_mlp
from src.models.small_cnn import SmallCNN

HEAD_PREFIX = "projection_head."
POOL_WINDOW = 6  # the release's nn.AvgPool2d(6, stride=1)


class FineTuneNetwork(nn.Module):
    """backbone -> projection MLP ending in K logits."""

    def __init__(self, backbone: nn.Module, hidden_mlp: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection_head = build_projection_head(backbone.num_features, normalize_hidden_mlp(list(hidden_mlp)),
                                                     num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.backbone(images))


def feature_map(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The last (B, C, h, w) feature map of a convolutional backbone (before its global pooling)."""
    if hasattr(backbone, "forward_features"):
        return backbone.forward_features(images)
    if isinstance(backbone, SmallCNN):
        return backbone.features(images)
    raise UserError(f"--global_pooling false needs a convolutional backbone with a feature map; "
                    f"{type(backbone).__name__} has none: use --global_pooling true")


def frozen_features(backbone: nn.Module, images: torch.Tensor, global_pooling: bool) -> torch.Tensor:
    """What the probe reads: pooled features (B, D), or the feature map without global pooling."""
    return backbone(images) if global_pooling else feature_map(backbone, images)


class LinearProbe(nn.Module):
    """The release's ``RegLog``; ``feature_shape`` is the shape of one sample of ``frozen_features``."""

    def __init__(self, feature_shape: Sequence[int], num_classes: int, global_pooling: bool = True,
                 use_bn: bool = False) -> None:
        super().__init__()
        self.global_pooling = global_pooling
        self.av_pool: nn.Module = nn.Identity()
        self.bn: nn.Module | None = None
        if global_pooling:
            (in_features,) = feature_shape
        else:
            channels, height, width = feature_shape
            if min(height, width) < POOL_WINDOW:
                raise UserError(f"--global_pooling false pools the {height}x{width} feature map with a "
                                f"{POOL_WINDOW}x{POOL_WINDOW} window: use larger images or --global_pooling true")
            self.av_pool = nn.AvgPool2d(POOL_WINDOW, stride=1)
            if use_bn:
                self.bn = nn.BatchNorm2d(channels)
            in_features = channels * (height - POOL_WINDOW + 1) * (width - POOL_WINDOW + 1)
        self.linear = nn.Linear(in_features, num_classes)
        self.linear.weight.data.normal_(mean=0.0, std=0.01)
        self.linear.bias.data.zero_()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.av_pool(features)
        if self.bn is not None:
            x = self.bn(x)
        return self.linear(x.flatten(1))
