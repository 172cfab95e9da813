"""Process-group set-up and the few collectives the methods need.

Works unchanged on one CPU process with no launcher, under ``torchrun`` (``RANK``/``WORLD_SIZE``/
``LOCAL_RANK``) and under Slurm ``srun`` (``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``).
Under Slurm the local rank comes from ``SLURM_LOCALID``: the Suave release's ``init_distributed_mode`` read
``LOCAL_RANK`` there (srun does not set it); the Daino release's read ``SLURM_PROCID``.

A rank that dies (its connections close) or stops answering (a node gone without closing them: the process-group
timeout, ``--dist_timeout``) breaks the collective the others wait in; ``lost_rank_error`` turns that error into
one line naming the ranks and nodes that did not answer and the command that continues the run.
"""
from __future__ import annotations

import datetime
import os
import re
import socket
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from src.errors import FlagError, RankLost

# --dist_timeout: how long a collective waits for a rank that stopped answering; as long as torch's own default,
# since the other ranks wait in a barrier while rank 0 alone scans a large folder of one's own data the first time
DEFAULT_TIMEOUT_S = 1800
# What gloo and NCCL raise in the survivors when a peer is gone: it closed its sockets (killed), or it stopped
# answering and the process-group timeout ran out.
_BROKEN_COLLECTIVE = re.compile(r"Connection closed by peer|Connection reset by peer|Broken pipe|Timed out waiting|"
                                r"Application timeout caused pair closure|"
                                r"Watchdog caught collective operation timeout|NCCL communicator was aborted")


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


def node_name() -> str:
    """This process's node: Slurm's name for it (``SLURMD_NODENAME``), else the host name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def init_distributed(local_rank_arg: int | None = None, device: str = "auto",
                     timeout_s: float = DEFAULT_TIMEOUT_S) -> DistInfo:
    """Initialise the default process group when launched with several processes.

    ``device``: "auto" (CUDA when available), "cpu" or "cuda". NCCL on GPU, gloo on CPU.
    A single process without a launcher gets no process group: every collective here is a no-op. A single GPU
    process under torchrun or Slurm does join an NCCL group of one, as the DINO and SwAV releases do, so that
    one GPU runs the same DDP and collective code as many; a single CPU process stays without one.
    ``timeout_s``: how long any collective waits for a rank before it fails (a rank that stopped answering).
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
                                timeout=datetime.timedelta(seconds=timeout_s))
        dist.distributed_c10d._get_default_store().set(f"node/{rank}", node_name())  # named by a lost rank's peers
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


def lost_ranks(wait_s: float) -> dict[int, str] | None:
    """After a broken collective: the ranks that do not answer, with their nodes (each rank wrote its node to the
    rendezvous store when the process group formed). Every survivor marks itself in the store and waits up to
    ``wait_s`` for the others' marks; None when the store itself is gone (under ``env://`` rank 0 holds it, so
    rank 0 is among the lost)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        store = dist.distributed_c10d._get_default_store()
        store.set(f"survivor/{rank}", node_name())
        deadline = time.monotonic() + wait_s
        while True:
            missing = [r for r in range(world) if not store.check([f"survivor/{r}"])]
            if not missing or time.monotonic() > deadline:
                return {r: store.get(f"node/{r}").decode() if store.check([f"node/{r}"]) else "?" for r in missing}
            time.sleep(0.2)
    except (RuntimeError, ValueError, OSError):  # the store's connection refused or reset: its holder is gone
        return None


def lost_rank_error(exc: BaseException, output_dir: str, wait_s: float = 3.0) -> RankLost | None:
    """The error to raise instead of ``exc`` when ``exc`` is a collective broken by a lost rank (None for any
    other error): which ranks on which nodes stopped answering, and the command that continues from the last
    checkpoint (``job_launcher.py --resume`` for an experiment of the launcher, else the same command again)."""
    if not is_dist() or not _BROKEN_COLLECTIVE.search(str(exc)):
        return None
    lost = lost_ranks(wait_s)
    if lost is None:  # rank 0 held the store, at MASTER_ADDR (under Slurm, its node's name)
        who = f"rank 0 (node {os.environ.get('MASTER_ADDR', '?')}, which held the rendezvous) is gone"
    elif lost:
        who = ", ".join(f"rank {r} (node {node})" for r, node in lost.items()) + " stopped answering"
    else:
        return None  # every rank answers: not a lost rank
    checkpoint = os.path.join(output_dir, "checkpoint.pth")
    if os.path.isfile(os.path.join(output_dir, "args.json")):
        resume = f"continue with: python job_launcher.py --resume {output_dir}"
    else:
        resume = "continue with the same command (it resumes from checkpoint.pth)"
    cause = re.sub(r"^\[[^\]]*\] ?", "", " ".join(str(exc).split())).split(". ")[0]  # gloo's file:line first
    kept = f"{checkpoint} is the last good checkpoint" if os.path.isfile(checkpoint) else "no checkpoint yet"
    return RankLost(f"lost {who} ({cause}); the run stopped on every rank, {kept}: {resume}")


def wrap_ddp(module: nn.Module, info: DistInfo, sync_bn: bool = True,
             others: tuple[nn.Module, ...] = ()) -> tuple[nn.Module, nn.Module]:
    """``(module, trained)``: ``trained`` is DistributedDataParallel around the trained module when a process group
    exists (the trainable part alone, as the releases), else ``module`` itself. On GPUs with ``sync_bn``, BatchNorm
    becomes SyncBatchNorm in ``module`` and in ``others`` (the networks it updates by EMA), as the releases; the
    conversion keeps the parameter objects, so EMA pairs stay valid. The returned ``module`` is the converted one."""
    if info.backend is None:  # no process group: a single process
        return module, module
    if sync_bn and info.device.type == "cuda":
        for other in others:
            nn.SyncBatchNorm.convert_sync_batchnorm(other)
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return module, nn.parallel.DistributedDataParallel(module, device_ids=device_ids)


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()
