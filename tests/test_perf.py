"""Speed levers (src.perf): the deferred finiteness check stops like the per-step one; flags keep defaults."""
from __future__ import annotations

import argparse
import os

import pytest
import torch

from src.checkpoint import read_checkpoint
from src.errors import FlagError
from src.perf import FiniteCheck, PerfConfig, configure_backends, maybe_compile, maybe_fuse
from suave.args import get_args_parser

from .test_training import run_with_nan_at_third_step, tiny_data  # noqa: F401 (fixture)


def test_defaults_keep_the_release_settings():
    args = argparse.ArgumentParser(parents=[get_args_parser()]).parse_args([])
    assert (args.cudnn_benchmark, args.tf32, args.compile, args.fused_optimizer, args.nan_check_every) == \
        (True, True, False, False, 1)
    config = PerfConfig.from_args(args)
    assert config == PerfConfig()
    net = torch.nn.Linear(2, 2)
    assert maybe_compile(net, config) is net
    opt = torch.optim.AdamW(net.parameters())
    assert maybe_fuse(opt, config, torch.device("cuda")) is opt
    configure_backends(config, torch.device("cpu"))  # a no-op off CUDA
    with pytest.raises(FlagError, match="--nan_check_every"):
        FiniteCheck(0)


@pytest.fixture
def cuda_backend_flags():
    """The process-wide flags configure_backends sets, restored after the test."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.benchmark = saved


def test_tf32_matmuls_by_default_as_pytorch_1_11_and_full_fp32_with_tf32_false(cuda_backend_flags):
    """The release pins PyTorch 1.11, whose fp32 CUDA matmuls used TF32 (allow_tf32 True until 1.12)."""
    parser = argparse.ArgumentParser(parents=[get_args_parser()])
    torch.backends.cuda.matmul.allow_tf32 = False  # today's PyTorch default
    # flags only: no GPU is needed to set them
    configure_backends(PerfConfig.from_args(parser.parse_args([])), torch.device("cuda"))
    assert torch.backends.cuda.matmul.allow_tf32 is True
    configure_backends(PerfConfig.from_args(parser.parse_args(["--tf32", "false"])), torch.device("cuda"))
    assert torch.backends.cuda.matmul.allow_tf32 is False
    torch.backends.cuda.matmul.allow_tf32 = True
    configure_backends(PerfConfig.from_args(parser.parse_args(["--tf32", "false"])), torch.device("cpu"))
    assert torch.backends.cuda.matmul.allow_tf32 is True  # off CUDA nothing changes


def test_fused_adamw_keeps_groups_and_steps_like_the_default():
    torch.manual_seed(0)
    nets = [torch.nn.Linear(4, 3) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    groups = [lambda n: [{"params": [n.weight], "weight_decay": 0.04}, {"params": [n.bias], "weight_decay": 0.0}]]
    plain = torch.optim.AdamW(groups[0](nets[0]), lr=1e-2)
    fused = maybe_fuse(torch.optim.AdamW(groups[0](nets[1]), lr=1e-2),
                       PerfConfig(fused_optimizer=True), torch.device("cuda"))  # CPU tensors: fused on CPU
    assert fused.param_groups[0]["fused"] and [g["weight_decay"] for g in fused.param_groups] == [0.04, 0.0]
    x = torch.randn(8, 4)
    for net, opt in zip(nets, (plain, fused)):
        for _ in range(3):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    torch.testing.assert_close(nets[1].weight, nets[0].weight, rtol=1e-5, atol=1e-6)


def test_finite_check_records_the_first_bad_iteration_on_the_device():
    check = FiniteCheck(3)
    assert check.first_bad_iteration() is None
    for it, value in enumerate([1.0, 2.0, float("nan"), float("inf"), 3.0]):
        check.record(torch.tensor(value), it)
    assert check.first_bad_iteration() == 2
    assert [check.due(i) for i in range(6)] == [False, False, True, False, False, True]


@pytest.mark.slow
@pytest.mark.parametrize("every", [4, 100], ids=["check-due", "checkpoint-guard"])
def test_deferred_nan_check_stops_before_saving_and_names_the_iteration(every, tiny_data, tmp_path,  # noqa: F811
                                                                        monkeypatch, capsys):
    """Every 4: the check at iteration 3 stops the run. Every 100: the checkpoint due at iteration 4 checks
    first and refuses. Either way the run stops after its 4th step, names iteration 2, and the last good
    checkpoint (iteration 2) is intact."""
    out = str(tmp_path / "exp")
    assert run_with_nan_at_third_step(tiny_data, out, monkeypatch, ["--nan_check_every", str(every)]) == (3, 4)
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "iteration 2" in message and f"every {every} steps" in message
    assert read_checkpoint(os.path.join(out, "checkpoint.pth"))["iteration"] == 2
