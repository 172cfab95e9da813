"""FixMatch (Sohn et al., NeurIPS 2020) in the shared engine: the yardstick the Fashion-MNIST table compares
Suave and Daino with, not a product of this project.

Each step: the student (backbone -> linear classifier) sees [labelled, weak views, strong views] in one forward
(one BatchNorm batch, as the reference implementations); the pseudo-label of an unlabelled image is the arg-max
of softmax(weak-view logits), taken without gradient and kept only where its probability is >= ``--threshold``;
the strong view predicts it by cross-entropy, masked and averaged over all unlabelled rows;
loss = CE(labelled) + ``--lambda_u`` x that. SGD with Nesterov momentum, lr x cos(7 pi k / 16 K), weight decay
on weights only; validation reports the EMA of the weights (``main``) and the raw student. The flags' defaults
are the paper's (Sec. 4, App. B); the labelled images come from the shared labelled stream (Suave's labelled
augmentation), not the weak view. What the Fashion-MNIST recipe changes, and why: docs/fixmatch.md.
"""
from __future__ import annotations

import argparse
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from src.data import SWAV_STD, LabelledBatch, UnlabelledBatch, weak_strong_views
from src.data_setup import DataConfig
from src.ema import frozen_copy, paired_parameters
from src.losses import soft_cross_entropy
from src.method import Method, Schedules, StepOutput
from src.metrics import accuracy
from src.models import NetworkOutput, backbone_from_flags, forward_by_resolution
from src.objective import labelled_targets
from src.optim import param_groups


def data_config(args: argparse.Namespace) -> DataConfig:
    """FixMatch's data: the shared labelled stream and validation, [weak, strong] views of the unlabelled images,
    mu x B of them per step."""
    return DataConfig.from_args(
        args, unlab_batch_size=args.mu * args.lab_batch_size, lab_batch_size=args.lab_batch_size,
        workers=args.workers, default_std=SWAV_STD,
        multicrop=lambda norm: weak_strong_views(args.crop_size, norm, args.translate, args.randaugment_ops,
                                                 args.cutout))


class Classifier(nn.Module):
    """backbone -> linear layer to the K classes; takes a list of crops (run by resolution, like the others)."""

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(backbone.num_features, num_classes)

    def forward(self, crops: torch.Tensor | list[torch.Tensor]) -> NetworkOutput:
        return NetworkOutput(embedding=None, scores=self.fc(forward_by_resolution(self.backbone, crops)),
                             probe_logits=[])


def build_classifier(args: argparse.Namespace, num_classes: int) -> Classifier:
    return Classifier(backbone_from_flags(args), num_classes)


def set_batchnorm_momentum(network: nn.Module, momentum: float) -> nn.Module:
    """Every BatchNorm layer of ``network`` updates its running statistics with ``momentum`` (PyTorch's
    convention). The reference TF code uses 0.999 in TF's convention (0.001 here): the statistics then average
    over about as many steps as the EMA of the weights (decay 0.999) that is validated with them."""
    for module in network.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum
    return network


def unlabelled_loss(weak_logits: torch.Tensor, strong_logits: torch.Tensor, threshold: float
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FixMatch's l_u (Eq. 4): mean over the B rows of 1[max q >= tau] * CE(strong, argmax q), q = softmax(weak),
    no gradient through q. Returns (loss, mask (B,), pseudo-labels (B,))."""
    with torch.no_grad():
        confidence, pseudo = weak_logits.detach().float().softmax(dim=-1).max(dim=-1)
        mask = (confidence >= threshold).float()
    per_row = F.cross_entropy(strong_logits.float(), pseudo, reduction="none")
    return (per_row * mask).mean(), mask, pseudo


def fixmatch_lr(base_lr: float, total_iters: int) -> np.ndarray:
    """lr at iteration k of K: base_lr * cos(7 pi k / (16 K)) (the paper's decay, no warm-up)."""
    return base_lr * np.cos(7 * math.pi * np.arange(total_iters) / (16 * total_iters))


class FixMatchMethod(Method):
    name = "fixmatch"

    def __init__(self, args: argparse.Namespace, num_classes: int, device: torch.device) -> None:
        super().__init__(args, num_classes, device)
        self.student = set_batchnorm_momentum(build_classifier(args, num_classes), args.bn_momentum).to(device)
        self.ema: Classifier | None = None
        if args.ema_decay > 0:  # the EMA of the weights that is evaluated; BatchNorm statistics copied
            self.ema = frozen_copy(lambda: build_classifier(args, num_classes), self.student).to(device)
            self.ema_pairs = paired_parameters(self.ema, self.student)

    # --- built once ---------------------------------------------------------------------------------
    def build_optimizer(self) -> torch.optim.Optimizer:
        groups = param_groups(self.student, self.args.wd, no_decay_bias_and_norm=True)
        return torch.optim.SGD(groups, lr=self.args.lr, momentum=self.args.momentum, nesterov=self.args.nesterov)

    def build_schedules(self, iters_per_epoch: int) -> Schedules:
        total = self.args.epochs * iters_per_epoch
        momentum = np.full(total, self.args.ema_decay) if self.ema is not None else None
        return Schedules(lr=fixmatch_lr(self.args.lr, total), momentum=momentum)

    def snapshot_freq(self) -> int:
        return self.args.checkpoint_freq

    # --- every step ---------------------------------------------------------------------------------
    def training_step(self, lab: LabelledBatch | None, unlab: UnlabelledBatch | None,
                      epoch: int, iteration: int) -> StepOutput:
        n_lab = lab.images.size(0) if lab is not None else 0
        crops = ([lab.images] if lab is not None else []) + (list(unlab.views[:2]) if unlab is not None else [])
        logits = self.forward_student(crops).scores
        logs: dict[str, Any] = {}
        loss = logits.new_zeros((), dtype=torch.float32)
        if lab is not None:
            lab_loss = soft_cross_entropy(logits[:n_lab], labelled_targets(lab.targets, self.num_classes, 0.0))
            loss = loss + lab_loss
            logs["lab_loss"] = lab_loss.detach()
            if lab.n_clean:
                logs["lab_acc1"] = accuracy(logits[:lab.n_clean], lab.labels, (1,))[0]
        if unlab is not None:
            b = unlab.batch_size
            weak, strong = logits[n_lab:n_lab + b], logits[n_lab + b:n_lab + 2 * b]
            unlab_loss, mask, pseudo = unlabelled_loss(weak, strong, self.args.threshold)
            loss = loss + self.args.lambda_u * unlab_loss
            logs.update(unlab_loss=unlab_loss.detach(), mask_rate=mask.mean())
            known = unlab.labels >= 0  # own data: -1 = unknown class, left out of the accuracy
            if bool(known.any()):
                logs["pseudo_acc1"] = 100.0 * (pseudo[known] == unlab.labels[known]).float().mean()
        logs["loss"] = loss.detach()
        return StepOutput(loss=loss, logs=logs)

    def after_optimizer_step(self, epoch: int, iteration: int, schedules: Schedules) -> None:
        """EMA of the parameters (the base class), then the student's BatchNorm statistics copied into the EMA
        model, which never runs forward in training (as the reference PyTorch implementation's ModelEMA)."""
        super().after_optimizer_step(epoch, iteration, schedules)
        if self.ema is not None:
            with torch.no_grad():
                for target, source in zip(self.ema.buffers(), self.student.buffers()):
                    target.copy_(source)

    # --- evaluation and state -----------------------------------------------------------------------
    def eval_scores(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        student = self.student([images]).scores
        return {"main": self.ema([images]).scores, "student": student} if self.ema is not None else {"main": student}

    def networks(self) -> list[nn.Module]:
        return [self.student] + ([self.ema] if self.ema is not None else [])

    def eval_modules(self) -> list[nn.Module]:
        return self.networks()

    def kept_networks(self) -> dict[str, nn.Module]:
        return {"teacher": self.ema} if self.ema is not None else {}
