"""Index streams for the three loaders.

- ``SeededDistributedSampler``: torch's ``DistributedSampler`` (shuffle, seed, ``set_epoch``, padding),
  yielding ``(index, sample_seed)`` for ``SeededDataset``.
- ``InfiniteLabelledBatches``: the labelled stream. Pass p shuffles the whole labelled set with
  ``order_seed + p`` and splits it across ranks exactly as ``DistributedSampler(seed=order_seed).set_epoch(p)`` (the
  release's ``cycle`` over a DistributedSampler): disjoint shards, padded with the first indices of the
  permutation to a multiple of the world size; each rank then cuts its shard into batches and drops the
  incomplete last one (the release's ``drop_last=True``), so an image may miss a pass but never appears
  twice in one. It starts at any (pass, offset) and never ends.

Both training streams take two seeds: ``order_seed`` shuffles (the release's ``DistributedSampler`` kept its
default seed 0; ``None``: ``seed``), ``seed`` (the run's ``--seed``) derives each sample's augmentation seed.
- ``ShardSampler``: validation, ``index rank, rank + world, ...`` without padding (no duplicates; the
  engine all-reduces correct and total counts).
"""
from __future__ import annotations

from typing import Iterator

from torch.utils.data import DistributedSampler, Sampler

from src.errors import FlagError

from .seeding import STREAM_LABELLED, STREAM_UNLABELLED, derive_seed


class SeededDistributedSampler(DistributedSampler):
    """``DistributedSampler(seed=order_seed)`` whose items are ``(index, derive_seed(seed, stream, epoch, rank,
    index))``."""

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = False, stream: int = STREAM_UNLABELLED, order_seed: int | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed if order_seed is None else order_seed, drop_last=drop_last)
        self.sample_seed = seed
        self.stream = stream
        self.start = 0  # samples of this epoch's order to skip (mid-epoch resume)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order; ``start`` skips its first samples (resuming mid-epoch: same order, same
        per-sample seeds, so the remaining batches equal an uninterrupted run's)."""
        super().set_epoch(epoch)
        self.start = start

    def __len__(self) -> int:
        return super().__len__() - self.start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for position, index in enumerate(super().__iter__()):
            if position >= self.start:
                yield index, derive_seed(self.sample_seed, self.stream, self.epoch, self.rank, index)


def pass_shard(num_samples: int, rank: int, world_size: int, seed: int, pass_index: int) -> list[int]:
    """This rank's indices for labelled pass ``pass_index`` (DistributedSampler's permutation and padding)."""
    sampler = DistributedSampler(range(num_samples), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    sampler.set_epoch(pass_index)
    return list(sampler)


def batches_per_pass(num_samples: int, batch_size: int, world_size: int) -> int:
    return -(-num_samples // world_size) // batch_size  # ceil(n / world) // batch, as DistributedSampler + drop_last


class InfiniteLabelledBatches(Sampler):
    """Batch sampler: lists of ``(index, sample_seed)`` from (``start_pass``, ``start_offset``) on, forever."""

    def __init__(self, num_samples: int, batch_size: int, rank: int, world_size: int, seed: int,
                 start_pass: int = 0, start_offset: int = 0, order_seed: int | None = None) -> None:
        self.num_samples, self.batch_size = num_samples, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.order_seed = seed if order_seed is None else order_seed
        self.batches_per_pass = batches_per_pass(num_samples, batch_size, world_size)
        if self.batches_per_pass == 0:
            raise FlagError(f"the labelled set has {num_samples} images, {-(-num_samples // world_size)} per rank "
                            f"on {world_size} rank(s): fewer than one labelled batch of {batch_size}; lower the "
                            "labelled batch size (--lab_batch_size / --lab_batch_size_per_gpu) or label more images")
        if not 0 <= start_offset < self.batches_per_pass or start_pass < 0:
            raise FlagError(f"labelled position (pass {start_pass}, offset {start_offset}) is out of range: a pass "
                            f"has {self.batches_per_pass} batches (was the checkpoint made with another labelled "
                            "set, batch size or number of processes?)")
        self.start_pass, self.start_offset = start_pass, start_offset

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        pass_index, offset = self.start_pass, self.start_offset
        while True:
            shard = pass_shard(self.num_samples, self.rank, self.world_size, self.order_seed, pass_index)
            for b in range(offset, self.batches_per_pass):
                indices = shard[b * self.batch_size:(b + 1) * self.batch_size]
                yield [(i, derive_seed(self.seed, STREAM_LABELLED, pass_index, self.rank, i)) for i in indices]
            pass_index, offset = pass_index + 1, 0


class ShardSampler(Sampler):
    """Indices ``rank, rank + world_size, ...``: every index on exactly one rank, no padding."""

    def __init__(self, num_samples: int, rank: int, world_size: int) -> None:
        self.num_samples, self.rank, self.world_size = num_samples, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.num_samples, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.num_samples, self.world_size))
