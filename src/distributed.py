"""Process-group set-up and the few collectives the methods need.

Works unchanged on one CPU process with no launcher, under ``torchrun`` (``RANK``/``WORLD_SIZE``/
``LOCAL_RANK``) and under Slurm ``srun`` (``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``).
Under Slurm the local rank comes from ``SLURM_LOCALID``: the Suave release's ``init_distributed_mode`` read
``LOCAL_RANK`` there (srun does not set it); the Daino release's read ``SLURM_PROCID``.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from src.errors import FlagError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None when no process group is initialised


def _env_int(*names: str) -> int | None:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return None


def detect_ranks(local_rank_arg: int | None = None) -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's or Slurm's environment, else a single process."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = _env_int("LOCAL_RANK")
    elif "SLURM_PROCID" in os.environ and "SLURM_NTASKS" in os.environ:
        rank, world = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
        local = _env_int("SLURM_LOCALID")
    else:
        return 0, 1, 0
    if local is None:
        local = local_rank_arg if local_rank_arg is not None else 0
    return rank, world, local


def launched_by_launcher() -> bool:
    """True under torchrun or a Slurm task (their rank variables are set)."""
    return ("RANK" in os.environ and "WORLD_SIZE" in os.environ) or "SLURM_PROCID" in os.environ


def init_distributed(local_rank_arg: int | None = None, device: str = "auto",
                     timeout_minutes: int = 30) -> DistInfo:
    """Initialise the default process group when launched with several processes.

    ``device``: "auto" (CUDA when available), "cpu" or "cuda". NCCL on GPU, gloo on CPU.
    A single process without a launcher gets no process group: every collective here is a no-op. A single GPU
    process under torchrun or Slurm does join an NCCL group of one, as the DINO and SwAV releases do, so that
    one GPU runs the same DDP and collective code as many; a single CPU process stays without one.
    """
    rank, world, local = detect_ranks(local_rank_arg)
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise FlagError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    if use_cuda:
        torch.cuda.set_device(local % torch.cuda.device_count())
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    if world == 1 and not (use_cuda and launched_by_launcher()):
        return DistInfo(rank, 1, local, dev, None)
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        dist.init_process_group(backend=backend, init_method="env://", world_size=world, rank=rank,
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    return DistInfo(rank, world, local, dev, backend)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def _staging_device(tensor: torch.Tensor) -> torch.device | None:
    """The GPU a CPU tensor must visit for a collective: NCCL reduces CUDA tensors only (a CPU tensor gives
    "No backend type associated with device type cpu"); None when the tensor can go as it is."""
    if tensor.device.type == "cpu" and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return None


def _all_reduce(tensor: torch.Tensor, op: "dist.ReduceOp") -> torch.Tensor:
    if is_dist():
        staging = _staging_device(tensor)
        if staging is None:
            dist.all_reduce(tensor, op=op)
        else:  # CPU bookkeeping (meters, counts, stop flags) under NCCL
            on_gpu = tensor.to(staging, copy=True)
            dist.all_reduce(on_gpu, op=op)
            tensor.copy_(on_gpu.cpu())
    return tensor


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (no-op in a single process; CPU tensors work under NCCL); returns it."""
    return _all_reduce(tensor, dist.ReduceOp.SUM)


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Maximum over ranks in place (no-op in a single process; CPU tensors work under NCCL); returns it."""
    return _all_reduce(tensor, dist.ReduceOp.MAX)


def all_reduce_min(tensor: torch.Tensor) -> torch.Tensor:
    """Minimum over ranks in place (no-op in a single process; CPU tensors work under NCCL); returns it."""
    return _all_reduce(tensor, dist.ReduceOp.MIN)


def any_rank(flag: torch.Tensor) -> bool:
    """Whether ``flag`` (one boolean or number, on any device) is true on some rank: collective, one host sync.
    For decisions every rank must take together (stopping before a collective that the others would wait in)."""
    value = flag.detach().float().reshape(1)
    all_reduce_max(value)
    return bool(value.item())


def local_world_size() -> int:
    """Processes on this machine (torchrun's LOCAL_WORLD_SIZE, Slurm's tasks per node, else 1)."""
    for name in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        value = os.environ.get(name, "")
        if value.split("(")[0].isdigit():
            return int(value.split("(")[0])
    return 1


def all_gather_cat(tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Concatenate equally-shaped tensors from every rank, in rank order, along ``dim`` (no grad)."""
    if not is_dist():
        return tensor
    staging = _staging_device(tensor)
    local = tensor.contiguous() if staging is None else tensor.to(staging).contiguous()
    parts = [torch.empty_like(local) for _ in range(get_world_size())]
    dist.all_gather(parts, local)
    return torch.cat(parts, dim=dim).to(tensor.device)


def union_of_names(names: list[str]) -> list[str]:
    """Every name any rank holds, each once, in rank order then first-seen order (collective): so that every
    rank reduces the same list, also one that saw no data."""
    if not is_dist():
        return list(names)
    gathered: list = [None] * get_world_size()
    dist.all_gather_object(gathered, list(names))
    return list(dict.fromkeys(name for part in gathered for name in part))


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()
