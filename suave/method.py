"""Suave (Fini et al., CVPR 2023, Sec. 3.2): SwAV whose prototypes are the classes.

Each step: the student scores labelled images and every unlabelled view on the (L2-normalised) prototypes;
the assigned crops' scores (queue prepended when in use, or the momentum encoder's) go through
Sinkhorn-Knopp to give targets; every other view predicts them; labelled rows predict their label; one
cross-entropy weighted by row share (src.objective) trains everything. As the released ``main_suave.py``.
"""
from __future__ import annotations

import argparse
from typing import Any

import torch

from src.clustering import SwAVQueue, sinkhorn_knopp
from src.data import SWAV_STD, LabelledBatch, UnlabelledBatch
from src.data_setup import DataConfig, swav_multicrop_config
from src.distributed import get_world_size
from src.ema import frozen_copy, paired_parameters
from src.logging_utils import get_logger
from src.method import Method, Schedules, init_from_checkpoint, resolve_num_outputs
from src.models import NetworkOutput, SwAVNetwork, backbone_from_flags
from src.objective import ObjectiveInputs
from src.optim import LARS, cosine_schedule, param_groups
from src.release_fixes import fix_on


def data_config(args: argparse.Namespace) -> DataConfig:
    """Suave's data: SwAV multi-crop for unlabelled images, the release's ImageNet normalisation."""
    return DataConfig.from_args(args, unlab_batch_size=args.batch_size, lab_batch_size=args.lab_batch_size,
                                workers=args.workers, multicrop=swav_multicrop_config(args),
                                default_std=SWAV_STD)


def build_suave_network(args: argparse.Namespace, num_prototypes: int) -> SwAVNetwork:
    return SwAVNetwork(backbone_from_flags(args), hidden_mlp=args.hidden_mlp, feat_dim=args.feat_dim,
                       nmb_prototypes=num_prototypes, normalize=True, multihead_eval=args.multihead_eval,
                       ensemble_eval=args.ensemble_eval, bn_ensemble=args.bn_ensemble,
                       detach_ensemble=args.detach_ensemble)


class SuaveMethod(Method):
    name = "suave"

    @property
    def clip_grad(self) -> float:  # --clip_grad
        return self.args.clip_grad

    @property
    def sync_bn(self) -> bool:  # --sync_bn pytorch / none
        return self.args.sync_bn != "none"

    def __init__(self, args: argparse.Namespace, num_classes: int, device: torch.device) -> None:
        super().__init__(args, num_classes, device)
        self.num_prototypes = resolve_num_outputs(args.nmb_prototypes, num_classes, "--nmb_prototypes",
                                                  args.train_mode)
        self.student = build_suave_network(args, self.num_prototypes)
        if args.swav_init_ckpt:
            init_from_checkpoint(self.student, args.swav_init_ckpt, "--swav_init_ckpt", args.checkpoint_key,
                                 args.init_proj, args.init_prototypes, args.init_probes)
        self.student.to(device)
        self.ema: SwAVNetwork | None = None
        if args.use_momentum:  # momentum encoder: an EMA copy of the student makes the targets
            self.ema = frozen_copy(lambda: build_suave_network(args, self.num_prototypes), self.student).to(device)
            self.ema_pairs = paired_parameters(self.ema, self.student)
        self.queue: SwAVQueue | None = None

    # --- built once ---------------------------------------------------------------------------------
    def build_optimizer(self) -> torch.optim.Optimizer:
        args = self.args
        overrides = {}
        if args.lr_last_layer is not None:
            overrides["prototypes."] = args.lr_last_layer / args.base_lr if args.base_lr else 0.0
        groups = param_groups(self.student, args.wd, no_decay_bias_and_norm=False, lr_overrides=overrides)
        return LARS(groups, lr=args.base_lr, momentum=0.9, weight_decay=args.wd, eta=0.001)

    def build_schedules(self, iters_per_epoch: int) -> Schedules:
        args = self.args
        lr = cosine_schedule(args.base_lr, args.final_lr, args.epochs, iters_per_epoch,
                             warmup_epochs=args.warmup_epochs, start_warmup_value=args.start_warmup)
        momentum = (cosine_schedule(args.momentum_encoder, 1.0, args.epochs, iters_per_epoch)
                    if args.use_momentum else None)
        return Schedules(lr=lr, momentum=momentum)

    def snapshot_freq(self) -> int:
        return self.args.checkpoint_freq

    # --- every step ---------------------------------------------------------------------------------
    def before_step(self, epoch: int, iteration: int) -> None:
        self.student.normalize_prototypes()
        if self.ema is not None:
            self.ema.normalize_prototypes()
        args = self.args
        if (self.queue is None and args.queue_length > 0 and epoch >= args.epoch_queue_starts
                and args.train_mode != "supervised"):
            self.queue = self.new_queue()

    def new_queue(self) -> SwAVQueue:
        """An empty queue of --queue_length embeddings per assigned crop, split across the ranks (SwAV)."""
        args, world = self.args, get_world_size()
        return SwAVQueue(len(args.crops_for_assign), args.queue_length, args.feat_dim, args.batch_size * world,
                         world, device=self.device)

    def add_labelled_extras(self, inputs: ObjectiveInputs, out: NetworkOutput, lab: LabelledBatch) -> None:
        """The online probes' rows: the clean labelled rows (the release's ``lab_bs_no_mixed``); with
        ``--mixup_lab_type replace`` the release keeps every row and its soft target (--probes_clean_rows: not)."""
        if not out.probe_logits:
            return
        args = self.args
        if args.mixup_lab and args.mixup_lab_type == "replace" and not fix_on(args, "probes_clean_rows"):
            inputs.probe_logits, inputs.probe_targets = list(out.probe_logits), lab.targets
        elif lab.n_clean > 0:
            inputs.probe_logits = [p[:lab.n_clean] for p in out.probe_logits]
            inputs.probe_targets = lab.labels

    @torch.no_grad()
    def unlabelled_targets(self, unlab: UnlabelledBatch, out: NetworkOutput, view_rows: list[slice],
                           epoch: int) -> dict[int, torch.Tensor]:
        """Sinkhorn-Knopp assignments of each crop of ``--crops_for_assign`` (SwAV's swapped targets)."""
        args, b = self.args, unlab.batch_size
        scores, embedding, network = out.scores, out.embedding, self.student
        if self.ema is not None:  # the momentum encoder sees the first crop group and makes the targets
            ema_out = self.ema(list(unlab.views[:args.nmb_crops[0]]))
            scores, embedding, network = ema_out.scores, ema_out.embedding, self.ema
            view_rows = [slice(b * v, b * (v + 1)) for v in range(args.nmb_crops[0])]
        targets = {}
        for i, crop_id in enumerate(args.crops_for_assign):
            rows = view_rows[crop_id]
            crop_scores = scores[rows].detach().float()
            if self.queue is not None:
                crop_scores = self.queue.scores_with_queue(i, crop_scores, network.prototypes.weight)
                self.queue.push(i, embedding[rows].detach().float())
            targets[crop_id] = sinkhorn_knopp(crop_scores, args.epsilon, args.sinkhorn_iterations)[-b:]
        return targets

    def after_backward(self, epoch: int, iteration: int) -> None:
        args = self.args
        if iteration < args.freeze_prototypes_niters:
            for p in self.student.prototypes.parameters():
                p.grad = None
        if epoch < args.warmup_proj_nepochs:  # only the projection head and the prototypes learn
            for name, p in self.student.named_parameters():
                if not name.startswith(("projection_head.", "prototypes.")):
                    p.grad = None

    # --- evaluation and state -----------------------------------------------------------------------
    def eval_scores(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The prototypes (``main``), each online probe by name and, without a learnt ensemble classifier, the
        release's ensemble: the sum of the probes' softmaxes and of the raw scores' (--ensemble_scaled: / T)."""
        out = self.student([images])
        heads = {"main": out.scores, **dict(zip(self.student.probe_names, out.probe_logits))}
        if (self.args.multihead_eval or self.args.ensemble_eval) and self.student.cls_ensemble is None:
            t = self.args.temperature if fix_on(self.args, "ensemble_scaled") else 1.0
            heads["ensemble"] = (sum(p.softmax(-1) for p in out.probe_logits) + (out.scores / t).softmax(-1)).log()
        return heads

    def networks(self) -> list[torch.nn.Module]:
        return [self.student] + ([self.ema] if self.ema is not None else [])

    def kept_networks(self) -> dict[str, torch.nn.Module]:
        return {"teacher": self.ema} if self.ema is not None else {}

    def state_dict(self) -> dict[str, Any]:
        return {"queue": self.queue.state_dict() if self.queue is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("queue") is not None:
            self.queue = self.new_queue()
            self.queue.load_state_dict(state["queue"])
            get_logger().info("restored the SwAV queue (%d rows per crop)", self.queue.total_length)
