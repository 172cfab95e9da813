"""The cross-entropies of Suave and Daino: one soft-target cross-entropy, used by every loss term.

- ``soft_cross_entropy``: -mean_rows sum_k target_k log softmax(logits)_k (timm's SoftTargetCrossEntropy).
- ``smooth_labels``: the targets ``F.cross_entropy(..., label_smoothing=s)`` uses implicitly.
- ``multiview_cross_entropy``: the swapped prediction of SwAV and DINO (a target made from view i is
  predicted by every other view).
- ``DINOLoss``: the DINO release's loss (teacher centering + sharpening, temperature warm-up, EMA center).
- ``weighted_by_rows``: the paper's weighting of loss terms by their share of the rows of the step.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from src.distributed import all_reduce_sum, get_world_size
from src.errors import FlagError


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -sum(targets * log_softmax(logits, -1)), in float32.

    ``targets`` are rows of probabilities (soft labels, Sinkhorn or teacher assignments, mixed labels)
    with the shape of ``logits``; they receive no gradient.
    """
    if logits.shape != targets.shape:
        raise ValueError(f"soft_cross_entropy: logits {tuple(logits.shape)} and targets "
                         f"{tuple(targets.shape)} must have the same shape")
    log_probs = F.log_softmax(logits.float(), dim=-1)
    return -(targets.detach().float() * log_probs).sum(dim=-1).mean()


def smooth_labels(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """Soft targets (1 - s) * one_hot(labels) + s / K: what ``F.cross_entropy(label_smoothing=s)`` uses.

    So ``soft_cross_entropy(x, smooth_labels(y, K, s)) == F.cross_entropy(x, y, label_smoothing=s)``.
    """
    if labels.ndim != 1 or labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"smooth_labels expects a 1-D integer tensor of class indices, got "
                         f"{labels.dtype} of shape {tuple(labels.shape)}")
    if not 0.0 <= smoothing <= 1.0:
        raise FlagError(f"label smoothing must lie in [0, 1] (--label_smoothing), got {smoothing}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise FlagError(f"labels must lie in [0, {num_classes}); got values from {int(labels.min())} to "
                        f"{int(labels.max())}: the number of prototypes/classes (--nmb_prototypes, --out_dim) "
                        f"must cover every class of the dataset")
    one_hot = F.one_hot(labels.long(), num_classes).float()
    return one_hot * (1.0 - smoothing) + smoothing / num_classes


def multiview_cross_entropy(student_logits: Sequence[torch.Tensor],
                            targets: Mapping[int, torch.Tensor] | Sequence[torch.Tensor],
                            temperature: float = 1.0, reduction: str = "pairs") -> torch.Tensor:
    """Swapped prediction: each target view's assignment is predicted by every *other* student view.

    ``student_logits[v]`` (B x K) are the raw scores of view v; they are divided by ``temperature``
    here (SwAV's 0.1, DINO's student temperature 0.1; pass 1.0 when already divided).
    ``targets`` maps a view index i to the target q_i (B x K rows of probabilities) made from view i;
    a sequence means views 0, 1, ... The loss for a pair is soft_cross_entropy(student_v / T, q_i), v != i.

    ``reduction``:
    - "pairs" (DINO): the mean over all (i, v != i) pairs;
    - "per_target" (SwAV): for each i the mean over its v != i, then the mean over i.
    When every target view i is also one of the V student views, each i has exactly V - 1 partners, so
    per_target = (1/|I|) sum_i (1/(V-1)) sum_v l_iv = (1/(|I|(V-1))) sum_(i,v) l_iv = pairs: the two
    releases compute the same number. They differ only if a target view is not a student view.
    """
    if reduction not in ("pairs", "per_target"):
        raise ValueError(f"reduction must be 'pairs' or 'per_target', got {reduction!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    target_items = list(targets.items()) if isinstance(targets, Mapping) else list(enumerate(targets))
    if not student_logits or not target_items:
        raise ValueError("multiview_cross_entropy needs at least one student view and one target view")
    log_probs = [F.log_softmax(logits.float() / temperature, dim=-1) for logits in student_logits]
    per_target = []
    all_pairs = []
    for i, q in target_items:
        terms = []
        for v, log_p in enumerate(log_probs):
            if v == i:
                continue
            if q.shape != log_p.shape:
                raise ValueError(f"target of view {i} has shape {tuple(q.shape)} but student view {v} has "
                                 f"{tuple(log_p.shape)}")
            terms.append(-(q.detach().float() * log_p).sum(dim=-1).mean())
        if not terms:
            raise ValueError(f"target view {i} has no other student view to predict it")
        per_target.append(torch.stack(terms).mean())
        all_pairs.extend(terms)
    if reduction == "pairs":
        return torch.stack(all_pairs).mean()
    return torch.stack(per_target).mean()


def weighted_by_rows(terms: Sequence[tuple[torch.Tensor, int]]) -> torch.Tensor:
    """sum_i (n_i / sum_j n_j) * loss_i over (loss_i, n_i) terms; terms with n_i == 0 are skipped.

    The paper's (and release's) total loss: each term weighted by its share of the rows of the step,
    e.g. unlabelled crops B*V, labelled L, mixed unlabelled M, probes L.
    """
    if any(n < 0 for _, n in terms):
        raise ValueError(f"row counts must be >= 0, got {[n for _, n in terms]}")
    kept = [(loss, n) for loss, n in terms if n > 0]
    if not kept:
        raise ValueError("weighted_by_rows: every term has 0 rows; there is nothing to weight")
    total = sum(n for _, n in kept)
    return sum((n / total) * loss for loss, n in kept)


@torch.no_grad()
def teacher_targets(teacher_output: torch.Tensor, center: torch.Tensor, temperature: float) -> torch.Tensor:
    """DINO's centering + sharpening: softmax((teacher_output - center) / temperature), float32, no grad."""
    return F.softmax((teacher_output.float() - center.float()) / temperature, dim=-1)


class DINOLoss(nn.Module):
    """The DINO release's loss (Caron et al., 2021), as Daino uses it for the unlabelled crops.

    Teacher temperature: ``np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs)``
    then ``teacher_temp`` up to ``nepochs``, indexed by epoch. Targets: teacher_targets of the teacher's
    outputs (its views chunked in order, 2 global crops in the recipes); the student's ``ncrops`` views
    predict every target of a different view (multiview_cross_entropy, mean over pairs, student
    temperature ``student_temp``). Then the ``center`` buffer (1, out_dim, saved in state_dict) moves
    by EMA towards the teacher's batch mean, all-reduced over ranks (a collective: every rank calls it).
    """

    center: torch.Tensor

    def __init__(self, out_dim: int, ncrops: int, warmup_teacher_temp: float, teacher_temp: float,
                 warmup_teacher_temp_epochs: int, nepochs: int, student_temp: float = 0.1,
                 center_momentum: float = 0.9) -> None:
        super().__init__()
        if not 0 <= warmup_teacher_temp_epochs <= nepochs:
            raise FlagError(f"--warmup_teacher_temp_epochs ({warmup_teacher_temp_epochs}) must lie between 0 "
                            f"and --epochs ({nepochs})")
        if ncrops < 2:
            raise ValueError(f"DINOLoss needs at least 2 crops, got ncrops={ncrops}")
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.ncrops = ncrops
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.teacher_temp_schedule = np.concatenate((
            np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs),
            np.ones(nepochs - warmup_teacher_temp_epochs) * teacher_temp,
        ))

    def teacher_temperature(self, epoch: int) -> float:
        if not 0 <= epoch < len(self.teacher_temp_schedule):
            raise ValueError(f"epoch {epoch} is outside the teacher temperature schedule of "
                             f"{len(self.teacher_temp_schedule)} epochs (--epochs)")
        return float(self.teacher_temp_schedule[epoch])

    def targets(self, teacher_output: torch.Tensor, epoch: int, n_views: int) -> list[torch.Tensor]:
        """Per-view teacher targets: teacher_targets(teacher_output, center, tau(epoch)) chunked into views."""
        if teacher_output.shape[0] % n_views:
            raise ValueError(f"teacher output has {teacher_output.shape[0]} rows, not a multiple of its "
                             f"{n_views} views")
        q = teacher_targets(teacher_output, self.center, self.teacher_temperature(epoch))
        return list(q.chunk(n_views))

    def loss_and_targets(self, student_output: torch.Tensor, teacher_output: torch.Tensor,
                         epoch: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(loss, teacher targets per view); updates ``center`` afterwards like ``forward``."""
        rows = student_output.shape[0]
        if rows % self.ncrops:
            raise ValueError(f"student output has {rows} rows, not a multiple of ncrops={self.ncrops}")
        batch = rows // self.ncrops
        if batch == 0 or teacher_output.shape[0] % batch:
            raise ValueError(f"teacher output has {teacher_output.shape[0]} rows, not a multiple of the "
                             f"batch {batch} (= student rows {rows} / ncrops {self.ncrops})")
        n_teacher_views = teacher_output.shape[0] // batch
        if n_teacher_views > self.ncrops:
            raise ValueError(f"teacher has {n_teacher_views} views but the student only {self.ncrops}")
        q = self.targets(teacher_output, epoch, n_teacher_views)
        loss = multiview_cross_entropy(list(student_output.chunk(self.ncrops)), q,
                                       temperature=self.student_temp, reduction="pairs")
        self.update_center(teacher_output)
        return loss, q

    def forward(self, student_output: torch.Tensor, teacher_output: torch.Tensor, epoch: int) -> torch.Tensor:
        return self.loss_and_targets(student_output, teacher_output, epoch)[0]

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        """center <- m * center + (1 - m) * mean of the teacher outputs over the global batch."""
        batch_center = all_reduce_sum(torch.sum(teacher_output.float(), dim=0, keepdim=True))
        batch_center = batch_center / (len(teacher_output) * get_world_size())
        self.center.copy_(self.center * self.center_momentum + batch_center * (1 - self.center_momentum))
