"""Data time as a share of the training step, end to end: the released 224-px recipes through job_launcher.py
on ImageNet-like JPEGs, with the reference PIL pipeline, ``--fast_aug`` and ``--gpu_aug``, on N CPU cores.

Writes an ImageFolder of generated ImageNet-like JPEGs (``data_pipeline.imagenet_like_jpeg``: 500x375 to
640x480, ~85 KB) once, then runs each requested recipe for one epoch of ``--iters`` iterations from random
weights (no pre-trained checkpoint), pinned to the first N cores with N - 1 loader workers per loader, and
reads the progress lines of its train.log (means over windows of 20 iterations). The first ``--skip``
iterations are left out: the loaders' prefetched batches hide a slow pipeline until they are used up.

    python benchmarks/data_share.py                                        # on a GPU machine: the default runs
    python benchmarks/data_share.py --runs suave:reference:8 suave:gpu:8   # METHOD:PIPELINE:CORES
    python benchmarks/data_share.py --num_gpus 0 --iters 6 --skip 2 --runs suave:fast:2 -- --arch resnet18 ...

PIPELINE is ``reference`` (the release's PIL composition), ``fast`` (``--fast_aug true``) or ``gpu``
(``--fast_aug true --gpu_aug true``). Daino runs in bf16 (its recipe's fp32 is 3x slower on a GPU), Suave in its
recipe's fp16. Prints one table row per run: data ms and step ms per iteration, data share = data / (data +
step), images/s.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.data_pipeline import imagenet_like_jpeg  # noqa: E402
from benchmarks.report import print_table  # noqa: E402

CLASSES = 10
PIPELINES = {"reference": [], "fast": ["--fast_aug", "true"], "gpu": ["--fast_aug", "true", "--gpu_aug", "true"]}
RECIPES = {
    "suave": ("suave/scripts/train_1perc.sh", ["--swav_init_ckpt", "", "--use_fp16", "true"], "--workers"),
    "daino": ("daino/scripts/train_1perc.sh", ["--dino_init_ckpt", "", "--out_dim", str(CLASSES),
                                               "--use_fp16", "false", "--use_bf16", "true"], "--num_workers"),
}
DEFAULT_RUNS = ["suave:reference:8", "suave:gpu:8", "daino:reference:16", "daino:gpu:16", "daino:gpu:8"]
PROGRESS = re.compile(r"\[(\d+)/(\d+)\]\s+eta .*?data_s (\S+)\s+step_s (\S+)\s+img_s (\S+)")


def _write_images(job: tuple[str, list[str], int]) -> None:
    folder, names, seed = job
    rng = np.random.default_rng(seed)
    for name in names:
        Path(folder, name).write_bytes(imagenet_like_jpeg(rng))


def make_jpeg_imagefolder(root: Path, train_images: int, val_images: int, labelled_per_class: int,
                          processes: int) -> Path:
    """``root/{train,val}/c{k}/c{k}_{i}.JPEG`` and ``root/subsets/labelled.txt``; kept if already complete."""
    subset = root / "subsets" / "labelled.txt"
    if subset.is_file():
        return subset
    jobs = []
    for split, count in (("train", train_images), ("val", val_images)):
        for k in range(CLASSES):
            folder = root / split / f"c{k}"
            folder.mkdir(parents=True, exist_ok=True)
            names = [f"c{k}_{i}.JPEG" for i in range(count // CLASSES)]
            jobs += [(str(folder), names[j::8], (split == "val") * 1000 + 8 * k + j) for j in range(8)]
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(_write_images, jobs))
    subset.parent.mkdir(parents=True, exist_ok=True)
    subset.write_text("".join(f"c{k}_{i}.JPEG\n" for k in range(CLASSES) for i in range(labelled_per_class)))
    return subset


def steady_means(train_log: Path, skip: int) -> dict[str, float]:
    """Means of the progress lines' windows (20 iterations) that start after iteration ``skip``."""
    rows = [tuple(float(v) for v in m.groups()) for m in map(PROGRESS.search, train_log.read_text().splitlines())
            if m]
    kept = [r for r in rows if r[0] >= skip + 20] or rows[-1:]  # windows wholly after ``skip``
    if not kept:
        raise RuntimeError(f"no progress line in {train_log}")
    return {"data_s": statistics.mean(r[2] for r in kept), "step_s": statistics.mean(r[3] for r in kept),
            "img_s": statistics.mean(r[4] for r in kept), "iterations": int(rows[-1][0])}


def run_one(spec: str, data: Path, subset: Path, out: Path, opts: argparse.Namespace,
            extra: list[str]) -> dict | None:
    """One run through job_launcher.py; its row, or None (with the end of its log printed) if it failed."""
    method, pipeline, cores = spec.split(":")
    cores = int(cores)
    workers = max(cores - 1, 1)
    recipe, flags, workers_flag = RECIPES[method]
    name = f"{method}_{pipeline}_{cores}cores"
    command = [sys.executable, "job_launcher.py", "--method", method, "--script_file", recipe,
               "--num_gpus", str(opts.num_gpus), "--data_dir", str(data), "--base_experiment_dir", str(out),
               "--experiment_dir", name, "--",
               "--subset_file", str(subset), "--wandb", "false", "--time_budget_min", "0", "--epochs", "1",
               "--warmup_epochs", "0", "--max_iters_per_epoch", str(opts.iters), "--log_freq", "10",
               workers_flag, str(workers), *flags, *PIPELINES[pipeline], *extra]
    available = sorted(os.sched_getaffinity(0))
    if cores > len(available):
        raise SystemExit(f"{spec}: {cores} cores asked, {len(available)} available here")
    shutil.rmtree(out / name, ignore_errors=True)
    log = out / f"{name}.stdout.log"
    with open(log, "w") as f:  # its own process group: a timeout stops the training the launcher started too
        proc = subprocess.Popen(command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=lambda: os.sched_setaffinity(0, available[:cores]))
        try:
            code = proc.wait(timeout=opts.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = f"nothing after --timeout {opts.timeout:g} s"
    train_log = out / name / "train.log"
    try:
        means = steady_means(train_log, opts.skip)
    except (OSError, RuntimeError):
        means = None
    if code:  # a run cut short after its last iteration (validation, checkpoint) still gives its row
        print(f"{spec}: exited {code}; the end of {log}:\n  " + "\n  ".join(log.read_text().splitlines()[-8:]),
              flush=True)
    if means is None or (code and means["iterations"] < opts.iters):
        return None
    data_s, step_s = means["data_s"], means["step_s"]
    return {"method": method, "pipeline": pipeline, "cores": cores, "workers": workers,
            "iterations": means["iterations"], "data ms": 1000 * data_s, "step ms": 1000 * step_s,
            "data share %": 100 * data_s / (data_s + step_s), "images/s": means["img_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, help="METHOD:PIPELINE:CORES each")
    parser.add_argument("--data", type=Path, default=Path("/tmp/data_share/data"), help="generated once, reused")
    parser.add_argument("--out", type=Path, default=Path("/tmp/data_share/runs"), help="the runs' folders")
    parser.add_argument("--train_images", type=int, default=6400, help="enough for --iters Daino batches of 64")
    parser.add_argument("--val_images", type=int, default=200)
    parser.add_argument("--labelled_per_class", type=int, default=64)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--skip", type=int, default=40, help="iterations left out of the means")
    parser.add_argument("--num_gpus", type=int, default=1, help="0: a CPU process (to try the script)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per run")
    parser.add_argument("--make_data_only", action="store_true", help="write the JPEGs and stop")
    parser.add_argument("extra", nargs="*", help="method flags for every run, after --")
    opts = parser.parse_args()
    for spec in opts.runs:
        method, pipeline, cores = (spec.split(":") + ["", ""])[:3]
        if method not in RECIPES or pipeline not in PIPELINES or not cores.isdigit():
            parser.error(f"--runs {spec}: expected METHOD:PIPELINE:CORES with METHOD in {sorted(RECIPES)}, "
                         f"PIPELINE in {sorted(PIPELINES)}")
    subset = make_jpeg_imagefolder(opts.data, opts.train_images, opts.val_images, opts.labelled_per_class,
                                   len(os.sched_getaffinity(0)))
    print(f"data: {opts.data} ({opts.train_images} train / {opts.val_images} val JPEGs, {CLASSES} classes)",
          flush=True)
    if opts.make_data_only:
        return
    opts.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in opts.runs:
        row = run_one(spec, opts.data, subset, opts.out, opts, opts.extra)
        if row is not None:
            rows.append(row)
            print("  " + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
                  flush=True)
    if rows:
        print_table(rows)
    if len(rows) < len(opts.runs):
        raise SystemExit(f"{len(opts.runs) - len(rows)} of {len(opts.runs)} runs gave no row (above)")


if __name__ == "__main__":
    main()
