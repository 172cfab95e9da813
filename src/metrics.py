"""Accuracy helpers (top-k against hard labels; soft targets count by their arg-max)."""
from __future__ import annotations

import torch


@torch.no_grad()
def correct_topk(logits: torch.Tensor, labels: torch.Tensor, topk: tuple[int, ...] = (1, 5)) -> list[int]:
    """Number of rows whose label is among the top-k scores, for each k (k is capped at the class count)."""
    if labels.ndim == 2:
        labels = labels.argmax(dim=1)
    maxk = min(max(topk), logits.size(1))
    pred = logits.topk(maxk, dim=1).indices
    hits = pred.eq(labels.view(-1, 1))
    return [int(hits[:, :min(k, maxk)].any(dim=1).sum()) for k in topk]


@torch.no_grad()
def accuracy(logits: torch.Tensor, labels: torch.Tensor, topk: tuple[int, ...] = (1, 5)) -> list[float]:
    """Top-k accuracies in percent (the release's ``utils.accuracy``)."""
    n = max(labels.size(0), 1)
    return [100.0 * c / n for c in correct_topk(logits, labels, topk)]
