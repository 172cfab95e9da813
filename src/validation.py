"""The one validation: top-1/top-5 and mean cross-entropy of every head on the ``val`` loader, sharded across
ranks and summed, as the releases validate each epoch. Used by the training engine, the evaluation scripts and
``--evaluate``."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from src import distributed
from src.logging_utils import get_logger
from src.metrics import correct_topk
from src.train_step import Precision


@torch.no_grad()
def validate(scores_of: Callable[[torch.Tensor], dict[str, torch.Tensor]], modules: Sequence[nn.Module],
             loader: Iterable, device: torch.device, precision: Precision,
             channels_last: bool = False) -> dict[str, float]:
    """``{val_acc1, val_acc5, val_loss}`` of head ``main`` and ``val_<head>_...`` of every other head that
    ``scores_of(images)`` returns ((B, K) scores). ``modules`` are put in eval mode for the pass and back in their
    modes after; the forward runs under ``precision``'s autocast, the scores are ranked in fp32."""
    was_training = [m.training for m in modules]
    for m in modules:
        m.eval()
    counts: dict[str, torch.Tensor] = {}  # head -> (top1, top5, loss sum, images)
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with precision.autocast():
            for name, scores in scores_of(images).items():
                logits = scores.float()
                top1, top5 = correct_topk(logits, labels, (1, 5))
                loss = nn.functional.cross_entropy(logits, labels, reduction="sum").item()
                counts.setdefault(name, torch.zeros(4, dtype=torch.float64))
                counts[name] += torch.tensor([top1, top5, loss, labels.size(0)], dtype=torch.float64)
    for m, flag in zip(modules, was_training):
        m.train(flag)
    stats = {}
    for name in distributed.union_of_names(list(counts)):  # a rank may hold no validation image
        c = counts.get(name, torch.zeros(4, dtype=torch.float64))
        distributed.all_reduce_sum(c)
        n = max(c[3].item(), 1)
        prefix = "val" if name == "main" else f"val_{name}"
        stats.update({f"{prefix}_acc1": 100 * c[0].item() / n, f"{prefix}_acc5": 100 * c[1].item() / n,
                      f"{prefix}_loss": c[2].item() / n})
    get_logger().info("validation: %s", "  ".join(f"{k} {v:.3f}" for k, v in stats.items()))
    return stats
