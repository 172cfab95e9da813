"""Loaders: the infinite labelled stream (disjoint ranks, one pass = each image once, exact resume),
the unlabelled DistributedSampler loader and the val shards; reproducible augmentation randomness."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, DistributedSampler

from src.data import build_datasets, make_synthetic_imagefolder
from src.data.collate import LabelledBatch, UnlabelledCollate
from src.data.loaders import InfiniteLabelledLoader, build_unlabelled_loader, build_val_loader
from src.data.transforms import labelled_transform, swav_multicrop, val_transform
from src.errors import FlagError


class RandomItems(Dataset):
    """Item i = ([i, draws of torch, random and numpy], i % 3): shows which index and which random state."""

    def __init__(self, n: int, views: int | None = None, image: bool = False) -> None:
        self.n, self.views, self.image = n, views, image

    def __len__(self) -> int:
        return self.n

    def _one(self, index):
        values = torch.tensor([index, torch.rand(()).item(), random.random(), np.random.rand()], dtype=torch.float64)
        return values.view(4, 1, 1).expand(4, 2, 2).clone() if self.image else values

    def __getitem__(self, index):
        item = [self._one(index) for _ in range(self.views)] if self.views else self._one(index)
        return item, index % 3


def _take(loader, n):
    return [next(loader) for _ in range(n)]


def _indices(batch: LabelledBatch) -> list[int]:
    return batch.images[:, 0].long().tolist()


def reference_shard(n, rank, world, seed, pass_index):
    """DistributedSampler(shuffle, seed).set_epoch(pass): permutation with seed + pass, padded, strided."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + pass_index)).tolist()
    total = -(-n // world) * world
    order += (order * (total // n + 1))[: total - n]
    return order[rank:total:world]


def test_labelled_passes_cover_every_image_once_across_disjoint_ranks():
    n, world, batch_size, seed = 24, 3, 4, 11
    loaders = [InfiniteLabelledLoader(RandomItems(n), batch_size, rank, world, seed) for rank in range(world)]
    assert loaders[0].batches_per_pass == 2
    for pass_index in range(3):
        per_rank = [sum((_indices(b) for b in _take(loader, 2)), []) for loader in loaders]
        for rank, seen in enumerate(per_rank):
            assert seen == reference_shard(n, rank, world, seed, pass_index)
        everything = sum(per_rank, [])
        assert sorted(everything) == list(range(n))  # each image exactly once in the pass
        assert all(loader.state_dict() == {"pass": pass_index + 1, "offset": 0} for loader in loaders)


def test_labelled_pass_with_padding_and_dropped_remainder():
    n, world, batch_size = 25, 3, 4  # 9 per rank after padding: 2 batches, 1 image per rank dropped
    loaders = [InfiniteLabelledLoader(RandomItems(n), batch_size, rank, world, seed=0) for rank in range(world)]
    assert loaders[0].batches_per_pass == 2
    first = [sum((_indices(b) for b in _take(loader, 2)), []) for loader in loaders]
    second = [sum((_indices(b) for b in _take(loader, 2)), []) for loader in loaders]
    for rank in range(world):
        assert len(set(first[rank])) == 8  # never twice on one rank in a pass
        assert first[rank] == reference_shard(n, rank, world, 0, 0)[:8]
        assert second[rank] == reference_shard(n, rank, world, 0, 1)[:8]
    assert first != second  # reshuffled every pass


@pytest.mark.parametrize("workers", [0, 2])
def test_labelled_resume_mid_pass_continues_identically(workers):
    def make():
        return InfiniteLabelledLoader(RandomItems(20), 3, rank=1, world_size=2, seed=5, workers=workers)
    uninterrupted = make()
    reference = _take(uninterrupted, 9)  # 3 batches per pass: crosses two pass boundaries
    first = make()
    _take(first, 4)
    state = first.state_dict()
    assert state == {"pass": 1, "offset": 1}  # counts returned batches, not the prefetched ones
    first.close()
    resumed = make()
    resumed.load_state_dict(state)
    for expected, got in zip(reference[4:], _take(resumed, 5)):
        assert torch.equal(expected.images, got.images) and torch.equal(expected.labels, got.labels)
    for loader in (uninterrupted, resumed):
        loader.close()


def test_labelled_stream_does_not_depend_on_workers():
    a = InfiniteLabelledLoader(RandomItems(12, views=2), 4, seed=3, workers=0)
    b = InfiniteLabelledLoader(RandomItems(12, views=2), 4, seed=3, workers=2)
    for x, y in zip(_take(a, 4), _take(b, 4)):
        assert torch.equal(x.images, y.images)
        assert x.images.shape == (8, 4)  # two repetitions concatenated
    b.close()


def test_labelled_errors():
    with pytest.raises(FlagError, match=r"fewer than one labelled batch of 16.*--lab_batch_size"):
        InfiniteLabelledLoader(RandomItems(20), 16, rank=0, world_size=2)
    loader = InfiniteLabelledLoader(RandomItems(20), 5)
    with pytest.raises(FlagError, match=r"offset 4\) is out of range: a pass has 4 batches"):
        loader.load_state_dict({"pass": 0, "offset": 4})


def _batch_values(batch):
    return torch.cat([v.flatten() for v in batch.views])


def test_unlabelled_loader_sampler_epochs_and_seeds():
    def make(seed=0, workers=0, rank=0, world=1):
        return build_unlabelled_loader(RandomItems(30, views=2), 4, rank, world, seed, workers)
    loader = make()
    assert isinstance(loader.sampler, DistributedSampler) and len(loader) == 7  # 30 // 4, last dropped
    loader.sampler.set_epoch(0)
    epoch0 = [_batch_values(b) for b in loader]
    loader.sampler.set_epoch(0)
    assert all(torch.equal(a, b) for a, b in zip(epoch0, (_batch_values(b) for b in loader)))
    loader.sampler.set_epoch(1)
    assert not torch.equal(epoch0[0], _batch_values(next(iter(loader))))
    other_seed = make(seed=1)
    assert not torch.equal(epoch0[0], _batch_values(next(iter(other_seed))))
    workers = make(workers=2)
    workers.sampler.set_epoch(0)
    assert all(torch.equal(a, _batch_values(b)) for a, b in zip(epoch0, workers))
    shards = []
    for rank in range(2):
        ranked = make(rank=rank, world=2)
        ranked.sampler.set_epoch(3)
        shards.append({int(i) for b in ranked for i in b.views[0][:, 0]})
    assert not shards[0] & shards[1] and len(shards[0] | shards[1]) == 24  # 15 per rank: 3 batches of 4


def test_loading_in_the_main_process_leaves_training_randomness_alone():
    loader = build_unlabelled_loader(RandomItems(8, views=2, image=True), 4, workers=0,
                                     collate_fn=UnlabelledCollate(mixup="globals"))
    torch.manual_seed(123), random.seed(123), np.random.seed(123)
    expected = torch.rand(3), random.random(), np.random.rand()
    torch.manual_seed(123), random.seed(123), np.random.seed(123)
    for _ in loader:
        pass
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]
    assert np.random.rand() == expected[2]


def test_val_loader_shards_without_duplicates():
    seen = []
    for rank in range(3):
        loader = build_val_loader(RandomItems(10), 2, rank, 3)
        seen.append([int(i) for images, labels in loader for i in images[:, 0]])
    assert [len(s) for s in seen] == [4, 3, 3] and sorted(sum(seen, [])) == list(range(10))


def test_image_pipeline_is_reproducible_with_workers(tmp_path):
    paths = make_synthetic_imagefolder(tmp_path / "data", num_classes=2, train_per_class=8, val_per_class=1, size=24)
    data = build_datasets(str(paths.root), swav_multicrop([16, 8], [2, 2], [0.3, 0.1], [1.0, 0.3]),
                          labelled_transform("standard", 16), val_transform(None, None),
                          subset_file=paths.subset_file)
    batches = []
    for workers in (0, 2):
        loader = build_unlabelled_loader(data.unlabelled, 4, seed=2, workers=workers,
                                         collate_fn=UnlabelledCollate(mixup="globals"))
        loader.sampler.set_epoch(1)
        batches.append(next(iter(loader)))
    a, b = batches
    assert [tuple(v.shape) for v in a.views] == [(4, 3, 16, 16)] * 2 + [(4, 3, 8, 8)] * 2
    assert all(torch.equal(x, y) for x, y in zip(a.views + a.mixed_views, b.views + b.mixed_views))
    assert a.mix_lams == b.mix_lams and torch.equal(a.labels, b.labels)


def test_order_seed_shuffles_both_streams_as_the_release_while_seed_draws_the_augmentations():
    """The release's DistributedSamplers keep their default seed 0 whatever --seed; here ``order_seed`` is that
    seed and ``seed`` still draws each image's augmentation."""
    n, world, batch_size = 24, 2, 4
    for rank in range(world):
        released = DistributedSampler(range(n), num_replicas=world, rank=rank)  # seed 0, as the release built it
        released.set_epoch(2)
        unlabelled = [build_unlabelled_loader(RandomItems(n, views=2), batch_size, rank, world, seed=seed,
                                              order_seed=0) for seed in (31, 32)]
        for loader in unlabelled:
            loader.sampler.set_epoch(2)
        batches = [list(loader) for loader in unlabelled]
        assert [int(i) for b in batches[0] for i in b.views[0][:, 0]] == list(released)
        assert [int(i) for b in batches[1] for i in b.views[0][:, 0]] == list(released)  # same order
        assert not torch.equal(batches[0][0].views[0][:, 1], batches[1][0].views[0][:, 1])  # other draws
        labelled = InfiniteLabelledLoader(RandomItems(n), batch_size, rank, world, seed=31, order_seed=0)
        for pass_index in range(2):
            seen = sum((_indices(b) for b in _take(labelled, labelled.batches_per_pass)), [])
            assert seen == reference_shard(n, rank, world, 0, pass_index)
    by_seed = InfiniteLabelledLoader(RandomItems(n), batch_size, 0, world, seed=31)  # order_seed None: --seed
    assert sum((_indices(b) for b in _take(by_seed, 3)), []) == reference_shard(n, 0, world, 31, 0)


@pytest.mark.parametrize("flags, order_seed", [([], 0), (["--order_by_seed", "true"], 31),
                                               (["--order_by_seed", "true", "--seed", "7"], 7)])
def test_training_streams_shuffle_with_seed_zero_unless_order_by_seed(flags, order_seed, tmp_path):
    import argparse
    from suave.args import get_args_parser
    from suave.method import data_config
    args = argparse.ArgumentParser(parents=[get_args_parser()]).parse_args(
        ["--data_path", str(tmp_path), "--output_dir", str(tmp_path), *flags])
    assert data_config(args).order_seed == order_seed
