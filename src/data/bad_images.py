"""Unreadable images during training: skipped, named, counted, up to a limit (``--max_bad_images``).

One bad JPEG in a million must not kill a three-day run, and many must not go unnoticed. The training
datasets are wrapped in ``SkipBadImages``: an image that cannot be read is replaced by the next readable one
of the same set (so batch shapes, and every other sample's seed, stay as they were) and its path travels
with the batch (``SkippedCollate`` puts it in ``batch.skipped``, also from DataLoader workers). The engine
feeds those paths to ``BadImageTracker``, which warns once per file, counts unique files (the count goes to
the log and ``stats.csv``, and into the checkpoint) and stops the run with the list of files when more than
the limit are bad. Without any bad image nothing changes: same items, same batches.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Sequence

import torch
from torch.utils.data import Dataset

from .errors import DataError, ImageLoadError

log = logging.getLogger(__name__)
MAX_REPLACEMENT_TRIES = 100


class SkipBadImages(Dataset):
    """Items ``(*dataset[i], skipped)`` with ``skipped`` a tuple of ``"path: reason"`` strings (empty when
    image i was read). A bad image i is replaced by the first readable one among i+1, i+2, ... (wrapping)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def _path(self, index: int) -> str:
        samples = getattr(self.dataset, "samples", None)
        return samples[index][0] if samples is not None else f"item {index}"

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        skipped: list[str] = []
        n = len(self.dataset)
        for k in range(min(MAX_REPLACEMENT_TRIES, n)):
            j = (index + k) % n
            try:
                item = self.dataset[j]
            except ImageLoadError as err:
                cause = err.__cause__ or err
                reason = f"{type(cause).__name__}: {cause}".splitlines()[0]
                skipped.append(f"{self._path(j)}: {reason}")
                continue
            return (*item, tuple(skipped))
        raise DataError(f"{len(skipped)} images in a row cannot be read, from {self._path(index)} on "
                        f"({'; '.join(skipped[:5])}): check the data source")


class SkippedCollate:
    """Collate of ``SkipBadImages`` items: the inner collate on the items without their skipped paths, then
    ``batch.skipped`` = those paths (batches are ``LabelledBatch`` / ``UnlabelledBatch``)."""

    def __init__(self, inner: Callable) -> None:
        self.inner = inner

    def __call__(self, samples: Sequence[tuple]) -> Any:
        batch = self.inner([s[:-1] for s in samples])
        batch.skipped = [p for s in samples for p in s[-1]]
        return batch


class BadImageTracker:
    """Unique unreadable files seen by this process (and, after a resume, by the whole run before it)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.files: dict[str, str] = {}  # path -> reason, in the order seen

    def observe(self, skipped: Iterable[str]) -> None:
        """Warn about each new file; stop (``DataError`` naming the files) when more than ``limit`` are bad."""
        for entry in skipped:
            path, _, reason = entry.partition(": ")
            if path in self.files:
                continue
            self.files[path] = reason
            log.warning("skipped unreadable image %s (%s): %d bad image(s) so far, limit --max_bad_images %d",
                        path, reason, len(self.files), self.limit)
        self.check(len(self.files))

    def check(self, count: int) -> None:
        if count > self.limit:
            names = list(self.files)
            shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
            raise DataError(f"{count} unreadable images, more than --max_bad_images {self.limit}: {shown}. Replace "
                            "or delete them (or remove them from the list files), or raise --max_bad_images; the "
                            "last checkpoint is intact and the same command resumes")

    def merge_ranks(self) -> int:
        """Every rank's files, merged on every rank (collective); stops past the limit; the count."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            parts: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, self.state_dict())
            for part in parts:
                self.files.update({k: v for k, v in part.items() if k not in self.files})
        self.check(len(self.files))
        return len(self.files)

    def state_dict(self) -> dict[str, str]:
        return dict(self.files)

    def load_state_dict(self, files: dict[str, str] | None) -> None:
        self.files = dict(files or {})
