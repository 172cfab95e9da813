"""Local runs: one process, or ``torchrun`` (module form, so nothing is assumed about PATH) for several GPUs."""
from __future__ import annotations

import subprocess
import sys


def local_program(entry_script: str, num_gpus: int, master_port: int | None = None,
                  python: str | None = None) -> list[str]:
    """The command up to the entry script; the training flags follow it.

    ``num_gpus`` > 1: ``python -m torch.distributed.run --standalone --nproc_per_node N`` (a free port is chosen
    by the rendezvous) or, when ``master_port`` is given, a static single-node rendezvous on 127.0.0.1 at that
    port (the release's behaviour). ``num_gpus`` <= 1: plain ``python entry.py``.
    """
    python = python or sys.executable
    if num_gpus <= 1:
        return [python, entry_script]
    if master_port is None:
        rendezvous = ["--standalone"]
    else:
        rendezvous = ["--nnodes", "1", "--master_addr", "127.0.0.1", "--master_port", str(master_port)]
    return [python, "-m", "torch.distributed.run", *rendezvous, "--nproc_per_node", str(num_gpus), entry_script]


def run_local(argv: list[str], cwd: str) -> int:
    """Run the training in the foreground; its output and exit code pass through."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        return subprocess.call(argv, cwd=cwd)
    except KeyboardInterrupt:
        return 130
