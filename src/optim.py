"""Optimisers and schedules: Suave's LARS, DINO's per-iteration cosine schedule, parameter groups.

Every schedule is a per-iteration array (value at global iteration ``epoch * niter_per_ep + it``).
The engine applies them each iteration with ``apply_schedules(optimizer, lr, weight_decay)``, which
sets ``group["lr"] = lr * group["lr_scale"]`` in every group and ``group["weight_decay"] = weight_decay``
in the groups with ``group["apply_weight_decay"]``; both keys are set by ``param_groups``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn as nn

from src.errors import FlagError


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling, as the Suave release's ``suave/utils.py``.

    For each parameter p with gradient g (release arithmetic, You et al. 2017, Eq. 6):
      if LARS applies to p and |p| != 0 and |g| != 0:
          trust = eta * |p| / (|g| + weight_decay * |p| + eps)
          d = (g + weight_decay * p) * trust
      else:
          d = g                      (no adaptation and no weight decay)
      buf = d on the first step, else buf = momentum * buf + d
      p <- p - lr * buf
    LARS applies to p unless ``exclude_bias_and_norm`` and p is 1-D (biases, norm weights), or the
    param group has ``lars_adaptation=False``. Groups may carry their own ``lr``, ``weight_decay``,
    ``momentum``, ``eta``, ``eps``. The release's docstring claims that parameters with weight decay 0
    skip the scaling; its code does not, and neither does this one.

    The norms stay on the device (``torch.where`` instead of the release's Python ``if`` on tensors,
    which forced a host sync per parameter); the arithmetic is the same. State key ``momentum_buffer``.
    Works with ``torch.amp.GradScaler`` (which unscales the gradients before ``step``).
    """

    def __init__(self, params: Iterable, lr: float, weight_decay: float = 0.0, momentum: float = 0.9,
                 eta: float = 0.001, exclude_bias_and_norm: bool = False, eps: float = 1e-8) -> None:
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta, eps=eps,
                        exclude_bias_and_norm=exclude_bias_and_norm, lars_adaptation=True)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            weight_decay, momentum = group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                adapt = group["lars_adaptation"] and not (p.ndim == 1 and group["exclude_bias_and_norm"])
                if adapt:
                    p_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(grad)
                    nonzero = (p_norm != 0) & (g_norm != 0)
                    trust = group["eta"] * p_norm / (g_norm + p_norm * weight_decay + group["eps"])
                    scale = torch.where(nonzero, trust, torch.ones_like(trust))
                    decay = torch.where(nonzero, torch.full_like(trust, weight_decay), torch.zeros_like(trust))
                    d_p = (grad + decay * p) * scale
                else:
                    d_p = grad
                if momentum != 0:
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.clone(d_p).detach()
                    else:
                        state["momentum_buffer"].mul_(momentum).add_(d_p)
                    d_p = state["momentum_buffer"]
                p.add_(d_p, alpha=-group["lr"])
        return loss


class DINOLARS(torch.optim.Optimizer):
    """The DINO release's ``utils.LARS`` (from Barlow Twins), which Daino's ``--optimizer lars`` uses.

    For a parameter with ndim > 1: d = g + wd * p, then d *= eta * |p| / |d| (1 where either norm is 0);
    1-D parameters (biases, norms) take the plain gradient. Momentum: mu = momentum * mu + d (mu starts at
    0), p -= lr * mu. It differs from Suave's ``LARS`` (no eps, the trust ratio on the decayed update).
    """

    def __init__(self, params: Iterable, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9,
                 eta: float = 0.001) -> None:
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if p.ndim != 1:
                    d = d.add(p, alpha=group["weight_decay"])
                    p_norm, d_norm = torch.norm(p), torch.norm(d)
                    one = torch.ones_like(p_norm)
                    d = d.mul(torch.where(p_norm > 0, torch.where(d_norm > 0, group["eta"] * p_norm / d_norm, one), one))
                mu = self.state[p].setdefault("mu", torch.zeros_like(p))
                mu.mul_(group["momentum"]).add_(d)
                p.add_(mu, alpha=-group["lr"])
        return loss


def cosine_schedule(base_value: float, final_value: float, epochs: int, niter_per_ep: int,
                    warmup_epochs: int = 0, start_warmup_value: float = 0.0) -> np.ndarray:
    """Per-iteration values: linear warm-up from ``start_warmup_value`` to ``base_value`` over
    ``warmup_epochs`` epochs (np.linspace, endpoint included), then a half cosine from ``base_value``
    down to (not reaching) ``final_value``. Length ``epochs * niter_per_ep``.

    DINO's ``cosine_scheduler``; the SwAV/Suave release's lr schedule (linspace warm-up +
    final + (base - final)(1 + cos(pi t / T)) / 2 over the remaining T iterations) is the same array.
    """
    if epochs <= 0 or niter_per_ep <= 0:
        raise FlagError(f"the schedule needs --epochs > 0 and iterations per epoch > 0, got {epochs} and "
                        f"{niter_per_ep} (is the training loader empty? check --batch_size and the data)")
    if not 0 <= warmup_epochs <= epochs:
        raise FlagError(f"warm-up epochs ({warmup_epochs}) must lie between 0 and --epochs ({epochs})")
    warmup_iters = warmup_epochs * niter_per_ep
    warmup = np.linspace(start_warmup_value, base_value, warmup_iters) if warmup_iters > 0 else np.array([])
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / max(len(iters), 1)))
    schedule = np.concatenate((warmup, cosine))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


def _is_no_decay(name: str, param: torch.Tensor) -> bool:
    """DINO's get_params_groups rule: biases and 1-D parameters (norm weights, ...) get no weight decay."""
    return name.endswith(".bias") or param.ndim <= 1


def param_groups(model: nn.Module, weight_decay: float, no_decay_bias_and_norm: bool = True,
                 lr_overrides: dict[str, float] | None = None) -> list[dict]:
    """Optimizer parameter groups of the trainable parameters of ``model`` (requires_grad only).

    Groups, empty ones left out, in this order: "decay", "no_decay", then per override prefix
    "<prefix>/decay", "<prefix>/no_decay". Each group has keys ``params``, ``name``, ``weight_decay``
    (``weight_decay`` or 0), ``apply_weight_decay`` (bool: a weight-decay schedule applies to it) and
    ``lr_scale`` (1.0, or the override's value).

    ``no_decay_bias_and_norm``: biases and parameters with ndim <= 1 go to "no_decay" (DINO's
    get_params_groups); False puts every parameter in "decay" (SwAV/Suave: LARS decays all).
    ``lr_overrides``: {name prefix: lr multiplier}; parameters whose name (as in ``model.named_parameters()``,
    so pass the module without a DDP wrapper) starts with the prefix get ``lr_scale`` = multiplier, the
    longest matching prefix winning. For an absolute learning rate (e.g. a prototypes' lr), pass
    ``lr / base_lr``: the engine sets ``group["lr"] = schedule[it] * group["lr_scale"]`` (``apply_schedules``).
    """
    overrides = dict(lr_overrides or {})
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    for prefix in overrides:
        if not any(n.startswith(prefix) for n, _ in named):
            examples = ", ".join(n for n, _ in named[:5])
            raise ValueError(f"learning-rate override prefix {prefix!r} matches no trainable parameter "
                             f"(names look like: {examples})")
    buckets: dict[tuple[str | None, bool], list[nn.Parameter]] = {}
    for name, param in named:
        matches = [prefix for prefix in overrides if name.startswith(prefix)]
        prefix = max(matches, key=len) if matches else None
        decay = not (no_decay_bias_and_norm and _is_no_decay(name, param))
        buckets.setdefault((prefix, decay), []).append(param)
    groups = []
    for prefix in [None, *overrides]:
        for decay in (True, False):
            params = buckets.get((prefix, decay))
            if not params:
                continue
            label = "decay" if decay else "no_decay"
            groups.append({
                "params": params,
                "name": label if prefix is None else f"{prefix}/{label}",
                "weight_decay": weight_decay if decay else 0.0,
                "apply_weight_decay": decay,
                "lr_scale": 1.0 if prefix is None else float(overrides[prefix]),
            })
    return groups


def apply_schedules(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float | None = None) -> None:
    """Set this iteration's learning rate (times each group's ``lr_scale``) and, when given, the weight
    decay of the groups with ``apply_weight_decay``. Groups without these keys get lr and keep their decay."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        if weight_decay is not None and group.get("apply_weight_decay", False):
            group["weight_decay"] = weight_decay
