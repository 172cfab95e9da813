"""What a checkpoint keeps about a run besides its networks and optimiser: the position (epoch, iteration),
every rank's random generators, and the flags as plain data (checkpoints load with ``weights_only=True``).

The release seeds once (``fix_random_seeds``) and does not restore generators on resume; restoring them makes a
resumed run draw the same dropout / drop-path / mixing numbers as an uninterrupted one.
"""
from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from src import distributed


@dataclass
class RunState:
    epoch: int = 0                 # epoch to run next (or the one in progress)
    iteration: int = 0             # global iteration count of completed steps
    iter_in_epoch: int = 0         # completed steps of the epoch in progress
    wandb_id: str | None = None


def seed_everything(seed: int) -> None:
    """torch and numpy as the release's ``fix_random_seeds``, and Python's ``random``, which it left unseeded."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": list(random.getstate()[1]), "python_pos": random.getstate()[2],
             "numpy": np.random.get_state()[1].tolist(), "numpy_pos": int(np.random.get_state()[2]),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def gather_rng_states() -> dict[str, Any]:
    """Each rank's RNG state keyed by rank (restored when the world size is unchanged)."""
    own = rng_state()
    if not distributed.is_dist():
        return {"0": own}
    states: list[Any] = [None] * distributed.get_world_size()
    torch.distributed.all_gather_object(states, own)
    return {str(r): s for r, s in enumerate(states)}


def plain_args(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed arguments as JSON-able plain data (checkpoints load with weights_only=True)."""
    return json.loads(json.dumps(vars(args), default=str))
