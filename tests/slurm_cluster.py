"""A private Slurm cluster of one or two nodes for the tests: munged, slurmctld and one slurmd per node on this
machine, as root.

Everything lives under one folder (key, sockets, pid files, config, state, spool, logs); the daemons listen on
free ports and are stopped by the process ids this module started, so a system Slurm or munge is never touched.
Clients (sbatch, srun, sinfo, scontrol, scancel) find the cluster through ``SLURM_CONF``; jobs inherit it.
One node is this host under its own name. Two nodes are ``n1`` and ``n2``: two slurmd on this host, each with its
own port, spool, pid and log file (``slurmd -N n1``, ``slurmd -N n2``); as on a real cluster their names resolve
(submitit makes the first node's name the rendezvous address), through an ``/etc/hosts`` line the cluster adds and
removes when they do not already.

    with slurm_cluster(folder, nodes=2) as cluster:      # blocks until every node is idle
        subprocess.run(["sinfo"], env=cluster.env)

By hand: ``python -m tests.slurm_cluster /tmp/slurm [NODES]`` starts one and waits (Ctrl-C stops it).
"""
from __future__ import annotations

import contextlib
import os
import random
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
    """A running cluster: its folder, partition, node names and size (each) and the environment its clients need."""

    folder: Path
    partition: str
    nodes: tuple[str, ...]
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


def slurm_conf(folder: Path, host: str, nodes: tuple[str, ...], cpus: int, memory_mb: int, ports: list[int],
               munge_socket: Path, first_job_id: int = 1) -> str:
    """The configuration: no cgroups (linuxproc, task/none), consumable CPUs and memory, requeue on; each node
    its own slurmd port (``ports``: slurmctld's, then one per node) and, with several, its own files (``%n``).
    ``first_job_id``: test clusters on one host number their jobs apart, so that the jobs' rendezvous ports
    (the launcher's rule: 10000 + the job id's last 4 digits) do not meet."""
    ctld_port, slurmd_ports = ports[0], ports[1:]
    per_node = ".%n" if len(nodes) > 1 else ""
    node_lines = [f"NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 Port={port} CPUs={cpus} "
                  f"RealMemory={memory_mb} State=UNKNOWN" for node, port in zip(nodes, slurmd_ports)]
    names = ",".join(nodes)
    return "\n".join([
        "ClusterName=suavetest",
        f"SlurmctldHost={host}(127.0.0.1)",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"SlurmctldPort={ctld_port}",
        f"SlurmdPort={slurmd_ports[0]}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket},cred_expire={REQUEUE_DELAY_S}",
        f"StateSaveLocation={folder / 'state'}",
        f"SlurmdSpoolDir={folder / 'spool'}{'/%n' if per_node else ''}",
        f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
        f"SlurmdPidFile={folder / f'slurmd{per_node}.pid'}",
        f"SlurmctldLogFile={folder / 'slurmctld.log'}",
        f"SlurmdLogFile={folder / f'slurmd{per_node}.log'}",
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
        f"FirstJobId={first_job_id}",
        "KillWait=5",
        "SchedulerParameters=sched_interval=2",
        *node_lines,
        f"PartitionName={PARTITION} Nodes={names} Default=YES MaxTime=INFINITE State=UP",
        f"PartitionName={SHORT_PARTITION} Nodes={names} MaxTime=10 State=UP",
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


HOSTS_FILE = Path("/etc/hosts")
HOSTS_MARK = "# suave-daino test cluster"  # the lines test clusters add (and remove: each its own)


def _resolves_by_itself(name: str) -> bool:
    """``name`` resolves, and not through a line another test cluster added (it may remove it at any time)."""
    lines = HOSTS_FILE.read_text(encoding="utf-8").splitlines() if HOSTS_FILE.exists() else []
    if any(HOSTS_MARK in line and name in line.split("#")[0].split()[1:] for line in lines):
        return False
    try:
        socket.gethostbyname(name)
        return True
    except OSError:
        return False


@contextlib.contextmanager
def resolvable(names: tuple[str, ...], folder: Path) -> Iterator[None]:
    """Make ``names`` resolve to 127.0.0.1 while the block runs: one ``/etc/hosts`` line (marked as this cluster's),
    written in place (a container's /etc/hosts is a mount) and removed afterwards; nothing when they resolve."""
    missing = [name for name in names if not _resolves_by_itself(name)]
    line = f"127.0.0.1 {' '.join(missing)}  {HOSTS_MARK} {folder}\n"
    if missing:
        with open(HOSTS_FILE, "a", encoding="utf-8") as hosts:
            hosts.write(line)
    try:
        yield
    finally:
        if missing:
            with open(HOSTS_FILE, "r+", encoding="utf-8") as hosts:
                kept = [entry for entry in hosts.readlines() if entry != line]
                hosts.seek(0)
                hosts.writelines(kept)
                hosts.truncate()


@contextlib.contextmanager
def slurm_cluster(folder: str | os.PathLike, nodes: int = 1, timeout: float = 90) -> Iterator[Cluster]:
    """Start munged, slurmctld and ``nodes`` slurmd (1 or 2) under ``folder``, wait until every node is idle,
    yield, stop them. Two nodes share this host's CPUs and memory between them."""
    if nodes not in (1, 2):
        raise ValueError(f"nodes={nodes}: the test cluster has 1 or 2 nodes")
    folder = Path(folder).resolve()
    host = socket.gethostname().split(".")[0]
    names = (host,) if nodes == 1 else ("n1", "n2")
    for sub in ("munge", "state", "spool", *(f"spool/{name}" for name in names if nodes > 1)):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / "munge").chmod(0o700)
    key = folder / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    munge_socket = folder / "munge" / "munge.socket"
    cpus, memory_mb = _node_size()
    cpus, memory_mb = max(1, cpus // nodes), max(1024, memory_mb // nodes)
    conf = folder / "slurm.conf"
    conf.write_text(slurm_conf(folder, host, names, cpus, memory_mb, _free_ports(1 + nodes), munge_socket,
                               random.randrange(1000, 9000)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
    env["SLURM_CONF"] = str(conf)
    slurmd_logs = [folder / ("slurmd.log" if nodes == 1 else f"slurmd.{name}.log") for name in names]
    logs = [folder / "munged.log", folder / "slurmctld.log", *slurmd_logs, folder / "daemons.out"]
    processes: list[subprocess.Popen] = []
    with resolvable(names, folder):
        try:
            processes.append(_start(["munged", "--foreground", "--force", f"--socket={munge_socket}",
                                     f"--key-file={key}", f"--pid-file={folder / 'munge' / 'munged.pid'}",
                                     f"--seed-file={folder / 'munge' / 'munged.seed'}",
                                     f"--log-file={folder / 'munged.log'}"], logs[-1], env))
            _wait_until(munge_socket.exists, "munged's socket", timeout, logs, processes)
            processes.append(_start(["slurmctld", "-D", "-i", "-f", str(conf)], logs[-1], env))
            for name in names:
                processes.append(_start(["slurmd", "-D", "-f", str(conf), "-N", name], logs[-1], env))

            def nodes_idle() -> bool:
                out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], env=env, capture_output=True, text=True,
                                     timeout=30, check=False).stdout.split("\n")
                states = {tuple(line.split()) for line in out if line.strip()}  # one line per node and partition
                return {node for node, _ in states} == set(names) and {state for _, state in states} == {"idle"}

            _wait_until(nodes_idle, "every node idle", timeout, logs, processes)
            yield Cluster(folder, PARTITION, names, cpus, memory_mb, env)
        finally:
            if len(processes) == 2 + nodes:
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
    with slurm_cluster(sys.argv[1] if len(sys.argv) > 1 else "/tmp/suave-slurm",
                       int(sys.argv[2]) if len(sys.argv) > 2 else 1) as running:
        print(f"cluster up: export SLURM_CONF={running.env['SLURM_CONF']}  (partition {running.partition}, nodes "
              f"{','.join(running.nodes)}: {running.cpus} CPUs, {running.memory_mb} MB each); Ctrl-C or kill "
              f"{os.getpid()} stops it", flush=True)
        while True:
            signal.pause()
