"""The unified loss: one Suave step and one Daino step on fixed tensors equal the release's arithmetic,
written out here independently (term weights and mixed targets included)."""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from daino.args import get_args_parser as daino_parser
from daino.method import DainoMethod
from src.data import LabelledBatch, UnlabelledBatch
from src.models import NetworkOutput
from suave.args import get_args_parser as suave_parser
from suave.method import SuaveMethod

B, L, K, V = 6, 4, 5, 4  # unlabelled batch, labelled rows, classes, unlabelled views
TEMP, SMOOTH = 0.1, 0.01


def reference_sinkhorn(scores: torch.Tensor, eps: float, iters: int) -> torch.Tensor:
    q = torch.exp(scores.double() / eps).t()
    q /= q.sum()
    k, b = q.shape
    for _ in range(iters):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).t().float()


def ce(q: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    return -(q * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def make_batches(mixed: bool) -> tuple[LabelledBatch, UnlabelledBatch]:
    g = torch.Generator().manual_seed(0)
    lab = LabelledBatch(images=torch.zeros(L, 3, 8, 8), targets=torch.tensor([0, 1, 2, 3]),
                        labels=torch.tensor([0, 1, 2, 3]), n_clean=L)
    unlab = UnlabelledBatch(views=[torch.zeros(B, 3, 8, 8) for _ in range(V)],
                            labels=torch.randint(0, K, (B,), generator=g))
    if mixed:
        unlab.mixed_views = [torch.zeros(B, 3, 8, 8)]
        unlab.mix_lams, unlab.mix_pairs, unlab.mix_target_pairs = [0.3], [(0, 1)], [(0, 1)]
    return lab, unlab


def fixed_scores(rows: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(rows, K, generator=torch.Generator().manual_seed(seed)), dim=1)


def parse(parser, argv: list[str]) -> argparse.Namespace:
    return argparse.ArgumentParser(parents=[parser()]).parse_args(argv)


def test_suave_step_equals_release_arithmetic():
    args = parse(suave_parser, ["--arch", "resnet18", "--small_stem", "true", "--hidden_mlp", "8", "--feat_dim", "4",
                                "--nmb_crops", "2", "2", "--size_crops", "8", "8", "--min_scale_crops", "0.5", "0.5",
                                "--max_scale_crops", "1", "1", "--batch_size", str(B)])
    method = SuaveMethod(args, K, torch.device("cpu"))
    lab, unlab = make_batches(mixed=True)
    rows = L + B * V + B
    scores = fixed_scores(rows, 1).requires_grad_()
    method.forward_student = lambda crops: NetworkOutput(torch.zeros(rows, 4), scores, [])
    out = method.training_step(lab, unlab, epoch=0, iteration=0)

    s = scores.detach()
    # The release inserts the mixed view right after the two global views: [lab, v0, v1, mix01, v2, v3].
    blocks = list(s[L:].split(B))
    lab_s, views, mixed_s = s[:L], blocks[:2] + blocks[3:], blocks[2]
    qs = [reference_sinkhorn(views[c], 0.05, 3) for c in (0, 1)]
    unlab_loss = sum(sum(ce(qs[i], views[v] / TEMP) for v in range(V) if v != c) / (V - 1)
                     for i, c in enumerate((0, 1))) / 2
    lab_loss = F.cross_entropy(lab_s / TEMP, lab.targets, label_smoothing=SMOOTH)
    mixed_q = 0.3 * qs[0] + 0.7 * qs[1].flip(0)
    mixed_loss = ce(mixed_q, mixed_s / TEMP)
    # mixed_unlab_bs = number of mixed views (1), not their rows
    total = (B * V * unlab_loss + L * lab_loss + 1 * mixed_loss) / (B * V + L + 1)
    torch.testing.assert_close(out.logs["unlab_loss"], unlab_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.logs["lab_loss"], lab_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.logs["mixed_unlab_loss"], mixed_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, total, rtol=1e-5, atol=1e-6)
    expected_pseudo = sum(100.0 * (q.argmax(1) == unlab.labels).float().mean() for q in qs) / 2
    assert abs(out.logs["pseudo_acc1"] - float(expected_pseudo)) < 1e-4


def test_suave_supervised_mode_is_plain_cross_entropy():
    args = parse(suave_parser, ["--arch", "resnet18", "--hidden_mlp", "8", "--feat_dim", "4", "--train_mode", "supervised"])
    method = SuaveMethod(args, K, torch.device("cpu"))
    lab, _ = make_batches(mixed=False)
    scores = fixed_scores(L, 2)
    method.forward_student = lambda crops: NetworkOutput(torch.zeros(L, 4), scores, [])
    out = method.training_step(lab, None, epoch=0, iteration=0)
    torch.testing.assert_close(out.loss, F.cross_entropy(scores / TEMP, lab.targets, label_smoothing=SMOOTH))


class FixedTeacher(torch.nn.Module):
    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.output = output

    def forward(self, crops):
        assert len(crops) == 2  # the teacher sees the two global views only
        return NetworkOutput(None, self.output, [])


def test_daino_step_equals_release_arithmetic_with_unlabelled_mixup():
    args = parse(daino_parser, ["--arch", "vit_tiny", "--patch_size", "8", "--local_crops_number", str(V - 2),
                                "--epochs", "10", "--warmup_teacher_temp", "0.04", "--teacher_temp", "0.07",
                                "--warmup_teacher_temp_epochs", "5", "--mixup_unlab", "true",
                                "--mixup_unlab_type", "globals"])
    method = DainoMethod(args, K, torch.device("cpu"))
    center = torch.randn(1, K) * 0.1
    method.dino_loss.center.copy_(center)
    teacher_out = torch.randn(2 * B, K, generator=torch.Generator().manual_seed(3))
    method.teacher = FixedTeacher(teacher_out)
    lab, unlab = make_batches(mixed=True)
    rows = L + B * V + B
    student = torch.randn(rows, K, generator=torch.Generator().manual_seed(4))
    method.forward_student = lambda crops: NetworkOutput(None, student, [])
    epoch = 2
    out = method.training_step(lab, unlab, epoch=epoch, iteration=0)

    temp = 0.04 + (0.07 - 0.04) * epoch / 4  # np.linspace(0.04, 0.07, 5)[2]
    q = F.softmax((teacher_out - center) / temp, dim=1).chunk(2)
    blocks = list(student[L:].split(B))
    views, mixed_s = blocks[:2] + blocks[3:], blocks[2]
    pairs = [(iq, v) for iq in range(2) for v in range(V) if v != iq]
    unlab_loss = sum(ce(q[iq], views[v] / TEMP) for iq, v in pairs) / len(pairs)
    lab_loss = F.cross_entropy(student[:L] / TEMP, lab.targets, label_smoothing=SMOOTH)
    mixed_loss = ce(0.3 * q[0] + 0.7 * q[1].flip(0), mixed_s / TEMP)
    total = (B * V * unlab_loss + L * lab_loss + 1 * mixed_loss) / (B * V + L + 1)
    torch.testing.assert_close(out.loss, total, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.logs["mixed_unlab_loss"], mixed_loss, rtol=1e-5, atol=1e-6)
    new_center = center * 0.9 + teacher_out.mean(dim=0, keepdim=True) * 0.1
    torch.testing.assert_close(method.dino_loss.center, new_center)


def test_labelled_mixup_soft_targets_are_smoothed_like_cross_entropy():
    args = parse(daino_parser, ["--arch", "vit_tiny", "--patch_size", "8", "--train_mode", "supervised"])
    method = DainoMethod(args, K, torch.device("cpu"))
    soft = torch.softmax(torch.randn(L, K), dim=1)
    lab = LabelledBatch(images=torch.zeros(L, 3, 8, 8), targets=soft, labels=torch.empty(0, dtype=torch.long), n_clean=0)
    student = torch.randn(L, K)
    method.forward_student = lambda crops: NetworkOutput(None, student, [])
    out = method.training_step(lab, None, epoch=0, iteration=0)
    torch.testing.assert_close(out.loss, F.cross_entropy(student / TEMP, soft, label_smoothing=SMOOTH))
