"""Ranks come from torchrun's or Slurm's environment, or a plain single process."""
from __future__ import annotations

import pytest
import torch

from src.distributed import detect_ranks, init_distributed

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
    with pytest.raises(RuntimeError, match="--device cpu"):
        init_distributed(device="cuda")
