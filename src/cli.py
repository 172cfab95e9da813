"""Command-line front door shared by the entry points (main_suave.py, main_daino.py, main_fixmatch.py and the
evaluation scripts): parse, check every flag's value (the parser's ``FlagParser.check``, before anything reads
data; the entry points import their method only in ``main``, so a bad flag is refused at once), run (train, or
evaluate with --evaluate), and turn the errors a user can fix (``src.errors.UserError`` and its subclasses:
flags, paths, data, checkpoints) into one clear line and a non-zero exit code. Any other exception (a
ValueError from a shape bug, say) keeps its traceback."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from src.args import FlagParser
from src.errors import RankLost, TrainingDiverged, UserError


def run_main(get_parser: Callable[[], FlagParser], main: Callable[[argparse.Namespace], object],
             prog: str, argv: list[str] | None = None) -> int:
    flags = get_parser()
    args = argparse.ArgumentParser(prog, parents=[flags]).parse_args(argv)
    try:
        flags.check(args)
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


def train_or_evaluate(args: argparse.Namespace, method_name: str) -> dict:
    """An entry point's ``main``: evaluate the checkpoint of ``--evaluate``, or train registered method
    ``method_name`` (``src.registry``) with the shared engine."""
    if args.evaluate:
        from src.evaluate import evaluate_checkpoint
        return evaluate_checkpoint(args, method_name)
    from src import registry
    from src.engine import run_training
    entry = registry.entry(method_name)
    return run_training(args, entry.data_config(), entry.method_class())
