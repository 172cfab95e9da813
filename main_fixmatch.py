"""FixMatch (Sohn et al., NeurIPS 2020), the yardstick Suave and Daino are compared with. The whole run:

    python main_fixmatch.py --data_path DATA --output_dir EXP [flags of fixmatch/scripts/*.sh]

1. flags (fixmatch/args.py: the shared data/run flags + the paper's hyperparameters),
2. the shared engine (src/engine.py) builds data, optimiser, precision, and resumes from EXP/checkpoint.pth,
3. the FixMatch method (fixmatch/method.py): pseudo-labels from weak views, masked CE of the strong views,
4. every epoch: validation of the EMA model (and the student), stats.csv, checkpoint.pth.
"""
from __future__ import annotations

import argparse
import sys

from fixmatch.args import get_args_parser
from src.cli import run_main, train_or_evaluate


def main(args: argparse.Namespace) -> dict:
    from fixmatch.method import FixMatchMethod, data_config  # after run_main has checked the flags
    return train_or_evaluate(args, "fixmatch", data_config, FixMatchMethod)


if __name__ == "__main__":
    sys.exit(run_main(get_args_parser, main, "FixMatch"))
