"""job_launcher.py --mode slurm against a REAL scheduler: a private one-node Slurm cluster (tests/slurm_cluster.py)
runs tiny Suave and Daino jobs of 2 CPU tasks (gloo) through sbatch/srun and submitit.

Proven here: runs to completion (per-task logs, the job id printed, checkpoint and stats written once by rank 0);
preemption (USR2 to the job's steps -> submitit's checkpoint() requeues -> the requeued job resumes from
checkpoint.pth and ends with the weights of an uninterrupted run); scancel then ``--resume DIR``; code snapshots
(editing the checkout after submission changes nothing in the queued or requeued job); submissions no node can
run, or with broken inputs, refused at launch with one line. Needs root (skipped otherwise); installs slurm-wlm and
munge when missing. Runs in a few minutes: each job is a few seconds of training after ~20-40 s of start-up.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import job_launcher
from src.checkpoint import read_checkpoint
from launch.records import snapshot_code
from tests.slurm_cluster import cancel_all_jobs, slurm_cluster, unavailable_reason

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOB_TIMEOUT_S = 240  # one job, start-up included, on a busy 2-core machine
pytestmark = pytest.mark.slow

TINY_SUAVE = """main_suave.py \\
--arch resnet18 --small_stem false --hidden_mlp 32 --feat_dim 16 \\
--nmb_crops 2 2 --size_crops 32 16 --min_scale_crops 0.3 0.1 --max_scale_crops 1 0.3 \\
--batch_size 8 --lab_batch_size 4 --base_lr 0.3 --final_lr 0.003 --warmup_epochs 0 --warmup_proj_nepochs 0 \\
--workers 0 --use_fp16 false --lab_crop_size 32 --val_resize 32 --val_crop 32 --max_iters_per_epoch 2 \\
--wandb false
"""
TINY_DAINO = """main_daino.py \\
--arch vit_tiny --patch_size 8 --global_crop_size 32 --local_crop_size 16 --local_crops_number 2 \\
--global_crops_scale 0.4 1 --local_crops_scale 0.1 0.4 --batch_size_per_gpu 8 --lab_batch_size_per_gpu 4 \\
--lr 0.001 --warmup_epochs 0 --num_workers 0 --use_fp16 false --lab_crop_size 32 --val_resize 32 --val_crop 32 \\
--warmup_teacher_temp_epochs 1 --norm_last_layer false --max_iters_per_epoch 2 --wandb false
"""
CPU_JOB = ["--mode", "slurm", "--num_gpus", "0", "--tasks_per_node", "2", "--cpus_per_task", "1", "--mem_gb", "2"]


# ------------------------------------------------------------------------------------------ fixtures, helpers
@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as running:
        yield running


@pytest.fixture
def slurm(cluster, monkeypatch):
    """The cluster's clients for this process (and the jobs it submits); one thread per training task."""
    for name in [k for k in os.environ if k.startswith(("SLURM_", "SBATCH_", "SRUN_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield cluster
    cancel_all_jobs(cluster.env)  # a failed test leaves nothing running for the next one


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    from src.data.synthetic import make_synthetic_imagefolder

    root = tmp_path_factory.mktemp("inputs")
    paths = make_synthetic_imagefolder(root / "data", num_classes=4, train_per_class=16, val_per_class=4, size=32,
                                       seed=0, subset_per_class=4)
    (root / "suave.sh").write_text(TINY_SUAVE)
    (root / "daino.sh").write_text(TINY_DAINO)
    return {"data": str(paths.root), "subset": str(paths.subset_file), "suave": str(root / "suave.sh"),
            "daino": str(root / "daino.sh")}


def launcher_argv(inputs: dict[str, str], method: str, base: str, name: str, epochs: int, *extra: str) -> list[str]:
    return [*CPU_JOB, "--method", method, "--data_dir", inputs["data"], "--script_file", inputs[method],
            "--base_experiment_dir", base, "--experiment_dir", name, *extra,
            "--", "--subset_file", inputs["subset"], "--epochs", str(epochs)]


def wait_for(predicate, timeout: float, what: str, poll: float = 0.2) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(poll)
    raise AssertionError(f"{what} not reached within {timeout:.0f} s")


def job_field(job_id: str, name: str) -> str | None:
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=30).stdout
    match = re.search(rf"\b{name}=(\S+)", out)
    return match.group(1) if match else None


def wait_for_job(job_id: str, experiment: str, timeout: float = JOB_TIMEOUT_S) -> str:
    """Wait until the job has ended; returns its final state (the task logs are shown when it did not end)."""
    ended = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL"}
    try:
        wait_for(lambda: job_field(job_id, "JobState") in ended, timeout, f"the end of job {job_id}", poll=1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{task_logs(experiment, job_id)}") from None
    return job_field(job_id, "JobState") or "?"


def task_logs(experiment: str, job_id: str) -> str:
    folder = Path(experiment) / "slurm"
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                     for p in sorted(folder.glob(f"{job_id}_*_log.*")))


def submitted_job_id(stdout: str) -> str:
    match = re.search(r"^Submitted job (\d+) ", stdout, re.M)
    assert match, stdout
    return match.group(1)


def checkpoint_epoch(path: str) -> int:
    try:
        return int(read_checkpoint(path)["epoch"]) if os.path.isfile(path) else -1
    except Exception:  # noqa: BLE001 - never half-written (atomic rename), but be safe while polling
        return -1


def submit(argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert job_launcher.main(argv) == 0, capsys.readouterr().err
    return submitted_job_id(capsys.readouterr().out)


def assert_finished_run(experiment: str, job_id: str, epochs: int, nodes: tuple[str, str] | None = None) -> dict:
    """Both tasks logged (on ``nodes``, one task each, when given), rank 0 alone wrote the checkpoint, stats and
    log, each once."""
    for task in (0, 1):
        log = (Path(experiment) / "slurm" / f"{job_id}_{task}_log.out").read_text()
        where = f"(local 0) on node {nodes[task]}," if nodes else f"(local {task}) on node "
        assert f"task rank {task}/2 {where}" in log and "Job completed successfully" in log, log[-2000:]
    ckpt = read_checkpoint(os.path.join(experiment, "checkpoint.pth"))
    assert (ckpt["epoch"], ckpt["world_size"]) == (epochs, 2)
    stats = Path(experiment, "stats.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in stats[1:]] == [str(e) for e in range(epochs)]  # one row per epoch
    train_log = Path(experiment, "train.log").read_text()
    assert "2 process(es), backend gloo" in train_log and "[rank 1]" not in train_log
    assert train_log.count(" done: ") == 1, train_log
    assert not [p for p in os.listdir(experiment) if ".tmp" in p or p.endswith(".partial")]
    return ckpt


# ------------------------------------------------------------------------------------------ refused at launch
def test_submissions_no_node_can_run_or_with_broken_inputs_are_refused(slurm, inputs, tmp_path, monkeypatch, capsys):
    base = str(tmp_path / "exps")
    no_val = tmp_path / "no_val"
    (no_val / "train").mkdir(parents=True)
    fix = "change --num_nodes/--tasks_per_node/--cpus_per_task/--mem_gb/--num_gpus/--constraint or --partition"
    asks = "--time=4800 --nodes={} --ntasks-per-node={} --cpus-per-task={} --mem={}"
    unfit = "Slurm cannot run this job in the cluster's default partition: Requested node configuration is not available"
    cases = [  # Slurm's own answers to sbatch --test-only (Slurm 22.05), then the partition's time limit
        (["--partition", "gpu"], [], "Slurm cannot run this job in partition gpu: invalid partition specified: gpu; "
         f"Invalid partition name specified ({asks.format(1, 2, 1, '2GB')} --partition=gpu): {fix}"),
        (["--partition", "short"], [], "partition short allows jobs of 10 minutes at most, this one asks for 4800 "
                                       "(--hours): lower --hours (requeues continue a longer run) or use another "
                                       "--partition"),
        (["--cpus_per_task", "10", "--mem_gb", "40", "--tasks_per_node", "1"], [],  # the launcher's defaults
         f"{unfit} ({asks.format(1, 1, 10, '40GB')}): {fix}"),
        (["--tasks_per_node", str(slurm.cpus + 1)], [], f"{unfit} ({asks.format(1, slurm.cpus + 1, 1, '2GB')}): {fix}"),
        (["--num_nodes", "2"], [], f"{unfit} ({asks.format(2, 2, 1, '2GB')}): {fix}"),
        (["--mem_gb", str(slurm.memory_mb // 1024 + 8)], [],
         f"{unfit} ({asks.format(1, 2, 1, f'{slurm.memory_mb // 1024 + 8}GB')}): {fix}"),
        (["--constraint", "volta32gb"], [], "Slurm cannot run this job in the cluster's default partition: Invalid "
         f"feature specification ({asks.format(1, 2, 1, '2GB')} --constraint=volta32gb): {fix}"),
        ([], ["--swav_init_ckpt", str(tmp_path / "missing.pth")],
         f"checkpoint file not found: {tmp_path / 'missing.pth'} (given by --swav_init_ckpt)"),
        (["--data_dir", str(no_val)], [], f"{no_val} has no val/ folder"),
        ([], ["--subset_file", str(tmp_path / "none.txt")], f"--subset_file {tmp_path / 'none.txt'} does not exist"),
        ([], ["--wandb", "true"], "run `wandb login` first, or add -- --wandb_mode offline"),
    ]
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    for launcher_extra, overrides, message in cases:
        argv = launcher_argv(inputs, "suave", base, "refused", 1) + overrides
        argv[argv.index("--"):argv.index("--")] = launcher_extra  # launcher flags before --, later ones win
        capsys.readouterr()
        assert job_launcher.main(argv) == 2, (launcher_extra, overrides)
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("job_launcher.py: error: "), lines
        assert message in lines[0], lines[0]
        assert not message.startswith(("Slurm", "partition")) or lines[0] == "job_launcher.py: error: " + message
        assert not os.path.exists(base) or os.listdir(base) == []
    assert subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip() == ""


# ------------------------------------------------------------------------------------------ Suave, preemption
@pytest.fixture(scope="module")
def suave_uninterrupted(cluster, inputs, tmp_path_factory) -> tuple[str, str, str]:
    """(experiment, job id, launcher stdout) of a 3-epoch Suave job that nothing interrupts."""
    base = str(tmp_path_factory.mktemp("suave_ref"))
    env = dict(cluster.env, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, os.path.join(REPO, "job_launcher.py"),
                           *launcher_argv(inputs, "suave", base, "ref", 3)], capture_output=True, text=True,
                          timeout=120, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr
    experiment, job_id = os.path.join(base, "ref"), submitted_job_id(done.stdout)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])
        assert wait_for_job(job_id, experiment) == "COMPLETED", task_logs(experiment, job_id)
    return experiment, job_id, done.stdout


def test_suave_two_cpu_tasks_run_to_completion(slurm, suave_uninterrupted):
    experiment, job_id, stdout = suave_uninterrupted
    logs = os.path.join(experiment, "slurm")
    assert f"Submitted job {job_id} (1 node(s) x 2 task(s), 0 GPU(s) per node" in stdout
    assert f"Logs: {logs}/{job_id}_0_log.out (stdout) and {logs}/{job_id}_0_log.err (stderr)" in stdout
    assert_finished_run(experiment, job_id, epochs=3)
    script = Path(logs, f"{job_id}_submission.sh").read_text()
    assert "#SBATCH --ntasks-per-node=2" in script and "#SBATCH --cpus-per-task=1" in script
    assert "gpus" not in script and f"cd {experiment}/code\n" in script


def clone_checkout(folder: Path) -> Path:
    """A git checkout holding this checkout's tracked files as they are now (the user's checkout in the test)."""
    snapshot_code(REPO, str(folder))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(folder)]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "checkout"]):
        subprocess.run(git + command, check=True, capture_output=True, timeout=60)
    return folder


def test_preempted_job_requeues_resumes_and_ends_with_the_uninterrupted_weights(
        slurm, inputs, suave_uninterrupted, tmp_path, capsys):
    checkout = clone_checkout(tmp_path / "checkout")
    base = str(tmp_path / "exps")
    done = subprocess.run([sys.executable, str(checkout / "job_launcher.py"),
                           *launcher_argv(inputs, "suave", base, "preempted", 3)],
                          capture_output=True, text=True, timeout=120, cwd=str(checkout))
    assert done.returncode == 0, done.stderr
    job_id, experiment = submitted_job_id(done.stdout), os.path.join(base, "preempted")
    # The user edits the checkout while the job waits: neither the job nor its requeue may run the edit.
    with open(checkout / "main_suave.py", "a") as handle:
        handle.write("\nraise SystemExit('the edited checkout ran')\n")
    with open(checkout / "src" / "engine.py", "a") as handle:
        handle.write("\nraise SystemExit('the edited checkout ran')\n")
    checkpoint = os.path.join(experiment, "checkpoint.pth")
    wait_for(lambda: checkpoint_epoch(checkpoint) >= 1, JOB_TIMEOUT_S, "the first epoch's checkpoint")
    assert checkpoint_epoch(checkpoint) == 1, "the job ran past epoch 1 before the signal: make epochs longer"
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)  # to the steps, as Slurm does
    wait_for(lambda: job_field(job_id, "Restarts") == "1", 60, "the requeue")
    print(f"requeued: job {job_id} {job_field(job_id, 'JobState')} (reason {job_field(job_id, 'Reason')}, "
          f"begin {job_field(job_id, 'StartTime')})")
    assert wait_for_job(job_id, experiment) == "COMPLETED", task_logs(experiment, job_id)

    out = Path(experiment, "slurm", f"{job_id}_0_log.out").read_text()
    train_log = Path(experiment, "train.log").read_text()
    lines = [line for line in out.splitlines()  # task 0's stdout: submitit's lines and the training log's
             if re.search(r"Caught signal|requeuing|Requeued job|Starting with|resumed from|no checkpoint|done:", line)]
    print("\n".join(lines))
    assert "Caught signal SIGUSR2" in out and "this job is preempted" in out
    assert "[job_launcher] requeuing main_suave with the same flags" in out and f"Requeued job {job_id}" in out
    assert out.count("Starting with JobEnvironment") == 2  # the first allocation and the requeued one
    assert f"resumed from {checkpoint}: epoch 1, iteration 2" in train_log
    assert "the edited checkout ran" not in out + train_log + task_logs(experiment, job_id)
    final = assert_finished_run(experiment, job_id, epochs=3)
    reference = read_checkpoint(os.path.join(suave_uninterrupted[0], "checkpoint.pth"))
    assert final["iteration"] == reference["iteration"] == 6
    for key, tensor in reference["student"].items():
        torch.testing.assert_close(final["student"][key], tensor, rtol=1e-6, atol=1e-6, msg=key)
    print(f"equal weights: {len(reference['student'])} tensors of the requeued run's student equal the "
          f"uninterrupted run's (rtol=atol=1e-6)")
    record = json.load(open(os.path.join(experiment, "env.json")))["git"]
    assert record["dirty"] is False and len(record["commit"]) == 40 and record["diff"] == ""


# ------------------------------------------------------------------------------------------ Daino, scancel, resume
def test_cancelled_daino_job_leaves_a_consistent_experiment_that_resume_continues(slurm, inputs, tmp_path, capsys):
    base = str(tmp_path / "exps")
    experiment = os.path.join(base, "daino")
    # 12 short epochs (~2 s each): the job must still be running when the first checkpoint is seen and cancelled
    job_id = submit(launcher_argv(inputs, "daino", base, "daino", 12), capsys)
    checkpoint = os.path.join(experiment, "checkpoint.pth")
    wait_for(lambda: checkpoint_epoch(checkpoint) >= 1, JOB_TIMEOUT_S, "the first epoch's checkpoint")
    subprocess.run(["scancel", job_id], check=True, timeout=30)
    assert wait_for_job(job_id, experiment, 60) == "CANCELLED"
    epoch = checkpoint_epoch(checkpoint)
    assert 1 <= epoch < 12  # loadable; a write SIGKILLed mid-way may leave a temporary file, the next save removes it
    assert not os.path.exists(os.path.join(experiment, "results.json"))

    resumed = submit(["--resume", experiment], capsys)
    assert resumed != job_id
    assert wait_for_job(resumed, experiment) == "COMPLETED", task_logs(experiment, resumed)
    assert f"resumed from {checkpoint}: epoch {epoch}" in Path(experiment, "train.log").read_text()
    assert_finished_run(experiment, resumed, epochs=12)
    launches = Path(experiment, "launches.jsonl").read_text().splitlines()
    assert [f'"job_id": "{j}"' in line for line, j in zip(launches, (job_id, resumed))] == [True, True]
