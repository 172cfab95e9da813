"""ResNet backbones laid out as in the SwAV release (facebookresearch/swav, src/resnet50.py).

The SwAV layout differs from torchvision's in the stem only: an explicit zero-padding layer
(`padding = ConstantPad2d(1, 0.0)`) followed by `conv1` with padding 2 instead of 3 (same
arithmetic, different module). Wider variants (resnet50w2/w4/w5) multiply every stage's width by
`widen` (`inplanes = width_per_group * widen`). The backbone here is bare: no projection head,
no prototypes, no fc; `forward(x)` returns the globally average-pooled features (B, num_features).
Its `state_dict()` keys equal the release's backbone keys without the `module.` prefix.

`small_stem=True` replaces the stem for 28-64 px images (CIFAR-style): a 3x3 stride-1 conv with
padding 1, no padding layer, no max-pool. The key names stay the same; only `conv1.weight` changes
shape ([C, 3, 3, 3] instead of [C, 3, 7, 7]), so a released checkpoint's stem does not fit it.
"""

from __future__ import annotations

from typing import Sequence, Type, Union

import torch
import torch.nn as nn


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution without bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def last_bn(self) -> nn.BatchNorm2d:
        """The BatchNorm closing the residual branch (zero-initialised by `zero_init_residual`)."""
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride here, as torchvision v1.5 and SwAV) -> 1x1 with a residual connection."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def last_bn(self) -> nn.BatchNorm2d:
        """The BatchNorm closing the residual branch (zero-initialised by `zero_init_residual`)."""
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


Block = Union[Type[BasicBlock], Type[Bottleneck]]


class ResNet(nn.Module):
    """SwAV-release ResNet trunk: stem, layer1-4, global average pooling, flatten.

    Args:
        block: BasicBlock or Bottleneck.
        layers: number of blocks in each of the four stages.
        widen: width multiplier of every stage (SwAV's resnet50w2/w4/w5).
        width_per_group: base width (64).
        small_stem: 3x3 stride-1 stem without padding layer and max-pool, for 28-64 px inputs.
        zero_init_residual: zero the last BatchNorm of each residual branch. The Suave and SwAV
            releases build their ResNets with the default False; kept as an option.
    """

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        widen: int = 1,
        width_per_group: int = 64,
        small_stem: bool = False,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"ResNet needs the number of blocks of 4 stages, got {list(layers)}")
        if widen < 1:
            raise ValueError(f"widen must be a positive integer, got {widen}")
        width = width_per_group * widen
        self.small_stem = small_stem
        if small_stem:
            self.padding = nn.Identity()
            self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            # SwAV: explicit 1-px zero padding + conv padding 2 (torchvision uses padding 3).
            self.padding = nn.ConstantPad2d(1, 0.0)
            self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=2, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)

        self._inplanes = width
        self.layer1 = self._make_layer(block, width, layers[0], stride=1)
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features: int = width * 8 * block.expansion

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.constant_(m.last_bn().weight, 0)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self._inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        modules = [block(self._inplanes, planes, stride, downsample)]
        self._inplanes = planes * block.expansion
        modules.extend(block(self._inplanes, planes) for _ in range(1, blocks))
        return nn.Sequential(*modules)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map of layer4 (B, num_features, h, w)."""
        x = self.padding(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, num_features)."""
        return torch.flatten(self.avgpool(self.forward_features(x)), 1)


def resnet18(small_stem: bool = False, zero_init_residual: bool = False) -> ResNet:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]) in the SwAV stem layout; 512 features."""
    return ResNet(BasicBlock, [2, 2, 2, 2], small_stem=small_stem, zero_init_residual=zero_init_residual)


def resnet34(small_stem: bool = False, zero_init_residual: bool = False) -> ResNet:
    """ResNet-34 (BasicBlock, [3, 4, 6, 3]) in the SwAV stem layout; 512 features."""
    return ResNet(BasicBlock, [3, 4, 6, 3], small_stem=small_stem, zero_init_residual=zero_init_residual)


def resnet50(small_stem: bool = False, zero_init_residual: bool = False) -> ResNet:
    """ResNet-50 as in the SwAV release; 2048 features."""
    return ResNet(Bottleneck, [3, 4, 6, 3], small_stem=small_stem, zero_init_residual=zero_init_residual)


def resnet50w2(small_stem: bool = False, zero_init_residual: bool = False) -> ResNet:
    """SwAV's ResNet-50 x2 (every stage twice as wide); 4096 features."""
    return ResNet(Bottleneck, [3, 4, 6, 3], widen=2, small_stem=small_stem, zero_init_residual=zero_init_residual)


def resnet50w4(small_stem: bool = False, zero_init_residual: bool = False) -> ResNet:
    """SwAV's ResNet-50 x4; 8192 features."""
    return ResNet(Bottleneck, [3, 4, 6, 3], widen=4, small_stem=small_stem, zero_init_residual=zero_init_residual)


def resnet50w5(small_stem: bool = False, zero_init_residual: bool = False) -> ResNet:
    """SwAV's ResNet-50 x5; 10240 features."""
    return ResNet(Bottleneck, [3, 4, 6, 3], widen=5, small_stem=small_stem, zero_init_residual=zero_init_residual)


def _torchvision_resnet(name: str, small_stem: bool, zero_init_residual: bool) -> nn.Module:
    import torchvision

    model = getattr(torchvision.models, name)(weights=None, zero_init_residual=zero_init_residual)
    if small_stem:
        width = model.conv1.out_channels
        model.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
    model.num_features = model.fc.in_features
    model.fc = nn.Identity()
    return model


def tv_resnet18(small_stem: bool = False, zero_init_residual: bool = False) -> nn.Module:
    """torchvision's resnet18 (fc replaced by Identity); 512 features."""
    return _torchvision_resnet("resnet18", small_stem, zero_init_residual)


def tv_resnet34(small_stem: bool = False, zero_init_residual: bool = False) -> nn.Module:
    """torchvision's resnet34 (fc replaced by Identity); 512 features."""
    return _torchvision_resnet("resnet34", small_stem, zero_init_residual)


def tv_resnet50(small_stem: bool = False, zero_init_residual: bool = False) -> nn.Module:
    """torchvision's resnet50 (fc replaced by Identity); 2048 features."""
    return _torchvision_resnet("resnet50", small_stem, zero_init_residual)
