"""Slurm through submitit: the job's resources, the callable every task runs, requeue on timeout/preemption.

As DINO's ``run_with_submitit.py``: one task per GPU (CPU jobs: ``--tasks_per_node``), the callable sets the
distributed environment with ``submitit.helpers.TorchDistributedEnvironment`` and calls the entry point's
``main(args)`` in-process; its ``checkpoint()`` hook returns a fresh copy of itself, which submitit requeues when
USR2 reaches the job's steps (``--signal=USR2@120`` before the time limit, or ``scancel --signal=USR2 JOBID``;
with ``--batch`` only the batch shell gets it, dies, and the job fails unrequeued); the requeued job resumes from
``<output_dir>/checkpoint.pth`` (the entry point's auto-resume). Unlike the release's sbatch script, the time
limit is given in minutes (``--hours`` x 60, the release passed bare hours to ``-t``, which Slurm reads as
minutes), no conda environment is named (the job runs the Python that launched it) and the local rank comes
from ``SLURM_LOCALID``. Before submitting, ``check_partition_fits`` refuses what the partition can never run.
"""
from __future__ import annotations

import contextlib
import io
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


def slurm_parameters(*, name: str, nodes: int, gpus_per_node: int, tasks_per_node: int, hours: float,
                     cpus_per_task: int, mem_gb: float | None, partition: str | None, account: str | None,
                     qos: str | None, constraint: str | None, setup: list[str]) -> dict[str, Any]:
    """submitit SlurmExecutor parameters (sbatch names): ``tasks_per_node`` tasks (one per GPU) on every node."""
    params: dict[str, Any] = {
        "job_name": name,
        "time": timeout_minutes(hours),
        "nodes": nodes,
        "ntasks_per_node": tasks_per_node,
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
    """Shell lines run before srun: work from the code (the experiment's snapshot) and make it importable."""
    paths = [code_root] + ([entry_root] if entry_root != code_root else [])
    joined = ":".join(shlex.quote(p) for p in paths)
    return [f"cd {shlex.quote(entry_root)}", f'export PYTHONPATH={joined}"${{PYTHONPATH:+:$PYTHONPATH}}"']


def submitit_command(folder: str, python: str | None = None) -> str:
    """What every task runs (submitit's own entry); identical to SlurmExecutor's."""
    return " ".join([shlex.quote(python or sys.executable), "-u -m submitit.core._submit", shlex.quote(folder)])


def sbatch_preview(folder: str, params: dict[str, Any]) -> str:
    """The sbatch script submitit would submit (for --dry_run): built by submitit's own writer."""
    # Private, but submitit has no public way to render a script without submitting it, and a copy of its
    # rules here would drift from what it really submits.
    from submitit.slurm.slurm import _make_sbatch_string

    return _make_sbatch_string(command=submitit_command(folder), folder=folder, **params)


def _sinfo(*fields: str) -> list[str] | None:
    """``sinfo -h`` lines with the given arguments; None when there is no sinfo or it fails (no cluster here)."""
    if shutil.which("sinfo") is None:
        return None
    try:
        out = subprocess.run(["sinfo", "-h", *fields], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.split("\n") if out.returncode == 0 else None


def default_partition() -> str | None:
    """The cluster's default partition (``sinfo`` marks it with ``*``), or None when there is none or no sinfo."""
    for line in (_sinfo("-o", "%P") or []):
        if line.strip().endswith("*"):
            return line.strip().rstrip("*")
    return None


@dataclass(frozen=True)
class NodeSize:
    """One node of a partition as sinfo reports it: CPUs, memory (MB) and GPUs (from its gres)."""

    name: str
    cpus: int
    memory_mb: int
    gpus: int


def _gpus_of(gres: str) -> int:
    """``gpu:8``, ``gpu:a100:4(S:0-1)``, ``gpu:2,shard:4`` -> the GPU count; ``(null)`` -> 0."""
    total = 0
    for item in gres.split(","):
        if item.startswith("gpu:"):
            count = item.split("(")[0].rsplit(":", 1)[-1]
            total += int(count) if count.isdigit() else 0
    return total


def _limit_minutes(limit: str) -> float | None:
    """sinfo's time limit (``infinite``, ``2-00:00:00``, ``4:00:00``, ``30:00`` = M:S, ``30``) in minutes."""
    days, _, clock = limit.rpartition("-")
    parts = clock.split(":")
    if not all(p.isdigit() for p in parts + ([days] if days else [])):
        return None  # infinite / UNLIMITED / n/a
    if len(parts) == 1:
        return int(days or 0) * 1440 + int(parts[0])
    hours, minutes, seconds = [0] * (3 - len(parts)) + [int(p) for p in parts]
    return int(days or 0) * 1440 + hours * 60 + minutes + seconds / 60


def check_partition_fits(partition: str, *, nodes: int, tasks_per_node: int, cpus_per_task: int,
                         mem_gb: float | None, gpus_per_node: int, minutes: int) -> None:
    """Refuse a job that ``partition`` can never run (its time limit, or no node or too few nodes with the CPUs,
    memory and GPUs): Slurm would keep it pending forever (reason PartitionConfig, PartitionTimeLimit) without a
    word. Skipped when sinfo cannot answer."""
    listing = _sinfo("-N", "-p", partition, "-o", "%N|%c|%m|%G|%l")
    if listing is None:
        return
    sizes, limit = {}, None
    for line in filter(None, (line.strip() for line in listing)):
        fields = line.split("|")
        if len(fields) != 5 or not fields[1].rstrip("+").isdigit() or not fields[2].rstrip("+").isdigit():
            return  # not the answer of a Slurm sinfo: nothing to check against
        sizes[fields[0]] = NodeSize(fields[0], int(fields[1].rstrip("+")), int(fields[2].rstrip("+")),
                                    _gpus_of(fields[3]))
        limit = _limit_minutes(fields[4])
    if not sizes:
        known = sorted({line.strip().rstrip("*") for line in (_sinfo("-o", "%P") or []) if line.strip()})
        raise LaunchError(f"partition {partition!r} not found: this cluster has {', '.join(known) or 'none'} "
                          f"(give --partition NAME)")
    if limit is not None and minutes > limit:
        raise LaunchError(f"partition {partition} allows jobs of {limit:g} minutes at most, this one asks for "
                          f"{minutes} (--hours): lower --hours (requeues continue a longer run) or choose another "
                          f"--partition")
    cpus = tasks_per_node * cpus_per_task
    memory_mb = int(mem_gb * 1024) if mem_gb is not None else 0
    fitting = [n for n in sizes.values() if n.cpus >= cpus and n.memory_mb >= memory_mb and n.gpus >= gpus_per_node]
    if len(fitting) >= nodes:
        return
    most = (max(n.cpus for n in sizes.values()), max(n.memory_mb for n in sizes.values()) / 1024,
            max(n.gpus for n in sizes.values()))
    memory = f", {mem_gb:g} GB" if mem_gb is not None else ""
    raise LaunchError(f"partition {partition} cannot run this job: it needs {nodes} node(s) with {tasks_per_node} "
                      f"task(s) x {cpus_per_task} CPU(s) = {cpus} CPUs{memory} and {gpus_per_node} GPU(s) each, "
                      f"but {len(fitting)} of its {len(sizes)} node(s) have that (its nodes have at most {most[0]} "
                      f"CPUs, {most[1]:.1f} GB, {most[2]} GPUs); lower --cpus_per_task/--mem_gb/--tasks_per_node/"
                      f"--num_gpus or choose another --partition")


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

        env = submitit.helpers.TorchDistributedEnvironment()  # RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...
        env.master_port = master_port_for(str(submitit.JobEnvironment().job_id), self.master_port)
        env.export(set_cuda_visible_devices=False, overwrite=True)  # the engine picks the GPU by LOCAL_RANK
        print(f"[job_launcher] task rank {env.rank}/{env.world_size} (local {env.local_rank}), "
              f"master {env.master_addr}:{env.master_port}", flush=True)
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
