"""Ranks come from torchrun's or Slurm's environment, or a plain single process; a NaN loss on one rank stops
every rank."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from src import distributed
from src.distributed import detect_ranks, init_distributed
from src.errors import FlagError, TrainingDiverged
from src.method import Method, Schedules, StepOutput
from src.perf import FiniteCheck
from src.train_step import Precision, TrainStep
from tests.dist_helpers import run_in_processes

LAUNCH_VARS = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"]


@pytest.fixture
def clean_env(monkeypatch):
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_single_process_without_launcher(clean_env):
    assert detect_ranks() == (0, 1, 0)
    info = init_distributed(device="cpu")
    assert (info.rank, info.world_size, info.backend, info.device) == (0, 1, None, torch.device("cpu"))


def test_torchrun_environment(clean_env):
    clean_env.setenv("RANK", "5")
    clean_env.setenv("WORLD_SIZE", "16")
    clean_env.setenv("LOCAL_RANK", "1")
    assert detect_ranks() == (5, 16, 1)


def test_slurm_local_rank_comes_from_slurm_localid_not_local_rank(clean_env):
    clean_env.setenv("SLURM_PROCID", "9")
    clean_env.setenv("SLURM_NTASKS", "16")
    clean_env.setenv("SLURM_LOCALID", "1")
    assert detect_ranks(local_rank_arg=7) == (9, 16, 1)


def test_old_launcher_local_rank_flag_is_used_when_the_environment_has_none(clean_env):
    clean_env.setenv("RANK", "3")
    clean_env.setenv("WORLD_SIZE", "4")
    assert detect_ranks(local_rank_arg=3) == (3, 4, 3)


def test_cuda_requested_without_gpu_is_a_clear_error(clean_env):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(FlagError, match="--device cuda was asked for but torch sees no CUDA device; use --device cpu"):
        init_distributed(device="cuda")


def test_a_single_cpu_process_under_torchrun_gets_no_process_group(clean_env):
    # A GPU process under torchrun joins an NCCL group of one (as the releases do); a CPU one stays alone.
    clean_env.setenv("RANK", "0")
    clean_env.setenv("WORLD_SIZE", "1")
    info = init_distributed(device="cpu")
    assert info.backend is None and not distributed.is_dist()


def test_cpu_tensors_are_staged_on_the_gpu_under_nccl(monkeypatch):
    # NCCL refuses CPU tensors ("No backend type associated with device type cpu", seen on an H100 at the
    # end of the first epoch): bookkeeping tensors (meters, validation counts, stop flags) visit the GPU.
    monkeypatch.setattr(distributed.dist, "get_backend", lambda *a, **k: "nccl")
    monkeypatch.setattr(distributed.torch.cuda, "current_device", lambda: 3)
    assert distributed._staging_device(torch.zeros(2)) == torch.device("cuda", 3)
    monkeypatch.setattr(distributed.dist, "get_backend", lambda *a, **k: "gloo")
    assert distributed._staging_device(torch.zeros(2)) is None


def test_a_staged_all_reduce_writes_the_result_back_in_place(monkeypatch):
    seen = []

    def fake_all_reduce(tensor, op):  # a world of two ranks holding the same values
        seen.append(tensor)
        tensor.mul_(2)

    monkeypatch.setattr(distributed, "is_dist", lambda: True)
    monkeypatch.setattr(distributed, "_staging_device", lambda t: torch.device("cpu"))
    monkeypatch.setattr(distributed.dist, "all_reduce", fake_all_reduce)
    counts = torch.tensor([3.0, 4.0], dtype=torch.float64)
    out = distributed.all_reduce_sum(counts)
    assert out is counts and counts.tolist() == [6.0, 8.0]
    assert seen[0] is not counts  # the collective ran on the staged copy


class _NanOnRankOne(Method):
    """A linear student whose loss is NaN on rank 1 only (a local batch that overflows, say)."""

    name = "nan_on_rank_one"

    def __init__(self, rank: int) -> None:
        super().__init__(argparse.Namespace(), 1, torch.device("cpu"))
        self.rank = rank
        self.student = torch.nn.Linear(2, 1)

    def training_step(self, lab, unlab, epoch: int, iteration: int) -> StepOutput:
        loss = self.student(torch.ones(1, 2)).sum() * (float("nan") if self.rank == 1 else 1.0)
        return StepOutput(loss=loss)


def _nan_on_one_rank(rank: int, world: int) -> dict:
    method = _NanOnRankOne(rank)
    optimizer = torch.optim.SGD(method.student.parameters(), lr=0.1)
    step = TrainStep(method, optimizer, Schedules(lr=np.full(4, 0.1)), Precision(False, False, torch.device("cpu")))
    try:
        step(None, None, 0, 5)
        per_step = "no error"
    except TrainingDiverged as exc:
        per_step = str(exc)
    check = FiniteCheck(4)  # --nan_check_every 4
    for it in range(4):
        check.record(torch.tensor(float("nan") if (rank, it) == (1, 2) else 1.0), it)
    return {"per_step": per_step, "deferred": check.first_bad_iteration(),
            "any_rank": [distributed.any_rank(torch.tensor(rank == 1)), distributed.any_rank(torch.tensor(False))]}


@pytest.mark.slow
def test_a_loss_that_is_not_finite_on_one_rank_stops_every_rank():
    """Daino's release check (and ours before) stopped only the rank whose loss was NaN; the others went on into
    DDP's all-reduce and hung. The per-step and the deferred check (and distributed.any_rank, which the
    downstream scripts' check uses) agree across the ranks."""
    ranks = run_in_processes(_nan_on_one_rank, 2)
    assert ranks[1]["per_step"].startswith("loss is nan at iteration 5 (epoch 0); stopping without saving")
    assert ranks[0]["per_step"].startswith("loss is not finite on another rank at iteration 5 (epoch 0)")
    assert [r["deferred"] for r in ranks] == [2, 2]
    assert [r["any_rank"] for r in ranks] == [[True, False], [True, False]]  # eval_semisup/eval_linear's check
