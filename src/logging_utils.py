"""Progress a person can follow: ``train.log``, per-iteration progress with ETA, a per-epoch stats table, wandb.

The stats table plays the role of the release's ``initialize_exp`` pandas logger, but survives resume: rows of
epochs that are run again are replaced, not duplicated.
"""
from __future__ import annotations

import datetime
import json
import logging
import math
import os
import secrets
import sys
import time
from collections import defaultdict, deque
from typing import Any

import pandas as pd
import torch

from src import distributed
from src.atomic_io import atomic_path
from src.errors import UserError

LOGGER_NAME = "suavedaino"


def setup_logging(output_dir: str, rank: int, log_name: str = "train.log") -> logging.Logger:
    """Log to stdout and ``<output_dir>/<log_name>`` on rank 0; other ranks log warnings only."""
    fmt = logging.Formatter(f"%(asctime)s [rank {rank}] %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if rank == 0:
        os.makedirs(output_dir, exist_ok=True)
        handlers.append(logging.FileHandler(os.path.join(output_dir, log_name)))
    for handler in handlers:
        handler.setFormatter(fmt)
    # The engine's logger and the library modules' (src.checkpoint, src.data, ...) share the same handlers.
    for name in (LOGGER_NAME, "src"):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
            old.close()
        logger.propagate = False
        logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
        for handler in handlers:
            logger.addHandler(handler)
    return logging.getLogger(LOGGER_NAME)


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


class SmoothedValue:
    """Window median/average plus the global average of a series (as DINO's MetricLogger meters)."""

    def __init__(self, window: int = 20) -> None:
        self.window: deque[float] = deque(maxlen=window)
        self.total = 0.0
        self.count = 0

    def update(self, value: float, n: int = 1) -> None:
        self.window.append(value)
        self.total += value * n
        self.count += n

    @property
    def avg(self) -> float:
        return sum(self.window) / max(len(self.window), 1)

    @property
    def global_avg(self) -> float:
        return self.total / max(self.count, 1)

    def synchronize(self) -> None:
        """Make ``global_avg`` the average over every rank."""
        t = torch.tensor([self.total, float(self.count)], dtype=torch.float64)
        distributed.all_reduce_sum(t)
        self.total, self.count = float(t[0]), int(t[1])


class MetricLogger:
    """Meters for one epoch plus the timing the progress line shows (data time vs compute time, ETA)."""

    def __init__(self) -> None:
        self.meters: dict[str, SmoothedValue] = defaultdict(SmoothedValue)

    def update(self, n: int = 1, **values: float) -> None:
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                value = value.item()
            self.meters[name].update(float(value), n)

    def synchronize(self) -> None:
        """Average every meter over the ranks; a meter some rank never updated (e.g. the pseudo-label accuracy
        of a rank that saw no image of known class) joins with zero counts, so every rank reduces the same list."""
        for name in sorted(distributed.union_of_names(sorted(self.meters))):
            self.meters[name].synchronize()

    def global_averages(self) -> dict[str, float]:
        return {name: meter.global_avg for name, meter in self.meters.items()}

    def progress_line(self, header: str, it: int, total: int, elapsed_s: float,
                      skip: tuple[str, ...] = ()) -> str:
        done = max(it + 1, 1)
        eta_s = elapsed_s / done * (total - done)
        parts = [f"{header} [{it + 1}/{total}]", f"eta {format_seconds(eta_s)}"]
        for name, meter in self.meters.items():
            if name in skip:
                continue
            value = meter.avg
            parts.append(f"{name} {value:.4g}" if not math.isnan(value) else f"{name} nan")
        return "  ".join(parts)


def format_seconds(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


class StatsTable:
    """Per-epoch statistics in ``<output_dir>/stats.csv`` (pandas) and ``stats.jsonl``; survives resume."""

    def __init__(self, output_dir: str, name: str = "stats") -> None:
        self.csv_path = os.path.join(output_dir, f"{name}.csv")
        self.jsonl_path = os.path.join(output_dir, f"{name}.jsonl")
        self.frame = pd.read_csv(self.csv_path) if os.path.isfile(self.csv_path) else pd.DataFrame()

    def drop_from_epoch(self, epoch: int) -> None:
        """Forget rows of epochs >= ``epoch`` (a resumed run writes them again)."""
        if not self.frame.empty and "epoch" in self.frame:
            self.frame = self.frame[self.frame["epoch"] < epoch].reset_index(drop=True)

    def append(self, row: dict[str, Any]) -> None:
        self.frame = pd.concat([self.frame, pd.DataFrame([row])], ignore_index=True)
        with atomic_path(self.csv_path) as tmp:
            self.frame.to_csv(tmp, index=False)
        with open(self.jsonl_path, "a") as handle:
            handle.write(json.dumps(row) + "\n")


class WandbRun:
    """Optional Weights & Biases run (rank 0 only); the run id is kept in the checkpoint for resume."""

    def __init__(self, enabled: bool, project: str, entity: str | None, mode: str, run_id: str | None,
                 name: str, config: dict[str, Any], output_dir: str) -> None:
        self.run = None
        self.run_id = run_id
        if not enabled or not distributed.is_main_process():
            return
        try:
            import wandb
        except ImportError as exc:  # pragma: no cover - wandb is in requirements.txt
            raise UserError("--wandb true needs the wandb package: pip install wandb") from exc
        self.run_id = run_id or secrets.token_hex(4)
        try:
            self.run = wandb.init(project=project, entity=entity, mode=mode, id=self.run_id, resume="allow",
                                  name=name, config=config, dir=output_dir)
        except wandb.errors.Error as exc:  # no API key, no network, a wrong entity: the user's to fix
            raise UserError(f"--wandb true: wandb could not start ({exc}); run `wandb login` first, or add "
                            f"--wandb_mode offline (sync later with `wandb sync`), or --wandb false") from exc

    def log(self, values: dict[str, Any], step: int | None = None) -> None:
        if self.run is not None:
            self.run.log(values, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()


class Stopwatch:
    """Wall-clock helper for data vs compute time."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.last = self.start

    def lap(self) -> float:
        now = time.perf_counter()
        delta, self.last = now - self.last, now
        return delta

    def elapsed(self) -> float:
        return time.perf_counter() - self.start
