"""The epoch loop both evaluation scripts run, with the release's order of operations per step (set the
learning rate, forward, cross-entropy, zero_grad, backward, step) and per epoch (train, validate, epoch
scheduler, keep the best top-1, checkpoint).

Each epoch ends with ``<output_dir>/checkpoint.pth``, written atomically: the trained module, optimiser,
epoch scheduler, gradient scaler, best accuracy, every rank's RNG state, the flags and the class names.
Running the same command again resumes there and gives the numbers an uninterrupted run gives. Progress goes
to ``train.log`` (loss, accuracy, learning rates, data vs compute time, ETA), one row per epoch to
``stats.csv``/``stats.jsonl`` and the outcome to ``results.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from src import distributed
from src.atomic_io import write_json_atomic
from src.checkpoint import read_checkpoint, save_checkpoint_atomic, unwrap_module
from src.engine import CHECKPOINT_NAME
from src.errors import TrainingDiverged, UserError
from src.logging_utils import MetricLogger, StatsTable, Stopwatch, WandbRun, format_seconds, setup_logging
from src.metrics import correct_topk
from src.optim import apply_schedules
from src.run_state import gather_rng_states, plain_args, seed_everything, set_rng_state
from src.train_step import Precision

from .backbone import Pretrained, build_pretrained_backbone
from .data import EvalData

LAYOUT = "suave-daino evaluation checkpoint v1"


@dataclass
class EvalTask:
    """What one evaluation script trains. ``forward(images)`` gives logits in train and eval mode alike;
    ``set_mode(training)`` puts its modules in the right modes (a frozen backbone stays in eval mode)."""

    name: str
    model: nn.Module                    # the trained module (checkpointed), not wrapped
    forward: Callable[[torch.Tensor], torch.Tensor]
    set_mode: Callable[[bool], None]
    optimizer: torch.optim.Optimizer
    lr_schedule: np.ndarray | None = None   # per-iteration lr (times each group's lr_scale), or None
    scheduler: Any = None                   # per-epoch torch scheduler, stepped after validation, or None
    summary: Callable[[float, float], str] = field(default=lambda top1, top5: "")


class EvalRunner:
    """``EvalRunner(args, build_data, build_task).fit()``: ``build_task(args, dist, data, (backbone, checkpoint))``
    gets the ``--pretrained`` backbone (built and checked before the data is scanned) and the checkpoint read."""

    def __init__(self, args: argparse.Namespace, build_data: Callable[[argparse.Namespace, Any], EvalData],
                 build_task: Callable[[argparse.Namespace, Any, EvalData, Pretrained], EvalTask]) -> None:
        self.args = args
        self.dist = distributed.init_distributed(args.local_rank, args.device, args.dist_timeout)
        args.rank, args.world_size = self.dist.rank, self.dist.world_size
        os.makedirs(args.output_dir, exist_ok=True)
        self.logger = setup_logging(args.output_dir, self.dist.rank)
        seed_everything(args.seed)  # the release's fix_random_seeds(args.seed): one seed on every rank
        self.device = self.dist.device
        self.precision = Precision(args.use_fp16, args.use_bf16, self.device)
        pretrained = build_pretrained_backbone(args)  # before the data: a bad --pretrained fails at once
        self.data = build_data(args, self.dist)
        self.task = build_task(args, self.dist, self.data, pretrained)
        self.checkpoint_path = os.path.join(args.output_dir, CHECKPOINT_NAME)
        self.epoch, self.best = 0, (0.0, 0.0)
        self.wandb_id: str | None = None
        self.stats = StatsTable(args.output_dir) if distributed.is_main_process() else None
        self._resume()
        self.wandb = WandbRun(args.wandb, args.wandb_project, None, "online", self.wandb_id,
                              os.path.basename(os.path.abspath(args.output_dir)), plain_args(args), args.output_dir)
        self.wandb_id = self.wandb.run_id

    # ------------------------------------------------------------------------------------ checkpoints
    def _resume(self) -> None:
        if not os.path.isfile(self.checkpoint_path):
            self.logger.info("no %s in %s: starting at epoch 0", CHECKPOINT_NAME, self.args.output_dir)
            if self.stats is not None:
                self.stats.drop_from_epoch(0)  # rows of a run that died before its first checkpoint
            return
        ckpt = read_checkpoint(self.checkpoint_path)
        if ckpt.get("layout") != LAYOUT or ckpt.get("script") != self.task.name:
            raise UserError(f"{self.checkpoint_path} is not a checkpoint of {self.task.name}.py (it holds "
                            f"{ckpt.get('script') or sorted(map(str, ckpt))}): use another --dump_path")
        self.task.model.load_state_dict(ckpt["model"])
        self.task.optimizer.load_state_dict(ckpt["optimizer"])
        if self.task.scheduler is not None:
            self.task.scheduler.load_state_dict(scheduler_state_from_plain(ckpt["scheduler"]))
        if self.precision.scaler is not None and ckpt.get("scaler"):
            self.precision.scaler.load_state_dict(ckpt["scaler"])
        rngs = ckpt.get("rng", {})
        if str(self.dist.rank) in rngs:
            set_rng_state(rngs[str(self.dist.rank)])
        self.epoch, self.best, self.wandb_id = ckpt["epoch"], tuple(ckpt["best_acc"]), ckpt.get("wandb_id")
        if self.stats is not None:
            self.stats.drop_from_epoch(self.epoch)
        self.logger.info("resumed from %s at epoch %d (best top-1 so far %.2f)", self.checkpoint_path, self.epoch,
                         self.best[0])

    def save_checkpoint(self) -> None:
        rng = gather_rng_states()  # collective: every rank
        if distributed.is_main_process():
            state = {"layout": LAYOUT, "script": self.task.name, "model": unwrap_module(self.task.model).state_dict(),
                     "optimizer": self.task.optimizer.state_dict(),
                     "scheduler": scheduler_state_to_plain(self.task.scheduler),
                     "scaler": self.precision.scaler.state_dict() if self.precision.scaler is not None else None,
                     "epoch": self.epoch, "best_acc": list(self.best), "rng": rng, "wandb_id": self.wandb_id,
                     "world_size": self.dist.world_size, "class_names": list(self.data.class_names),
                     "args": plain_args(self.args)}
            save_checkpoint_atomic(state, self.checkpoint_path)
        distributed.barrier()

    # ------------------------------------------------------------------------------------------- loop
    def fit(self) -> dict[str, Any]:
        args = self.args
        results_path = os.path.join(args.output_dir, "results.json")
        if self.epoch >= args.epochs and os.path.isfile(results_path):
            self.logger.info("%s already holds all %d epochs: nothing to do", args.output_dir, args.epochs)
            with open(results_path) as handle:
                return json.load(handle)
        started, first = time.perf_counter(), self.epoch
        val: dict[str, float] = {}
        for epoch in range(self.epoch, args.epochs):
            if args.stop_after_epochs and epoch - first >= args.stop_after_epochs:
                self.logger.info("--stop_after_epochs %d: leaving before epoch %d; the same command resumes",
                                 args.stop_after_epochs, epoch)
                break
            self.logger.info("============ Starting epoch %d ... ============", epoch)
            train = self.train_one_epoch(epoch)
            val = self.validate()
            if self.task.scheduler is not None:
                self.task.scheduler.step()
            if val["val_acc1"] > self.best[0]:
                self.best = (val["val_acc1"], val["val_acc5"])
            self.epoch = epoch + 1
            row = {"epoch": epoch, **{f"train_{k}": v for k, v in train.items()}, **val,
                   "best_acc1": self.best[0], "elapsed_s": round(time.perf_counter() - started, 1)}
            if self.stats is not None:
                self.stats.append(row)
            self.wandb.log(row, step=epoch)
            self.save_checkpoint()
            self.logger.info("Test: loss %.4f  Acc@1 %.3f  Acc@5 %.3f  Best Acc@1 so far %.1f  (%s elapsed)",
                             val["val_loss"], val["val_acc1"], val["val_acc5"], self.best[0],
                             format_seconds(time.perf_counter() - started))
        results = {"script": self.task.name, "epochs": args.epochs, "epochs_completed": self.epoch,
                   "best_acc1": self.best[0], "best_acc5": self.best[1], **val,
                   "pretrained": args.pretrained, "checkpoint_key": args.checkpoint_key, "arch": args.arch,
                   "wall_time_s": round(time.perf_counter() - started, 1)}
        if distributed.is_main_process():
            write_json_atomic(results_path, results)
            if self.epoch >= args.epochs:
                self.logger.info(self.task.summary(*self.best))
            self.logger.info("checkpoint: %s | log: %s | stats: %s | results: %s", self.checkpoint_path,
                             os.path.join(args.output_dir, "train.log"), os.path.join(args.output_dir, "stats.csv"),
                             results_path)
        self.wandb.finish()
        return results

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        task, loader, args = self.task, self.data.train_loader, self.args
        loader.sampler.set_epoch(epoch)
        task.set_mode(True)
        meters, watch, total = MetricLogger(), Stopwatch(), self.data.iters_per_epoch
        for it, batch in zip(range(total), loader):
            batch = batch.to(self.device, non_blocking=True)
            data_time = watch.lap()
            iteration = epoch * total + it
            if task.lr_schedule is not None:
                apply_schedules(task.optimizer, float(task.lr_schedule[iteration]))
            with self.precision.autocast():
                logits = task.forward(batch.images)
            loss = F.cross_entropy(logits.float(), batch.targets)
            if distributed.any_rank(~torch.isfinite(loss.detach())):  # every rank stops (DDP's all-reduce)
                what = loss.item() if not math.isfinite(loss.item()) else "not finite on another rank"
                raise TrainingDiverged(f"loss is {what} at iteration {iteration} (epoch {epoch}); the last "
                                       f"checkpoint is in {args.output_dir}")
            task.optimizer.zero_grad()
            scaler = self.precision.scaler
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(task.optimizer)
                scaler.update()
            else:
                loss.backward()
                task.optimizer.step()
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            rows, clean = batch.images.size(0), batch.n_clean
            meters.update(n=rows, loss=loss.item())
            if clean:
                top1, top5 = correct_topk(logits[:clean].detach().float(), batch.labels, (1, 5))
                meters.update(n=clean, acc1=100.0 * top1 / clean, acc5=100.0 * top5 / clean)
            groups = task.optimizer.param_groups
            meters.update(lr=groups[0]["lr"], lr_last=groups[-1]["lr"], data_s=data_time, step_s=watch.lap())
            if it % args.log_freq == 0 or it == total - 1:
                self.logger.info(meters.progress_line(f"Epoch [{epoch}/{args.epochs}]", it, total, watch.elapsed()))
        meters.synchronize()
        return meters.global_averages()

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Top-1, top-5 and mean cross-entropy on ``val``, sharded across ranks and summed."""
        self.task.set_mode(False)
        counts = torch.zeros(4, dtype=torch.float64)  # top-1 hits, top-5 hits, summed loss, images
        for images, labels in self.data.val_loader:
            images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            with self.precision.autocast():
                logits = self.task.forward(images)
            logits = logits.float()
            top1, top5 = correct_topk(logits, labels, (1, 5))
            loss = F.cross_entropy(logits, labels, reduction="sum").item()
            counts += torch.tensor([top1, top5, loss, labels.size(0)], dtype=torch.float64)
        distributed.all_reduce_sum(counts)
        n = max(counts[3].item(), 1.0)
        return {"val_loss": counts[2].item() / n, "val_acc1": 100 * counts[0].item() / n,
                "val_acc5": 100 * counts[1].item() / n}


def scheduler_state_to_plain(scheduler: Any) -> dict | None:
    """A torch scheduler's state as plain data: MultiStepLR keeps its milestones in a Counter, which
    ``weights_only`` loading refuses; it is stored as a dict of {epoch: count}."""
    if scheduler is None:
        return None
    state = scheduler.state_dict()
    if isinstance(state.get("milestones"), Counter):
        state["milestones"] = dict(state["milestones"])
    return state


def scheduler_state_from_plain(state: dict) -> dict:
    """The inverse of ``scheduler_state_to_plain`` (MultiStepLR reads missing epochs of the Counter as 0)."""
    if isinstance(state.get("milestones"), dict):
        state = {**state, "milestones": Counter(state["milestones"])}
    return state


def wrap_ddp(module: nn.Module, dist: Any, sync_bn: bool = True) -> nn.Module:
    """DDP around the trained module when a process group exists (SyncBatchNorm on GPUs, as the release)."""
    if dist.backend is None:
        return module
    if sync_bn and dist.device.type == "cuda":
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    device_ids = [dist.device.index] if dist.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def run_evaluation(args: argparse.Namespace, build_data: Callable, build_task: Callable) -> dict[str, Any]:
    """Entry used by eval_semisup.py / eval_linear.py (and the Slurm launcher); cleans up the process group."""
    try:
        return EvalRunner(args, build_data, build_task).fit()
    finally:
        distributed.cleanup()
