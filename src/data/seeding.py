"""Reproducible augmentation: every sample and every batch gets its own seed.

A sample's seed is derived from (run seed, stream, epoch or pass, rank, dataset index); the image is
loaded and transformed with Python's ``random``, numpy's global generator and torch's CPU generator
seeded from it, and the collate (Mixup/CutMix) with a seed derived from the batch's sample seeds. So the
batches depend only on the run seed and the position in the data stream: not on the number of workers,
on prefetching, or on a resume in the middle of a pass. The generators' previous states are restored
afterwards, so loading data in the main process (``workers=0``) leaves the training's own random
streams (dropout, drop-path) untouched; CUDA generators are never touched.
"""
from __future__ import annotations

import contextlib
import random
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

STREAM_UNLABELLED = 0
STREAM_LABELLED = 1
_MASK64 = (1 << 64) - 1


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that depends on every key (numpy ``SeedSequence`` hashing); keys may be negative."""
    words = np.random.SeedSequence([k & _MASK64 for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


@contextlib.contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Seed Python's ``random``, numpy's global generator and torch's CPU generator; restore them after."""
    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])


class SeededDataset(Dataset):
    """``dataset[(index, seed)] -> (dataset[index] computed under seeded_rngs(seed), seed)``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> tuple[Any, int]:
        index, seed = key
        with seeded_rngs(seed):
            return self.dataset[index], seed


class SeededCollate:
    """Strips the sample seeds and runs ``collate_fn`` under a seed derived from all of them (in order)."""

    def __init__(self, collate_fn: Callable[[list], Any]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, items: Sequence[tuple[Any, int]]) -> Any:
        samples = [sample for sample, _ in items]
        with seeded_rngs(derive_seed(*(seed for _, seed in items))):
            return self.collate_fn(samples)


def worker_init_fn(worker_id: int) -> None:
    """Seed numpy in each worker from torch's per-worker seed (Python's ``random`` is seeded by torch);
    a safety net for code outside ``seeded_rngs``."""
    np.random.seed(torch.initial_seed() & 0xFFFFFFFF)
