"""DINO's weighted k-nearest-neighbour classifier on frozen features (facebookresearch/dino, ``eval_knn.py``).

- ``extract_shard`` + ``gather_shards``: the backbone's features of a dataset, each process computing its shard
  (``ShardSampler``: index ``rank, rank + world, ...``, no padding, so no image twice) and, for the train
  features, every process receiving all of them in dataset order (DINO gathers batch by batch and writes them by
  index on rank 0: the same matrix). The test rows stay sharded: each process classifies its own and the hits are
  summed (DINO classifies every test row on rank 0: the same counts).
- ``knn_classify``: for each test feature, the cosine similarity to every train feature (features L2-normalised,
  so a dot product), the k most similar, each voting for its label with weight ``exp(similarity / T)``; classes
  ranked by summed votes (ties: the lower class index first), top-1 and top-5 (top-min(5, k), as DINO) hits
  counted. DINO's arithmetic, in chunks of test rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from src import distributed
from src.data.samplers import ShardSampler
from src.errors import FlagError
from src.logging_utils import Stopwatch, get_logger

TEST_CHUNK = 256  # test rows per similarity matrix (DINO splits the test set into 100 chunks)


@dataclass(frozen=True)
class KnnCounts:
    """Hits of one k over the test rows this process classified (sum them over processes)."""

    k: int
    top1: int
    top5: int
    total: int

    def accuracies(self) -> tuple[float, float]:
        return 100.0 * self.top1 / max(self.total, 1), 100.0 * self.top5 / max(self.total, 1)


@torch.no_grad()
def extract_shard(backbone: nn.Module, dataset: Dataset, batch_size: int, workers: int, device: torch.device,
                  store: torch.device, log_freq: int = 50, what: str = "images") -> torch.Tensor:
    """This rank's ``ShardSampler`` rows of ``dataset`` (rows rank, rank + world, ...) through ``backbone`` (in
    eval mode): (rows, ``backbone.num_features``) float32 features on ``store``."""
    world, rank = distributed.get_world_size(), distributed.get_rank()
    loader = DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), rank, world),
                        num_workers=workers, pin_memory=device.type == "cuda")
    backbone.eval()
    watch = Stopwatch()
    parts = [torch.zeros(0, backbone.num_features, device=store)]  # a rank with no image still gathers
    for it, (images, _) in enumerate(loader):
        parts.append(backbone(images.to(device, non_blocking=True)).float().to(store))
        if log_freq and (it % log_freq == 0 or it == len(loader) - 1):
            get_logger().info("features of %s: batch %d/%d (%.1f s)", what, it + 1, len(loader), watch.elapsed())
    return torch.cat(parts)


def shard_of(values: torch.Tensor) -> torch.Tensor:
    """This rank's ``ShardSampler`` rows of a per-image tensor (labels, say)."""
    return values[distributed.get_rank()::distributed.get_world_size()]


def gather_shards(local: torch.Tensor, total: int) -> torch.Tensor:
    """Every rank's ``ShardSampler`` rows (rank r holds rows r, r + world, ...) as one (total, D) matrix in
    dataset order, on every rank (collective)."""
    world = distributed.get_world_size()
    if world == 1:
        return local
    per_rank = -(-total // world)
    padded = torch.zeros(per_rank, local.shape[1], dtype=local.dtype, device=local.device)
    padded[:local.shape[0]] = local
    gathered = distributed.all_gather_cat(padded.unsqueeze(1), dim=1)  # (per_rank, world, D): row i*world + r
    return gathered.reshape(per_rank * world, local.shape[1])[:total]


def check_k(nb_knn: Sequence[int], train_size: int | None = None) -> None:
    """Every k at least 1 and (given ``train_size``) at most the number of training features."""
    if any(k < 1 for k in nb_knn):
        raise FlagError(f"--nb_knn {' '.join(map(str, nb_knn))}: every k must be at least 1")
    if train_size is not None and max(nb_knn) > train_size:
        raise FlagError(f"--nb_knn {max(nb_knn)} exceeds the {train_size} training images: pass a smaller k "
                        "(or more training images: --train_subset all, --labels_perc 10)")


@torch.no_grad()
def knn_classify(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, nb_knn: Sequence[int], temperature: float,
                 num_classes: int) -> list[KnnCounts]:
    """Weighted k-NN hits for every k of ``nb_knn`` (features: (N, D), L2-normalised by the caller)."""
    check_k(nb_knn, train_features.shape[0])
    kmax = max(nb_knn)
    hits = {k: [0, 0] for k in nb_knn}
    train_t = train_features.t()
    train_labels = train_labels.to(train_features.device)
    for start in range(0, test_features.shape[0], TEST_CHUNK):
        features = test_features[start:start + TEST_CHUNK].to(train_features.device)
        targets = test_labels[start:start + TEST_CHUNK].to(train_features.device)
        similarity, indices = (features @ train_t).topk(kmax, dim=1, largest=True, sorted=True)
        neighbours = train_labels[indices]  # (B, kmax)
        weights = similarity.div(temperature).exp()
        for k in nb_knn:
            votes = torch.zeros(features.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
            votes.scatter_add_(1, neighbours[:, :k], weights[:, :k])
            ranking = votes.sort(dim=1, descending=True, stable=True).indices
            correct = ranking.eq(targets.view(-1, 1))
            hits[k][0] += int(correct[:, :1].sum())
            hits[k][1] += int(correct[:, :min(5, k)].sum())
    return [KnnCounts(k, top1, top5, test_features.shape[0]) for k, (top1, top5) in hits.items()]


def sum_over_ranks(counts: list[KnnCounts]) -> list[KnnCounts]:
    """Each k's hits and totals summed over processes (every rank gets the sums)."""
    table = torch.tensor([[c.top1, c.top5, c.total] for c in counts], dtype=torch.float64)
    distributed.all_reduce_sum(table)
    return [KnnCounts(c.k, int(row[0]), int(row[1]), int(row[2])) for c, row in zip(counts, table.tolist())]


def normalize(features: torch.Tensor) -> torch.Tensor:
    """L2-normalise rows (DINO's ``nn.functional.normalize(features, dim=1, p=2)``)."""
    return F.normalize(features, dim=1, p=2)
