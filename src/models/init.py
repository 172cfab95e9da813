"""Weight initialisation shared by the DINO release's ViT and DINO head."""
from __future__ import annotations

import torch.nn as nn


def dino_linear_init(m: nn.Module) -> None:
    """DINO's ``_init_weights`` for linear layers: truncated normal (std 0.02) weights, zero bias."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)
