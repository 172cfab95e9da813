"""The one training loop of Suave and Daino: distributed set-up, the step, precision, validation,
checkpoint/resume and logging. A method plugs in through ``src.method.Method``.

Follows the released ``train``/``train_one_epoch`` functions (SwAV/DINO lineage): per-iteration schedules,
fp16 autocast with gradient scaling, gradient clipping, one checkpoint per epoch restored automatically.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from src import distributed, perf
from src.checkpoint import LAYOUT_VERSION, checkpoint_networks, copy_snapshot, read_checkpoint, save_checkpoint_atomic
from src.data.bad_images import BadImageTracker
from src.data_setup import DataBundle, DataConfig, build_data
from src.errors import TrainingDiverged
from src.logging_utils import (MetricLogger, StatsTable, Stopwatch, WandbRun, format_seconds, get_logger,
                               setup_logging)
from src.method import Method, Schedules
from src.metrics import correct_topk
from src.optim import apply_schedules
from src.release_fixes import active_fixes, fix_on

CHECKPOINT_NAME = "checkpoint.pth"


@dataclass
class RunState:
    epoch: int = 0                 # epoch to run next (or the one in progress)
    iteration: int = 0             # global iteration count of completed steps
    iter_in_epoch: int = 0         # completed steps of the epoch in progress
    wandb_id: str | None = None


class Precision:
    """Autocast + gradient scaling: fp16 with a GradScaler on CUDA (``--use_fp16``), bf16 on CPU or CUDA
    (``--use_bf16``), else fp32."""

    def __init__(self, use_fp16: bool, use_bf16: bool, device: torch.device) -> None:
        self.device_type = device.type
        self.dtype: torch.dtype | None = None
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

    def describe(self) -> str:
        return {None: "fp32", torch.float16: "fp16 autocast + GradScaler", torch.bfloat16: "bf16 autocast"}[self.dtype]


class TrainStep:
    """One optimisation step of a method, exactly as training runs it (the benchmark times this too):
    schedules -> before_step -> autocast forward + targets + loss -> finite check -> backward (scaled) ->
    method's gradient rules -> per-parameter clipping -> optimiser step -> EMA."""

    def __init__(self, method: Method, optimizer: torch.optim.Optimizer, schedules: Schedules,
                 precision: Precision, clip_grad: float = 0.0, nan_check_every: int = 1) -> None:
        self.method, self.optimizer, self.schedules = method, optimizer, schedules
        self.precision, self.clip_grad = precision, clip_grad
        self.finite = perf.FiniteCheck(nan_check_every)

    def __call__(self, lab: Any, unlab: Any, epoch: int, iteration: int, checkpoint_hint: str = "none yet"):
        it = min(iteration, len(self.schedules.lr) - 1)
        wd = float(self.schedules.wd[it]) if self.schedules.wd is not None else None
        apply_schedules(self.optimizer, float(self.schedules.lr[it]), wd)
        self.method.before_step(epoch, iteration)
        with self.precision.autocast():
            out = self.method.training_step(lab, unlab, epoch, iteration)
        if self.finite.every == 1:
            loss_value = out.loss.item()
            if not math.isfinite(loss_value):
                raise TrainingDiverged(f"loss is {loss_value} at iteration {iteration} (epoch {epoch}); stopping "
                                       f"without saving. Last good checkpoint: {checkpoint_hint}")
        else:  # --nan_check_every N: no host sync here; read back every N steps and before any checkpoint
            self.finite.record(out.loss, iteration)
            if self.finite.due(iteration):
                self.check_finite(checkpoint_hint)
        scaler = self.precision.scaler
        self.optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(out.loss).backward()
            scaler.unscale_(self.optimizer)
        else:
            out.loss.backward()
        self.method.after_backward(epoch, iteration)
        if self.clip_grad:
            for module in self.method.clip_modules():
                clip_per_parameter(module, self.clip_grad)
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        self.method.after_optimizer_step(epoch, iteration, self.schedules)
        return out

    def check_finite(self, checkpoint_hint: str = "none yet") -> None:
        """Raise ``TrainingDiverged`` if a loss recorded since the start was not finite (--nan_check_every)."""
        bad = self.finite.first_bad_iteration()
        if bad is not None:
            raise TrainingDiverged(f"loss is not finite at iteration {bad} (checked every {self.finite.every} "
                                   f"steps); stopping without saving. Last good checkpoint: {checkpoint_hint}")


def validation_precision(args: argparse.Namespace, device: torch.device) -> Precision:
    """Validation's precision: fp32, as the releases validate; the training autocast with --amp_eval."""
    if not fix_on(args, "amp_eval"):
        return Precision(False, False, device)
    return Precision(args.use_fp16 and device.type == "cuda", args.use_bf16, device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": list(random.getstate()[1]), "python_pos": random.getstate()[2],
             "numpy": np.random.get_state()[1].tolist(), "numpy_pos": int(np.random.get_state()[2]),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def plain_args(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed arguments as JSON-able plain data (checkpoints load with weights_only=True)."""
    return json.loads(json.dumps(vars(args), default=str))


class Trainer:
    """Runs one method: ``Trainer(args, data_config, make_method).fit()``."""

    def __init__(self, args: argparse.Namespace, data_config: Callable[[argparse.Namespace], DataConfig],
                 make_method: Callable[[argparse.Namespace, int, torch.device], Method]) -> None:
        self.args = args
        self.dist = distributed.init_distributed(args.local_rank, args.device)
        args.rank, args.world_size = self.dist.rank, self.dist.world_size
        os.makedirs(args.output_dir, exist_ok=True)
        self.logger = setup_logging(args.output_dir, self.dist.rank)
        self.device = self.dist.device
        perf.configure_backends(args, self.device)
        # The release seeds every rank alike (--seed_per_rank: rank r seeds --seed + r).
        seed_everything(args.seed + self.dist.rank if fix_on(args, "seed_per_rank") else args.seed)
        self.logger.info("device %s, %d process(es), backend %s", self.device, self.dist.world_size,
                         self.dist.backend or "none (single process)")
        self.data_config = data_config(args)
        self.data: DataBundle = build_data(self.data_config, self.dist)
        self.method = make_method(args, self.data.num_classes, self.device)
        memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
        for module in self.method.networks():
            module.to(self.device, memory_format=memory_format)
        self.student_ddp = self._wrap_student(self.method.student)
        self.method.forward_student = perf.maybe_compile(self.student_ddp, args)
        self.method.restart_ema_from_student()  # after DDP's broadcast, as the releases
        fixes = active_fixes(args, self.method.name)
        self.logger.info("arithmetic: %s", "release-exact" if not fixes else "fixes on: " + ", ".join(fixes))
        self.optimizer = perf.maybe_fuse(self.method.build_optimizer(), args, self.device)
        self.schedules: Schedules = self.method.build_schedules(self.data.iters_per_epoch)
        self.precision = Precision(args.use_fp16, args.use_bf16, self.device)
        self.step = TrainStep(self.method, self.optimizer, self.schedules, self.precision,
                              getattr(args, "clip_grad", 0.0), getattr(args, "nan_check_every", 1))
        self.state = RunState()
        self.checkpoint_path = os.path.join(args.output_dir, CHECKPOINT_NAME)
        self.last_good_checkpoint = self.checkpoint_path if os.path.isfile(self.checkpoint_path) else "none yet"
        self.stats = StatsTable(args.output_dir) if distributed.is_main_process() else None
        self.bad_images = BadImageTracker(getattr(args, "max_bad_images", 100))
        self._resume()
        self.first_epoch = self.state.epoch  # the release's debug validation: modes of this run's first epoch
        self.wandb = WandbRun(args.wandb, args.wandb_project, args.wandb_entity, args.wandb_mode,
                              self.state.wandb_id, os.path.basename(os.path.abspath(args.output_dir)),
                              plain_args(args), args.output_dir)
        self.state.wandb_id = self.wandb.run_id
        self.started = time.perf_counter()
        self.eval_seconds, self.timed_evals = 0.0, 0
        self.evals = StatsTable(args.output_dir, "evals") if distributed.is_main_process() else None

    # ------------------------------------------------------------------------------------------ set-up
    def _wrap_student(self, student: nn.Module) -> nn.Module:
        if self.dist.backend is None:  # no process group: a single process
            return student
        if self.device.type == "cuda" and getattr(self.args, "sync_bn", "pytorch") != "none":
            # SyncBN in every network, as the releases (Suave's momentum encoder, Daino's teacher included);
            # the conversion keeps the parameter objects, so EMA pairs stay valid.
            for module in self.method.networks():
                if module is not student:
                    nn.SyncBatchNorm.convert_sync_batchnorm(module)
            student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
            self.method.student = student
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(student, device_ids=device_ids)

    def _resume(self) -> None:
        """Restore every stateful object from ``<output_dir>/checkpoint.pth`` if it exists."""
        if not os.path.isfile(self.checkpoint_path):
            self.logger.info("no checkpoint in %s: starting from scratch", self.args.output_dir)
            return
        ckpt = read_checkpoint(self.checkpoint_path)
        self.method.student.load_state_dict(ckpt["student"])
        networks = checkpoint_networks(ckpt)  # the contract's names, or where layout 1 kept them
        for name, network in self.method.kept_networks().items():
            if name in networks:
                network.load_state_dict(networks[name])
        self.method.load_state_dict(ckpt.get("method", {}))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.precision.scaler is not None and ckpt.get("scaler"):
            self.precision.scaler.load_state_dict(ckpt["scaler"])
        if self.data.lab_loader is not None and ckpt.get("lab_loader"):
            self.data.lab_loader.load_state_dict(ckpt["lab_loader"])
        self.bad_images.load_state_dict(ckpt.get("bad_images"))
        rngs = ckpt.get("rng", {})
        if str(self.dist.rank) in rngs:
            set_rng_state(rngs[str(self.dist.rank)])
        self.state = RunState(epoch=ckpt["epoch"], iteration=ckpt["iteration"],
                              iter_in_epoch=ckpt.get("iter_in_epoch", 0), wandb_id=ckpt.get("wandb_id"))
        if self.stats is not None:
            self.stats.drop_from_epoch(self.state.epoch)
        self.logger.info("resumed from %s: epoch %d, iteration %d", self.checkpoint_path, self.state.epoch,
                         self.state.iteration)

    # ------------------------------------------------------------------------------------------- loop
    def fit(self) -> dict[str, Any]:
        args = self.args
        results_path = os.path.join(args.output_dir, "results.json")
        if self.state.epoch >= args.epochs and os.path.isfile(results_path):
            self.logger.info("%s already holds all %d epochs: nothing to do (raise --epochs to train longer)",
                             args.output_dir, args.epochs)
            self.wandb.finish()
            with open(results_path) as handle:
                return json.load(handle)
        self.logger.info("training %s for %d epochs of %d iterations (%s)", self.method.name, args.epochs,
                         self.data.iters_per_epoch, self.precision.describe())
        val_stats: dict[str, float] = {}
        stopped_early = False
        first_epoch = self.state.epoch
        for epoch in range(self.state.epoch, args.epochs):
            if args.stop_after_epochs and epoch - first_epoch >= args.stop_after_epochs:
                stopped_early = True
                self.logger.info("--stop_after_epochs %d: leaving before epoch %d; the same command resumes",
                                 args.stop_after_epochs, epoch)
                break
            self.state.epoch = epoch
            train_stats, finished = self.train_one_epoch(epoch)
            val_start = time.perf_counter()
            val_stats = self.validate()
            self.eval_seconds += time.perf_counter() - val_start  # not training time (--time_budget_min)
            self._end_of_epoch(epoch, train_stats, val_stats, finished)
            if not finished:
                stopped_early = True
                self.logger.info("time budget of %.1f min reached: stopped in epoch %d", args.time_budget_min, epoch)
                break
        results = {"method": self.method.name, "epochs_completed": self.state.epoch,
                   "iterations": self.state.iteration, "stopped_early": stopped_early,
                   "wall_time_s": time.perf_counter() - self.started,
                   "train_minutes": self.train_seconds() / 60, **val_stats}
        if distributed.is_main_process():
            with open(results_path, "w") as handle:
                json.dump(results, handle, indent=2)
            self.logger.info("done: %s", json.dumps(results))
            self.logger.info("checkpoint: %s | log: %s | stats: %s", self.checkpoint_path,
                             os.path.join(args.output_dir, "train.log"), os.path.join(args.output_dir, "stats.csv"))
        self.wandb.finish()
        return results

    def train_seconds(self) -> float:
        """Wall time spent training in this invocation (mid-epoch evaluations excluded)."""
        return time.perf_counter() - self.started - self.eval_seconds

    def _clock_events(self) -> tuple[bool, bool]:
        """(time budget reached, a timed evaluation is due), agreed by every rank."""
        args = self.args
        if not args.time_budget_min and not args.eval_every_min:
            return False, False
        elapsed = self.train_seconds()
        budget = bool(args.time_budget_min) and elapsed > args.time_budget_min * 60
        due = bool(args.eval_every_min) and elapsed >= (self.timed_evals + 1) * args.eval_every_min * 60
        flags = torch.tensor([float(budget), float(due)])
        distributed.all_reduce_sum(flags)  # every rank stops / evaluates at the same step
        return bool(flags[0] > 0), bool(flags[1] > 0)

    def _timed_evaluation(self, epoch: int) -> None:
        """Validation every --eval_every_min minutes of training, appended to evals.csv (accuracy vs time)."""
        start = time.perf_counter()
        self.timed_evals += 1
        stats = self.validate()
        row = {"train_minutes": round(self.train_seconds() / 60, 3), "epoch": epoch,
               "iteration": self.state.iteration, **stats}
        if distributed.is_main_process():
            self.evals.append(row)
        self.eval_seconds += time.perf_counter() - start

    def train_one_epoch(self, epoch: int) -> tuple[dict[str, float], bool]:
        """Train one epoch (from the resumed position); returns its stats and whether it ran to the end."""
        args = self.args
        meters = MetricLogger()
        total = self.data.iters_per_epoch
        start_it = self.state.iter_in_epoch
        batches = self.data.epoch_batches(epoch, start_it)
        self.method.set_train_modes(first_epoch_of_run=epoch == self.first_epoch)
        watch = Stopwatch()
        for it in range(start_it, total):
            lab, unlab = next(batches)
            self.bad_images.observe([*(lab.skipped if lab is not None else ()),
                                     *(unlab.skipped if unlab is not None else ())])
            cl = self.args.channels_last
            lab = lab.to(self.device, non_blocking=True, channels_last=cl) if lab is not None else None
            unlab = unlab.to(self.device, non_blocking=True, channels_last=cl) if unlab is not None else None
            if unlab is not None and self.data.device_stage is not None:  # --gpu_aug
                unlab = self.data.device_stage(unlab, self.state.iteration, channels_last=cl)
            data_time = watch.lap()
            out = self.step(lab, unlab, epoch, self.state.iteration, self.last_good_checkpoint)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            compute_time = watch.lap()
            rows = (unlab.batch_size if unlab is not None else 0) + (lab.images.size(0) if lab is not None else 0)
            meters.update(**out.logs)
            meters.update(lr=self.optimizer.param_groups[0]["lr"],
                          wd=self.optimizer.param_groups[0].get("weight_decay", 0.0),
                          data_s=data_time, step_s=compute_time,
                          img_s=rows * self.dist.world_size / max(data_time + compute_time, 1e-9))
            self.state.iteration += 1
            self.state.iter_in_epoch = it + 1
            if it % args.log_freq == 0 or it == total - 1:
                self.logger.info(meters.progress_line(f"Epoch [{epoch}/{args.epochs}]", it, total,
                                                      watch.elapsed() * (it + 1) / max(it + 1 - start_it, 1)))
            if args.checkpoint_every_iters and self.state.iteration % args.checkpoint_every_iters == 0 \
                    and it + 1 < total:
                self.save_checkpoint()
            budget_reached, eval_due = self._clock_events()
            if eval_due:
                self._timed_evaluation(epoch)
            if budget_reached:
                finished = it + 1 == total
                break
        else:
            finished = True
        meters.synchronize()
        if finished:
            self.state.iter_in_epoch = 0
        return meters.global_averages(), finished

    # ------------------------------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Top-1/top-5 and loss of each evaluator on the ``val`` split, sharded across ranks and summed."""
        if self.data.val_loader is None:
            return {}
        evaluators = self.method.evaluators()
        modules = self.method.eval_modules()
        was_training = [m.training for m in modules]
        for m in modules:
            m.eval()
        counts = {name: torch.zeros(4, dtype=torch.float64) for name in evaluators}  # top1, top5, loss, n
        for images, labels in self.data.val_loader:
            images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            if self.args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with validation_precision(self.args, self.device).autocast():
                for name, fn in evaluators.items():
                    logits = fn(images).float()
                    top1, top5 = correct_topk(logits, labels, (1, 5))
                    loss = nn.functional.cross_entropy(logits, labels, reduction="sum").item()
                    counts[name] += torch.tensor([top1, top5, loss, labels.size(0)], dtype=torch.float64)
        for m, flag in zip(modules, was_training):
            m.train(flag)
        stats = {}
        for name, c in counts.items():
            distributed.all_reduce_sum(c)
            n = max(c[3].item(), 1)
            prefix = "val" if name == "main" else f"val_{name}"
            stats.update({f"{prefix}_acc1": 100 * c[0].item() / n, f"{prefix}_acc5": 100 * c[1].item() / n,
                          f"{prefix}_loss": c[2].item() / n})
        self.logger.info("validation: %s", "  ".join(f"{k} {v:.3f}" for k, v in stats.items()))
        return stats

    # ------------------------------------------------------------------------------------- bookkeeping
    def _end_of_epoch(self, epoch: int, train_stats: dict[str, float], val_stats: dict[str, float],
                      finished: bool) -> None:
        if finished:
            self.state.epoch = epoch + 1
        bad = self._merge_bad_images()
        if bad:
            self.logger.warning("%d unreadable image(s) skipped so far (limit --max_bad_images %d)", bad,
                                self.bad_images.limit)
        row = {"epoch": epoch, "iteration": self.state.iteration, "bad_images": bad,
               "elapsed_s": round(time.perf_counter() - self.started, 1),
               **{f"train_{k}": v for k, v in train_stats.items()}, **val_stats}
        if self.stats is not None:
            self.stats.append(row)
        self.wandb.log(row, step=self.state.iteration)
        self.save_checkpoint()
        freq = self.method.snapshot_freq() if hasattr(self.method, "snapshot_freq") else 0
        if distributed.is_main_process() and finished and freq and (epoch % freq == 0 or epoch == self.args.epochs - 1):
            copy_snapshot(self.checkpoint_path, os.path.join(self.args.output_dir, f"checkpoint{epoch:04d}.pth"))
        elapsed = time.perf_counter() - self.started
        self.logger.info("epoch %d done in %s total", epoch, format_seconds(elapsed))

    def save_checkpoint(self) -> None:
        """Every stateful object, atomically, by rank 0 (collective parts gathered on every rank first)."""
        self.step.check_finite(self.last_good_checkpoint)  # never save a diverged model (--nan_check_every)
        method_state = self.method.state_dict()  # may gather across ranks: every rank calls it
        lab_state = self.data.lab_loader.state_dict() if self.data.lab_loader is not None else None
        rng = gather_rng_states()
        self._merge_bad_images()
        if not distributed.is_main_process():
            distributed.barrier()
            return
        state = {  # the checkpoint contract: src/checkpoint.py
            "layout_version": LAYOUT_VERSION,
            "method_name": self.method.name,
            "student": self.method.student.state_dict(),
            **{name: network.state_dict() for name, network in self.method.kept_networks().items()},
            "classes": self.data.class_names,
            "eval_preprocessing": self.data_config.eval_preprocessing(),
            "method": method_state,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.precision.scaler.state_dict() if self.precision.scaler is not None else None,
            "lab_loader": lab_state,
            "rng": rng,
            "epoch": self.state.epoch,
            "iteration": self.state.iteration,
            "iter_in_epoch": self.state.iter_in_epoch,
            "wandb_id": self.state.wandb_id,
            "world_size": self.dist.world_size,
            "args": plain_args(self.args),
            "bad_images": self.bad_images.state_dict(),
        }
        save_checkpoint_atomic(state, self.checkpoint_path)
        self.last_good_checkpoint = self.checkpoint_path
        distributed.barrier()

    def _merge_bad_images(self) -> int:
        """Every rank's unreadable files, merged on every rank (collective); stops past the limit; the count."""
        if distributed.is_dist():
            parts: list[Any] = [None] * distributed.get_world_size()
            torch.distributed.all_gather_object(parts, self.bad_images.state_dict())
            for part in parts:
                self.bad_images.files.update({k: v for k, v in part.items() if k not in self.bad_images.files})
        self.bad_images.check(len(self.bad_images.files))
        return len(self.bad_images.files)


def gather_rng_states() -> dict[str, Any]:
    """Each rank's RNG state keyed by rank (restored when the world size is unchanged)."""
    own = rng_state()
    if not distributed.is_dist():
        return {"0": own}
    states: list[Any] = [None] * distributed.get_world_size()
    torch.distributed.all_gather_object(states, own)
    return {str(r): s for r, s in enumerate(states)}


def clip_per_parameter(module: nn.Module, clip: float) -> None:
    """DINO's ``clip_gradients``: rescale each parameter's gradient to norm <= clip."""
    for p in module.parameters():
        if p.grad is not None:
            factor = clip / (p.grad.detach().norm(2) + 1e-6)
            p.grad.mul_(factor.clamp(max=1.0))


def run_training(args: argparse.Namespace, data_config: Callable[[argparse.Namespace], DataConfig],
                 make_method: Callable[[argparse.Namespace, int, torch.device], Method]) -> dict[str, Any]:
    """Entry used by main_suave/main_daino and the Slurm launcher; cleans up the process group."""
    warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
    try:
        return Trainer(args, data_config, make_method).fit()
    finally:
        distributed.cleanup()
