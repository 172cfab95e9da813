"""Suave: semi-supervised SwAV (Fini et al., CVPR 2023). The whole run:

    python main_suave.py --data_path DATA --output_dir EXP [flags of suave/scripts/*.sh]

1. flags (suave/args.py: the released parser + a few new ones),
2. the shared engine (src/engine.py) builds data, DDP, optimiser, precision, and resumes from EXP/checkpoint.pth,
3. the Suave method (suave/method.py) makes the Sinkhorn targets and the single cross-entropy of each step,
4. every epoch: validation, stats.csv, checkpoint.pth (+ snapshots every --checkpoint_freq epochs).
"""
from __future__ import annotations

import argparse
import sys

from src.cli import run_main, train_or_evaluate
from suave.args import get_args_parser


def main(args: argparse.Namespace) -> dict:
    from suave.method import SuaveMethod, data_config  # after run_main has checked the flags
    return train_or_evaluate(args, "suave", data_config, SuaveMethod)


if __name__ == "__main__":
    sys.exit(run_main(get_args_parser, main, "Suave"))
