"""What a method (Suave, Daino) gives the shared engine: networks, optimiser, schedules, targets, evaluation.

A method subclasses ``Method`` and MUST provide:

- ``name``: a class attribute (the checkpoint's ``method_name``);
- ``__init__(args, num_classes, device)``: call ``super().__init__`` and set ``self.student``, a network whose
  ``forward(list of (B, C, H, W) crops)`` returns a ``src.models.NetworkOutput`` (``.scores``: the (N, K) class
  scores of every row, in input order; ``SwAVNetwork`` and ``DINONetwork`` do);
- ``build_optimizer()`` and ``build_schedules(iters_per_epoch)``;
- ``unlabelled_targets(unlab, out, view_rows, epoch)``: the (B, K) target of each clean unlabelled view (used
  by the shared ``training_step``: one weighted cross-entropy, ``src.objective``; a method may override
  ``training_step`` instead, returning a ``StepOutput``).

Everything else has a default it MAY override: ``snapshot_freq`` (0: no ``checkpointNNNN.pth`` snapshots),
``set_train_modes``, ``before_step``, ``add_labelled_extras``, ``after_backward``, ``after_optimizer_step`` (the
EMA update of ``ema_pairs``), ``eval_scores`` (default: ``{"main": student scores}``), ``networks``,
``eval_modules``, ``clip_modules``, ``kept_networks`` (``"teacher"``: an EMA copy, restarted from the student by
``restart_ema_from_student``), ``state_dict``/``load_state_dict``. The engine (``src/engine.py``) owns the loop,
precision, DDP, checkpoints and logs; it sets ``forward_student`` (the DDP-wrapped student: training forwards go
through it) and reaches the method only through the names above.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from src.checkpoint import (CheckpointError, extract_state_dict, load_pretrained_backbone, load_pretrained_projection,
                            read_checkpoint, strip_wrapper_prefixes)
from src.data import LabelledBatch, UnlabelledBatch
from src.ema import ema_update_
from src.errors import UserError
from src.metrics import accuracy
from src.models import NetworkOutput
from src.objective import ObjectiveInputs, mixed_assignments, semisup_objective
from src.release_fixes import fix_on

logger = logging.getLogger(__name__)


@dataclass
class StepOutput:
    """The loss to back-propagate and what to log (floats or 0-d tensors)."""

    loss: torch.Tensor
    logs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Schedules:
    """Per-iteration arrays (dinov2 style). ``wd``/``momentum`` may be absent."""

    lr: np.ndarray
    wd: np.ndarray | None = None
    momentum: np.ndarray | None = None


class Method:
    """Base class; subclasses set ``self.student`` (the trainable network) in ``__init__``."""

    name = "method"
    clip_grad = 0.0  # per-parameter gradient-norm limit on clip_modules() after backward (DINO's --clip_grad); 0: none
    sync_bn = True  # SyncBatchNorm in every network on GPUs under DDP, as the releases (Suave's --sync_bn none: off)

    def __init__(self, args: argparse.Namespace, num_classes: int, device: torch.device) -> None:
        self.args = args
        self.num_classes = num_classes
        self.device = device
        self.student: nn.Module
        # The engine replaces this with the DDP-wrapped student; forward passes go through it.
        self.forward_student: Callable[..., Any] | None = None
        # (teacher params, student params) of an EMA teacher/momentum encoder, updated after each step.
        self.ema_pairs: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

    # --- built once -------------------------------------------------------------------------------
    def build_optimizer(self) -> torch.optim.Optimizer:
        raise NotImplementedError

    def build_schedules(self, iters_per_epoch: int) -> Schedules:
        raise NotImplementedError

    def snapshot_freq(self) -> int:
        """Keep a copy of the checkpoint every N epochs (and the last), as ``checkpointNNNN.pth``; 0: none."""
        return 0

    def ema_network(self) -> nn.Module | None:
        """The EMA copy of the student (Daino's teacher, Suave's momentum encoder), if the method keeps one."""
        return self.kept_networks().get("teacher")

    def restart_ema_from_student(self) -> None:
        """Copy the student into its EMA copy. The engine calls it after DDP has broadcast rank 0's student, as
        the releases copy the teacher after wrapping the student, so every rank's copy equals that student."""
        ema = self.ema_network()
        if ema is not None:
            ema.load_state_dict(self.student.state_dict())

    def set_train_modes(self, first_epoch_of_run: bool) -> None:
        """Train/eval modes of the networks for an epoch (the release's ``model.train()``)."""
        self.student.train()

    # --- every step -------------------------------------------------------------------------------
    def before_step(self, epoch: int, iteration: int) -> None:
        """Called before the forward pass (e.g. prototype normalisation)."""

    def training_step(self, lab: LabelledBatch | None, unlab: UnlabelledBatch | None,
                      epoch: int, iteration: int) -> StepOutput:
        """One forward of the student on [labelled, unlabelled views with the mixed views placed as the release
        places them], the method's targets for the unlabelled views, and the single weighted cross-entropy
        (src.objective)."""
        args = self.args
        crops = ([lab.images] if lab is not None else [])
        n_lab = lab.images.size(0) if lab is not None else 0
        view_rows: list[slice] = []
        mixed_rows: list[slice] = []
        if unlab is not None:
            ordered, clean_pos, mixed_pos = arrange_views(unlab, fix_on(args, "mix_own_bn_batch"))
            crops += ordered
            b = unlab.batch_size
            view_rows = [slice(n_lab + b * p, n_lab + b * (p + 1)) for p in clean_pos]
            mixed_rows = [slice(n_lab + b * p, n_lab + b * (p + 1)) for p in mixed_pos]
        out = self.forward_student(crops)
        scores = out.scores
        inputs = ObjectiveInputs(temperature=args.temperature, label_smoothing=args.label_smoothing,
                                 mixed_weight_rows=fix_on(args, "mix_weight_rows"))
        logs: dict[str, Any] = {}
        if lab is not None:
            inputs.lab_scores, inputs.lab_targets = scores[:n_lab], lab.targets
            logs["lab_acc1"] = accuracy(scores[:n_lab], lab.targets, (1,))[0]
            self.add_labelled_extras(inputs, out, lab)
        if unlab is not None:
            targets = self.unlabelled_targets(unlab, out, view_rows, epoch)
            inputs.unlab_scores = [scores[rows] for rows in view_rows]
            inputs.unlab_targets = targets
            if unlab.mixed_views:
                inputs.mixed_scores = [scores[rows] for rows in mixed_rows]
                inputs.mixed_targets = mixed_assignments(list(targets.values()), unlab.mix_lams,
                                                         unlab.mix_target_pairs)
            known = unlab.labels >= 0  # own data: -1 = an image of unknown class, left out of the accuracy
            if bool(known.any()):
                logs["pseudo_acc1"] = sum(accuracy(q[known], unlab.labels[known], (1,))[0]
                                          for q in targets.values()) / len(targets)
        loss, terms = semisup_objective(inputs)
        logs.update({k: v.detach() for k, v in terms.items()})
        return StepOutput(loss=loss, logs=logs)

    def unlabelled_targets(self, unlab: UnlabelledBatch, out: NetworkOutput, view_rows: list[slice],
                           epoch: int) -> dict[int, torch.Tensor]:
        """View index -> (B, K) target distribution; ``view_rows[v]`` selects clean view v's rows in ``out``."""
        raise NotImplementedError

    def add_labelled_extras(self, inputs: ObjectiveInputs, out: NetworkOutput, lab: LabelledBatch) -> None:
        """Hook for extra labelled terms (Suave's online probes)."""

    def after_backward(self, epoch: int, iteration: int) -> None:
        """Called after (unscaled) gradients exist, before clipping and the optimiser step."""

    def after_optimizer_step(self, epoch: int, iteration: int, schedules: Schedules) -> None:
        """After the optimiser step: the EMA update of the teacher / momentum encoder, if any."""
        if self.ema_pairs is not None and schedules.momentum is not None:
            ema_update_(*self.ema_pairs, float(schedules.momentum[min(iteration, len(schedules.momentum) - 1)]))

    # --- evaluation and state -----------------------------------------------------------------------
    def eval_scores(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Head name -> (B, K) class scores of a batch of validation images; ``"main"`` is the head validation
        reports as ``val_acc1`` (eval mode and precision are set by the engine)."""
        return {"main": self.student([images]).scores}

    def networks(self) -> list[nn.Module]:
        """Every network of the method (moved to the device / memory format by the engine)."""
        return self.eval_modules()

    def eval_modules(self) -> list[nn.Module]:
        """Modules to switch to eval mode during validation."""
        return [self.student]

    def clip_modules(self) -> list[nn.Module]:
        return [self.student]

    def kept_networks(self) -> dict[str, nn.Module]:
        """Networks besides the student, by the name the checkpoint stores them under (``"teacher"``: Daino's
        EMA teacher, Suave's momentum encoder); see the contract in ``src/checkpoint/run_file.py``."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Method state beyond the student, the kept networks and the optimiser (queue, loss center)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def arrange_views(unlab: UnlabelledBatch, mixed_last: bool) -> tuple[list[torch.Tensor], list[int], list[int]]:
    """The unlabelled crops in forward order, and the position (in blocks of B rows) of each clean view and of
    each mixed view.

    Release order (the release's ``MultiViewCollateMixup`` inserts each mixed view right after the pair it
    mixes): ``[v0, v1, mix01, v2, ...]``, so the backbone normalises the mixed global view in one BatchNorm
    batch with the clean global views (and the labelled images before them). ``mixed_last`` (--mix_own_bn_batch):
    ``[v0, v1, v2, ..., mix01]``, the mixed views in a batch of their own.
    """
    views, mixed = list(unlab.views), list(unlab.mixed_views)
    if mixed_last or not mixed:
        return views + mixed, list(range(len(views))), list(range(len(views), len(views) + len(mixed)))
    ordered: list[torch.Tensor] = []
    clean_pos, mixed_pos = [], [0] * len(mixed)
    for i, view in enumerate(views):
        clean_pos.append(len(ordered))
        ordered.append(view)
        for j, pair in enumerate(unlab.mix_pairs):
            if max(pair) == i:
                mixed_pos[j] = len(ordered)
                ordered.append(mixed[j])
    return ordered, clean_pos, mixed_pos


def resolve_num_outputs(requested: int | None, num_classes: int, flag: str, train_mode: str) -> int:
    """K = the number of classes; a different value is only meaningful without labels (selfsup)."""
    if requested is None:
        return num_classes
    if requested != num_classes and train_mode != "selfsup":
        raise UserError(f"{flag} {requested} does not match the {num_classes} classes of the labelled data: "
                        f"the prototypes are the classes; drop {flag} or set it to {num_classes}")
    return requested


def init_from_checkpoint(network: nn.Module, path: str, flag: str, checkpoint_key: str, init_proj: bool,
                         init_prototypes: bool, init_probes: bool = False) -> None:
    """Start ``network`` from a released SwAV/DINO file or one of ours: the backbone always, the projection
    (``--init_proj``) and the class layer (``--init_prototypes``, same K only) when asked, and the online probes
    the file holds (``--init_probes``). Reads the file once."""
    checkpoint = read_checkpoint(path, flag=flag)
    load_pretrained_backbone(network.backbone, checkpoint, checkpoint_key=checkpoint_key, flag=flag)
    if init_proj or init_prototypes:
        load_pretrained_projection(network, checkpoint, checkpoint_key=checkpoint_key,
                                   load_classifier=init_prototypes, flag=flag)
    if init_probes:
        load_online_probes(network, checkpoint, checkpoint_key, f"{path} (given by {flag})")


PROBE_PREFIXES = ("cls_heads.", "cls_ensemble.")  # SwAVNetwork's online probes, as the Suave release names them


def load_online_probes(network: nn.Module, checkpoint: dict, checkpoint_key: str, where: str) -> list[str]:
    """Load the online probes (``cls_heads.*``, ``cls_ensemble.*``) that network ``checkpoint_key`` of the file
    holds, as the Suave release's fine-tuning did (``load_state_dict(strict=False)`` of everything but the
    prototypes): probes the file lacks (a SwAV file has none) keep their initialisation, one log line says which;
    a probe of another shape is a CheckpointError. Returns the loaded keys."""
    wanted = {key: value for key, value in network.state_dict().items() if key.startswith(PROBE_PREFIXES)}
    if not wanted:
        return []
    found = strip_wrapper_prefixes(extract_state_dict(checkpoint, checkpoint_key, where), where)
    loaded = {key: found[key] for key in wanted if key in found}
    for key, value in loaded.items():
        if value.shape != wanted[key].shape:
            raise CheckpointError(f"online probe {key} has shape {tuple(value.shape)} in {where} but "
                                  f"{tuple(wanted[key].shape)} here (other --hidden_mlp, --feat_dim or classes): "
                                  "pass --init_probes false to start the probes at their initialisation")
    network.load_state_dict(loaded, strict=False)
    fresh = sorted({key.rsplit(".", 1)[0] for key in wanted if key not in loaded})
    logger.info("online probes from %s: %d tensors loaded%s", where, len(loaded),
                f"; at their initialisation: {', '.join(fresh)}" if fresh else "")
    return list(loaded)
