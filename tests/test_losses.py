"""Cross-entropies, DINOLoss and the row weighting against references written here."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from src.errors import FlagError
from src.losses import (DINOLoss, multiview_cross_entropy, smooth_labels, soft_cross_entropy, teacher_targets,
                        weighted_by_rows)
from tests.dist_helpers import run_in_processes


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_soft_cross_entropy_matches_definition():
    logits = randn(5, 7, seed=1) * 3
    targets = torch.softmax(randn(5, 7, seed=2), dim=1)
    expected = -(targets.double() * torch.log(torch.softmax(logits.double(), dim=1))).sum(1).mean()
    torch.testing.assert_close(soft_cross_entropy(logits, targets).double(), expected, rtol=1e-6, atol=0)
    half = soft_cross_entropy(logits.half(), targets.half())
    assert half.dtype == torch.float32
    with pytest.raises(ValueError, match="same shape"):
        soft_cross_entropy(logits, targets[:, :3])


def test_soft_cross_entropy_gradient_flows_to_logits_only():
    logits = randn(4, 3, seed=3).requires_grad_()
    targets = torch.softmax(randn(4, 3, seed=4), dim=1).requires_grad_()
    soft_cross_entropy(logits, targets).backward()
    # d/dlogits of the mean CE is (softmax - target) / rows
    torch.testing.assert_close(logits.grad, (torch.softmax(logits.detach(), 1) - targets.detach()) / 4)
    assert targets.grad is None


@pytest.mark.parametrize("smoothing", [0.0, 0.01, 0.3])
def test_smooth_labels_equal_torch_label_smoothing(smoothing):
    logits = randn(6, 5, seed=5) * 4
    labels = torch.tensor([0, 4, 2, 2, 1, 3])
    targets = smooth_labels(labels, 5, smoothing)
    torch.testing.assert_close(targets.sum(1), torch.ones(6))
    torch.testing.assert_close(soft_cross_entropy(logits, targets),
                               F.cross_entropy(logits, labels, label_smoothing=smoothing))


def test_smooth_labels_errors():
    with pytest.raises(FlagError, match=r"labels must lie in \[0, 5\)"):
        smooth_labels(torch.tensor([0, 5]), 5, 0.1)
    with pytest.raises(FlagError, match="--label_smoothing"):
        smooth_labels(torch.tensor([0, 1]), 5, 1.5)


def swav_reference(outputs, qs: dict, n_views: int, temperature: float):
    """The release's loop: for each assigned crop, average over the other crops, then over crops."""
    loss = 0
    for crop_id, q in qs.items():
        subloss = 0
        for v in np.delete(np.arange(n_views), crop_id):
            x = outputs[v] / temperature
            subloss -= torch.mean(torch.sum(q * F.log_softmax(x, dim=1), dim=1))
        loss += subloss / (n_views - 1)
    return loss / len(qs)


def dino_reference(outputs, qs: list, temperature: float):
    """The DINO release's loop: mean over every (teacher view, different student view) pair."""
    total, n_terms = 0, 0
    for iq, q in enumerate(qs):
        for v in range(len(outputs)):
            if v == iq:
                continue
            total += torch.sum(-q * F.log_softmax(outputs[v] / temperature, dim=-1), dim=-1).mean()
            n_terms += 1
    return total / n_terms


def test_multiview_cross_entropy_swav_and_dino_forms():
    views = [randn(4, 6, seed=10 + v) for v in range(5)]
    qs = {0: torch.softmax(randn(4, 6, seed=20), 1), 1: torch.softmax(randn(4, 6, seed=21), 1)}
    swav = swav_reference(views, qs, 5, 0.1)
    dino = dino_reference(views, [qs[0], qs[1]], 0.1)
    for reduction in ("pairs", "per_target"):
        got = multiview_cross_entropy(views, qs, temperature=0.1, reduction=reduction)
        torch.testing.assert_close(got, swav)
        torch.testing.assert_close(got, dino)
    # a list of targets means views 0, 1, ...; pre-divided logits with temperature 1 give the same
    torch.testing.assert_close(multiview_cross_entropy([v / 0.1 for v in views], [qs[0], qs[1]]), dino)


def test_multiview_reductions_differ_when_a_target_view_is_not_a_student_view():
    views = [randn(3, 4, seed=30 + v) for v in range(3)]
    q0, q_extra = torch.softmax(randn(3, 4, seed=40), 1), torch.softmax(randn(3, 4, seed=41), 1)
    targets = {0: q0, 7: q_extra}  # view 7 is not a student view: it has 3 partners, view 0 has 2

    def ce(q, v):
        return -(q * F.log_softmax(views[v], 1)).sum(1).mean()

    pairs = (ce(q0, 1) + ce(q0, 2) + ce(q_extra, 0) + ce(q_extra, 1) + ce(q_extra, 2)) / 5
    per_target = ((ce(q0, 1) + ce(q0, 2)) / 2 + (ce(q_extra, 0) + ce(q_extra, 1) + ce(q_extra, 2)) / 3) / 2
    torch.testing.assert_close(multiview_cross_entropy(views, targets, reduction="pairs"), pairs)
    torch.testing.assert_close(multiview_cross_entropy(views, targets, reduction="per_target"), per_target)
    with pytest.raises(ValueError, match="no other student view"):
        multiview_cross_entropy(views[:1], {0: q0})


def test_weighted_by_rows():
    a, b, c = torch.tensor(2.0), torch.tensor(5.0), torch.tensor(float("nan"))
    # the empty term (its mean would be NaN) is skipped
    torch.testing.assert_close(weighted_by_rows([(a, 30), (b, 10), (c, 0)]), (30 * a + 10 * b) / 40)
    with pytest.raises(ValueError, match="every term has 0 rows"):
        weighted_by_rows([(a, 0)])


# ---------------------------------------------------------------- DINO

class ReferenceDINOLoss:
    """The DINO release's DINOLoss arithmetic, single process, written out."""

    def __init__(self, out_dim, ncrops, warmup_temp, temp, warmup_epochs, nepochs, student_temp=0.1, m=0.9):
        self.center = torch.zeros(1, out_dim, dtype=torch.float64)
        self.ncrops, self.student_temp, self.m = ncrops, student_temp, m
        self.schedule = np.concatenate((np.linspace(warmup_temp, temp, warmup_epochs),
                                        np.ones(nepochs - warmup_epochs) * temp))

    def __call__(self, student_output, teacher_output, epoch):
        student_out = (student_output.double() / self.student_temp).chunk(self.ncrops)
        temp = self.schedule[epoch]
        teacher_out = F.softmax((teacher_output.double() - self.center) / temp, dim=-1).chunk(2)
        loss = dino_reference(student_out, teacher_out, 1.0)
        batch_center = torch.sum(teacher_output.double(), dim=0, keepdim=True) / len(teacher_output)
        self.center = self.center * self.m + batch_center * (1 - self.m)
        return loss


def test_dino_teacher_temperature_schedule():
    loss = DINOLoss(8, 4, warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=4, nepochs=10)
    for epoch in range(10):
        expected = 0.04 + (0.07 - 0.04) * epoch / 3 if epoch < 4 else 0.07
        assert loss.teacher_temperature(epoch) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="outside the teacher temperature schedule of 10 epochs"):
        loss.teacher_temperature(10)


def test_dino_loss_and_center_match_reference():
    out_dim, ncrops, batch = 6, 4, 3
    loss_fn = DINOLoss(out_dim, ncrops, 0.04, 0.07, warmup_teacher_temp_epochs=3, nepochs=6)
    reference = ReferenceDINOLoss(out_dim, ncrops, 0.04, 0.07, 3, 6)
    assert "center" in loss_fn.state_dict() and loss_fn.center.shape == (1, out_dim)
    for step, epoch in enumerate([0, 1, 2, 4, 5]):
        student = randn(ncrops * batch, out_dim, seed=100 + step).requires_grad_()
        teacher = randn(2 * batch, out_dim, seed=200 + step)
        student_copy = student.detach().clone().requires_grad_()
        got = loss_fn(student, teacher, epoch)
        want = reference(student_copy, teacher, epoch)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=0)
        torch.testing.assert_close(loss_fn.center.double(), reference.center, rtol=1e-5, atol=1e-7)
    got.backward()
    want.backward()  # the gradient reaching the student equals the reference's (the teacher side is constant)
    torch.testing.assert_close(student.grad.double(), student_copy.grad.double(), rtol=1e-4, atol=1e-7)


def test_dino_teacher_targets_and_loss_and_targets():
    loss_fn = DINOLoss(5, 3, 0.04, 0.04, 0, 2)
    loss_fn.center.fill_(0.25)
    teacher = randn(4, 5, seed=7)
    expected = F.softmax((teacher - 0.25) / 0.04, dim=-1)
    torch.testing.assert_close(teacher_targets(teacher, loss_fn.center, 0.04), expected)
    _, targets = loss_fn.loss_and_targets(randn(6, 5, seed=8), teacher, 0)
    torch.testing.assert_close(torch.cat(targets), expected)
    with pytest.raises(ValueError, match="not a multiple of ncrops=3"):
        loss_fn(randn(7, 5), teacher, 0)


def _dino_worker(rank, world, student, teacher, ncrops):
    loss_fn = DINOLoss(student.shape[1], ncrops, 0.04, 0.07, 2, 4)
    # this rank's share of every view: rows [view][rank half]
    s_views = [v.chunk(world)[rank] for v in student.chunk(ncrops)]
    t_views = [v.chunk(world)[rank] for v in teacher.chunk(2)]
    losses = [loss_fn(torch.cat(s_views), torch.cat(t_views), epoch) for epoch in (0, 1)]
    return dict(losses=losses, center=loss_fn.center.clone())


@pytest.mark.slow
def test_dino_two_processes_equal_one_process():
    ncrops, batch, out_dim = 3, 4, 5
    student, teacher = randn(ncrops * batch, out_dim, seed=50), randn(2 * batch, out_dim, seed=51)
    one = DINOLoss(out_dim, ncrops, 0.04, 0.07, 2, 4)
    one_losses = [one(student, teacher, epoch) for epoch in (0, 1)]
    results = run_in_processes(_dino_worker, 2, student, teacher, ncrops)
    for r in results:
        torch.testing.assert_close(r["center"], one.center, rtol=1e-6, atol=1e-7)
    for step in range(2):
        # equal local batches: the global mean CE is the mean of the ranks' means
        mean = (results[0]["losses"][step] + results[1]["losses"][step]) / 2
        torch.testing.assert_close(mean, one_losses[step], rtol=1e-5, atol=0)
