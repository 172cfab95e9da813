"""Heads on top of a backbone: SwAV's projection MLP and DINO's head.

- `build_projection_head` reproduces SwAV's projection head (facebookresearch/swav,
  src/resnet50.py), generalised as in the Suave release to a list of hidden layers: for each
  hidden width h, Linear -> BatchNorm1d -> ReLU, then a final Linear to `feat_dim`. Unlike the
  Suave release (an nn.ModuleList of Sequentials, keys `projection_head.0.0.weight`), the modules
  are one flat nn.Sequential, so with one hidden layer of 2048 the keys are exactly SwAV's
  (`projection_head.0` Linear, `.1` BatchNorm1d, `.2` ReLU, `.3` Linear) and the released SwAV
  projection head loads for `--init_proj`.
- `DINOHead` is DINO's head (facebookresearch/dino, vision_transformer.py) with the weight norm of
  the last layer expressed through `torch.nn.utils.parametrizations.weight_norm`.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm

from src.errors import FlagError

from .init import dino_linear_init


def normalize_hidden_mlp(hidden_mlp: int | Sequence[int] | None) -> list[int]:
    """The hidden widths of the projection MLP as a list; [] means a linear projection.

    Accepts the Suave flag's values: a list of widths, [0] or [] (linear projection, as the
    release's `hidden_mlp == [0]` and SwAV's `hidden_mlp == 0`), or a bare int.
    """
    if hidden_mlp is None:
        return []
    widths = [int(hidden_mlp)] if isinstance(hidden_mlp, int) else [int(h) for h in hidden_mlp]
    if widths == [0]:
        return []
    if any(h <= 0 for h in widths):
        raise FlagError(
            f"--hidden_mlp {widths}: hidden widths must all be positive, or a single 0 for a linear projection"
        )
    return widths


def build_projection_head(in_dim: int, hidden_mlp: Sequence[int], feat_dim: int) -> nn.Sequential:
    """[Linear(d_i, h_i), BatchNorm1d(h_i), ReLU] for each hidden width, then Linear(., feat_dim)."""
    if feat_dim <= 0:
        raise ValueError(f"feat_dim must be positive to build a projection head, got {feat_dim}")
    layers: list[nn.Module] = []
    dim = in_dim
    for width in hidden_mlp:
        layers += [nn.Linear(dim, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
        dim = width
    layers.append(nn.Linear(dim, feat_dim))
    return nn.Sequential(*layers)


class DINOHead(nn.Module):
    """DINO head: MLP (GELU, optional BatchNorm) -> L2 normalise -> weight-normalised Linear.

    Arithmetic of the DINO release. nlayers >= 2 gives Linear(in, hidden) [+BN] + GELU,
    (nlayers - 2) x [Linear(hidden, hidden) [+BN] + GELU], Linear(hidden, bottleneck); nlayers == 1
    gives a single Linear(in, bottleneck) (keys `mlp.weight`, as DINO). MLP linears use a
    truncated normal (std 0.02) and zero bias; the last layer keeps PyTorch's default Linear init
    before the weight norm is applied, and its norm (`original0`, DINO's weight_g) is set to 1 and
    frozen when `norm_last_layer`.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        use_bn: bool = False,
        norm_last_layer: bool = True,
        nlayers: int = 3,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
    ) -> None:
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim)]
            if use_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            for _ in range(nlayers - 2):
                layers.append(nn.Linear(hidden_dim, hidden_dim))
                if use_bn:
                    layers.append(nn.BatchNorm1d(hidden_dim))
                layers.append(nn.GELU())
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(dino_linear_init)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1)
        if norm_last_layer:
            magnitude.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(x)
