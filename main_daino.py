"""Daino: semi-supervised DINO (Fini et al., CVPR 2023). The whole run:

    python main_daino.py --data_path DATA --output_dir EXP [flags of daino/scripts/*.sh]

1. flags (daino/args.py: the released parser + a few new ones),
2. the shared engine (src/engine.py) builds data, DDP, optimiser, precision, and resumes from EXP/checkpoint.pth,
3. the Daino method (daino/method.py): EMA teacher targets (centred, sharpened) and the single cross-entropy,
4. every epoch: validation of the teacher (and the student), stats.csv, checkpoint.pth (+ --saveckp_freq snapshots).
"""
from __future__ import annotations

import argparse
import sys

from src.cli import run_main, train_or_evaluate
from daino.args import get_args_parser


def main(args: argparse.Namespace) -> dict:
    from daino.method import DainoMethod, data_config  # after run_main has checked the flags
    return train_or_evaluate(args, "daino", data_config, DainoMethod)


if __name__ == "__main__":
    sys.exit(run_main(get_args_parser, main, "Daino"))
