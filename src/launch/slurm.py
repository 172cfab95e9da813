"""Slurm through submitit: the job's resources, the callable every task runs, requeue on timeout/preemption.

As DINO's ``run_with_submitit.py``: one task per GPU, the callable sets the distributed environment from
submitit's ``JobEnvironment`` and calls the entry point's ``main(args)`` in-process; its ``checkpoint()`` hook
returns a fresh copy of itself, which submitit requeues; the requeued job resumes from
``<output_dir>/checkpoint.pth`` (the entry point's auto-resume). Unlike the release's sbatch script, the time
limit is given in minutes (``--hours`` x 60, the release passed bare hours to ``-t``, which Slurm reads as
minutes), no conda environment is named (the job runs the Python that launched it) and the local rank comes
from ``SLURM_LOCALID``.
"""
from __future__ import annotations

import contextlib
import io
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field, replace
from typing import Any

from src.launch.errors import LaunchError

SUBMITIT_FOLDER = "slurm"  # inside the experiment directory: submission scripts, pickles, per-task logs
MAX_TIMEOUT_REQUEUES = 30  # as DINO: requeues after a time-out (preemptions do not count)
SIGNAL_DELAY_S = 120  # USR2 this long before the time limit, so checkpoint() can requeue


def timeout_minutes(hours: float) -> int:
    return max(1, int(round(60 * hours)))


def slurm_parameters(*, name: str, nodes: int, gpus_per_node: int, hours: float, cpus_per_task: int,
                     mem_gb: float | None, partition: str | None, account: str | None, qos: str | None,
                     constraint: str | None, setup: list[str]) -> dict[str, Any]:
    """submitit SlurmExecutor parameters (sbatch names): one task per GPU on every node."""
    params: dict[str, Any] = {
        "job_name": name,
        "time": timeout_minutes(hours),
        "nodes": nodes,
        "ntasks_per_node": max(1, gpus_per_node),
        "cpus_per_task": cpus_per_task,
        "signal_delay_s": SIGNAL_DELAY_S,
        "setup": setup,
    }
    if gpus_per_node > 0:
        params["gpus_per_node"] = gpus_per_node
    if mem_gb is not None:
        params["mem"] = f"{int(mem_gb)}GB" if float(mem_gb) == int(mem_gb) else f"{int(mem_gb * 1024)}MB"
    for key, value in (("partition", partition), ("account", account), ("qos", qos), ("constraint", constraint)):
        if value:
            params[key] = value
    return params


def job_setup_lines(code_root: str, entry_root: str) -> list[str]:
    """Shell lines run before srun: work from the checkout and make its modules importable."""
    paths = [code_root] + ([entry_root] if entry_root != code_root else [])
    joined = ":".join(shlex.quote(p) for p in paths)
    return [f"cd {shlex.quote(entry_root)}", f'export PYTHONPATH={joined}"${{PYTHONPATH:+:$PYTHONPATH}}"']


def submitit_command(folder: str, python: str | None = None) -> str:
    """What every task runs (submitit's own entry); identical to SlurmExecutor's."""
    return " ".join([shlex.quote(python or sys.executable), "-u -m submitit.core._submit", shlex.quote(folder)])


def sbatch_preview(folder: str, params: dict[str, Any]) -> str:
    """The sbatch script submitit would submit (for --dry_run): built by submitit's own writer."""
    from submitit.slurm.slurm import _make_sbatch_string  # private, but the only exact rendering

    return _make_sbatch_string(command=submitit_command(folder), folder=folder, **params)


def default_partition() -> str | None:
    """The cluster's default partition (``sinfo`` marks it with ``*``), or None when there is none or no sinfo."""
    if shutil.which("sinfo") is None:
        return None
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.stdout.split():
        if line.endswith("*"):
            return line.rstrip("*")
    return None


def check_slurm_tools() -> None:
    for tool in ("sbatch", "srun"):
        if shutil.which(tool) is None:
            raise LaunchError(f"{tool} not found on PATH: --mode slurm must run on a Slurm login node "
                              f"(or use --mode local)")


def master_port_for(job_id: str, master_port: int | None) -> int:
    """The given port, else 10000 + the job id's last 4 digits (the release's rule): same on every task."""
    if master_port is not None:
        return master_port
    digits = "".join(ch for ch in job_id.split("_")[0] if ch.isdigit())
    return 10000 + int(digits[-4:] or 0)


def set_distributed_env(job_env: Any, master_port: int | None) -> dict[str, str]:
    """RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT from submitit's JobEnvironment (first node = master)."""
    values = {
        "RANK": str(job_env.global_rank),
        "WORLD_SIZE": str(job_env.num_tasks),
        "LOCAL_RANK": str(job_env.local_rank),
        "LOCAL_WORLD_SIZE": str(max(1, job_env.num_tasks // max(1, job_env.num_nodes))),
        "MASTER_ADDR": str(job_env.hostnames[0]),
        "MASTER_PORT": str(master_port_for(str(job_env.job_id), master_port)),
    }
    os.environ.update(values)
    return values


@dataclass
class SlurmTrainer:
    """The callable every Slurm task runs (pickled by submitit); requeues itself on timeout or preemption."""

    entry_root: str
    entry_module: str
    train_flags: list[str] = field(default_factory=list)
    master_port: int | None = None

    def __call__(self) -> Any:
        import submitit

        from src.launch.entry import import_entry_for_job

        env = set_distributed_env(submitit.JobEnvironment(), self.master_port)
        print(f"[job_launcher] task rank {env['RANK']}/{env['WORLD_SIZE']} (local {env['LOCAL_RANK']}), "
              f"master {env['MASTER_ADDR']}:{env['MASTER_PORT']}", flush=True)
        module = import_entry_for_job(self.entry_root, self.entry_module)
        args = module.get_args_parser().parse_args(self.train_flags)
        return module.main(args)

    def checkpoint(self) -> Any:
        """Called by submitit on rank 0 at USR2: requeue a fresh copy; training resumes from checkpoint.pth."""
        import submitit

        print(f"[job_launcher] requeuing {self.entry_module} with the same flags", flush=True)
        return submitit.helpers.DelayedSubmission(replace(self, train_flags=list(self.train_flags)))


@dataclass(frozen=True)
class Submitted:
    job_id: str
    stdout: str
    stderr: str
    submission_file: str


def submit(trainer: SlurmTrainer, folder: str, params: dict[str, Any]) -> Submitted:
    """Submit with sbatch through submitit; returns the job id and the paths of task 0's logs."""
    import submitit

    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=MAX_TIMEOUT_REQUEUES)
    executor.update_parameters(**params)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit echoes sbatch's stderr; it is in the error
            job = executor.submit(trainer)
    except Exception as exc:  # sbatch refused (bad partition, account...): its message is the reason
        message = " ".join(str(exc).split())
        raise LaunchError(f"sbatch failed: {message[:500]}") from exc
    return Submitted(job.job_id, str(job.paths.stdout), str(job.paths.stderr), str(job.paths.submission_file))
