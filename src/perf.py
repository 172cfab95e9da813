"""The GPU step's speed levers, each behind a flag (``--cudnn_benchmark``, ``--tf32``, ``--compile``,
``--fused_optimizer``, ``--nan_check_every``, defined in ``src.args``); ``benchmarks/throughput.py``
measures each.

Defaults follow the release: ``cudnn.benchmark`` on (the release sets it: the convolution algorithm is chosen by
timing, which changes results only at rounding level), TF32 matmuls on CUDA (the release pins PyTorch 1.11, whose
``torch.backends.cuda.matmul.allow_tf32`` defaulted to True; PyTorch 1.12 turned it off; ``--tf32 false`` gives
full fp32), fp32 convolutions in TF32 under PyTorch's default ``cudnn.allow_tf32`` (as in the release), no
compilation, the optimisers' default (for-each) kernels, and a finiteness check of the loss every step.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from src import distributed
from src.errors import FlagError


@dataclass(frozen=True)
class PerfConfig:
    """The speed levers' flags (their defaults are the release's behaviour)."""
    cudnn_benchmark: bool = True
    tf32: bool = True  # PyTorch 1.11 (the release): fp32 CUDA matmuls in TF32
    compile: bool = False
    fused_optimizer: bool = False
    nan_check_every: int = 1

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> PerfConfig:
        return cls(cudnn_benchmark=args.cudnn_benchmark, tf32=args.tf32, compile=args.compile,
                   fused_optimizer=args.fused_optimizer, nan_check_every=args.nan_check_every)


def configure_backends(config: PerfConfig, device: torch.device) -> None:
    """cuDNN autotuning and TF32 as the flags ask (process-wide PyTorch settings, set once at start-up)."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = config.cudnn_benchmark
    torch.backends.cuda.matmul.allow_tf32 = config.tf32  # PyTorch 1.11's default (1.12+: False)


def maybe_compile(forward: nn.Module, config: PerfConfig) -> Callable:
    """``torch.compile(forward)`` with ``--compile true``. The compiled wrapper is only called, never saved:
    checkpoints keep the plain module's parameter names."""
    return torch.compile(forward) if config.compile else forward


def maybe_fuse(optimizer: torch.optim.Optimizer, config: PerfConfig,
               device: torch.device) -> torch.optim.Optimizer:
    """The same AdamW (groups, hyper-parameters) with the fused CUDA kernel, with ``--fused_optimizer true``.
    Other optimisers (LARS, SGD) are returned unchanged."""
    if not config.fused_optimizer or device.type != "cuda" or type(optimizer) is not torch.optim.AdamW:
        return optimizer
    groups = [{k: v for k, v in group.items() if k not in ("fused", "foreach")} for group in optimizer.param_groups]
    return torch.optim.AdamW(groups, fused=True)


class FiniteCheck:
    """Loss finiteness checked every ``every`` steps without a host synchronisation in between.

    Each step records, on the device, the first iteration whose loss was not finite; ``due`` says when to
    read it back (one sync every ``every`` steps); the engine also checks before writing a checkpoint, so a
    diverged model is never saved. With ``every`` = 1 the step reads the loss itself (as the Daino release's check;
    the Suave release had none)."""

    def __init__(self, every: int = 1) -> None:
        if every < 1:
            raise FlagError(f"--nan_check_every must be >= 1, got {every}")
        self.every = every
        self.first_bad: torch.Tensor | None = None

    def record(self, loss: torch.Tensor, iteration: int) -> None:
        bad = ~torch.isfinite(loss.detach())
        if self.first_bad is None:
            self.first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
        self.first_bad = torch.where(bad & (self.first_bad < 0), torch.full_like(self.first_bad, iteration),
                                     self.first_bad)

    def due(self, iteration: int) -> bool:
        return (iteration + 1) % self.every == 0

    def first_bad_iteration(self) -> int | None:
        """The first recorded iteration with a non-finite loss on any rank (one host sync; collective: every
        rank calls it at the same step and gets the same answer, so all stop together), or None."""
        if self.first_bad is None:
            return None
        never = torch.iinfo(torch.long).max
        earliest = torch.where(self.first_bad >= 0, self.first_bad, torch.full_like(self.first_bad, never)).reshape(1)
        value = int(distributed.all_reduce_min(earliest).item())
        return value if value != never else None
