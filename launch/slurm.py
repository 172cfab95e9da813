"""Slurm through submitit, as DINO's ``run_with_submitit.py``: each task sets the distributed environment with
``submitit.helpers.TorchDistributedEnvironment`` and calls the entry point's ``main(args)``; at USR2 (to the job's
steps: ``--signal=USR2@120`` before the time limit, or ``scancel --signal=USR2 JOBID``) ``checkpoint()`` requeues it
and it resumes from checkpoint.pth. Checked before submitting: a node that fits, the job's inputs."""
from __future__ import annotations

import contextlib
import importlib
import io
import netrc
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlparse

import submitit

from src.errors import UserError

MAX_TIMEOUT_REQUEUES = 30  # as DINO: requeues after a time-out (preemptions do not count)


def prepare_job(opts: dict[str, Any], job_root: str, python_path: list[str], dry_run: bool) -> dict[str, Any]:
    """SlurmExecutor parameters (sbatch's names): one task per GPU (CPU jobs: --tasks_per_node), DINO's 40 GB per
    GPU unless --mem_gb, --partition or the cluster's default (written into ``opts``); the tasks work from
    ``job_root`` with ``python_path`` importable. Unless ``dry_run``: sbatch and srun here, a partition that fits."""
    for tool in ("sbatch", "srun") if not dry_run else ():
        if shutil.which(tool) is None:
            raise UserError(f"{tool} not found on PATH: --mode slurm must run on a Slurm login node "
                            "(or use --mode local)")
    opts["partition"] = opts["partition"] or next(  # the cluster's default, marked with *
        (line.rstrip("*") for line in sinfo("-o", "%P") if line.endswith("*")), None)
    if not opts["partition"]:
        raise UserError("--mode slurm needs a partition: give --partition NAME (or --host NAME); "
                        "this cluster reports no default partition")
    gpus, mem_gb = opts["num_gpus"], opts["mem_gb"] or 40 * max(1, opts["num_gpus"])
    joined = ":".join(shlex.quote(p) for p in dict.fromkeys(python_path))
    params: dict[str, Any] = {"job_name": opts["name"], "time": max(1, round(60 * opts["hours"])),
                              "nodes": opts["num_nodes"], "ntasks_per_node": gpus or opts.get("tasks_per_node") or 1,
                              "cpus_per_task": opts["cpus_per_task"], "signal_delay_s": 120,
                              "mem": f"{int(mem_gb)}GB" if mem_gb == int(mem_gb) else f"{int(mem_gb * 1024)}MB",
                              "setup": [f"cd {shlex.quote(job_root)}",
                                        f'export PYTHONPATH={joined}"${{PYTHONPATH:+:$PYTHONPATH}}"'],
                              **({"gpus_per_node": gpus} if gpus > 0 else {})}
    params |= {key: opts[key] for key in ("partition", "account", "qos", "constraint") if opts[key]}
    if not dry_run:
        _check_partition_fits(params, mem_gb)
    return params


def sbatch_preview(folder: str, params: dict[str, Any]) -> str:
    """For --dry_run, the script submitit would submit (it renders one only while submitting; a test compares)."""
    skip = {"setup", "signal_delay_s"}
    logs = f"--output {folder}/%j_%t_log.out --error {folder}/%j_%t_log.err"
    command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(folder)}"
    return "\n".join(["#!/bin/bash", *(f"#SBATCH --{k.replace('_', '-')}={v}" for k, v in params.items()
                                       if k not in skip), f"#SBATCH --signal=USR2@{params['signal_delay_s']}",
                      f"#SBATCH --output={folder}/%j_0_log.out", f"#SBATCH --error={folder}/%j_0_log.err",
                      *params["setup"], f"srun --unbuffered {logs} {command}"]) + "\n"


def sinfo(*fields: str) -> list[str]:
    """``sinfo -h`` lines with the given arguments; none when there is no sinfo or it fails (no cluster here)."""
    try:
        done = subprocess.run(["sinfo", "-h", *fields], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in done.stdout.split("\n") if line.strip()] if done.returncode == 0 else []


def _limit_minutes(limit: str) -> float | None:
    """sinfo's time limit (``infinite``, ``2-00:00:00``, ``4:00:00``, ``30:00`` = M:S, ``30``) in minutes."""
    days, _, clock = limit.rpartition("-")
    parts = clock.split(":")
    scale = {1: (1,), 2: (1, 1 / 60), 3: (60, 1, 1 / 60)}.get(len(parts))
    if scale is None or not all(p.isdigit() for p in parts + ([days] if days else [])):
        return None  # infinite / UNLIMITED / n/a
    return int(days or 0) * 1440 + sum(int(p) * s for p, s in zip(parts, scale))


def _check_partition_fits(params: dict[str, Any], mem_gb: float) -> None:
    """Refuse a job its partition can never run (its time limit; too few nodes with the CPUs, memory and GPUs):
    Slurm would keep it pending forever (reason PartitionConfig) without a word. Skipped when sinfo cannot answer."""
    partition, nodes, tasks_per_node, cpus_per_task, minutes = (
        params[key] for key in ("partition", "nodes", "ntasks_per_node", "cpus_per_task", "time"))
    gpus_per_node, cpus = params.get("gpus_per_node", 0), tasks_per_node * cpus_per_task
    rows = [line.split("|") for line in sinfo("-N", "-p", partition, "-o", "%N|%c|%m|%G|%l")]
    if any(len(row) != 5 or not all(field.rstrip("+").isdigit() for field in row[1:3]) for row in rows):
        return  # not the answer of a Slurm sinfo: nothing to check against
    sizes = {row[0]: (int(row[1].rstrip("+")), int(row[2].rstrip("+")) / 1024, sum(  # GRES: gpu:a100:4(S:0-1),...
        int(n) for n in (g.split("(")[0].rsplit(":", 1)[-1] for g in row[3].split(",") if g.startswith("gpu:"))
        if n.isdigit())) for row in rows}
    if not sizes:
        known = sorted({line.rstrip("*") for line in sinfo("-o", "%P")})
        if known:  # (none: sinfo could not answer)
            raise UserError(f"partition {partition!r} not found: this cluster has {', '.join(known)} "
                            f"(give --partition NAME)")
        return
    limit = _limit_minutes(rows[-1][4])
    if limit is not None and minutes > limit:
        raise UserError(f"partition {partition} allows jobs of {limit:g} minutes at most, this one asks for "
                        f"{minutes} (--hours): lower --hours (requeues continue a longer run) or choose another "
                        f"--partition")
    fitting = [n for n in sizes.values() if n[0] >= cpus and n[1] >= mem_gb and n[2] >= gpus_per_node]
    if len(fitting) < nodes:
        most = [max(size[i] for size in sizes.values()) for i in range(3)]
        raise UserError(f"partition {partition} cannot run this job: it needs {nodes} node(s) with {tasks_per_node} "
                        f"task(s) x {cpus_per_task} CPU(s) = {cpus} CPUs, {mem_gb:g} GB and {gpus_per_node} GPU(s) "
                        f"each, but {len(fitting)} of its {len(sizes)} node(s) have that (its nodes have at most "
                        f"{most[0]} CPUs, {most[1]:.1f} GB, {most[2]} GPUs); lower --cpus_per_task/--mem_gb/"
                        f"--tasks_per_node/--num_gpus or choose another --partition")


def check_job_inputs(args: dict[str, Any]) -> None:
    """The job's inputs, for the entry point's parsed flags: data folders, init checkpoint (it must load), labelled
    list (resolved, and fetched into the cache the job reads when it is a standard ImageNet list), wandb login."""
    from src.checkpoint import read_checkpoint
    from src.data.subsets import resolve_subset_file

    for split in ("train", "val") if "data_path" in args else ():
        if not os.path.isdir(os.path.join(args["data_path"], split)):
            raise UserError(f"{args['data_path']} has no {split}/ folder: --data_dir must hold train/<class>/ and "
                            f"val/<class>/ (the job would fail at start)")
    try:
        for flag in [flag for flag in ("swav_init_ckpt", "dino_init_ckpt") if args.get(flag)]:
            read_checkpoint(args[flag], f"--{flag}")
    except Exception as exc:  # missing, a directory, truncated, unsafe pickle: the message says which
        raise UserError(f"{' '.join(str(exc).split())} (checked at submission)") from None
    try:
        if "labels_perc" in args or "subset_file" in args:
            resolve_subset_file(args["data_path"], args.get("labels_perc"), args.get("subset_file"))
    except Exception as exc:  # DataError with the fix, or an unexpected network error
        raise UserError(" ".join(str(exc).split())) from None
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or ""
    try:  # wandb logs in without asking with WANDB_API_KEY or a netrc entry for its host (wandb login)
        login = bool(os.environ.get("WANDB_API_KEY")) or netrc.netrc(os.environ.get("NETRC")).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        login = False
    if args.get("wandb") is True and args.get("wandb_mode", "online") == "online" and not login:
        raise UserError("--wandb true in online mode, but no wandb credentials here (no WANDB_API_KEY, no netrc "
                        "entry): run `wandb login` first, or add -- --wandb_mode offline (sync later with "
                        "`wandb sync`)")


@dataclass
class SlurmTrainer:
    """The callable every Slurm task runs (pickled by submitit); requeues itself on timeout or preemption."""

    entry_root: str
    entry_module: str
    train_flags: list[str]
    master_port: int | None = None

    def __call__(self) -> Any:
        env = submitit.helpers.TorchDistributedEnvironment()  # RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...
        job_id = str(submitit.JobEnvironment().job_id).split("_")[0]  # the release's rule: 10000 + its last 4 digits
        env.master_port = self.master_port or 10000 + int("".join(filter(str.isdigit, job_id))[-4:] or 0)
        env.export(set_cuda_visible_devices=False, overwrite=True)  # the engine picks the GPU by LOCAL_RANK
        print(f"[job_launcher] task rank {env.rank}/{env.world_size} (local {env.local_rank}), "
              f"master {env.master_addr}:{env.master_port}", flush=True)
        sys.path.insert(0, self.entry_root)
        module = importlib.import_module(self.entry_module)
        return module.main(module.get_args_parser().parse_args(self.train_flags))

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on rank 0 at USR2: requeue a fresh copy; training resumes from checkpoint.pth."""
        print(f"[job_launcher] requeuing {self.entry_module} with the same flags", flush=True)
        return submitit.helpers.DelayedSubmission(replace(self, train_flags=list(self.train_flags)))


def submit(trainer: SlurmTrainer, folder: str, params: dict[str, Any]) -> submitit.Job:
    """Submit with sbatch through submitit; sbatch's refusal (bad partition, account...) is the error's reason."""
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=MAX_TIMEOUT_REQUEUES)
    executor.update_parameters(**params)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit echoes sbatch's stderr; it is in the error
            return executor.submit(trainer)
    except Exception as exc:
        raise UserError(f"sbatch failed: {' '.join(str(exc).split())[:500]}") from exc
