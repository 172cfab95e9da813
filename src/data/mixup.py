"""Mixup / CutMix for a whole batch, as the release's ``Mixup`` in ``mode='batch'`` (from timm).

One (lambda, kind) per batch: with probability ``prob`` the batch is mixed, CutMix with probability
``switch_prob`` (lambda ~ Beta(cutmix_alpha)) else Mixup (lambda ~ Beta(mixup_alpha)). ``x1`` is mixed
with ``x2.flip(0)`` (row i with row B-1-i). For CutMix the box is square-ish with sides
``int(side * sqrt(1 - lambda))`` centred at a uniform pixel and clipped to the image; lambda is then
corrected to the share of pixels kept from ``x1`` (``correct_lam``). Draws come from the ``numpy``
generator passed in, in the release's order (apply?, cutmix?, lambda, box centre y, box centre x).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class MixParams:
    lam: float  # weight of x1 (1.0: no mixing)
    box: tuple[int, int, int, int] | None = None  # CutMix (y_low, y_high, x_low, x_high); None for Mixup

    @property
    def mixed(self) -> bool:
        return self.lam != 1.0


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """timm's ``rand_bbox`` without margin: box of sides int(H*sqrt(1-lam)), int(W*sqrt(1-lam)), clipped."""
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    yl, yh = int(np.clip(cy - cut_h // 2, 0, height)), int(np.clip(cy + cut_h // 2, 0, height))
    xl, xh = int(np.clip(cx - cut_w // 2, 0, width)), int(np.clip(cx + cut_w // 2, 0, width))
    return yl, yh, xl, xh


def sample_mix_params(height: int, width: int, rng: np.random.Generator, mixup_alpha: float = 1.0,
                      cutmix_alpha: float = 1.0, prob: float = 1.0, switch_prob: float = 0.5,
                      correct_lam: bool = True) -> MixParams:
    """Draw one batch's mixing parameters (see the module docstring)."""
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        raise ValueError("mixup_alpha or cutmix_alpha must be > 0")
    if not rng.random() < prob:
        return MixParams(1.0)
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = bool(rng.random() < switch_prob)
    else:
        use_cutmix = cutmix_alpha > 0
    lam = float(rng.beta(cutmix_alpha, cutmix_alpha) if use_cutmix else rng.beta(mixup_alpha, mixup_alpha))
    if not use_cutmix:
        return MixParams(lam)
    box = cutmix_box(height, width, lam, rng)
    if correct_lam:
        yl, yh, xl, xh = box
        lam = 1.0 - (yh - yl) * (xh - xl) / float(height * width)
    return MixParams(lam, box)


def apply_mix(x1: torch.Tensor, x2: torch.Tensor, params: MixParams) -> torch.Tensor:
    """A new tensor: ``x1`` mixed with ``x2.flip(0)`` by ``params`` (both (B, C, H, W))."""
    if x1.shape != x2.shape:
        raise ValueError(f"cannot mix views of shapes {tuple(x1.shape)} and {tuple(x2.shape)}")
    if not params.mixed:
        return x1.clone()
    if params.box is not None:
        yl, yh, xl, xh = params.box
        out = x1.clone()
        out[:, :, yl:yh, xl:xh] = x2.flip(0)[:, :, yl:yh, xl:xh]
        return out
    return x1 * params.lam + x2.flip(0) * (1.0 - params.lam)


def one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """Float (B, K) rows: ``1 - smoothing + smoothing/K`` on the label, ``smoothing/K`` elsewhere."""
    off = smoothing / num_classes
    out = torch.full((labels.numel(), num_classes), off, dtype=torch.float32, device=labels.device)
    return out.scatter_(1, labels.long().view(-1, 1), 1.0 - smoothing + off)


def soft_mixed_labels(labels: torch.Tensor, num_classes: int, lam: float, smoothing: float = 0.0) -> torch.Tensor:
    """``lam * one_hot(labels) + (1 - lam) * one_hot(labels.flip(0))``: the soft labels of the labelled rows
    mixed by ``apply_mix(x, x)`` (not the objective's ``mixed_targets``, the unlabelled rows' mixed assignments)."""
    y = one_hot(labels, num_classes, smoothing)
    return y * lam + y.flip(0) * (1.0 - lam)
