"""Batch assembly for the two training streams, with optional Mixup/CutMix (``src.data.mixup``).

Labelled (``LabelledCollate``), as the release's ``collate_rep_aug`` + ``CollateMixup``:
- repeated augmentation (a list of views per image, DeiT III 3-Augment ``n_rep``): the repetitions are
  concatenated along the batch, ``[all images' view 0, all images' view 1, ...]``, labels repeated;
- no mixup: ``targets`` = ``labels`` (long), ``n_clean`` = L;
- ``extend``: the batch is always mixed (``prob`` 1, as the release) and the mixed copies are appended
  after the clean rows: L = 2n, ``targets`` (L, K) float (one-hot rows, then the mixed rows),
  ``labels`` = the n clean labels, ``n_clean`` = n;
- ``replace``: with probability ``mixup_prob`` (--mixup_lab_prob) the whole batch is replaced by its mixed
  version, ``targets`` (L, K) float. A mixed batch has ``n_clean`` = 0 and empty ``labels``; an unmixed one
  has one-hot ``targets`` and ``n_clean`` = L. Choice: the online probes train on clean rows only
  (the release's ``lab_bs_no_mixed``). The release kept ``lab_bs_no_mixed = lab_bs`` in replace mode and
  so trained the probes on mixed rows against soft targets; here a mixed replace batch gives the probes
  nothing, and they learn from the (1 - p) share of unmixed batches. ``targets`` always covers every row,
  so an engine that wants the release's behaviour can still use ``targets``.

Unlabelled (``UnlabelledCollate``), as the release's ``MultiViewCollateMixup``: ``views[i]`` stacks view i
of every image (globals first). Modes: ``globals`` mixes the pair (0, 1) once; ``all`` mixes every
consecutive pair (0, 1), (2, 3), ... (an even number of views, each pair of one size), each pair with
its own per-batch parameters. ``mixed_views[j]`` = mix of ``views[a]`` and ``views[b].flip(0)`` with
weight ``mix_lams[j]``, ``(a, b) = mix_pairs[j]``. Targets: image i of ``views[a]`` and image B-1-i of
``views[b]`` are what row i contains, so its target is ``lam * q(i) + (1 - lam) * q(B-1-i)`` with q an
image's assignment. The release takes q from the two assigned (global) crops for every mixed view:
``lam * q_0 + (1 - lam) * q_1.flip(0)`` with q_0, q_1 the targets of crops_for_assign[0], [1];
``mix_target_pairs[j]`` says which targets to use (always (0, 1), i.e. the first and second assigned
crop), so local pairs in ``all`` mode are handled as in the release.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Sequence

import numpy as np
import torch

from src.errors import FlagError

from .mixup import MixParams, apply_mix, one_hot, sample_mix_params, soft_mixed_labels

LABELLED_MIXUP_MODES = ("extend", "replace")
UNLABELLED_MIXUP_MODES = ("globals", "all")


def _map_tensors(batch, fn):
    """A copy of a batch dataclass with ``fn`` applied to every tensor (also inside lists)."""
    changes = {}
    for f in fields(batch):
        value = getattr(batch, f.name)
        if isinstance(value, torch.Tensor):
            changes[f.name] = fn(value)
        elif isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
            changes[f.name] = [fn(v) for v in value]
    return replace(batch, **changes)


class _BatchMethods:
    def pin_memory(self):
        """Called by the DataLoader's pin-memory thread (``pin_memory=True``)."""
        return _map_tensors(self, lambda t: t.pin_memory())

    def to(self, device: torch.device | str, non_blocking: bool = False, channels_last: bool = False):
        """On ``device``; image tensors (4-D) in channels-last memory format when asked."""
        def move(t: torch.Tensor) -> torch.Tensor:
            t = t.to(device, non_blocking=non_blocking)
            return t.contiguous(memory_format=torch.channels_last) if channels_last and t.ndim == 4 else t
        return _map_tensors(self, move)


@dataclass
class LabelledBatch(_BatchMethods):
    images: torch.Tensor  # (L, C, H, W)
    targets: torch.Tensor  # (L,) long without mixup, else (L, K) float rows summing to 1
    labels: torch.Tensor  # (n_clean,) long: hard labels of rows [0, n_clean)
    n_clean: int  # rows [0, n_clean) are unmixed images (the online probes' rows)
    skipped: list[str] = field(default_factory=list)  # unreadable images replaced in this batch (bad_images)

    @property
    def batch_size(self) -> int:
        """L, every row (clean and mixed)."""
        return self.images.shape[0]


@dataclass
class UnlabelledBatch(_BatchMethods):
    views: list[torch.Tensor]  # each (B, C, H, W), in crop order, globals first
    labels: torch.Tensor  # (B,) long, for logging pseudo-label accuracy only; -1 = unknown (own data)
    mixed_views: list[torch.Tensor] = field(default_factory=list)
    mix_lams: list[float] = field(default_factory=list)
    mix_pairs: list[tuple[int, int]] = field(default_factory=list)  # (a, b): views mixed, b flipped
    mix_target_pairs: list[tuple[int, int]] = field(default_factory=list)  # assigned crops whose q to mix
    skipped: list[str] = field(default_factory=list)  # unreadable images replaced in this batch (bad_images)
    mix_params: list[MixParams] = field(default_factory=list)  # what made each mixed view (--gpu_aug remixes)

    @property
    def batch_size(self) -> int:
        """B, the images per view."""
        return self.views[0].shape[0]


def _rng_from_torch() -> np.random.Generator:
    """A numpy generator seeded from torch's CPU generator (seeded per batch by the loaders)."""
    return np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,)).item()))


def stack_labelled(samples: Sequence[tuple]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[(image or [view_0, view_1, ...], label)]`` -> images (L, C, H, W), labels (L,), repetitions
    concatenated along the batch (the release's ``collate_rep_aug``)."""
    images, labels = zip(*samples)
    labels_t = torch.as_tensor(labels, dtype=torch.long)
    if isinstance(images[0], (list, tuple)):
        n_rep = len(images[0])
        stacked = torch.cat([torch.stack([img[r] for img in images]) for r in range(n_rep)])
        return stacked, labels_t.repeat(n_rep)
    return torch.stack(images), labels_t


class LabelledCollate:
    """Collate for the labelled stream -> ``LabelledBatch`` (see the module docstring)."""

    def __init__(self, num_classes: int | None = None, mixup: str | None = None, mixup_prob: float = 0.5,
                 mixup_alpha: float = 1.0, cutmix_alpha: float = 1.0, switch_prob: float = 0.5,
                 label_smoothing: float = 0.0) -> None:
        if mixup is not None and mixup not in LABELLED_MIXUP_MODES:
            raise ValueError(f"labelled mixup mode {mixup!r}: expected one of {LABELLED_MIXUP_MODES} or None")
        if mixup is not None and not num_classes:
            raise ValueError("labelled mixup needs num_classes (the number of prototypes / outputs)")
        self.num_classes, self.mixup = num_classes, mixup
        self.prob = 1.0 if mixup == "extend" else mixup_prob
        self.mixup_alpha, self.cutmix_alpha, self.switch_prob = mixup_alpha, cutmix_alpha, switch_prob
        self.label_smoothing = label_smoothing

    def __call__(self, samples: Sequence[tuple]) -> LabelledBatch:
        images, labels = stack_labelled(samples)
        if self.mixup is None:
            return LabelledBatch(images, labels, labels, len(labels))
        if int(labels.max()) >= self.num_classes:
            raise FlagError(f"label {int(labels.max())} does not fit {self.num_classes} outputs: the number of "
                            "prototypes (--nmb_prototypes / --out_dim) must be at least the number of classes")
        params = sample_mix_params(images.shape[-2], images.shape[-1], _rng_from_torch(), self.mixup_alpha,
                                   self.cutmix_alpha, self.prob, self.switch_prob)
        mixed = apply_mix(images, images, params)
        soft = soft_mixed_labels(labels, self.num_classes, params.lam, self.label_smoothing)
        if self.mixup == "extend":
            clean = one_hot(labels, self.num_classes, self.label_smoothing)
            return LabelledBatch(torch.cat([images, mixed]), torch.cat([clean, soft]), labels, len(labels))
        if params.mixed:
            return LabelledBatch(mixed, soft, labels[:0], 0)
        return LabelledBatch(images, soft, labels, len(labels))


class UnlabelledCollate:
    """Collate for the unlabelled multi-view stream -> ``UnlabelledBatch`` (see the module docstring)."""

    def __init__(self, mixup: str | None = None, mixup_alpha: float = 1.0, cutmix_alpha: float = 1.0,
                 prob: float = 1.0, switch_prob: float = 0.5, defer_mix: bool = False) -> None:
        if mixup is not None and mixup not in UNLABELLED_MIXUP_MODES:
            raise ValueError(f"unlabelled mixup mode {mixup!r}: expected one of {UNLABELLED_MIXUP_MODES} or None")
        self.mixup = mixup
        self.defer_mix = defer_mix  # draw the parameters, leave mixed_views empty (--gpu_aug mixes on the device)
        self.mixup_alpha, self.cutmix_alpha, self.prob, self.switch_prob = mixup_alpha, cutmix_alpha, prob, switch_prob

    def mixed_pairs(self, n_views: int) -> list[tuple[int, int]]:
        if self.mixup is None:
            return []
        if n_views < 2:
            raise ValueError("unlabelled mixup needs at least 2 views per image")
        if self.mixup == "globals":
            return [(0, 1)]
        if n_views % 2:
            raise FlagError(f"--mixup_unlab_type all mixes consecutive pairs of views and needs an even number of "
                            f"views, got {n_views}")
        return [(a, a + 1) for a in range(0, n_views, 2)]

    def __call__(self, samples: Sequence[tuple]) -> UnlabelledBatch:
        view_lists, labels = zip(*samples)
        n_views = len(view_lists[0])
        views = [torch.stack([v[i] for v in view_lists]) for i in range(n_views)]
        batch = UnlabelledBatch(views, torch.as_tensor(labels, dtype=torch.long))
        rng = _rng_from_torch() if self.mixup else None
        for a, b in self.mixed_pairs(n_views):
            if views[a].shape != views[b].shape:
                raise FlagError(f"cannot mix view {a} {tuple(views[a].shape[1:])} with view {b} "
                                f"{tuple(views[b].shape[1:])}: pairs must have one crop size "
                                "(use --mixup_unlab_type globals, or crop groups of even sizes)")
            params: MixParams = sample_mix_params(views[a].shape[-2], views[a].shape[-1], rng, self.mixup_alpha,
                                                  self.cutmix_alpha, self.prob, self.switch_prob)
            if not self.defer_mix:
                batch.mixed_views.append(apply_mix(views[a], views[b], params))
            batch.mix_params.append(params)
            batch.mix_lams.append(params.lam)
            batch.mix_pairs.append((a, b))
            batch.mix_target_pairs.append((0, 1))
        return batch
