"""The three loaders of a run: unlabelled (one epoch = one pass), labelled (infinite, resumable), val.

Augmentation randomness is seeded per sample and per batch (``src.data.seeding``), so two runs with the
same seed see the same batches whatever the number of workers, and a resumed labelled stream continues
with exactly the batches an uninterrupted run would have seen. Defaults: persistent workers for the
unlabelled loader when ``workers > 0``; ``pin_memory`` is the caller's (true only when training on CUDA).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset

from src.errors import FlagError

from .collate import LabelledCollate, UnlabelledCollate
from .samplers import InfiniteLabelledBatches, SeededDistributedSampler, ShardSampler
from .seeding import STREAM_LABELLED, STREAM_UNLABELLED, SeededCollate, SeededDataset, derive_seed, worker_init_fn


def _worker_options(workers: int, seed: int, stream: int, rank: int, prefetch_factor: int | None) -> dict:
    options: dict[str, Any] = {"num_workers": workers,
                               "generator": torch.Generator().manual_seed(derive_seed(seed, stream, rank, -1))}
    if workers > 0:
        options["worker_init_fn"] = worker_init_fn
        if prefetch_factor is not None:
            options["prefetch_factor"] = prefetch_factor
    return options


def build_unlabelled_loader(dataset: Dataset, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                            workers: int = 0, collate_fn: Callable | None = None, pin_memory: bool = False,
                            persistent_workers: bool | None = None, prefetch_factor: int | None = None,
                            drop_last: bool = True, order_seed: int | None = None) -> DataLoader:
    """Loader over the whole train split: ``loader.sampler`` is a ``DistributedSampler`` (shuffle with
    ``order_seed``, default ``seed``; padding), call ``loader.sampler.set_epoch(epoch)`` before each epoch;
    incomplete last batch dropped. ``seed`` seeds each sample's augmentation.

    ``collate_fn`` defaults to ``UnlabelledCollate()`` (no mixup); batches are ``UnlabelledBatch``.
    """
    sampler = SeededDistributedSampler(dataset, num_replicas=world_size, rank=rank, seed=seed,
                                       stream=STREAM_UNLABELLED, order_seed=order_seed)
    if drop_last and len(sampler) < batch_size:
        raise FlagError(f"the unlabelled set has {len(dataset)} images, {len(sampler)} per rank on {world_size} "
                        f"rank(s): fewer than one batch of {batch_size}; lower the batch size")
    if persistent_workers is None:
        persistent_workers = workers > 0
    return DataLoader(SeededDataset(dataset), batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                      collate_fn=SeededCollate(collate_fn or UnlabelledCollate()), pin_memory=pin_memory,
                      persistent_workers=persistent_workers and workers > 0,
                      **_worker_options(workers, seed, STREAM_UNLABELLED, rank, prefetch_factor))


class InfiniteLabelledLoader:
    """Never-ending labelled batches (``next(loader)``), disjoint across ranks, reshuffled each pass with
    ``order_seed + pass`` (default ``seed``; see ``src.data.samplers.InfiniteLabelledBatches``).

    ``state_dict()`` -> ``{"pass": p, "offset": o}``: the position of the next batch this object will
    return (o = batches of pass p already returned), counting batches returned to the caller, not those
    the workers prefetched. ``load_state_dict(state)`` restarts the stream there. ``collate_fn`` defaults
    to ``LabelledCollate()`` (no mixup); batches are ``LabelledBatch``.
    """

    def __init__(self, dataset: Dataset, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 workers: int = 0, collate_fn: Callable | None = None, pin_memory: bool = False,
                 prefetch_factor: int | None = None, order_seed: int | None = None) -> None:
        self.dataset, self.batch_size = dataset, batch_size
        self.rank, self.world_size, self.seed, self.order_seed = rank, world_size, seed, order_seed
        self.workers, self.pin_memory, self.prefetch_factor = workers, pin_memory, prefetch_factor
        self.collate_fn = SeededCollate(collate_fn or LabelledCollate())
        self._pass, self._offset = 0, 0
        self.batches_per_pass = self._batch_sampler().batches_per_pass  # validates sizes now
        self._iterator = None

    def _batch_sampler(self) -> InfiniteLabelledBatches:
        return InfiniteLabelledBatches(len(self.dataset), self.batch_size, self.rank, self.world_size, self.seed,
                                       self._pass, self._offset, order_seed=self.order_seed)

    def _start(self):
        loader = DataLoader(SeededDataset(self.dataset), batch_sampler=self._batch_sampler(),
                            collate_fn=self.collate_fn, pin_memory=self.pin_memory,
                            **_worker_options(self.workers, self.seed, STREAM_LABELLED, self.rank,
                                              self.prefetch_factor))
        return iter(loader)

    def __iter__(self) -> "InfiniteLabelledLoader":
        return self

    def __next__(self):
        if self._iterator is None:
            self._iterator = self._start()
        batch = next(self._iterator)
        self._offset += 1
        if self._offset == self.batches_per_pass:
            self._pass, self._offset = self._pass + 1, 0
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"pass": self._pass, "offset": self._offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.close()
        self._pass, self._offset = int(state["pass"]), int(state["offset"])
        self._batch_sampler()  # validates the position against this run's sizes

    def close(self) -> None:
        """Stop the workers (they restart on the next ``next``)."""
        if self._iterator is not None:
            shutdown = getattr(self._iterator, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            self._iterator = None


def build_val_loader(dataset: Dataset, batch_size: int, rank: int = 0, world_size: int = 1, workers: int = 0,
                     pin_memory: bool = False, collate_fn: Callable | None = None) -> DataLoader:
    """Deterministic loader over this rank's shard of ``dataset`` (no duplicates; batches ``(images, labels)``)."""
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), rank, world_size),
                      num_workers=workers, pin_memory=pin_memory, collate_fn=collate_fn)
