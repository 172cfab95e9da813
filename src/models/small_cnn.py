"""Small VGG-style CNN backbones for 28-64 px images on a CPU (new in this project; not in the release).

The released recipes train a ResNet-50 / ViT-S/16 on 224-px ImageNet crops with many GPUs. On a 2-core CPU
with 28-px Fashion-MNIST images even a small-stem ResNet-18 (about 0.56 GMAC per 28-px image) is too slow to
learn anything in half an hour, so this module adds a compact convolutional backbone:

    stage s (s = 0..S-1): n_convs x [3x3 conv (no bias) -> BatchNorm -> ReLU] with widths[s] channels,
                          followed by a 2x2 max-pool between stages (not after the last one)
    head:                 global average pooling -> (B, widths[-1]) features

It follows the contract of every backbone here: attribute ``num_features`` and ``forward(x)`` mapping
(B, 3, H, W) to pooled features (B, num_features). Any input side >= 2 ** (S - 1) works, so the 28-px global
crops and 12-20 px local crops of a multi-crop run share the same weights. ``cnn6`` (32-64-128 channels,
6 convolutions) costs about 29 MMAC per 28-px image, twenty times less than the small-stem ResNet-18.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution (padding 1, no bias) -> BatchNorm2d -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """VGG-style backbone: ``len(widths)`` stages of ``convs_per_stage`` conv-BN-ReLU, max-pool between stages,
    global average pooling. ``features`` is one ``nn.Sequential``; ``num_features == widths[-1]``."""

    def __init__(self, widths: Sequence[int] = (32, 64, 128), convs_per_stage: int = 2, in_channels: int = 3) -> None:
        super().__init__()
        if not widths or any(w <= 0 for w in widths):
            raise ValueError(f"widths must be a non-empty list of positive channel counts, got {list(widths)}")
        if convs_per_stage < 1:
            raise ValueError(f"convs_per_stage must be >= 1, got {convs_per_stage}")
        layers: list[nn.Module] = []
        channels = in_channels
        for stage, width in enumerate(widths):
            if stage > 0:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            for _ in range(convs_per_stage):
                layers.append(conv_bn_relu(channels, width))
                channels = width
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = channels
        self.min_input_size = 2 ** (len(widths) - 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or min(x.shape[-2:]) < self.min_input_size:
            raise ValueError(f"{type(self).__name__} expects (B, C, H, W) images with H, W >= {self.min_input_size}, "
                             f"got shape {tuple(x.shape)}")
        return torch.flatten(self.avgpool(self.features(x)), 1)


def cnn6(in_channels: int = 3) -> SmallCNN:
    """6 convolutions, 32-64-128 channels (about 0.29 M parameters; the CPU recipes use ``cnn6w2``)."""
    return SmallCNN((32, 64, 128), 2, in_channels)


def cnn6w2(in_channels: int = 3) -> SmallCNN:
    """6 convolutions, 64-128-256 channels (about 1.15 M parameters, four times ``cnn6``'s compute)."""
    return SmallCNN((64, 128, 256), 2, in_channels)


def cnn8(in_channels: int = 3) -> SmallCNN:
    """8 convolutions, 32-64-128-256 channels; the fourth stage runs at 3x3 on 28-px inputs."""
    return SmallCNN((32, 64, 128, 256), 2, in_channels)
