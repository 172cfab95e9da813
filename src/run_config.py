"""What every run reads of its flags, typed (the shared ``run`` flags of ``src/args.py`` and of the evaluation
scripts' ``src/downstream/args.py``), and the start of every run: process group, output directory, log file and
seed, as the releases' ``init_distributed_mode`` + ``fix_random_seeds``."""
from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass

from src import distributed
from src.logging_utils import setup_logging
from src.run_state import seed_everything


@dataclass(frozen=True)
class RunConfig:
    output_dir: str
    epochs: int
    seed: int
    device: str                 # --device: auto, cpu or cuda
    local_rank: int | None
    use_fp16: bool
    use_bf16: bool | str        # True, False or "auto" (src.train_step.Precision)
    log_freq: int
    stop_after_epochs: int      # 0: run every epoch
    dist_timeout: float         # seconds a collective waits for a rank that stopped answering

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunConfig:
        return cls(output_dir=args.output_dir, epochs=args.epochs, seed=args.seed, device=args.device,
                   local_rank=args.local_rank, use_fp16=args.use_fp16, use_bf16=args.use_bf16,
                   log_freq=args.log_freq, stop_after_epochs=args.stop_after_epochs,
                   dist_timeout=args.dist_timeout)


def start_run(config: RunConfig, args: argparse.Namespace,
              seed_offset_per_rank: bool = False) -> tuple[distributed.DistInfo, logging.Logger]:
    """Initialise the process group, create the output directory and its log, seed every generator (``--seed``
    on every rank as the releases; ``--seed + rank`` with ``seed_offset_per_rank``). Records the rank and world
    size in ``args`` (the flags the checkpoint stores)."""
    dist = distributed.init_distributed(config.local_rank, config.device, config.dist_timeout)
    args.rank, args.world_size = dist.rank, dist.world_size
    os.makedirs(config.output_dir, exist_ok=True)
    logger = setup_logging(config.output_dir, dist.rank)
    seed_everything(config.seed + dist.rank if seed_offset_per_rank else config.seed)
    return dist, logger
