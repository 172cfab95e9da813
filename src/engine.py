"""The one training loop of Suave, Daino and FixMatch: set-up (distributed, data, method, DDP), the epoch loop,
validation and checkpoint/resume. A method plugs in through ``src.method.Method``; one step is
``src.train_step.TrainStep``; the bookkeeping around the loop (time budget, timed evaluations,
--stop_after_epochs, stats table, wandb) are the hooks of ``src.run_hooks``. Follows the released
``train``/``train_one_epoch`` (SwAV/DINO lineage): validation and one checkpoint per epoch, restored automatically.
"""
from __future__ import annotations

import argparse
import json
import os
import warnings
from typing import Any, Callable

import torch
from torch import nn

from src import distributed, perf
from src.atomic_io import write_json_atomic
from src.checkpoint import (LAYOUT_VERSION, checkpoint_networks, copy_snapshot, read_checkpoint, resuming_into,
                            save_checkpoint_atomic)
from src.data.bad_images import BadImageTracker
from src.data_setup import DataBundle, DataConfig, build_data
from src.logging_utils import MetricLogger, Stopwatch, format_seconds, get_logger, setup_logging
from src.method import Method, Schedules
from src.metrics import correct_topk
from src.release_fixes import active_fixes, fix_on
from src.run_hooks import RunHook, StatsLog, StopAfterEpochs, TrainClock, WandbLog
from src.run_state import RunState, gather_rng_states, plain_args, seed_everything, set_rng_state
from src.train_step import Precision, TrainStep, validation_precision

CHECKPOINT_NAME = "checkpoint.pth"

class Trainer:
    """Runs one method: ``Trainer(args, data_config, make_method).fit()``."""

    def __init__(self, args: argparse.Namespace, data_config: Callable[[argparse.Namespace], DataConfig],
                 make_method: Callable[[argparse.Namespace, int, torch.device], Method]) -> None:
        self.args = args
        self.dist = distributed.init_distributed(args.local_rank, args.device, args.dist_timeout)
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
        fixes = active_fixes(args)
        self.logger.info("arithmetic: %s", "release-exact" if not fixes else "fixes on: " + ", ".join(fixes))
        self.optimizer = perf.maybe_fuse(self.method.build_optimizer(), args, self.device)
        self.schedules: Schedules = self.method.build_schedules(self.data.iters_per_epoch)
        self.precision = Precision(args.use_fp16, args.use_bf16, self.device)
        self.step = TrainStep(self.method, self.optimizer, self.schedules, self.precision,
                              getattr(args, "clip_grad", 0.0), getattr(args, "nan_check_every", 1))
        self.state = RunState()
        self.checkpoint_path = os.path.join(args.output_dir, CHECKPOINT_NAME)
        self.last_good_checkpoint = self.checkpoint_path if os.path.isfile(self.checkpoint_path) else "none yet"
        self.bad_images = BadImageTracker(getattr(args, "max_bad_images", 100))
        resumed = self._resume()
        self.first_epoch = self.state.epoch  # the release's debug validation: modes of this run's first epoch
        wandb = WandbLog(args, self.state, os.path.basename(os.path.abspath(args.output_dir)))
        self.clock = TrainClock(args.time_budget_min, args.eval_every_min, args.output_dir)  # after wandb's start
        self.hooks: list[RunHook] = [self.clock, StopAfterEpochs(args.stop_after_epochs, self.first_epoch),
                                     StatsLog(args.output_dir, self.state.epoch if resumed else None), wandb]

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

    def _resume(self) -> bool:
        """Restore every stateful object from ``<output_dir>/checkpoint.pth`` if it exists; whether it did."""
        if not os.path.isfile(self.checkpoint_path):
            self.logger.info("no checkpoint in %s: starting from scratch", self.args.output_dir)
            return False
        ckpt = read_checkpoint(self.checkpoint_path)
        with resuming_into(self.checkpoint_path, ckpt, self.method.name, plain_args(self.args)):
            self.method.student.load_state_dict(ckpt["student"])
            networks = checkpoint_networks(ckpt)  # the contract's names, or version 1's places
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
        if str(self.dist.rank) in ckpt.get("rng", {}):  # restored when the world size is unchanged
            set_rng_state(ckpt["rng"][str(self.dist.rank)])
        self.state = RunState(epoch=ckpt["epoch"], iteration=ckpt["iteration"],
                              iter_in_epoch=ckpt.get("iter_in_epoch", 0), wandb_id=ckpt.get("wandb_id"))
        self.logger.info("resumed from %s: epoch %d, iteration %d", self.checkpoint_path, self.state.epoch,
                         self.state.iteration)
        return True

    # ------------------------------------------------------------------------------------------- loop
    def fit(self) -> dict[str, Any]:
        args = self.args
        results_path = os.path.join(args.output_dir, "results.json")
        if self.state.epoch >= args.epochs and os.path.isfile(results_path):
            self.logger.info("%s already holds all %d epochs: nothing to do (raise --epochs to train longer)",
                             args.output_dir, args.epochs)
            with open(results_path) as handle:
                results = json.load(handle)
            self._call_hooks("on_train_end", results)
            return results
        self.logger.info("training %s for %d epochs of %d iterations (%s)", self.method.name, args.epochs,
                         self.data.iters_per_epoch, self.precision.describe())
        val_stats: dict[str, float] = {}
        stopped_early = False  # by a hook before an epoch, or by the time budget within one
        for epoch in range(self.state.epoch, args.epochs):
            if any(hook.should_stop(self, epoch) for hook in self.hooks):
                stopped_early = True
                break
            self.state.epoch = epoch
            train_stats, finished = self.train_one_epoch(epoch)
            with self.clock.paused():  # not training time (--time_budget_min)
                val_stats = self.validate()
            self._end_of_epoch(epoch, train_stats, val_stats, finished)
            if not finished:
                stopped_early = True
                self.logger.info("time budget of %.1f min reached: stopped in epoch %d", args.time_budget_min, epoch)
                break
        results = {"method": self.method.name, "epochs_completed": self.state.epoch,
                   "iterations": self.state.iteration, "stopped_early": stopped_early,
                   "wall_time_s": self.clock.elapsed(), "train_minutes": self.clock.train_seconds() / 60, **val_stats}
        if distributed.is_main_process():
            write_json_atomic(results_path, results)
            self.logger.info("done: %s", json.dumps(results))
            self.logger.info("checkpoint: %s | log: %s | stats: %s", self.checkpoint_path,
                             os.path.join(args.output_dir, "train.log"), os.path.join(args.output_dir, "stats.csv"))
        self._call_hooks("on_train_end", results)
        return results

    def _call_hooks(self, point: str, *args: Any) -> None:
        for hook in self.hooks:
            getattr(hook, point)(self, *args)

    def train_one_epoch(self, epoch: int) -> tuple[dict[str, float], bool]:
        """Train one epoch (from the resumed position); returns its stats and whether it ran to the end."""
        args, meters, total, start_it = self.args, MetricLogger(), self.data.iters_per_epoch, self.state.iter_in_epoch
        batches = self.data.epoch_batches(epoch, start_it)
        self.method.set_train_modes(first_epoch_of_run=epoch == self.first_epoch)
        watch = Stopwatch()
        for it in range(start_it, total):
            lab, unlab = next(batches)
            self.bad_images.observe([*(lab.skipped if lab is not None else ()),
                                     *(unlab.skipped if unlab is not None else ())])
            cl = args.channels_last
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
            if it > start_it:  # the epoch's first step pays for start-up (loader, allocator): not a steady step
                meters.update(steady_iter_s=data_time + compute_time)
            self.state.iteration += 1
            self.state.iter_in_epoch = it + 1
            if it % args.log_freq == 0 or it == total - 1:
                self.logger.info(meters.progress_line(f"Epoch [{epoch}/{args.epochs}]", it, total,
                                                      watch.elapsed() * (it + 1) / max(it + 1 - start_it, 1),
                                                      skip=("steady_iter_s",)))
            if args.checkpoint_every_iters and self.state.iteration % args.checkpoint_every_iters == 0 \
                    and it + 1 < total:
                self.save_checkpoint()
            if any([hook.on_step_end(self, epoch) for hook in self.hooks]):  # every hook runs (collectives)
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
        """Top-1/top-5 and loss of each head of ``Method.eval_scores`` on the ``val`` split, sharded across ranks
        and summed."""
        if self.data.val_loader is None:
            return {}
        modules = self.method.eval_modules()
        was_training = [m.training for m in modules]
        for m in modules:
            m.eval()
        counts: dict[str, torch.Tensor] = {}  # head -> (top1, top5, loss sum, images)
        for images, labels in self.data.val_loader:
            images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            if self.args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with validation_precision(self.args, self.device).autocast():
                for name, scores in self.method.eval_scores(images).items():
                    logits = scores.float()
                    top1, top5 = correct_topk(logits, labels, (1, 5))
                    loss = nn.functional.cross_entropy(logits, labels, reduction="sum").item()
                    counts.setdefault(name, torch.zeros(4, dtype=torch.float64))
                    counts[name] += torch.tensor([top1, top5, loss, labels.size(0)], dtype=torch.float64)
        for m, flag in zip(modules, was_training):
            m.train(flag)
        stats = {}
        for name in distributed.union_of_names(list(counts)):  # a rank may hold no validation image
            c = counts.get(name, torch.zeros(4, dtype=torch.float64))
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
        bad = self.bad_images.merge_ranks()
        if bad:
            self.logger.warning("%d unreadable image(s) skipped so far (limit --max_bad_images %d)", bad,
                                self.bad_images.limit)
        row = {"epoch": epoch, "iteration": self.state.iteration, "bad_images": bad,
               "elapsed_s": round(self.clock.elapsed(), 1),
               **{f"train_{k}": v for k, v in train_stats.items()}, **val_stats}
        self._call_hooks("on_epoch_end", row)
        self.save_checkpoint()
        freq = self.method.snapshot_freq()
        if distributed.is_main_process() and finished and freq and (epoch % freq == 0 or epoch == self.args.epochs - 1):
            copy_snapshot(self.checkpoint_path, os.path.join(self.args.output_dir, f"checkpoint{epoch:04d}.pth"))
        self.logger.info("epoch %d done in %s total", epoch, format_seconds(self.clock.elapsed()))

    def save_checkpoint(self) -> None:
        """Every stateful object, atomically, by rank 0 (collective parts gathered on every rank first)."""
        self.step.check_finite(self.last_good_checkpoint)  # never save a diverged model (--nan_check_every)
        method_state = self.method.state_dict()  # may gather across ranks: every rank calls it
        lab_state = self.data.lab_loader.state_dict() if self.data.lab_loader is not None else None
        rng = gather_rng_states()
        self.bad_images.merge_ranks()
        if not distributed.is_main_process():
            distributed.barrier()
            return
        state = {  # the checkpoint contract: src/checkpoint.py
            "layout_version": LAYOUT_VERSION, "method_name": self.method.name,
            "student": self.method.student.state_dict(),
            **{name: network.state_dict() for name, network in self.method.kept_networks().items()},
            "classes": self.data.class_names, "eval_preprocessing": self.data_config.eval_preprocessing(),
            "method": method_state, "optimizer": self.optimizer.state_dict(),
            "scaler": self.precision.scaler.state_dict() if self.precision.scaler is not None else None,
            "lab_loader": lab_state, "rng": rng, "epoch": self.state.epoch, "iteration": self.state.iteration,
            "iter_in_epoch": self.state.iter_in_epoch, "wandb_id": self.state.wandb_id,
            "world_size": self.dist.world_size, "args": plain_args(self.args),
            "bad_images": self.bad_images.state_dict()}
        save_checkpoint_atomic(state, self.checkpoint_path)
        self.last_good_checkpoint = self.checkpoint_path
        distributed.barrier()


def run_training(args: argparse.Namespace, data_config: Callable[[argparse.Namespace], DataConfig],
                 make_method: Callable[[argparse.Namespace, int, torch.device], Method]) -> dict[str, Any]:
    """Entry used by main_suave/main_daino and the Slurm launcher; cleans up the process group."""
    warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
    try:
        return Trainer(args, data_config, make_method).fit()
    except RuntimeError as exc:  # a rank lost mid-run: say which, on which node, and how to continue
        lost = distributed.lost_rank_error(exc, args.output_dir)
        if lost is None:
            raise
        get_logger().error("%s", lost)
        raise lost from exc
    finally:
        distributed.cleanup()
