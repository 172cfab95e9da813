"""The evaluation scripts' task on the engine's epoch loop (``src.engine.EpochLoop``): what trains (``EvalTask``:
the module, its optimiser, its per-iteration or per-epoch schedule), with the release's order of operations per
step (set the learning rate, forward, cross-entropy, zero_grad, backward, step) and per epoch (train, validate,
epoch scheduler, keep the best top-1, checkpoint).

Each epoch ends with ``<output_dir>/checkpoint.pth`` (``src.checkpoint.RunCheckpoint``, written atomically): the
trained module, optimiser, epoch scheduler, gradient scaler, best accuracy, every rank's RNG state, the flags and
the class names. Running the same command again resumes there and gives the numbers an uninterrupted run gives.
Progress goes to ``train.log`` (loss, accuracy, learning rates, data vs compute time, ETA), one row per epoch to
``stats.csv``/``stats.jsonl`` and the outcome to ``results.json``.
"""
from __future__ import annotations

import argparse
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from src import distributed
from src.checkpoint import RunCheckpoint, resuming_into, unwrap_module
from src.engine import CHECKPOINT_NAME, EpochLoop
from src.logging_utils import MetricLogger, Stopwatch, format_seconds
from src.metrics import correct_topk
from src.optim import apply_schedules
from src.run_config import RunConfig, start_run
from src.run_hooks import StatsLog, StopAfterEpochs, TrainClock, WandbConfig, WandbLog
from src.run_state import RunState, plain_args, set_rng_state
from src.train_step import Precision, stop_if_not_finite
from src.validation import validate

from .backbone import Pretrained, build_pretrained_backbone
from .data import EvalData


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


class EvalRunner(EpochLoop):
    """``EvalRunner(args, build_data, build_task).fit()``: the engine's epoch loop (``src.engine.EpochLoop``) with
    an evaluation task. ``build_task(args, dist, data, (backbone, checkpoint))`` gets the ``--pretrained`` backbone
    (built and checked before the data is scanned) and the checkpoint read."""

    def __init__(self, args: argparse.Namespace, build_data: Callable[[argparse.Namespace, Any], EvalData],
                 build_task: Callable[[argparse.Namespace, Any, EvalData, Pretrained], EvalTask]) -> None:
        self.args = args  # the script's flags: handed to build_data and build_task, stored in the checkpoint
        self.run = RunConfig.from_args(args)
        # the release's fix_random_seeds(args.seed): one seed on every rank
        self.dist, self.logger = start_run(self.run, args)
        self.device = self.dist.device
        self.precision = Precision(self.run.use_fp16, self.run.use_bf16, self.device)
        pretrained = build_pretrained_backbone(args)  # before the data: a bad --pretrained fails at once
        self.data = build_data(args, self.dist)
        self.task = build_task(args, self.dist, self.data, pretrained)
        self.checkpoint_path = os.path.join(self.run.output_dir, CHECKPOINT_NAME)
        self.last_good_checkpoint = self.checkpoint_path if os.path.isfile(self.checkpoint_path) else "none yet"
        self.state, self.best = RunState(), (0.0, 0.0)
        self._resume()
        out = self.run.output_dir
        wandb = WandbLog(WandbConfig(args.wandb, args.wandb_project), plain_args(args), self.state,
                         os.path.basename(os.path.abspath(out)), out)
        self.clock = TrainClock(0, 0, out)  # no time budget: the wall time only
        self.hooks = [self.clock, StopAfterEpochs(self.run.stop_after_epochs, self.state.epoch),
                      StatsLog(out, self.state.epoch), wandb]  # rows from the resumed epoch on (all when fresh)

    # ------------------------------------------------------------------------------------ checkpoints
    def _resume(self) -> None:
        if not os.path.isfile(self.checkpoint_path):
            self.logger.info("no %s in %s: starting at epoch 0", CHECKPOINT_NAME, self.run.output_dir)
            return
        ckpt = RunCheckpoint.load(self.checkpoint_path)
        with resuming_into(self.checkpoint_path, ckpt, self.task.name, plain_args(self.args)):
            self.task.model.load_state_dict(ckpt.student)
            self.task.optimizer.load_state_dict(ckpt.optimizer)
        if self.task.scheduler is not None:
            self.task.scheduler.load_state_dict(scheduler_state_from_plain(ckpt.state["scheduler"]))
        if self.precision.scaler is not None and ckpt.scaler:
            self.precision.scaler.load_state_dict(ckpt.scaler)
        if str(self.dist.rank) in ckpt.rng:
            set_rng_state(ckpt.rng[str(self.dist.rank)])
        self.state = RunState(epoch=ckpt.epoch, iteration=ckpt.epoch * self.data.iters_per_epoch,
                              wandb_id=ckpt.wandb_id)
        self.best = tuple(ckpt.state["best_acc"])
        self.logger.info("resumed from %s at epoch %d (best top-1 so far %.2f)", self.checkpoint_path,
                         self.state.epoch, self.best[0])

    def checkpoint(self) -> RunCheckpoint:
        return RunCheckpoint(
            method_name=self.task.name, student=unwrap_module(self.task.model).state_dict(),
            args=plain_args(self.args), classes=list(self.data.class_names),
            optimizer=self.task.optimizer.state_dict(),
            scaler=self.precision.scaler.state_dict() if self.precision.scaler is not None else None,
            epoch=self.state.epoch, iteration=self.state.iteration, wandb_id=self.state.wandb_id,
            world_size=self.dist.world_size,
            state={"scheduler": scheduler_state_to_plain(self.task.scheduler), "best_acc": list(self.best)})

    # ------------------------------------------------------------------------------------------- loop
    def log_start(self) -> None:
        self.logger.info("training %s for %d epochs of %d iterations (%s)", self.task.name, self.run.epochs,
                         self.data.iters_per_epoch, self.precision.describe())

    def train_one_epoch(self, epoch: int) -> tuple[dict[str, float], bool]:
        """The release's order per step: set the learning rate, forward, cross-entropy, zero_grad, backward, step."""
        self.logger.info("============ Starting epoch %d ... ============", epoch)
        task, loader, run = self.task, self.data.train_loader, self.run
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
            stop_if_not_finite(loss, iteration, epoch, self.last_good_checkpoint)
            self.precision.backward(loss, task.optimizer)
            self.precision.step(task.optimizer)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            rows, clean = batch.images.size(0), batch.n_clean
            meters.update(n=rows, loss=loss.item())
            if clean:
                top1, top5 = correct_topk(logits[:clean].detach().float(), batch.labels, (1, 5))
                meters.update(n=clean, acc1=100.0 * top1 / clean, acc5=100.0 * top5 / clean)
            groups = task.optimizer.param_groups
            meters.update(lr=groups[0]["lr"], lr_last=groups[-1]["lr"], data_s=data_time, step_s=watch.lap())
            self.state.iteration = iteration + 1
            if it % run.log_freq == 0 or it == total - 1:
                self.logger.info(meters.progress_line(f"Epoch [{epoch}/{run.epochs}]", it, total, watch.elapsed()))
        meters.synchronize()
        return meters.global_averages(), True

    def validate(self) -> dict[str, float]:
        """Top-1, top-5 and mean cross-entropy on ``val`` (``src.validation``), in the training's precision as the
        release."""
        return validate(lambda images: {"main": self.task.forward(images)}, [self.task.model], self.data.val_loader,
                        self.device, self.precision)

    def end_of_epoch(self, epoch: int, train_stats: dict[str, float], val_stats: dict[str, float],
                     finished: bool) -> None:
        """The release's order: epoch scheduler, best top-1, stats row, checkpoint."""
        if self.task.scheduler is not None:
            self.task.scheduler.step()
        if val_stats["val_acc1"] > self.best[0]:
            self.best = (val_stats["val_acc1"], val_stats["val_acc5"])
        self.state.epoch = epoch + 1
        row = {"epoch": epoch, **{f"train_{k}": v for k, v in train_stats.items()}, **val_stats,
               "best_acc1": self.best[0], "elapsed_s": round(self.clock.elapsed(), 1)}
        self._call_hooks("on_epoch_end", row)
        self.save_checkpoint()
        self.logger.info("Test: loss %.4f  Acc@1 %.3f  Acc@5 %.3f  Best Acc@1 so far %.1f  (%s elapsed)",
                         val_stats["val_loss"], val_stats["val_acc1"], val_stats["val_acc5"], self.best[0],
                         format_seconds(self.clock.elapsed()))

    def results(self, val_stats: dict[str, float], stopped_early: bool) -> dict[str, Any]:
        args = self.args
        return {"script": self.task.name, "epochs": self.run.epochs, "epochs_completed": self.state.epoch,
                "best_acc1": self.best[0], "best_acc5": self.best[1], **val_stats,
                "pretrained": args.pretrained, "checkpoint_key": args.checkpoint_key, "arch": args.arch,
                "wall_time_s": round(self.clock.elapsed(), 1)}

    def log_end(self, results: dict[str, Any]) -> None:
        if self.state.epoch >= self.run.epochs:
            self.logger.info(self.task.summary(*self.best))
        out = self.run.output_dir
        self.logger.info("checkpoint: %s | log: %s | stats: %s | results: %s", self.checkpoint_path,
                         os.path.join(out, "train.log"), os.path.join(out, "stats.csv"),
                         os.path.join(out, "results.json"))


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


def run_evaluation(args: argparse.Namespace, build_data: Callable, build_task: Callable) -> dict[str, Any]:
    """Entry used by eval_semisup.py / eval_linear.py (and the Slurm launcher); cleans up the process group."""
    try:
        return EvalRunner(args, build_data, build_task).fit()
    finally:
        distributed.cleanup()
