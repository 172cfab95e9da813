"""Fashion-MNIST benchmark on the CPU: the strongest supervised recipe, supervised with Suave's hyperparameters,
FixMatch, Suave and Daino at the same budget (SwAV-then-Suave on request).

    python benchmarks/fmnist_benchmark.py                        # the 5 rows x 30 min of training, 1% labels
    python benchmarks/fmnist_benchmark.py --split_seed 1         # the same on a second 1% list (make_subset, seed 1)
    python benchmarks/fmnist_benchmark.py --budget_min 1 --out /tmp/fmnist_smoke   # a quick check that it works

The baseline row is the strongest supervised recipe (``fmnist_supervised_strong_1perc.sh``); every
semi-supervised row gets its gain over it (``gain_vs_strongest_supervised``, test top-1 at the end, points). The
run keys stay those of earlier tables (``supervised`` is the same-hyperparameter baseline), so ``--reuse`` reads
old runs; the ``method`` column names each row for what it is. ``--split_seed S`` draws a class-balanced list
of the same size with ``src.data.make_subset`` and seed S into ``OUT/subsets/`` and trains every row on it
(``--subset_file``); the ``labelled_list`` column says which list a row used.

Each run is a recipe of ``suave/scripts`` / ``daino/scripts`` (the same files a user launches), run in turn with
the same budget of training wall time (``--time_budget_min``; the periodic evaluations are not counted) and a
test-set evaluation every ``--eval_every_min`` minutes (``evals.jsonl`` of the run). Before each run a short
calibration (``--calibration_iters`` steps) measures the step time on this machine, so that the learning-rate
schedule (cosine over ``--epochs`` x ``--max_iters_per_epoch`` steps) ends when the budget does: the recipe's
``--epochs`` is kept (it fixes the shape of the schedule: warm-up share, queue start) and the iterations per
epoch are sized to the budget. The two-stage run spends ``--pretrain_fraction`` of the budget on plain SwAV
(``--train_mode selfsup``) and the rest on Suave started from that checkpoint (``--init_proj true``).

Writes to ``--out``: ``results.csv`` and ``results.md`` (method, labels, test top-1 at 10/20/30 minutes and at
the end, epochs, iterations, images/s, wall time, seed), ``accuracy_vs_time.png`` and one folder per run
(checkpoint, train.log, stats.csv/.jsonl, evals.csv/.jsonl, results.json). Every number comes from a run's
structured output (``results.json``; ``stats.jsonl``: step time and images/s; ``evals.jsonl``: the accuracy
curve), none from ``train.log``. With ``--reuse`` a run whose folder already holds a finished run of the same
recipe and flags (``results.json``; only the budget-sized schedule may differ) is read back instead of run again,
so an interrupted benchmark resumes and a table can gather runs made at different times; the rows of the folder's
earlier ``results.csv`` that an invocation does not run are kept (same labels and list), so rows run one at a
time (``--runs X``, the machine alone for each) build up one table, and its plot shows every row whose run folder
is in ``--out``. "Test" is Fashion-MNIST's 10,000-image test split (the ``val`` folder of the converted dataset).
Every number measured goes in the table, including disappointing ones.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from plot import line_plot  # noqa: E402
from launch.script_file import flatten, group_flags, merge_flags, read_script_file  # noqa: E402
from src.data.errors import DataError  # noqa: E402
from src.data.fashion_mnist import MARKER  # noqa: E402
from src.data.make_subset import make_subset, write_subset  # noqa: E402

TIME_POINTS_MIN = (10, 20, 30)
RECIPES = {
    "supervised_strong": ["suave/scripts/fmnist_supervised_strong_1perc.sh"],  # the baseline row
    "supervised": ["suave/scripts/fmnist_supervised_1perc.sh"],  # key of earlier tables: Suave's hyperparameters
    "fixmatch": ["fixmatch/scripts/fmnist_1perc.sh"],  # the yardstick (docs/fixmatch.md)
    "suave": ["suave/scripts/fmnist_1perc.sh"],
    "daino": ["daino/scripts/fmnist_1perc.sh"],
    "swav+suave": ["suave/scripts/fmnist_swav_pretrain.sh", "suave/scripts/fmnist_swav_suave_1perc.sh"],
}
# The five rows. SwAV-then-Suave is a pipeline variant of Suave (below the baseline at this budget), not a
# method a reader would pick instead: it stays available with --runs swav+suave.
DEFAULT_RUNS = ("supervised_strong", "supervised", "fixmatch", "suave", "daino")
BASELINE = "supervised_strong"
SUPERVISED = ("supervised_strong", "supervised")  # rows without a gain column
LABELS = {"supervised_strong": "strongest supervised (baseline)",
          "supervised": "supervised (Suave's hyperparameters)",
          "fixmatch": "FixMatch (yardstick)", "suave": "Suave", "daino": "Daino (teacher)",
          "swav+suave": "SwAV, then Suave"}
GAIN = "gain_vs_strongest_supervised"


@dataclass
class Stage:
    """One invocation of main_suave.py / main_daino.py: its folder, budget and what it reported."""

    recipe: str
    out_dir: Path
    budget_min: float
    results: dict = field(default_factory=dict)
    evals: list[dict] = field(default_factory=list)
    img_s: float = float("nan")
    wall_s: float = float("nan")  # calibration + training


SCHEDULE_FLAGS = ("--epochs", "--max_iters_per_epoch", "--output_dir")  # sized per machine: may differ on reuse
RUN_FLAGS = (*SCHEDULE_FLAGS, "--data_path", "--labels_perc", "--subset_file", "--seed", "--time_budget_min",
             "--eval_every_min")  # what the benchmark sets per run: not a change to the recipe
STAGE_RECORD = "benchmark_stage.json"
# Flags the recipes gained to keep the behaviour their runs had before the flag existed (the default then changed
# to the release's): a run without the flag ran with this value.
BEFORE_THE_FLAG = {"--order_by_seed": ("true",)}


def recipe_flags(path: str, overrides: dict[str, list[str]]) -> tuple[str, list[str]]:
    """Entry script and flat flag list of a recipe, with ``overrides`` replacing or adding flags."""
    script = read_script_file(str(REPO / path))
    extra = group_flags([tok for name, values in overrides.items() for tok in [name, *values]], "benchmark")
    return script.entry, flatten(merge_flags(list(script.flags), extra))


def flag_value(flags: list[str], name: str, default: str | None = None) -> str | None:
    return flags[flags.index(name) + 1] if name in flags else default


def run(entry: str, flags: list[str], log_path: Path, threads: int) -> None:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, str(REPO / entry), *flags]
    with open(log_path, "w") as log:
        log.write(shlex.join(cmd) + "\n")  # read back by check_reusable
        log.flush()
        code = subprocess.call(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        raise SystemExit(f"{entry} failed with exit code {code}; see {log_path}")


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a ``.jsonl`` file of a run (none when it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def last_epoch_stats(run_dir: Path) -> dict:
    """The last row of the run's ``stats.jsonl`` (the engine's per-epoch averages: ``train_img_s``,
    ``train_steady_iter_s``, ...)."""
    rows = read_jsonl(run_dir / "stats.jsonl")
    if not rows:
        raise SystemExit(f"no row in {run_dir / 'stats.jsonl'}: did the run train at all?")
    return rows[-1]


def steady_step_seconds(run_dir: Path) -> float:
    """Seconds per step (data + compute) after start-up: the engine's ``steady_iter_s``, which leaves out the first
    step of each epoch (loader start, allocator warm-up); the whole average when the epoch had one step."""
    stats = last_epoch_stats(run_dir)
    if "train_steady_iter_s" in stats:
        return float(stats["train_steady_iter_s"])
    return float(stats["train_data_s"]) + float(stats["train_step_s"])


def full_epoch_iters(flags: list[str], entry: str, train_images: int = 60000) -> int:
    if entry == "main_fixmatch.py":  # mu x B unlabelled images a step
        return train_images // (int(flag_value(flags, "--mu", "7")) * int(flag_value(flags, "--lab_batch_size", "64")))
    batch = flag_value(flags, "--batch_size" if entry == "main_suave.py" else "--batch_size_per_gpu", "64")
    return train_images // int(batch)


def calibrate_schedule(recipe_path: str, common: dict[str, list[str]], args: argparse.Namespace, budget_min: float,
                       calib_dir: Path) -> tuple[int, int]:
    """Time ``--calibration_iters`` steps of the recipe on this machine and size its schedule to ``budget_min``:
    (epochs, iterations per epoch); prints the measured step time."""
    entry, flags = recipe_flags(recipe_path, {**common, "--output_dir": [str(calib_dir)], "--epochs": ["1"],
                                              "--max_iters_per_epoch": [str(args.calibration_iters)],
                                              "--log_freq": ["5"], "--time_budget_min": ["0"],
                                              "--eval_every_min": ["0"]})
    shutil.rmtree(calib_dir, ignore_errors=True)  # a fresh run, not a resume
    calib_dir.mkdir(parents=True)
    run(entry, flags, calib_dir / "stdout.log", args.threads)
    step_s = steady_step_seconds(calib_dir)
    _, recipe = recipe_flags(recipe_path, {})
    epochs, iters = size_schedule(budget_min * 60 / step_s, int(flag_value(recipe, "--epochs", "100")),
                                  full_epoch_iters(recipe, entry), args.min_epoch_iters)
    print(f"  {recipe_path}: {step_s:.3f} s/step measured -> {epochs} epochs x {iters} iterations for "
          f"{budget_min:g} min", file=sys.stderr, flush=True)
    return epochs, iters


def size_schedule(budget_steps: float, recipe_epochs: int, full_epoch: int, min_epoch_iters: int) -> tuple[int, int]:
    """(epochs, iterations per epoch) whose product is the ``budget_steps`` that fit the budget: the recipe's epochs
    (they fix the shape of the schedule: warm-up share, queue start), more full epochs when those are too few,
    fewer when an epoch would be shorter than ``min_epoch_iters``."""
    total_iters = max(int(budget_steps), recipe_epochs)
    epochs = recipe_epochs
    if total_iters > epochs * full_epoch:  # more than the recipe's epochs fit: more full epochs
        epochs = math.ceil(total_iters / full_epoch)
    while epochs > 1 and total_iters / epochs < min_epoch_iters:  # tiny budgets: fewer epochs
        epochs -= 1  # (each epoch ends with a validation that the engine counts as training time)
    return epochs, min(full_epoch, max(1, total_iters // epochs))


def run_stage(stage: Stage, common: dict[str, list[str]], args: argparse.Namespace) -> None:
    """Calibrate the step time, size the schedule to the budget, train, collect evals and results (or, with
    ``--reuse``, read back a finished run of the same recipe and flags)."""
    budget = {"--time_budget_min": [f"{stage.budget_min:g}"], "--eval_every_min": [f"{args.eval_every_min:g}"]}
    if args.reuse and (stage.out_dir / "results.json").exists():
        check_reusable(stage, {**common, **budget})
        print(f"  {stage.recipe}: reusing the finished run in {stage.out_dir}", file=sys.stderr, flush=True)
    else:
        started = time.perf_counter()
        epochs, iters = calibrate_schedule(stage.recipe, common, args, stage.budget_min,
                                           stage.out_dir.with_name(stage.out_dir.name + "_calibration"))
        entry, flags = recipe_flags(stage.recipe, {
            **common, **budget, "--output_dir": [str(stage.out_dir)], "--epochs": [str(epochs)],
            "--max_iters_per_epoch": [str(iters)]})
        shutil.rmtree(stage.out_dir, ignore_errors=True)
        stage.out_dir.mkdir(parents=True)
        run(entry, flags, stage.out_dir / "stdout.log", args.threads)
        (stage.out_dir / STAGE_RECORD).write_text(json.dumps({"wall_s": time.perf_counter() - started}) + "\n")
    read_stage_output(stage)


def read_stage_output(stage: Stage) -> None:
    """Fill ``stage`` from its finished run folder: ``results.json`` (final accuracy, minutes, steps),
    ``evals.jsonl`` (the accuracy curve), ``stats.jsonl`` (images/s) and the benchmark's own wall-time record
    (older runs have none: their training process's wall time)."""
    stage.results = json.loads((stage.out_dir / "results.json").read_text())
    record_file = stage.out_dir / STAGE_RECORD
    record = json.loads(record_file.read_text()) if record_file.exists() else {}
    stage.wall_s = float(record.get("wall_s", stage.results.get("wall_time_s", float("nan"))))
    stage.evals = read_jsonl(stage.out_dir / "evals.jsonl")
    stage.img_s = float(last_epoch_stats(stage.out_dir)["train_img_s"])


def ran_command(run_dir: Path) -> tuple[str, dict[str, tuple[str, ...]]] | None:
    """Entry script and flags (name -> values, in the command's order) of a run the benchmark launched, from the
    first line of its ``stdout.log``; None when the folder has no such log."""
    log = run_dir / "stdout.log"
    words = shlex.split(log.read_text().splitlines()[0]) if log.is_file() else []
    if len(words) < 2 or not words[1].endswith(".py"):
        return None
    return Path(words[1]).name, {f.name: tuple(f.values) for f in group_flags(words[2:], str(log))}


def _same_precision(name: str, recipe_values: tuple[str, ...] | None) -> bool:
    """The recipe leaves the precision to the machine (``--use_bf16 auto``): a run made in either is its run."""
    return name == "--use_bf16" and recipe_values == ("auto",)


def recipe_changes(recipe: str, ran: dict[str, tuple[str, ...]]) -> str:
    """The flags a run was given that differ from its recipe file today (``--flags``, or a recipe since changed),
    the benchmark's own per-run flags (data, list, seed, budget, schedule) aside: ``--arch cnn6 --base_lr 3.0``;
    a recipe flag the run lacked reads ``(no --bn_momentum)``; "" when the run is the recipe."""
    want = {f.name: tuple(f.values) for f in group_flags(recipe_flags(recipe, {})[1], recipe)}
    ran = {**{name: value for name, value in BEFORE_THE_FLAG.items() if name in want}, **ran}
    changed = [" ".join([name, *values]) for name, values in ran.items()
               if name not in RUN_FLAGS and values != want.get(name) and not _same_precision(name, want.get(name))]
    changed += [f"(no {name})" for name in want if name not in ran and name not in RUN_FLAGS]
    return " ".join(changed)


def list_label(subset_file: str | None, data_path: str, labels_perc: str) -> str:
    """Name of a labelled list for the tables: ``subsets/1percent_seed1.txt (make_subset, seed 1)`` for a list
    ``--split_seed`` drew, ``subsets/NAME`` or the path given for another ``--subset_file``, and the conversion's
    ``subsets/<P>percent.txt (conversion, seed 0)`` when the run had none."""
    if not subset_file:
        return default_list_name(data_path, labels_perc)
    path = Path(subset_file)
    name = f"subsets/{path.name}" if path.parent.name == "subsets" else subset_file
    drawn = re.fullmatch(r"\d+percent_seed(\d+)\.txt", path.name)
    return f"{name} (make_subset, seed {drawn.group(1)})" if drawn else name


def check_reusable(stage: Stage, overrides: dict[str, list[str]]) -> None:
    """A finished run is reused only if its command (first line of its stdout.log) has the flags this benchmark
    would give it now, the budget-sized schedule aside; otherwise the error names the first difference."""
    log = stage.out_dir / "stdout.log"
    command = ran_command(stage.out_dir)
    entry, wanted = recipe_flags(stage.recipe, overrides)
    if command is None or command[0] != entry:
        raise SystemExit(f"--reuse: {log} does not start with the {entry} command of a benchmark run; "
                         f"delete {stage.out_dir} or drop --reuse")
    ran = {name: values for name, values in command[1].items() if name not in SCHEDULE_FLAGS}
    want = {f.name: f.values for f in group_flags(wanted, stage.recipe) if f.name not in SCHEDULE_FLAGS}
    for name in sorted(set(ran) | set(want)):
        if _same_precision(name, tuple(want.get(name, ()))):
            continue
        if ran.get(name) != want.get(name):
            raise SystemExit(f"--reuse: {stage.out_dir} was run with {name} {' '.join(ran.get(name, ('(absent)',)))}"
                             f" but {stage.recipe} with these --flags gives {' '.join(want.get(name, ('(absent)',)))}"
                             f"; delete {stage.out_dir} or drop --reuse to run it again")


def accuracy_at(curve: list[tuple[float, float]], minute: float, tolerance: float) -> float | None:
    """Test top-1 of the latest evaluation made by ``minute`` (+ tolerance: evaluations fire just after the mark)."""
    done = [acc for t, acc in curve if t <= minute + tolerance]
    return done[-1] if done else None


def curve_of(stages: list[Stage], classify_from: int) -> list[tuple[float, float]]:
    """(training minutes since the start of the first stage, test top-1) of the stages from ``classify_from``
    on (a self-supervised stage has no class prediction), ending with the final evaluation."""
    points, offset = [], 0.0
    for i, stage in enumerate(stages):
        if i >= classify_from:
            points += [(offset + float(row["train_minutes"]), float(row["val_acc1"])) for row in stage.evals
                       if "val_acc1" in row]
            if "val_acc1" in stage.results:
                points.append((offset + float(stage.results.get("train_minutes", stage.budget_min)),
                               float(stage.results["val_acc1"])))
        offset += float(stage.results.get("train_minutes", stage.budget_min))
    return sorted(set(points))


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def end_accuracy(stages: list[Stage]) -> float | None:
    """Test top-1 at the end of the row's last stage (``results.json``), unrounded."""
    last = stages[-1].results
    return float(last["val_acc1"]) if "val_acc1" in last else None


def table_row(name: str, stages: list[Stage], curve: list[tuple[float, float]], *, labels_perc: str,
              budget_min: float, eval_every_min: float, seed: int, data_path: str) -> dict:
    """One row of results.csv / results.md (accuracies in %, one decimal; the gain column is set by
    ``add_gains``). The labelled list and the flags that differ from the recipe are read from the command each
    stage ran (its ``stdout.log``), not from this invocation's arguments: a reused run reports what it trained on."""
    commands = [ran_command(stage.out_dir) for stage in stages]
    ran = commands[-1][1] if commands[-1] else {}
    changes = [recipe_changes(stage.recipe, command[1]) if command else "(command not recorded)"
               for stage, command in zip(stages, commands)]
    return {"run": name, "method": LABELS[name], "labels": f"{labels_perc}%",
            "labelled_list": list_label(ran.get("--subset_file", [None])[0], data_path, labels_perc),
            **{f"top1_{t}min": fmt(accuracy_at(curve, t, 0.2 * eval_every_min)) for t in TIME_POINTS_MIN
               if t <= budget_min + 1e-9},
            "top1_end": fmt(end_accuracy(stages)), GAIN: "—",
            "epochs": "+".join(str(s.results.get("epochs_completed", "?")) for s in stages),
            "iterations": "+".join(str(s.results.get("iterations", "?")) for s in stages),
            "images_per_s": "+".join(fmt(s.img_s, 0) for s in stages),
            "train_min": fmt(sum(float(s.results.get("train_minutes", 0)) for s in stages), 1),
            "wall_min": fmt(sum(s.wall_s for s in stages) / 60, 1),
            "seed": ran["--seed"][0] if "--seed" in ran else seed, "flags": " + ".join(changes) if any(changes) else ""}


def add_gains(rows: list[dict], ends: dict[str, float | None]) -> None:
    """Set each row's ``gain_vs_strongest_supervised``: a semi-supervised row's end accuracy minus the strongest
    supervised row's, from the unrounded results (points, one decimal); "—" for the supervised rows and when
    either accuracy is missing."""
    base = ends.get(BASELINE)
    for row in rows:
        end = ends.get(row["run"])
        row[GAIN] = "—" if row["run"] in SUPERVISED or end is None or base is None else f"{end - base:+.1f}"


def default_out(labels_perc: str, split_seed: int | None) -> Path:
    suffix = "" if split_seed is None else f"_split{split_seed}"
    return REPO / "benchmarks" / "results" / f"fmnist_{labels_perc}perc{suffix}"


def conversion_seed(data_path: str) -> int | None:
    """Seed of the labelled lists the Fashion-MNIST conversion wrote into ``DATA/subsets/`` (None: unknown)."""
    marker = Path(data_path) / MARKER
    return json.loads(marker.read_text()).get("seed") if marker.exists() else None


def default_list_name(data_path: str, labels_perc: str) -> str:
    seed = conversion_seed(data_path)
    return f"subsets/{labels_perc}percent.txt" + ("" if seed is None else f" (conversion, seed {seed})")


def write_split(data_path: str, labels_perc: str, split_seed: int, out: Path) -> Path:
    """Draw the second labelled list (``--labels_perc`` % of each class of ``DATA/train``, ``make_subset`` with
    ``split_seed``) into ``OUT/subsets/<P>percent_seed<S>.txt``; the same seed always writes the same list."""
    if split_seed == conversion_seed(data_path):
        raise SystemExit(f"--split_seed {split_seed} is the seed of the conversion's list "
                         f"{data_path}/subsets/{labels_perc}percent.txt: pick another seed for a second split")
    path = out / "subsets" / f"{labels_perc}percent_seed{split_seed}.txt"
    try:
        write_subset(make_subset(data_path, percent=float(labels_perc), seed=split_seed), path)
    except DataError as err:
        raise SystemExit(f"--split_seed: {err}") from None
    return path


def common_flags(args: argparse.Namespace, out: Path) -> tuple[dict[str, list[str]], str]:
    """Flags every row's recipe gets (``--flags``, data, labels, seed; with ``--split_seed`` the second list as
    ``--subset_file``, drawn here) and the name of the labelled list for the table."""
    common = {**{f.name: list(f.values) for f in group_flags(shlex.split(args.flags), "--flags")},
              "--data_path": [args.data_path], "--labels_perc": [args.labels_perc], "--seed": [str(args.seed)]}
    if args.split_seed is None:  # the conversion's list, or the one --flags names
        return common, list_label(common.get("--subset_file", [None])[0], args.data_path, args.labels_perc)
    split = write_split(args.data_path, args.labels_perc, args.split_seed, out)
    print(f"labelled list: {split} ({args.labels_perc}% of the images, seed {args.split_seed})", flush=True)
    return {**common, "--subset_file": [str(split)]}, f"{split.relative_to(out)} (make_subset, seed {args.split_seed})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget_min", type=float, default=30, help="training minutes per method (all stages)")
    parser.add_argument("--eval_every_min", type=float, default=2.5, help="test evaluation every N training minutes")
    parser.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), choices=list(RECIPES),
                        help=f"which runs (default: {' '.join(DEFAULT_RUNS)}; swav+suave on request)")
    parser.add_argument("--data_path", default=str(REPO / "data" / "fashion-mnist"))
    parser.add_argument("--labels_perc", default="1", help="1 or 10 (the lists the conversion writes)")
    parser.add_argument("--split_seed", type=int, default=None,
                        help="train every row on a second list of --labels_perc %% of the images, drawn class-balanced "
                             "by src.data.make_subset with this seed (not the conversion's) into OUT/subsets/")
    parser.add_argument("--seed", type=int, default=31)
    parser.add_argument("--pretrain_fraction", type=float, default=0.5,
                        help="share of the budget the two-stage run spends on plain SwAV")
    parser.add_argument("--calibration_iters", type=int, default=30, help="steps timed before each run")
    parser.add_argument("--min_epoch_iters", type=int, default=200,
                        help="fewer epochs than the recipe's when the budget gives fewer steps per epoch than this")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of the runs (0: torch's default)")
    parser.add_argument("--out", default=None,
                        help="results folder (default: benchmarks/results/fmnist_<P>perc[_split<S>])")
    parser.add_argument("--flags", default="", help='flags added to every run\'s recipe, e.g. "--arch cnn6w2"')
    parser.add_argument("--reuse", action="store_true",
                        help="read back runs already finished in --out with the same recipe and flags instead of "
                             "running them again (resumes an interrupted benchmark)")
    parser.add_argument("--schedule_only", action="store_true",
                        help="only calibrate one single-stage run and print the flags the benchmark gives it "
                             "(`--seed S --epochs E --max_iters_per_epoch N`; the demo launches the same run)")
    args = parser.parse_args()
    if not (Path(args.data_path) / "train").is_dir():
        raise SystemExit(f"{args.data_path}/train not found: prepare the data with "
                         f"`python -m src.data.fashion_mnist --out {args.data_path}`")
    out = Path(args.out or default_out(args.labels_perc, args.split_seed))
    out.mkdir(parents=True, exist_ok=True)
    common, list_name = common_flags(args, out)
    if args.schedule_only:
        print_schedule(args, common, out)
        return
    earlier = earlier_rows(out / "results.csv", f"{args.labels_perc}%", list_name, args.runs,
                           on_conversion_list=args.split_seed is None)
    rows, curves, ends = [], {}, {}
    for name in args.runs:
        print(f"{name}: {args.budget_min:g} min", flush=True)
        stages = row_stages(name, out, args.budget_min, args.pretrain_fraction)
        run_stage(stages[0], common, args)
        if len(stages) == 2:
            run_stage(stages[1], {**common, "--swav_init_ckpt": [str(stages[0].out_dir / "checkpoint.pth")]}, args)
        curve = curve_of(stages, classify_from=len(stages) - 1)
        curves[LABELS[name]] = curve
        ends[name] = end_accuracy(stages)
        row = table_row(name, stages, curve, labels_perc=args.labels_perc, budget_min=args.budget_min,
                        eval_every_min=args.eval_every_min, seed=args.seed, data_path=args.data_path)
        rows.append(row)
        table = merged_table(rows, earlier, ends)
        print("  " + "  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        write_tables(table, out)
    curves.update(earlier_curves(out, earlier, args.budget_min, args.pretrain_fraction))
    in_table_order = [LABELS[name] for name in RECIPES if LABELS[name] in curves]
    line_plot({label: curves[label] for label in in_table_order}, str(out / "accuracy_vs_time.png"),
              x_label="training time (min, 2 CPU cores)", y_label="test top-1 (%)",
              title=f"Fashion-MNIST, {args.labels_perc}% labels ({list_name.split(' (')[0]}), seed {args.seed}",
              x_range=(0, max([args.budget_min] + [t for c in curves.values() for t, _ in c])))
    print(f"wrote {out / 'results.csv'}, {out / 'results.md'}, {out / 'accuracy_vs_time.png'}")


def print_schedule(args: argparse.Namespace, common: dict[str, list[str]], out: Path) -> None:
    """The schedule flags the benchmark would give its one run, so that a launch outside the benchmark (the demo)
    is the benchmark's run: same recipe, same budget-sized schedule."""
    if len(args.runs) != 1 or len(RECIPES[args.runs[0]]) != 1:
        raise SystemExit("--schedule_only sizes one single-stage run: pass one of --runs "
                         + " / ".join(k for k, v in RECIPES.items() if len(v) == 1))
    recipe = RECIPES[args.runs[0]][0]
    epochs, iters = calibrate_schedule(recipe, common, args, args.budget_min, out / "calibration")
    print(f"--seed {args.seed} --epochs {epochs} --max_iters_per_epoch {iters}")


def comparison_lines(table: Path, own_label: str, own_curve: list[tuple[float, float]], budget_min: float,
                     own_iterations: int | None = None, own_run: str = "suave") -> list[str]:
    """What the demo prints beside its own accuracy, like with like: the table's rows (``results.csv``) at the
    latest of its time points (10, 20, 30 minutes) within this run's budget (``--time_budget_min``), this run's
    accuracy there (the latest evaluation by then on its curve, ``own_curve``: (training minutes, test top-1), its
    final evaluation last; the table's columns follow the same rule) and its gain over the strongest supervised row
    there; for each of the five rows missing from the table the command that makes it. A budget shorter than the
    first point is compared with nothing and told how to make a run that is. With ``own_iterations`` and a
    30-minute comparison, a last line compares this run's steps with its own row's (``own_run``): a slower machine
    makes fewer steps in the same minutes. Tables written before the ``run`` column name their rows in
    ``method``."""
    command = "python benchmarks/fmnist_benchmark.py --reuse"
    if not table.is_file():
        return [f"benchmark table {table} is missing: `{command}` writes it (5 runs x 30 min of training)"]
    reached = [t for t in TIME_POINTS_MIN if t <= budget_min + 1e-9]
    if not reached:
        return [f"this run's budget was {budget_min:g} min; the table ({table}) has top-1 at "
                f"{', '.join(map(str, TIME_POINTS_MIN))} min: train {TIME_POINTS_MIN[0]} min or more "
                f"(`-- --time_budget_min {TIME_POINTS_MIN[0]}`) to compare with it at the same training time"]
    minute = reached[-1]
    column = f"top1_{minute}min"
    rows = {row_key(row): row for row in read_rows(table)}
    base = rows.get(BASELINE)
    base_acc = _number(base.get(column, "")) if base else None
    lines = [f"benchmark rows ({table}), test top-1 at {minute} min of training:"]
    for name in [*DEFAULT_RUNS, *(k for k in rows if k not in DEFAULT_RUNS)]:
        label = LABELS.get(name, name)
        row = rows.get(name)
        if row is None:
            lines.append(f"  {label:38s} not in the table: `{command}` runs it (and reads back the finished rows)")
            continue
        acc = _number(row.get(column, ""))
        gain = "" if name in SUPERVISED or acc is None or base_acc is None else \
            f"  {acc - base_acc:+.1f} vs strongest supervised"
        row_steps = _steps(row)
        steps = f", {row_steps:,} steps in {row['train_min']} min" if row_steps else ""
        lines.append(f"  {label:38s} {fmt(acc)}%  (seed {row['seed']}{steps}){gain}")
    own_acc = accuracy_at(own_curve, minute, 0.5)
    if own_acc is None:
        lines.append(f"this run ({own_label}) has no evaluation by {minute} min to compare")
    elif base_acc is None:
        lines.append(f"this run ({own_label}) at {minute} min: {own_acc:.2f}%; no strongest supervised row at "
                     f"{minute} min to compare with")
    else:
        lines.append(f"this run ({own_label}) at {minute} min: {own_acc:.2f}%, {own_acc - base_acc:+.2f} points vs "
                     f"the strongest supervised row at {minute} min")
    own_steps = _steps(rows[own_run]) if own_run in rows else None
    if own_iterations and own_steps and minute == TIME_POINTS_MIN[-1]:
        ratio = own_iterations / own_steps
        verdict = ("this machine is slower than the table's: its rows trained longer, compare with that in mind"
                   if ratio < 0.9 else "this machine is faster than the table's" if ratio > 1.1
                   else "about the table's pace")
        lines.append(f"this run made {own_iterations:,} steps, the table's {own_label} row "
                     f"{own_steps:,} ({ratio:.0%}): {verdict}")
    return lines


def demo_plot(table: Path, own_label: str, own_curve: list[tuple[float, float]], path: Path) -> str:
    """This run's accuracy curve beside the table's rows (their top-1 at 10/20/30 minutes) in one plot; returns the
    line the demo prints (where the plot is, or why there is none)."""
    series = {f"this run ({own_label})": own_curve}
    for row in read_rows(table):
        points = [(float(t), _number(row.get(f"top1_{t}min", ""))) for t in TIME_POINTS_MIN]
        series[f"table: {LABELS.get(row_key(row), row_key(row))}"] = [(t, a) for t, a in points if a is not None]
    try:
        line_plot(series, str(path), x_label="training time (min)", y_label="test top-1 (%)",
                  title=f"{own_label} against the table ({table.parent.name})",
                  x_range=(0, max([TIME_POINTS_MIN[-1]] + [t for t, _ in own_curve]) + 1))
    except SystemExit as missing:  # matplotlib is optional
        return f"plot            none ({missing})"
    return f"plot            {path}"


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "—" or empty: not measured
        return None


def _steps(row: dict) -> int | None:
    """A table row's training steps (``iterations``), None when not recorded."""
    steps = _number(row.get("iterations", ""))
    return None if steps is None else int(steps)


def read_rows(table: Path) -> list[dict]:
    """The rows of a ``results.csv`` as written (none when it does not exist)."""
    if not table.is_file():
        return []
    with open(table, newline="") as handle:
        return list(csv.DictReader(handle))


def row_key(row: dict) -> str:
    """A row's run key: its ``run`` column, or ``method`` in tables written before that column."""
    return row.get("run") or row["method"]


def earlier_rows(table: Path, labels: str, labelled_list: str, rerun: list[str], *,
                 on_conversion_list: bool) -> list[dict]:
    """The rows of an earlier ``results.csv`` in ``--out`` that this invocation does not run again: the table gathers
    rows made one at a time (machine alone) instead of keeping only the last invocation's. A row of another
    label share or labelled list is dropped with a message. A table written before the ``run`` column names its
    rows in ``method`` (they get the column and the label of that key) and predates ``--split_seed``: its rows were
    made on the conversion's list (``on_conversion_list``: this invocation's list is that one). Their gains are
    recomputed from the rounded ``top1_end`` against the baseline of the merged table."""
    kept = []
    for row in read_rows(table):
        key = row_key(row)
        if key in rerun:
            continue
        legacy = not row.get("run")
        made_on = (labelled_list if legacy and on_conversion_list
                   else row.get("labelled_list") or "the conversion's list")
        if row.get("labels") != labels or made_on != labelled_list:
            print(f"  dropping the row {key} of {table}: it was made with {row.get('labels')} labels on {made_on}, "
                  f"this table is {labels} on {labelled_list}", file=sys.stderr, flush=True)
            continue
        kept.append({"run": key, **row, "method": LABELS.get(key, key), "labelled_list": made_on} if legacy else row)
    return kept


def row_stages(name: str, out: Path, budget_min: float, pretrain_fraction: float) -> list[Stage]:
    """The stages of run ``name`` in ``out``, laid out as ``main`` writes them (one folder, or two for SwAV then
    Suave)."""
    recipes = RECIPES[name]
    if len(recipes) == 1:
        return [Stage(recipes[0], out / name, budget_min)]
    first = budget_min * pretrain_fraction
    return [Stage(recipes[0], out / f"{name}_stage1", first),
            Stage(recipes[1], out / f"{name}_stage2", budget_min - first)]


def earlier_curves(out: Path, earlier: list[dict], budget_min: float,
                   pretrain_fraction: float) -> dict[str, list[tuple[float, float]]]:
    """Accuracy curves of the earlier rows kept, so that the plot shows the whole table: read from each row's run
    folder in ``out`` when that folder holds the run the row reports (its end accuracy rounds to the row's
    ``top1_end``). A row copied from another table, or whose folder was rerun with another recipe, is left out of
    the plot with a message."""
    curves = {}
    for row in earlier:
        name = row["run"]
        stages = row_stages(name, out, budget_min, pretrain_fraction) if name in RECIPES else []
        if stages and all((s.out_dir / "results.json").is_file() for s in stages):
            for stage in stages:
                read_stage_output(stage)
            if fmt(end_accuracy(stages)) == row.get("top1_end"):
                curves[LABELS[name]] = curve_of(stages, classify_from=len(stages) - 1)
                continue
        print(f"  the plot leaves out the row {name}: its run folder in {out} does not hold the run that row reports",
              file=sys.stderr, flush=True)
    return curves


def merged_table(rows: list[dict], earlier: list[dict], ends: dict[str, float | None]) -> list[dict]:
    """This invocation's rows and the earlier ones kept, in the order of ``RECIPES`` (baseline first, other keys
    last), every gain set against the merged table's baseline (``ends``: this invocation's unrounded accuracies)."""
    order = {name: i for i, name in enumerate(RECIPES)}
    table = sorted(rows + earlier, key=lambda row: order.get(row["run"], len(order)))
    add_gains(table, {**{row["run"]: _number(row["top1_end"]) for row in earlier}, **ends})
    return table


def write_tables(rows: list[dict], out: Path) -> None:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(row.get(k, "")) for k in keys) + " |" for row in rows]
    (out / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
