"""One optimisation step, as training runs it and the throughput benchmark times it: precision (autocast and
gradient scaling), schedules, the method's forward/targets/loss, finite check, backward, clipping, optimiser step.

Follows the released ``train_one_epoch`` functions (SwAV/DINO lineage): per-iteration schedules, fp16 autocast
with a GradScaler, DINO's per-parameter gradient clipping, the EMA update after the optimiser step.
"""
from __future__ import annotations

import argparse
import contextlib
import math
from typing import Any

import torch
from torch import nn

from src import distributed, perf
from src.errors import TrainingDiverged
from src.logging_utils import get_logger
from src.method import Method, Schedules, StepOutput
from src.optim import apply_schedules
from src.release_fixes import fix_on


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: a CUDA GPU that supports it, or a CPU where oneDNN has bf16
    kernels (AVX-512 or AMX). On an AVX2-only CPU oneDNN emulates bf16 with slow kernels (timings:
    benchmarks/results/measured_without_run_files.md)."""
    if device.type == "cuda":  # emulated bf16 (GPUs before Ampere) does not count
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch releases before the argument: native support only
            return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: no fast bf16 path either
        return False


class Precision:
    """Autocast + gradient scaling: fp16 with a GradScaler on CUDA (``--use_fp16``), bf16 on CPU or CUDA
    (``--use_bf16 true``, or ``auto`` where ``native_bf16``), else fp32."""

    def __init__(self, use_fp16: bool, use_bf16: bool | str, device: torch.device, warn: bool = True) -> None:
        self.device_type = device.type
        self.dtype: torch.dtype | None = None
        self.note = ""
        if use_bf16 == "auto":
            use_bf16 = native_bf16(device)
            self.note = ", --use_bf16 auto" if use_bf16 else ", --use_bf16 auto: no native bf16 on this device"
        elif use_bf16 and warn and not native_bf16(device):
            get_logger().warning("--use_bf16 true on a %s without native bf16 (%s): bf16 is emulated here, over 10x "
                                 "slower than fp32 on a CPU; --use_bf16 auto trains in fp32 on such a device and in "
                                 "bf16 where it is native", device.type.upper(),
                                 "a GPU before Ampere" if device.type == "cuda" else "no AVX-512/AMX")
        if use_bf16:
            self.dtype = torch.bfloat16
        elif use_fp16 and device.type == "cuda":
            self.dtype = torch.float16
        elif use_fp16:
            get_logger().warning("--use_fp16 true needs CUDA; training in fp32 on %s "
                                 "(--use_bf16 true gives bf16 autocast on the CPU)", device)
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """``zero_grad``, then the backward pass; under fp16 the loss is scaled and the gradients unscaled after,
        so what runs between this and :meth:`step` (clipping, the methods' gradient rules) sees true gradients."""
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(optimizer)
        else:
            loss.backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimiser step (under fp16 the GradScaler's: skipped on inf/NaN gradients, scale updated)."""
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def describe(self) -> str:
        names = {None: "fp32", torch.float16: "fp16 autocast + GradScaler", torch.bfloat16: "bf16 autocast"}
        return names[self.dtype] + self.note


def validation_precision(args: argparse.Namespace, device: torch.device) -> Precision:
    """Validation's precision: fp32, as the releases validate; the training autocast with --amp_eval (the
    training's Precision already warned about emulated bf16)."""
    if not fix_on(args, "amp_eval"):
        return Precision(False, False, device)
    return Precision(args.use_fp16 and device.type == "cuda", args.use_bf16, device, warn=False)


class TrainStep:
    """One optimisation step of a method: schedules -> before_step -> autocast forward + targets + loss -> finite
    check -> backward (scaled) -> method's gradient rules -> per-parameter clipping -> optimiser step -> EMA."""

    def __init__(self, method: Method, optimizer: torch.optim.Optimizer, schedules: Schedules,
                 precision: Precision, clip_grad: float = 0.0, nan_check_every: int = 1) -> None:
        self.method, self.optimizer, self.schedules = method, optimizer, schedules
        self.precision, self.clip_grad = precision, clip_grad
        self.finite = perf.FiniteCheck(nan_check_every)

    def __call__(self, lab: Any, unlab: Any, epoch: int, iteration: int,
                 checkpoint_hint: str = "none yet") -> StepOutput:
        it = min(iteration, len(self.schedules.lr) - 1)
        wd = float(self.schedules.wd[it]) if self.schedules.wd is not None else None
        apply_schedules(self.optimizer, float(self.schedules.lr[it]), wd)
        self.method.before_step(epoch, iteration)
        with self.precision.autocast():
            out = self.method.training_step(lab, unlab, epoch, iteration)
        if self.finite.every == 1:
            stop_if_not_finite(out.loss, iteration, epoch, checkpoint_hint)
        else:  # --nan_check_every N: no host sync here; read back every N steps and before any checkpoint
            self.finite.record(out.loss, iteration)
            if self.finite.due(iteration):
                self.check_finite(checkpoint_hint)
        self.precision.backward(out.loss, self.optimizer)
        self.method.after_backward(epoch, iteration)
        if self.clip_grad:
            for module in self.method.clip_modules():
                clip_per_parameter(module, self.clip_grad)
        self.precision.step(self.optimizer)
        self.method.after_optimizer_step(epoch, iteration, self.schedules)
        return out

    def check_finite(self, checkpoint_hint: str = "none yet") -> None:
        """Raise ``TrainingDiverged`` if a loss recorded since the start was not finite (--nan_check_every)."""
        bad = self.finite.first_bad_iteration()
        if bad is not None:
            raise TrainingDiverged(f"loss is not finite at iteration {bad} (checked every {self.finite.every} "
                                   f"steps); stopping without saving. Last good checkpoint: {checkpoint_hint}")


def stop_if_not_finite(loss: torch.Tensor, iteration: int, epoch: int, checkpoint_hint: str = "none yet") -> None:
    """Raise ``TrainingDiverged`` on every rank when the loss is not finite on any rank (one host sync, as the
    release's ``.item()``): a rank left alone in the backward's all-reduce would hang."""
    if distributed.any_rank(~torch.isfinite(loss.detach())):
        loss_value = loss.item()
        what = loss_value if not math.isfinite(loss_value) else "not finite on another rank"
        raise TrainingDiverged(f"loss is {what} at iteration {iteration} (epoch {epoch}); stopping without "
                               f"saving. Last good checkpoint: {checkpoint_hint}")


def clip_per_parameter(module: nn.Module, clip: float) -> None:
    """DINO's ``clip_gradients``: rescale each parameter's gradient to norm <= clip."""
    for p in module.parameters():
        if p.grad is not None:
            factor = clip / (p.grad.detach().norm(2) + 1e-6)
            p.grad.mul_(factor.clamp(max=1.0))
