"""Start a Suave or Daino run: builds the experiment directory, then trains locally (one process, or torchrun
for several GPUs) or submits to Slurm through submitit (multi-node, requeued on timeout/preemption).

    python job_launcher.py --mode local --num_gpus 8 --method suave \\
        --script_file suave/scripts/train_10perc.sh --data_dir /path/to/imagenet --name repro_suave_10perc
    python job_launcher.py --mode slurm --partition gpu --num_nodes 2 --num_gpus 8 --method daino \\
        --script_file daino/scripts/train_10perc.sh --data_dir /path/to/imagenet --name repro_daino_10perc
    python job_launcher.py ... -- --epochs 5 --batch_size 16     # flags after -- replace or add recipe flags
    python job_launcher.py --resume experiments/2024_01_01_00_00_00-repro_suave_10perc   # continue a run

The experiment directory (``<base_experiment_dir>/<timestamp>-<name>`` unless --experiment_dir) receives a
copy of the recipe, command.sh (the exact command, runnable by hand), args.json, env.json and launches.jsonl;
for Slurm also code/ (the checkout's tracked files at submission: the job and its requeues run from there).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

from launch.launcher import CODE_ROOT, RESUME_ADJUSTABLE, execute, plan
from launch.script_file import StrictParser
from src import registry
from src.errors import UserError


def at_least(low: float, kind: type = int, high: float | None = None) -> Callable[[str], Any]:
    """An argparse type: a ``kind`` number from ``low`` (to ``high``)."""
    def number(text: str) -> Any:
        value = kind(text)
        if not low <= value <= (high or value):
            raise argparse.ArgumentTypeError(f"must be at least {low:g}{f' and at most {high}' * bool(high)}, "
                                             f"not {text}")
        return value
    number.__name__ = kind.__name__  # argparse's "invalid int value"
    return number


def build_parser(suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """The launcher's flags (the release's, plus resources, --dry_run and --resume); ``suppress_defaults`` leaves
    unset options out of the namespace (to see which ones were given)."""
    parser = StrictParser(prog="job_launcher.py", description=__doc__.split("\n\n")[0], allow_abbrev=False,
                     usage="%(prog)s [options] [-- recipe flags to replace or add]")

    def add(*names: str, default: object = None, **kwargs: object) -> None:
        parser.add_argument(*names, default=argparse.SUPPRESS if suppress_defaults else default, **kwargs)

    add("--method", default=registry.names()[0], choices=registry.names(),
        help="the method or evaluation the recipe runs (src/registry.py) (%(default)s)")
    add("--script_file", type=str, help="recipe (<method>/scripts/train_10perc.sh)")
    add("--data_dir", default="/data/datasets/imagenet", type=str,
        help="dataset root holding train/ and val/ (/data/datasets/imagenet)")
    add("--name", type=str, help="experiment name (the method)")
    add("--base_experiment_dir", default="./experiments", type=str, help="where experiments go (./experiments)")
    add("--experiment_dir", type=str, help="experiment directory, relative to --base_experiment_dir "
                                           "(<timestamp>-<name>)")
    add("--mode", default="local", choices=["local", "slurm"], help="run here or submit to Slurm (local)")
    add("--num_gpus", default=2, type=at_least(0), help="GPUs per node, one process each; 0: one CPU process (2)")
    add("--num_nodes", default=1, type=at_least(1), help="nodes; more than one needs --mode slurm (1)")
    add("--tasks_per_node", type=int, help="Slurm tasks per node with --num_gpus 0: CPU processes (gloo) "
                                           "(1; with GPUs one task per GPU)")
    add("--hours", default=80.0, type=at_least(1 / 60, float),
        help="Slurm time limit in hours, submitted as minutes (80)")
    add("--master_port", type=at_least(1, int, 65535),
        help="rendezvous port (local: a free one; Slurm: 10000 + the job id's last 4 digits)")
    add("--partition", "--host", dest="partition", type=str,
        help="Slurm partition; --host is the release's name (the cluster's default partition)")
    add("--account", type=str, help="Slurm account")
    add("--qos", type=str, help="Slurm quality of service")
    add("--constraint", type=str, help="Slurm node constraint, e.g. volta32gb")
    add("--cpus_per_task", default=10, type=at_least(1), help="Slurm CPUs per task, i.e. per GPU (10)")
    add("--mem_gb", type=at_least(1 / 1024, float), help="Slurm memory per node in GB (40 per GPU)")
    add("--dry_run", default=False, action="store_true", help="write and print everything, start nothing")
    add("--resume", type=str, metavar="EXPERIMENT_DIR",
        help="start an existing experiment again (it resumes from its checkpoint.pth); only resources "
             f"({', '.join('--' + name for name in RESUME_ADJUSTABLE)}) may change")
    return parser


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Launcher flags before the first ``--``, recipe overrides after it."""
    index = argv.index("--") if "--" in argv else len(argv)
    return argv[:index], argv[index + 1:]


def main(argv: list[str] | None = None, entry_root: str | None = None) -> int:
    """Run the launcher; returns the exit code (the training's own for local runs).

    ``entry_root`` (where main_suave.py / main_daino.py live) is the checkout itself; tests point it elsewhere.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    entry_root = os.path.abspath(entry_root or CODE_ROOT)
    own, overrides = split_overrides(argv)
    try:
        options = vars(build_parser().parse_args(own))
        explicit = set(vars(build_parser(suppress_defaults=True).parse_args(own)))  # the options given
        return execute(plan(options, explicit, overrides, entry_root, argv))
    except UserError as exc:
        print(f"job_launcher.py: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
