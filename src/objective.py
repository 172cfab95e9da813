"""The paper's single objective: one cross-entropy on the prototype (class) scores, weighted by row share.

Fini et al. (2023), Eq. 3-5: labelled rows predict their (smoothed, or mixed) label, unlabelled views predict
the clustering assignment of another view, mixed unlabelled views predict the mixed assignments; each term is
weighted by its share of the step, counted as the release counts it. Suave and Daino differ only in how the targets are made, so the
whole loss lives here, once.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from src.losses import multiview_cross_entropy, smooth_labels, soft_cross_entropy, weighted_by_rows


@dataclass
class ObjectiveInputs:
    """Scores (before the temperature) and targets of one step; absent parts are ``None``/empty."""

    temperature: float
    label_smoothing: float = 0.0
    num_classes: int = 0
    lab_scores: torch.Tensor | None = None          # (L, K)
    lab_targets: torch.Tensor | None = None         # (L,) long, or (L, K) soft (mixed copies)
    unlab_scores: list[torch.Tensor] = field(default_factory=list)   # one (B, K) per view
    unlab_targets: dict[int, torch.Tensor] = field(default_factory=dict)  # view index -> (B, K) assignment
    mixed_scores: list[torch.Tensor] = field(default_factory=list)   # one (B, K) per mixed view
    mixed_targets: list[torch.Tensor] = field(default_factory=list)  # lam * q_a + (1 - lam) * q_b.flip(0)
    mixed_weight_rows: bool = False  # --mix_weight_rows: weigh the mixed term by its rows, not its views
    probe_logits: list[torch.Tensor] = field(default_factory=list)   # online probes, on the probes' rows
    probe_targets: torch.Tensor | None = None       # (P,) long or (P, K) soft targets of those rows


def labelled_targets(targets: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """Soft targets equal to what ``F.cross_entropy(..., label_smoothing=smoothing)`` uses, for hard or soft input."""
    if targets.ndim == 1:
        return smooth_labels(targets, num_classes, smoothing)
    return targets.float() * (1.0 - smoothing) + smoothing / num_classes


def semisup_objective(inp: ObjectiveInputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and its named terms, weighted as the release's "total loss" block.

    total = B*V (clean unlabelled rows) + L (labelled rows, mixed copies included) + M, where M is the
    NUMBER of mixed views (the release's ``mixed_unlab_bs = mixed_unlab_output.size(0)`` on a [views, B, K]
    tensor), or their rows B*M with ``mixed_weight_rows`` (--mix_weight_rows). Each term weighs its count
    over total; the online probes (detached features, their own parameters) are added with weight
    (probe rows) / total, as the release's ``online_eval_weight``.
    """
    t = inp.temperature
    terms: dict[str, torch.Tensor] = {}
    weighted: list[tuple[torch.Tensor, int]] = []
    if inp.unlab_scores and inp.unlab_targets:
        unlab = multiview_cross_entropy([s / t for s in inp.unlab_scores], inp.unlab_targets)
        terms["unlab_loss"] = unlab
        weighted.append((unlab, sum(s.size(0) for s in inp.unlab_scores)))
    if inp.lab_scores is not None and inp.lab_scores.size(0) > 0:
        target = labelled_targets(inp.lab_targets, inp.lab_scores.size(1), inp.label_smoothing)
        lab = soft_cross_entropy(inp.lab_scores / t, target)
        terms["lab_loss"] = lab
        weighted.append((lab, inp.lab_scores.size(0)))
    if inp.mixed_scores:
        mixed = torch.stack([soft_cross_entropy(s / t, q) for s, q in zip(inp.mixed_scores, inp.mixed_targets)]).mean()
        terms["mixed_unlab_loss"] = mixed
        count = sum(s.size(0) for s in inp.mixed_scores) if inp.mixed_weight_rows else len(inp.mixed_scores)
        weighted.append((mixed, count))
    if not weighted:
        raise ValueError("the step has no loss term: neither labelled nor unlabelled rows")
    total = weighted_by_rows(weighted)
    total_count = sum(n for _, n in weighted)
    if inp.probe_logits and inp.probe_targets is not None and inp.probe_targets.size(0) > 0:
        n_classes = inp.probe_logits[0].size(1)
        target = labelled_targets(inp.probe_targets, n_classes, inp.label_smoothing)
        probes = sum(soft_cross_entropy(logits, target) for logits in inp.probe_logits)
        terms["probe_loss"] = probes
        total = total + probes * (inp.probe_targets.size(0) / total_count)
    terms["loss"] = total
    return total, terms


def mixed_assignments(assigned: list[torch.Tensor], lams: list[float],
                      pairs: list[tuple[int, int]]) -> list[torch.Tensor]:
    """Targets of mixed views: lam * q_s + (1 - lam) * q_t.flip(0), (s, t) indexing the assigned views'
    targets (the views were mixed with x.flip(0)); the release always mixes the first two assignments."""
    out = []
    for lam, (s, t) in zip(lams, pairs):
        if max(s, t) >= len(assigned):
            raise ValueError(f"mixed views need targets {s} and {t}, but only {len(assigned)} views get "
                             "assignments (--crops_for_assign)")
        out.append(lam * assigned[s] + (1.0 - lam) * assigned[t].flip(0))
    return out
