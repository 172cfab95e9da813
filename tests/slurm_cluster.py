"""A private one-node Slurm cluster for the tests: munged, slurmctld and slurmd on this machine, as root.

Everything lives under one folder (key, sockets, pid files, config, state, spool, logs); the daemons listen on
free ports and are stopped by the process ids this module started, so a system Slurm or munge is never touched.
Clients (sbatch, srun, sinfo, scontrol, scancel) find the cluster through ``SLURM_CONF``; jobs inherit it.

    with slurm_cluster(folder) as cluster:      # blocks until the node is idle
        subprocess.run(["sinfo"], env=cluster.env)

By hand: ``python -m tests.slurm_cluster /tmp/slurm`` starts one and waits (Ctrl-C stops it).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "sinfo", "squeue", "scontrol", "scancel")
PARTITION = "debug"  # the default partition, no time limit
SHORT_PARTITION = "short"  # the same node, 10 minutes at most
REQUEUE_DELAY_S = 5  # AuthInfo cred_expire: how long Slurm holds a requeued job (its default is 120 s)


@dataclass(frozen=True)
class Cluster:
    """A running cluster: its folder, partition, node size and the environment its clients need."""

    folder: Path
    partition: str
    node: str
    cpus: int
    memory_mb: int
    env: dict[str, str]


def missing_programs() -> list[str]:
    return [name for name in DAEMONS + CLIENTS if shutil.which(name) is None]


def install_packages() -> bool:
    """apt-get install slurm-wlm munge (root, Debian/Ubuntu); True when every program is there afterwards."""
    if not missing_programs():
        return True
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        if subprocess.run(command, env=env, capture_output=True, timeout=600, check=False).returncode != 0:
            return False
    return not missing_programs()


def unavailable_reason() -> str | None:
    """Why no cluster can start here (None when one can)."""
    if os.geteuid() != 0:
        return "the Slurm tests start slurmctld/slurmd as root; run pytest as root"
    if not install_packages():
        return f"{', '.join(PACKAGES)} missing and not installable here (missing: {', '.join(missing_programs())})"
    return None


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _node_size() -> tuple[int, int]:
    """(CPUs, memory in MB) as slurmd itself sees the machine, with some memory kept for the system."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=60, check=True).stdout
    fields = dict(word.split("=", 1) for word in out.split() if "=" in word)
    return int(fields["CPUs"]), max(1024, int(fields["RealMemory"]) - 1024)


def slurm_conf(folder: Path, node: str, cpus: int, memory_mb: int, ports: tuple[int, int], munge_socket: Path) -> str:
    """The one-node configuration: no cgroups (linuxproc, task/none), consumable CPUs and memory, requeue on."""
    ctld_port, slurmd_port = ports
    return "\n".join([
        "ClusterName=suavetest",
        f"SlurmctldHost={node}(127.0.0.1)",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"SlurmctldPort={ctld_port}",
        f"SlurmdPort={slurmd_port}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket},cred_expire={REQUEUE_DELAY_S}",
        f"StateSaveLocation={folder / 'state'}",
        f"SlurmdSpoolDir={folder / 'spool'}",
        f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
        f"SlurmdPidFile={folder / 'slurmd.pid'}",
        f"SlurmctldLogFile={folder / 'slurmctld.log'}",
        f"SlurmdLogFile={folder / 'slurmd.log'}",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU_Memory",
        "SchedulerType=sched/backfill",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "MpiDefault=none",
        "JobRequeue=1",
        "ReturnToService=2",
        "MinJobAge=300",
        "KillWait=5",
        "SchedulerParameters=sched_interval=2",
        f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP",
        f"PartitionName={SHORT_PARTITION} Nodes={node} MaxTime=10 State=UP",
        "",
    ])


def _start(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "ab") as handle:
        return subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the process we started (and its own session), SIGKILL after 15 s."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


def _wait_until(check, what: str, timeout: float, logs: list[Path], processes: list[subprocess.Popen]) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        dead = [p.args[0] for p in processes if p.poll() is not None]
        if dead:
            break
        time.sleep(0.5)
    tails = "\n".join(f"--- {log}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
                      for log in logs if log.exists())
    raise RuntimeError(f"Slurm test cluster: {what} not reached in {timeout:.0f} s\n{tails}")


def cancel_all_jobs(env: dict[str, str], timeout: float = 30) -> None:
    """scancel what is still queued or running on this cluster, so no job step outlives it."""
    def queued() -> list[str]:
        return subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True, timeout=30,
                              check=False).stdout.split()

    jobs = queued()
    if jobs:
        subprocess.run(["scancel", *jobs], env=env, capture_output=True, timeout=30, check=False)
        deadline = time.time() + timeout
        while queued() and time.time() < deadline:
            time.sleep(0.5)


@contextlib.contextmanager
def slurm_cluster(folder: str | os.PathLike, timeout: float = 90) -> Iterator[Cluster]:
    """Start munged, slurmctld and slurmd under ``folder``, wait until the node is idle, yield, stop them."""
    folder = Path(folder).resolve()
    for sub in ("munge", "state", "spool"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / "munge").chmod(0o700)
    key = folder / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    munge_socket = folder / "munge" / "munge.socket"
    node = socket.gethostname().split(".")[0]
    cpus, memory_mb = _node_size()
    conf = folder / "slurm.conf"
    conf.write_text(slurm_conf(folder, node, cpus, memory_mb, tuple(_free_ports(2)), munge_socket))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
    env["SLURM_CONF"] = str(conf)
    logs = [folder / "munged.log", folder / "slurmctld.log", folder / "slurmd.log", folder / "daemons.out"]
    processes: list[subprocess.Popen] = []
    try:
        processes.append(_start(["munged", "--foreground", "--force", f"--socket={munge_socket}",
                                 f"--key-file={key}", f"--pid-file={folder / 'munge' / 'munged.pid'}",
                                 f"--seed-file={folder / 'munge' / 'munged.seed'}",
                                 f"--log-file={folder / 'munged.log'}"], logs[3], env))
        _wait_until(munge_socket.exists, "munged's socket", timeout, logs, processes)
        processes.append(_start(["slurmctld", "-D", "-i", "-f", str(conf)], logs[3], env))
        processes.append(_start(["slurmd", "-D", "-f", str(conf), "-N", node], logs[3], env))

        def node_idle() -> bool:
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], env=env, capture_output=True, text=True,
                                 timeout=30, check=False).stdout.split()
            return bool(out) and set(out) == {"idle"}  # one line per partition of the node

        _wait_until(node_idle, "an idle node", timeout, logs, processes)
        yield Cluster(folder, PARTITION, node, cpus, memory_mb, env)
    finally:
        if len(processes) == 3:
            cancel_all_jobs(env)
        for process in reversed(processes):
            _stop(process)


if __name__ == "__main__":  # pragma: no cover - the manual way: start a cluster, keep it until Ctrl-C or kill
    import sys

    reason = unavailable_reason()
    if reason:
        sys.exit(reason)
    for stop_signal in (signal.SIGINT, signal.SIGTERM):  # also when started in the background (SIGINT ignored)
        signal.signal(stop_signal, lambda *_: sys.exit(0))
    with slurm_cluster(sys.argv[1] if len(sys.argv) > 1 else "/tmp/suave-slurm") as running:
        print(f"cluster up: export SLURM_CONF={running.env['SLURM_CONF']}  (partition {running.partition}, "
              f"{running.cpus} CPUs, {running.memory_mb} MB); Ctrl-C or kill {os.getpid()} stops it", flush=True)
        while True:
            signal.pause()
