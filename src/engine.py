"""The one epoch loop (``EpochLoop``) of every run, and its pre-training run (``Trainer``) for Suave, Daino and
FixMatch: set-up (distributed, data, method, DDP), validation and checkpoint/resume. A method plugs in through
``src.method.Method``; one step is ``src.train_step.TrainStep``; the bookkeeping around the loop (time budget,
timed evaluations, --stop_after_epochs, stats table, wandb) are the hooks of ``src.run_hooks``. The evaluation
scripts run their task on the same loop (``src.downstream.runner.EvalRunner``). Follows the released
``train``/``train_one_epoch`` (SwAV/DINO lineage): validation and one checkpoint per epoch, restored automatically.
"""
from __future__ import annotations

import argparse
import json
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from src import distributed, perf
from src.atomic_io import write_json_atomic
from src.checkpoint import RunCheckpoint, copy_snapshot, resuming_into
from src.data.bad_images import BadImageTracker
from src.data_setup import DataBundle, DataConfig, build_data
from src.logging_utils import MetricLogger, Stopwatch, format_seconds, get_logger
from src.method import Method, Schedules
from src.release_fixes import active_fixes, fix_on
from src.run_config import RunConfig, start_run
from src.run_hooks import RunHook, StatsLog, StopAfterEpochs, TrainClock, WandbConfig, WandbLog
from src.run_state import RunState, gather_rng_states, plain_args, set_rng_state
from src.train_step import Precision, TrainStep, validation_precision
from src.validation import validate

CHECKPOINT_NAME = "checkpoint.pth"


@dataclass(frozen=True)
class EngineConfig:
    """What the engine reads of the shared flags (``src/args.py``), typed; built once from the namespace."""

    run: RunConfig
    perf: perf.PerfConfig
    wandb: WandbConfig
    channels_last: bool
    checkpoint_every_iters: int   # 0: a checkpoint at the end of each epoch only
    time_budget_min: float        # 0: no budget
    eval_every_min: float         # 0: no timed evaluations
    max_bad_images: int
    seed_per_rank: bool           # the seed_per_rank fix (src.release_fixes)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EngineConfig:
        return cls(run=RunConfig.from_args(args), perf=perf.PerfConfig.from_args(args),
                   wandb=WandbConfig.from_args(args), channels_last=args.channels_last,
                   checkpoint_every_iters=args.checkpoint_every_iters, time_budget_min=args.time_budget_min,
                   eval_every_min=args.eval_every_min, max_bad_images=args.max_bad_images,
                   seed_per_rank=fix_on(args, "seed_per_rank"))


class EpochLoop:
    """The one epoch loop of every run, pre-training and the evaluation scripts alike (the releases' ``train``):
    per epoch, the hooks' stop check, ``train_one_epoch``, ``validate`` (not counted as training time),
    ``end_of_epoch`` (stats row, hooks, checkpoint); at the end ``results.json``. A run that already holds all its
    epochs returns its results at once. Subclasses say what one epoch trains and what a run writes and logs."""

    run: RunConfig
    state: RunState
    hooks: list[RunHook]
    clock: TrainClock
    logger: Any
    checkpoint_path: str
    last_good_checkpoint: str  # for the message of a diverged run

    def fit(self) -> dict[str, Any]:
        run = self.run
        results_path = os.path.join(run.output_dir, "results.json")
        if self.state.epoch >= run.epochs and os.path.isfile(results_path):
            self.logger.info("%s already holds all %d epochs: nothing to do (raise --epochs to train longer)",
                             run.output_dir, run.epochs)
            with open(results_path) as handle:
                results = json.load(handle)
            self._call_hooks("on_train_end", results)
            return results
        self.log_start()
        val_stats: dict[str, float] = {}
        stopped_early = False  # by a hook before an epoch, or by the time budget within one
        for epoch in range(self.state.epoch, run.epochs):
            if any(hook.should_stop(self, epoch) for hook in self.hooks):
                stopped_early = True
                break
            self.state.epoch = epoch
            train_stats, finished = self.train_one_epoch(epoch)
            with self.clock.paused():  # not training time (--time_budget_min)
                val_stats = self.validate()
            self.end_of_epoch(epoch, train_stats, val_stats, finished)
            if not finished:
                stopped_early = True
                break
        results = self.results(val_stats, stopped_early)
        if distributed.is_main_process():
            write_json_atomic(results_path, results)
            self.log_end(results)
        self._call_hooks("on_train_end", results)
        return results

    def _call_hooks(self, point: str, *args: Any) -> None:
        for hook in self.hooks:
            getattr(hook, point)(self, *args)

    def save_checkpoint(self) -> None:
        """``checkpoint()`` with every rank's RNG state, written atomically by rank 0 to ``checkpoint.pth``."""
        checkpoint = self.checkpoint()
        checkpoint.rng = gather_rng_states()  # collective: every rank
        if distributed.is_main_process():
            checkpoint.save(self.checkpoint_path)
            self.last_good_checkpoint = self.checkpoint_path
        distributed.barrier()

    # what a subclass provides
    def checkpoint(self) -> RunCheckpoint:
        """What the run's checkpoint holds now, RNG states aside (called on every rank)."""
        raise NotImplementedError

    def log_start(self) -> None:
        raise NotImplementedError

    def train_one_epoch(self, epoch: int) -> tuple[dict[str, float], bool]:
        """Train one epoch (from the resumed position); its stats and whether it ran to the end."""
        raise NotImplementedError

    def validate(self) -> dict[str, float]:
        raise NotImplementedError

    def end_of_epoch(self, epoch: int, train_stats: dict[str, float], val_stats: dict[str, float],
                     finished: bool) -> None:
        raise NotImplementedError

    def results(self, val_stats: dict[str, float], stopped_early: bool) -> dict[str, Any]:
        raise NotImplementedError

    def log_end(self, results: dict[str, Any]) -> None:
        raise NotImplementedError


class Trainer(EpochLoop):
    """Runs one method: ``Trainer(args, data_config, make_method).fit()``."""

    def __init__(self, args: argparse.Namespace, data_config: Callable[[argparse.Namespace], DataConfig],
                 make_method: Callable[[argparse.Namespace, int, torch.device], Method]) -> None:
        self.args = args  # the method's flags: handed to data_config and make_method, stored in the checkpoint
        self.config = config = EngineConfig.from_args(args)
        self.run = config.run
        # The release seeds every rank alike (--seed_per_rank: rank r seeds --seed + r).
        self.dist, self.logger = start_run(config.run, args, seed_offset_per_rank=config.seed_per_rank)
        self.device = self.dist.device
        perf.configure_backends(config.perf, self.device)
        self.logger.info("device %s, %d process(es), backend %s", self.device, self.dist.world_size,
                         self.dist.backend or "none (single process)")
        self.data_config = data_config(args)
        self.data: DataBundle = build_data(self.data_config, self.dist)
        self.method = make_method(args, self.data.num_classes, self.device)
        memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        for module in self.method.networks():
            module.to(self.device, memory_format=memory_format)
        self.student_ddp = self._wrap_student(self.method.student)
        self.method.forward_student = perf.maybe_compile(self.student_ddp, config.perf)
        self.method.restart_ema_from_student()  # after DDP's broadcast, as the releases
        fixes = active_fixes(args)
        self.logger.info("arithmetic: %s", "release-exact" if not fixes else "fixes on: " + ", ".join(fixes))
        self.optimizer = perf.maybe_fuse(self.method.build_optimizer(), config.perf, self.device)
        self.schedules: Schedules = self.method.build_schedules(self.data.iters_per_epoch)
        self.precision = Precision(config.run.use_fp16, config.run.use_bf16, self.device)
        self.val_precision = validation_precision(args, self.device)
        self.step = TrainStep(self.method, self.optimizer, self.schedules, self.precision, self.method.clip_grad,
                              config.perf.nan_check_every)
        self.state = RunState()
        self.checkpoint_path = os.path.join(config.run.output_dir, CHECKPOINT_NAME)
        self.last_good_checkpoint = self.checkpoint_path if os.path.isfile(self.checkpoint_path) else "none yet"
        self.bad_images = BadImageTracker(config.max_bad_images)
        resumed = self._resume()
        self.first_epoch = self.state.epoch  # the release's debug validation: modes of this run's first epoch
        out = config.run.output_dir
        wandb = WandbLog(config.wandb, plain_args(args), self.state, os.path.basename(os.path.abspath(out)), out)
        self.clock = TrainClock(config.time_budget_min, config.eval_every_min, out)  # after wandb's start
        self.hooks: list[RunHook] = [self.clock, StopAfterEpochs(config.run.stop_after_epochs, self.first_epoch),
                                     StatsLog(out, self.state.epoch if resumed else None), wandb]

    # ------------------------------------------------------------------------------------------ set-up
    def _wrap_student(self, student: nn.Module) -> nn.Module:
        """DDP around the student (SyncBN in every network on GPUs, as the releases, unless the method says not)."""
        others = tuple(m for m in self.method.networks() if m is not student)
        self.method.student, wrapped = distributed.wrap_ddp(student, self.dist, self.method.sync_bn, others)
        return wrapped

    def _resume(self) -> bool:
        """Restore every stateful object from ``<output_dir>/checkpoint.pth`` if it exists; whether it did."""
        if not os.path.isfile(self.checkpoint_path):
            self.logger.info("no checkpoint in %s: starting from scratch", self.config.run.output_dir)
            return False
        ckpt = RunCheckpoint.load(self.checkpoint_path)
        with resuming_into(self.checkpoint_path, ckpt, self.method.name, plain_args(self.args)):
            self.method.student.load_state_dict(ckpt.student)
            for name, network in self.method.kept_networks().items():
                if name in ckpt.networks:
                    network.load_state_dict(ckpt.networks[name])
            self.method.load_state_dict(ckpt.state.get("method") or {})
            self.optimizer.load_state_dict(ckpt.optimizer)
        if self.precision.scaler is not None and ckpt.scaler:
            self.precision.scaler.load_state_dict(ckpt.scaler)
        if self.data.lab_loader is not None and ckpt.state.get("lab_loader"):
            self.data.lab_loader.load_state_dict(ckpt.state["lab_loader"])
        self.bad_images.load_state_dict(ckpt.state.get("bad_images"))
        if str(self.dist.rank) in ckpt.rng:  # restored when the world size is unchanged
            set_rng_state(ckpt.rng[str(self.dist.rank)])
        self.state = RunState(epoch=ckpt.epoch, iteration=ckpt.iteration, iter_in_epoch=ckpt.iter_in_epoch,
                              wandb_id=ckpt.wandb_id)
        self.logger.info("resumed from %s: epoch %d, iteration %d", self.checkpoint_path, self.state.epoch,
                         self.state.iteration)
        return True

    # ------------------------------------------------------------------------------------------- loop
    def log_start(self) -> None:
        self.logger.info("training %s for %d epochs of %d iterations (%s)", self.method.name, self.run.epochs,
                         self.data.iters_per_epoch, self.precision.describe())

    def results(self, val_stats: dict[str, float], stopped_early: bool) -> dict[str, Any]:
        return {"method": self.method.name, "epochs_completed": self.state.epoch,
                "iterations": self.state.iteration, "stopped_early": stopped_early,
                "wall_time_s": self.clock.elapsed(), "train_minutes": self.clock.train_seconds() / 60, **val_stats}

    def log_end(self, results: dict[str, Any]) -> None:
        out = self.config.run.output_dir
        self.logger.info("done: %s", json.dumps(results))
        self.logger.info("checkpoint: %s | log: %s | stats: %s", self.checkpoint_path,
                         os.path.join(out, "train.log"), os.path.join(out, "stats.csv"))

    def train_one_epoch(self, epoch: int) -> tuple[dict[str, float], bool]:
        args, meters, total, start_it = self.run, MetricLogger(), self.data.iters_per_epoch, self.state.iter_in_epoch
        batches = self.data.epoch_batches(epoch, start_it)
        self.method.set_train_modes(first_epoch_of_run=epoch == self.first_epoch)
        watch = Stopwatch()
        for it in range(start_it, total):
            lab, unlab = next(batches)
            self.bad_images.observe([*(lab.skipped if lab is not None else ()),
                                     *(unlab.skipped if unlab is not None else ())])
            cl = self.config.channels_last
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
            every = self.config.checkpoint_every_iters
            if every and self.state.iteration % every == 0 \
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
    def validate(self) -> dict[str, float]:
        """Top-1/top-5 and loss of each head of ``Method.eval_scores`` on the ``val`` split (``src.validation``)."""
        if self.data.val_loader is None:
            return {}
        return validate(self.method.eval_scores, self.method.eval_modules(), self.data.val_loader, self.device,
                        self.val_precision, self.config.channels_last)

    # ------------------------------------------------------------------------------------- bookkeeping
    def end_of_epoch(self, epoch: int, train_stats: dict[str, float], val_stats: dict[str, float],
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
        run = self.config.run
        if distributed.is_main_process() and finished and freq and (epoch % freq == 0 or epoch == run.epochs - 1):
            copy_snapshot(self.checkpoint_path, os.path.join(run.output_dir, f"checkpoint{epoch:04d}.pth"))
        self.logger.info("epoch %d done in %s total", epoch, format_seconds(self.clock.elapsed()))
        if not finished:
            self.logger.info("time budget of %.1f min reached: stopped in epoch %d", self.config.time_budget_min,
                             epoch)

    def checkpoint(self) -> RunCheckpoint:
        """What the run's checkpoint holds now (collective: every rank calls it)."""
        self.step.check_finite(self.last_good_checkpoint)  # never save a diverged model (--nan_check_every)
        method_state = self.method.state_dict()  # may gather across ranks: every rank calls it
        lab_state = self.data.lab_loader.state_dict() if self.data.lab_loader is not None else None
        self.bad_images.merge_ranks()
        return RunCheckpoint(
            method_name=self.method.name, student=self.method.student.state_dict(),
            networks={name: network.state_dict() for name, network in self.method.kept_networks().items()},
            args=plain_args(self.args), classes=self.data.class_names,
            eval_preprocessing=self.data_config.eval_preprocessing(), optimizer=self.optimizer.state_dict(),
            scaler=self.precision.scaler.state_dict() if self.precision.scaler is not None else None,
            epoch=self.state.epoch, iteration=self.state.iteration, iter_in_epoch=self.state.iter_in_epoch,
            wandb_id=self.state.wandb_id, world_size=self.dist.world_size,
            state={"method": method_state, "lab_loader": lab_state, "bad_images": self.bad_images.state_dict()})


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
