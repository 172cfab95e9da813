"""Exponential moving average of a student into a teacher (DINO's teacher update, Suave's momentum encoder)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def paired_parameters(teacher: nn.Module, student: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Parameters of ``teacher`` and ``student`` matched by name (both must have the same architecture)."""
    student_params = dict(student.named_parameters())
    teacher_params = dict(teacher.named_parameters())
    missing = sorted(set(teacher_params) - set(student_params))
    if missing:
        raise ValueError(f"teacher and student differ: {missing[:5]} missing from the student")
    names = list(teacher_params)
    return [teacher_params[n] for n in names], [student_params[n] for n in names]


def frozen_copy(build: Callable[[], nn.Module], source: nn.Module) -> nn.Module:
    """A separately built module (not a deepcopy: weight-norm parametrisations) with ``source``'s weights and
    no gradients: DINO's teacher and Suave's momentum encoder at the start of training."""
    copy = build()
    copy.load_state_dict(source.state_dict())
    for p in copy.parameters():
        p.requires_grad = False
    return copy


@torch.no_grad()
def ema_update_(teacher_params: list[torch.Tensor], student_params: list[torch.Tensor], momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, for every pair, with fused foreach kernels."""
    torch._foreach_mul_(teacher_params, momentum)
    torch._foreach_add_(teacher_params, [p.detach() for p in student_params], alpha=1.0 - momentum)
