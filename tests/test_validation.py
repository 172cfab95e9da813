"""src.validation.validate, the one validation of training, the evaluation scripts and --evaluate: every head's
top-1, top-5 and mean cross-entropy over all batches against a brute-force count written here; modules come back
in their modes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from src.train_step import Precision
from src.validation import validate


def test_validate_counts_every_head_like_brute_force():
    torch.manual_seed(0)
    net, other = torch.nn.Linear(6, 7), torch.nn.Linear(6, 7)
    net.train()
    other.eval()
    batches = [(torch.randn(5, 6), torch.randint(0, 7, (5,))), (torch.randn(3, 6), torch.randint(0, 7, (3,)))]
    stats = validate(lambda x: {"main": net(x), "second": other(x)}, [net, other], batches, torch.device("cpu"),
                     Precision(False, False, torch.device("cpu")))
    assert net.training and not other.training  # modes restored
    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    for prefix, model in (("val", net), ("val_second", other)):
        with torch.no_grad():
            logits = model(images)
        ranks = (logits > logits.gather(1, labels[:, None])).sum(1)  # classes scored above the true one
        assert stats[f"{prefix}_acc1"] == pytest.approx(100 * (ranks < 1).float().mean().item())
        assert stats[f"{prefix}_acc5"] == pytest.approx(100 * (ranks < 5).float().mean().item())
        assert stats[f"{prefix}_loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    assert sorted(stats) == sorted(f"{p}_{m}" for p in ("val", "val_second") for m in ("acc1", "acc5", "loss"))
