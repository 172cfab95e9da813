"""Daino (Fini et al., CVPR 2023, Sec. 3.3): DINO whose head outputs are the classes.

Each step: the EMA teacher sees the two global views; its centred, sharpened outputs are the targets;
the student scores labelled images, every unlabelled view and the mixed views; one cross-entropy weighted
by row share (src.objective) trains it. As the released ``main_daino.py``, plus the unlabelled mixup the
release left as a TODO: mixed global views predict lam * q_a + (1 - lam) * q_b.flip(0), as in Suave.
"""
from __future__ import annotations

import argparse
from typing import Any

import torch

from src.data import DINO_STD, SWAV_STD, UnlabelledBatch
from src.data_setup import DataConfig, dino_multicrop_config
from src.distributed import get_world_size
from src.ema import frozen_copy, paired_parameters
from src.losses import DINOLoss
from src.method import Method, Schedules, init_from_checkpoint, resolve_num_outputs
from src.models import DINOHead, DINONetwork, NetworkOutput, backbone_from_flags
from src.optim import DINOLARS, cosine_schedule, param_groups
from src.release_fixes import fix_on

N_GLOBAL_VIEWS = 2


def data_config(args: argparse.Namespace) -> DataConfig:
    """Daino's data: DINO's asymmetric global crops + local crops. Normalisation as the release: DINO's std
    (0.229) on the unlabelled views, the Suave release's 0.228 on labelled and validation images
    (--dino_std_everywhere: 0.229 on all; --std: that value on all)."""
    lab_std = DINO_STD if fix_on(args, "dino_std_everywhere") else SWAV_STD
    return DataConfig.from_args(args, unlab_batch_size=args.batch_size_per_gpu,
                                lab_batch_size=args.lab_batch_size_per_gpu, workers=args.num_workers,
                                multicrop=dino_multicrop_config(args), default_std=lab_std,
                                default_unlab_std=DINO_STD)


def build_daino_network(args: argparse.Namespace, out_dim: int, student: bool) -> DINONetwork:
    backbone = backbone_from_flags(args, drop_path_rate=args.drop_path_rate if student else 0.0)
    head = DINOHead(backbone.num_features, out_dim, use_bn=args.use_bn_in_head,
                    norm_last_layer=args.norm_last_layer)
    return DINONetwork(backbone, head)


class DainoMethod(Method):
    name = "daino"

    @property
    def clip_grad(self) -> float:  # --clip_grad
        return self.args.clip_grad

    def __init__(self, args: argparse.Namespace, num_classes: int, device: torch.device) -> None:
        super().__init__(args, num_classes, device)
        self.out_dim = resolve_num_outputs(args.out_dim, num_classes, "--out_dim", args.train_mode)
        self.student = build_daino_network(args, self.out_dim, student=True)
        if args.dino_init_ckpt:
            init_from_checkpoint(self.student, args.dino_init_ckpt, "--dino_init_ckpt", args.checkpoint_key,
                                 args.init_proj, args.init_prototypes)
        self.student.to(device)
        # A separate teacher module (not a deepcopy of a weight-normed one), equal to the student at start.
        self.teacher = frozen_copy(lambda: build_daino_network(args, self.out_dim, student=False),
                                   self.student).to(device)
        self.ema_pairs = paired_parameters(self.teacher, self.student)
        self.dino_loss = DINOLoss(self.out_dim, N_GLOBAL_VIEWS + args.local_crops_number, args.warmup_teacher_temp,
                                  args.teacher_temp, args.warmup_teacher_temp_epochs, args.epochs,
                                  student_temp=args.temperature).to(device)

    # --- built once ---------------------------------------------------------------------------------
    def build_optimizer(self) -> torch.optim.Optimizer:
        groups = param_groups(self.student, self.args.weight_decay, no_decay_bias_and_norm=True)
        if self.args.optimizer == "adamw":
            return torch.optim.AdamW(groups)
        if self.args.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=0, momentum=0.9)
        return DINOLARS(groups)  # the DINO release's variant

    def build_schedules(self, iters_per_epoch: int) -> Schedules:
        args = self.args
        peak = args.lr * args.batch_size_per_gpu * get_world_size() / 256.0  # linear scaling rule
        return Schedules(
            lr=cosine_schedule(peak, args.min_lr, args.epochs, iters_per_epoch, warmup_epochs=args.warmup_epochs),
            wd=cosine_schedule(args.weight_decay, args.weight_decay_end, args.epochs, iters_per_epoch),
            momentum=cosine_schedule(args.momentum_teacher, 1.0, args.epochs, iters_per_epoch))

    def snapshot_freq(self) -> int:
        return self.args.saveckp_freq

    # --- every step ---------------------------------------------------------------------------------
    @torch.no_grad()
    def unlabelled_targets(self, unlab: UnlabelledBatch, out: NetworkOutput, view_rows: list[slice],
                           epoch: int) -> dict[int, torch.Tensor]:
        """The teacher's centred, sharpened outputs on the two global views; then the center moves (DINO)."""
        teacher_out = self.teacher(list(unlab.views[:N_GLOBAL_VIEWS])).scores
        q = self.dino_loss.targets(teacher_out, epoch, N_GLOBAL_VIEWS)
        self.dino_loss.update_center(teacher_out)
        return dict(enumerate(q))

    def set_train_modes(self, first_epoch_of_run: bool) -> None:
        """The release validates the student before training (``eval()``) and never calls ``train()``, so its
        student trains in eval mode (no drop path); its teacher is in train mode until the first validation.
        --student_train_mode: both in train mode, as DINO."""
        if fix_on(self.args, "student_train_mode"):
            self.student.train()
            self.teacher.train()
        else:
            self.student.eval()
            self.teacher.train(first_epoch_of_run)

    def after_backward(self, epoch: int, iteration: int) -> None:
        if epoch < self.args.freeze_last_layer:  # DINO's cancel_gradients_last_layer
            for p in self.student.head.last_layer.parameters():
                p.grad = None

    # --- evaluation and state -----------------------------------------------------------------------
    def eval_scores(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The teacher (``main``, as the release validates) and the student."""
        return {"main": self.teacher([images]).scores, "student": self.student([images]).scores}

    def eval_modules(self) -> list[torch.nn.Module]:
        return [self.student, self.teacher]

    def kept_networks(self) -> dict[str, torch.nn.Module]:
        return {"teacher": self.teacher}

    def state_dict(self) -> dict[str, Any]:
        return {"dino_loss": self.dino_loss.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("dino_loss") is not None:
            self.dino_loss.load_state_dict(state["dino_loss"])
