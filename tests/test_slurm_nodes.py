"""Beyond one machine: job_launcher.py --mode slurm on a REAL two-node Slurm cluster (tests/slurm_cluster.py with
nodes=2: n1 and n2, two slurmd on this host), and torchrun's multi-node form; CPU (gloo), one task a node.

Proven here: a Suave and a Daino job run as rank 0 on n1 and rank 1 on n2 in one world of 2, write checkpoint,
stats and log once, and end with the weights of a local ``torchrun --standalone --nproc_per_node 2`` of the same
flags; preemption across nodes (USR2) requeues, both nodes resume from the same checkpoint.pth and end with the
uninterrupted weights; a rank lost mid-run (killed: its connections close; stopped: it vanishes without closing
them, which ``--dist_timeout`` catches) ends the job within a bound, leaves the checkpoint and stats intact, the
log's last line names the rank, its node and ``job_launcher.py --resume EXP``, and that command continues to the
end; two torchrun agents (``--nnodes 2 --node_rank 0|1``) equal the standalone run; a job asking for more nodes
than the cluster has is refused at submission in one line. Needs root (skipped otherwise).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import job_launcher
from src.checkpoint import read_checkpoint
from tests.dist_helpers import free_port
from tests.slurm_cluster import slurm_cluster, unavailable_reason
from tests.test_slurm_real import (JOB_TIMEOUT_S, REPO, assert_finished_run, checkpoint_epoch, inputs,  # noqa: F401
                                   job_field, launcher_argv, slurm, submit, submitted_job_id, task_logs, wait_for,
                                   wait_for_job)

pytestmark = pytest.mark.slow
NODES = ("n1", "n2")
TWO_NODES = ["--num_nodes", "2", "--tasks_per_node", "1"]
EPOCHS = {"suave": 3, "daino": 2}
DIST_TIMEOUT_S = 15  # the lost-node test's --dist_timeout (the default is 1800)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The two-node cluster (``slurm``, imported, gives its clients to each test)."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with slurm_cluster(tmp_path_factory.mktemp("slurm2"), nodes=2) as running:
        yield running


def local_env() -> dict[str, str]:
    """A shell outside Slurm: one thread per process, no Slurm variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    return env | {"OMP_NUM_THREADS": "1"}


def start_torchrun(experiment: str, output_dir: str, *rendezvous: str) -> subprocess.Popen:
    """The experiment's recorded entry script and flags under torchrun (``rendezvous``: its form), writing to
    ``output_dir`` instead; one thread per process, no Slurm variables."""
    record = json.loads(Path(experiment, "args.json").read_text())
    flags = list(record["train_flags"])
    flags[flags.index("--output_dir") + 1] = output_dir
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *rendezvous, record["entry_script"],
                             *flags], cwd=REPO, env=local_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish(process: subprocess.Popen, timeout: float = JOB_TIMEOUT_S) -> str:
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out[-3000:]
    return out


def assert_equal_weights(path: str, reference_path: str) -> int:
    """Every network of the run file at ``path`` equals ``reference_path``'s (the resume tests' tolerance)."""
    final, reference = read_checkpoint(path), read_checkpoint(reference_path)
    assert (final["epoch"], final["iteration"], final["world_size"]) == (
        reference["epoch"], reference["iteration"], reference["world_size"])
    compared = 0
    for network in [name for name in ("student", "teacher") if name in reference]:
        for key, tensor in reference[network].items():
            torch.testing.assert_close(final[network][key], tensor, rtol=1e-6, atol=1e-6, msg=f"{network}.{key}")
            compared += 1
    return compared


def launcher_lines(experiment: str, job_id: str) -> list[str]:
    """Each task's ``[job_launcher] task rank`` lines, task 0's first."""
    return [line for task in (0, 1) for line in
            Path(experiment, "slurm", f"{job_id}_{task}_log.out").read_text().splitlines()
            if "[job_launcher] task rank" in line]


@dataclass(frozen=True)
class TwoNodeRun:
    experiment: str
    job_id: str
    stdout: str  # the launcher's
    local: str  # the output of torchrun --standalone --nproc_per_node 2 with the same flags


@pytest.fixture(scope="module")
def two_node_runs(cluster, inputs, tmp_path_factory) -> dict[str, TwoNodeRun]:
    """A Suave and a Daino job across n1 and n2 (queued one after the other), and meanwhile the same flags in a
    local two-process run."""
    base = tmp_path_factory.mktemp("two_nodes")
    submitted = {}
    for method, epochs in EPOCHS.items():
        done = subprocess.run([sys.executable, os.path.join(REPO, "job_launcher.py"),
                               *launcher_argv(inputs, method, str(base), method, epochs, *TWO_NODES)],
                              capture_output=True, text=True, timeout=120, env=dict(cluster.env, OMP_NUM_THREADS="1"),
                              cwd=REPO)
        assert done.returncode == 0, done.stderr
        submitted[method] = (str(base / method), submitted_job_id(done.stdout), done.stdout)
    local = {method: start_torchrun(experiment, str(base / f"local_{method}"), "--standalone", "--nproc_per_node",
                                    "2") for method, (experiment, _, _) in submitted.items()}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])
        for experiment, job_id, _ in submitted.values():
            assert wait_for_job(job_id, experiment) == "COMPLETED", task_logs(experiment, job_id)
    for process in local.values():
        finish(process)
    return {method: TwoNodeRun(*submitted[method], str(base / f"local_{method}")) for method in EPOCHS}


def task_pid(job_id: str, rank: int) -> int:
    """The process of the job's task ``rank`` (submitit's runner), found by its Slurm variables in /proc."""
    wanted = {f"SLURM_JOB_ID={job_id}".encode(), f"SLURM_PROCID={rank}".encode()}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path("/proc", entry, "cmdline").read_bytes()
            environ = set(Path("/proc", entry, "environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if b"submitit.core._submit" in cmdline and wanted <= environ:
            return int(entry)
    raise AssertionError(f"no process of task {rank} of job {job_id}")


# ------------------------------------------------------------------------------------------ refused at launch
def test_more_nodes_than_the_cluster_has_are_refused_in_one_line(slurm, inputs, tmp_path, capsys):
    base = str(tmp_path / "exps")
    argv = launcher_argv(inputs, "suave", base, "three", 1, "--num_nodes", "3", "--tasks_per_node", "1")
    assert job_launcher.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["job_launcher.py: error: Slurm cannot run this job in the cluster's default partition: "
                     "Requested node configuration is not available (--time=4800 --nodes=3 --ntasks-per-node=1 --cpus-per-task=1 "
                     "--mem=2GB): change --num_nodes/--tasks_per_node/--cpus_per_task/--mem_gb/--num_gpus/"
                     "--constraint or --partition"], lines
    assert not os.path.exists(base) or os.listdir(base) == []


# ------------------------------------------------------------------------------------------ across two nodes
@pytest.mark.parametrize("method", list(EPOCHS))
def test_two_node_job_runs_a_rank_on_each_node_and_equals_a_local_two_process_run(slurm, two_node_runs, method):
    run = two_node_runs[method]
    assert f"Submitted job {run.job_id} (2 node(s) x 1 task(s), 0 GPU(s) per node" in run.stdout
    lines = launcher_lines(run.experiment, run.job_id)
    print("\n".join(lines))
    assert [line.split("[job_launcher] ")[1].split(", master")[0] for line in lines] == [
        "task rank 0/2 (local 0) on node n1", "task rank 1/2 (local 0) on node n2"]
    assert all(", master n1:" in line for line in lines)  # submitit's rendezvous: the first node's name
    assert_finished_run(run.experiment, run.job_id, EPOCHS[method], nodes=NODES)
    compared = assert_equal_weights(os.path.join(run.experiment, "checkpoint.pth"),
                                     os.path.join(run.local, "checkpoint.pth"))
    print(f"equal weights: {compared} tensors of the two-node {method} run equal torchrun --standalone "
          "--nproc_per_node 2 (rtol=atol=1e-6)")


def test_torchrun_agents_on_two_nodes_equal_the_standalone_run(two_node_runs, tmp_path):
    """The README's command per node, both nodes here: a static rendezvous at node 0's address."""
    run, port = two_node_runs["suave"], str(free_port())
    agents = [start_torchrun(run.experiment, str(tmp_path / "agents"), "--nnodes", "2", "--node_rank", str(node),
                             "--master_addr", "127.0.0.1", "--master_port", port, "--nproc_per_node", "1")
              for node in (0, 1)]
    for agent in agents:
        finish(agent)
    train_log = Path(tmp_path, "agents", "train.log").read_text()
    assert "2 process(es), backend gloo" in train_log and train_log.count(" done: ") == 1
    compared = assert_equal_weights(str(tmp_path / "agents" / "checkpoint.pth"),
                                    os.path.join(run.local, "checkpoint.pth"))
    print(f"equal weights: {compared} tensors of two torchrun agents (--nnodes 2) equal --standalone")


def test_preempted_two_node_job_resumes_on_both_nodes_to_the_uninterrupted_weights(slurm, inputs, two_node_runs,
                                                                                 tmp_path, capsys):
    base = str(tmp_path / "exps")
    experiment = os.path.join(base, "preempted")
    checkpoint = os.path.join(experiment, "checkpoint.pth")
    job_id = submit(launcher_argv(inputs, "suave", base, "preempted", EPOCHS["suave"], *TWO_NODES), capsys)
    wait_for(lambda: checkpoint_epoch(checkpoint) >= 1, JOB_TIMEOUT_S, "the first epoch's checkpoint")
    assert checkpoint_epoch(checkpoint) == 1, "the job ran past epoch 1 before the signal: make epochs longer"
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)  # to every step's tasks
    wait_for(lambda: job_field(job_id, "Restarts") == "1", 60, "the requeue")
    assert wait_for_job(job_id, experiment) == "COMPLETED", task_logs(experiment, job_id)

    out = [Path(experiment, "slurm", f"{job_id}_{task}_log.out").read_text() for task in (0, 1)]
    train_log = Path(experiment, "train.log").read_text()
    with capsys.disabled():
        print("\n" + "\n".join(line for line in out[0].splitlines() + out[1].splitlines()
                               if any(word in line for word in ("Caught signal", "requeuing", "Requeued job",
                                                                "task rank", "resumed from", "done:"))))
    assert "Caught signal SIGUSR2" in out[0] and f"Requeued job {job_id}" in out[0]
    for task, node in enumerate(NODES):  # both allocations ran a task on each node
        assert out[task].count(f"task rank {task}/2 (local 0) on node {node}") == 2, out[task][-2000:]
    assert f"resumed from {checkpoint}: epoch 1, iteration 2" in train_log
    assert_finished_run(experiment, job_id, EPOCHS["suave"], nodes=NODES)
    compared = assert_equal_weights(checkpoint, os.path.join(two_node_runs["suave"].experiment, "checkpoint.pth"))
    print(f"equal weights: {compared} tensors of the requeued two-node run equal the uninterrupted one")


# ------------------------------------------------------------------------------------------ a node lost mid-run
def test_a_lost_rank_ends_the_job_names_it_and_resume_continues(slurm, inputs, tmp_path, capsys):
    """Rank 1 (n2) killed (its sockets close), then after --resume stopped (it vanishes without closing them: the
    process-group timeout catches it); each time the job ends within a bound, the last line says what to run."""
    base = str(tmp_path / "exps")
    experiment, epochs = os.path.join(base, "lost"), 5
    checkpoint = os.path.join(experiment, "checkpoint.pth")
    job_id = submit(launcher_argv(inputs, "suave", base, "lost", epochs, *TWO_NODES) +
                    ["--dist_timeout", str(DIST_TIMEOUT_S)], capsys)
    resumed_at = []
    for how, lost_signal, bound_s in (("killed", signal.SIGKILL, 30), ("stopped", signal.SIGSTOP, DIST_TIMEOUT_S + 30)):
        wait_for(lambda: checkpoint_epoch(checkpoint) >= 1 + max(resumed_at, default=0), JOB_TIMEOUT_S,
                 "a new epoch's checkpoint")
        os.kill(task_pid(job_id, 1), lost_signal)
        lost_at = time.time()
        assert wait_for_job(job_id, experiment, bound_s) == "FAILED"
        ended_s = time.time() - lost_at
        last = Path(experiment, "train.log").read_text().splitlines()[-1]
        with capsys.disabled():
            print(f"\nrank 1 {how}: job {job_id} ended {ended_s:.0f} s later; train.log's last line:\n{last}")
        assert "lost rank 1 (node n2) stopped answering (" in last, last
        assert last.endswith(f"continue with: python job_launcher.py --resume {experiment}"), last
        message = last.split("] ", 1)[1]  # the traceback ends with the same words
        assert f"src.errors.RankLost: {message}\n" in Path(experiment, "slurm", f"{job_id}_0_log.err").read_text()
        epoch = checkpoint_epoch(checkpoint)  # loadable; the stats rows before it intact
        rows = [line.split(",")[0] for line in Path(experiment, "stats.csv").read_text().splitlines()[1:]]
        assert rows == [str(e) for e in range(len(rows))] and epoch in (len(rows), len(rows) - 1), (rows, epoch)
        assert not os.path.exists(os.path.join(experiment, "results.json"))
        resumed_at.append(epoch)
        job_id = submit(["--resume", experiment], capsys)
    assert wait_for_job(job_id, experiment) == "COMPLETED", task_logs(experiment, job_id)
    train_log = Path(experiment, "train.log").read_text()
    for epoch in resumed_at:
        assert f"resumed from {checkpoint}: epoch {epoch}, iteration {2 * epoch}" in train_log
    assert_finished_run(experiment, job_id, epochs, nodes=NODES)
