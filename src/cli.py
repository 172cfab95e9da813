"""Command-line front door shared by main_suave.py, main_daino.py and main_fixmatch.py: parse, run (train, or
evaluate with --evaluate), and turn the errors a user can fix (``src.errors.UserError`` and its subclasses:
flags, paths, data, checkpoints) into one clear line and a non-zero exit code. Any other exception (a
ValueError from a shape bug, say) keeps its traceback."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from src.errors import RankLost, TrainingDiverged, UserError


def run_main(get_parser: Callable[[], argparse.ArgumentParser], main: Callable[[argparse.Namespace], object],
             prog: str, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog, parents=[get_parser()])
    args = parser.parse_args(argv)
    try:
        main(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (TrainingDiverged, RankLost) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint.pth in --output_dir is intact; re-run the same command to resume",
              file=sys.stderr)
        return 130
    return 0


def train_or_evaluate(args: argparse.Namespace, method_name: str, data_config: Callable,
                      method_class: Callable) -> dict:
    """An entry point's ``main``: evaluate the checkpoint of ``--evaluate``, or train with the shared engine."""
    if args.evaluate:
        from src.evaluate import evaluate_checkpoint
        return evaluate_checkpoint(args, method_name)
    from src.engine import run_training
    return run_training(args, data_config, method_class)
