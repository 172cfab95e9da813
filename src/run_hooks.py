"""The bookkeeping around the training loop, as small objects the loop calls at fixed points (solo-learn's
callbacks, the hooks of dinov2's ``do_train``): the training clock (``--time_budget_min``, ``--eval_every_min``),
``--stop_after_epochs``, the per-epoch stats table and wandb.

The loop (``src.engine.Trainer.fit``) calls, in this order and on every rank:
``should_stop(trainer, epoch)`` before an epoch (True: leave, the same command resumes);
``on_step_end(trainer, epoch)`` after each step (True: the training ends now, in the middle of the epoch);
``on_epoch_end(trainer, row)`` with the epoch's stats row, before its checkpoint;
``on_train_end(trainer, results)`` once, with what ``results.json`` holds.
"""
from __future__ import annotations

import argparse
import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

import torch

from src import distributed
from src.logging_utils import StatsTable, WandbRun, get_logger
from src.run_state import RunState

if TYPE_CHECKING:  # the engine imports this module
    from src.engine import Trainer


class RunHook:
    """Every call point does nothing unless a hook overrides it."""

    def should_stop(self, trainer: Trainer, epoch: int) -> bool:
        return False

    def on_step_end(self, trainer: Trainer, epoch: int) -> bool:
        return False

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        pass

    def on_train_end(self, trainer: Trainer, results: dict[str, Any]) -> None:
        pass


class TrainClock(RunHook):
    """Training wall time of this invocation, validations excluded; the time budget (--time_budget_min) and the
    validations every --eval_every_min minutes of training, appended to ``evals.csv``/``evals.jsonl`` (accuracy
    vs time). Every rank reaches the same decision at the same step (one all-reduce). A timed validation due at
    the step that ends the epoch or the budget is not run twice: the loop's end-of-epoch validation, at that same
    step, gives its row."""

    def __init__(self, budget_min: float, eval_every_min: float, output_dir: str) -> None:
        self.budget_min, self.eval_every_min = budget_min, eval_every_min
        self.evals = StatsTable(output_dir, "evals") if distributed.is_main_process() else None
        self.started = time.perf_counter()
        self.eval_seconds, self.timed_evals = 0.0, 0
        self.deferred: dict[str, Any] | None = None  # a timed row waiting for the end-of-epoch validation

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def train_seconds(self) -> float:
        return self.elapsed() - self.eval_seconds

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside is not training time."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.eval_seconds += time.perf_counter() - start

    def on_step_end(self, trainer: Trainer, epoch: int) -> bool:
        if not self.budget_min and not self.eval_every_min:
            return False
        elapsed = self.train_seconds()
        budget = bool(self.budget_min) and elapsed > self.budget_min * 60
        due = bool(self.eval_every_min) and elapsed >= (self.timed_evals + 1) * self.eval_every_min * 60
        flags = torch.tensor([float(budget), float(due)])
        distributed.all_reduce_sum(flags)  # every rank stops / evaluates at the same step
        if flags[1] > 0:
            self.timed_evals += 1
            row = {"train_minutes": round(self.train_seconds() / 60, 3), "epoch": epoch,
                   "iteration": trainer.state.iteration}
            if flags[0] > 0 or trainer.state.iter_in_epoch == trainer.data.iters_per_epoch:
                self.deferred = row  # the epoch ends at this step and the loop validates it: once, not twice
            else:
                with self.paused():
                    self._append({**row, **trainer.validate()})
        return bool(flags[0] > 0)

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        if self.deferred is not None:
            self._append({**self.deferred, **{k: v for k, v in row.items() if k.startswith("val")}})
            self.deferred = None

    def _append(self, row: dict[str, Any]) -> None:
        if self.evals is not None:
            self.evals.append(row)


class StopAfterEpochs(RunHook):
    """--stop_after_epochs N: leave after N epochs of this invocation (the same command resumes)."""

    def __init__(self, epochs: int, first_epoch: int) -> None:
        self.epochs, self.first_epoch = epochs, first_epoch

    def should_stop(self, trainer: Trainer, epoch: int) -> bool:
        if not self.epochs or epoch - self.first_epoch < self.epochs:
            return False
        get_logger().info("--stop_after_epochs %d: leaving before epoch %d; the same command resumes",
                          self.epochs, epoch)
        return True


class StatsLog(RunHook):
    """One row per epoch in ``stats.csv``/``stats.jsonl`` (main process); on resume the rows of the epochs that
    run again are dropped first."""

    def __init__(self, output_dir: str, resumed_epoch: int | None) -> None:
        self.table = StatsTable(output_dir) if distributed.is_main_process() else None
        if self.table is not None and resumed_epoch is not None:
            self.table.drop_from_epoch(resumed_epoch)

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        if self.table is not None:
            self.table.append(row)


@dataclass(frozen=True)
class WandbConfig:
    """``--wandb``, ``--wandb_project``, ``--wandb_entity``, ``--wandb_mode``."""
    enabled: bool = False
    project: str = "semi-self"
    entity: str | None = None
    mode: str = "online"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> WandbConfig:
        return cls(args.wandb, args.wandb_project, args.wandb_entity, args.wandb_mode)


class WandbLog(RunHook):
    """--wandb: the epoch rows at the global iteration; the run id goes in the checkpoint so a resume continues
    the same wandb run. ``flags``: the run's flags as plain data (the wandb config)."""

    def __init__(self, config: WandbConfig, flags: dict[str, Any], state: RunState, name: str,
                 output_dir: str) -> None:
        self.run = WandbRun(config.enabled, config.project, config.entity, config.mode, state.wandb_id, name, flags,
                            output_dir)
        state.wandb_id = self.run.run_id

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        self.run.log(row, step=trainer.state.iteration)

    def on_train_end(self, trainer: Trainer, results: dict[str, Any]) -> None:
        self.run.finish()
