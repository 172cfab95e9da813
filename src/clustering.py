"""Suave's clustering targets: distributed Sinkhorn-Knopp and the SwAV queue of embeddings.

Both reproduce the SwAV release (facebookresearch/swav ``main_swav.py``), which Suave
(``suave/main_suave.py`` of the Suave/Daino release) uses unchanged:

- ``sinkhorn_knopp`` is ``distributed_sinkhorn``: equal-partition soft assignments of the global batch
  to the K prototypes (Caron et al., 2020, Sec. 3.1), computed in fp32 with sums all-reduced.
- ``SwAVQueue`` holds the embeddings of the last few global batches, whose prototype scores are
  prepended to the batch's scores before Sinkhorn-Knopp, so the equal-partition constraint is imposed
  on more samples than one small batch.
"""
from __future__ import annotations

from typing import Any

import torch

from src.distributed import all_gather_cat, all_reduce_max, all_reduce_sum, get_rank, get_world_size
from src.errors import FlagError


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.05, n_iters: int = 3) -> torch.Tensor:
    """Soft assignments of the rows of ``scores`` (B_local x K) to the K prototypes; each row sums to 1.

    The SwAV release's ``distributed_sinkhorn``: with B = B_local x world size,
    Q = exp(scores / epsilon)^T (K x B); Q /= sum(Q); then ``n_iters`` times: each prototype row of Q
    is scaled to total 1/K (row sums all-reduced over ranks), each sample column to 1/B; finally
    Q *= B so every sample's assignment sums to 1. Returns Q^T (B_local x K), float32, no gradient.

    Every rank must call it with the same number of rows (B is local rows x world size, as in the
    release). Computed in float32 whatever the input dtype, with autocast disabled.

    Numerical stability (the one difference from the release, which exponentiates ``scores /
    epsilon`` directly): the global maximum of ``scores / epsilon`` (all-reduced MAX) is subtracted
    before ``exp``. A global constant factor exp(-max) cancels exactly in the first normalisation
    ``Q /= sum(Q)``, so the result equals the release's up to float rounding; it only removes the
    overflow the release hits when scores / epsilon exceeds ~88 (fp32 ``exp`` limit), e.g. with
    un-normalised prototypes or a smaller epsilon.
    """
    if scores.ndim != 2:
        raise ValueError(f"sinkhorn_knopp expects scores of shape (batch, prototypes), got {tuple(scores.shape)}")
    if epsilon <= 0:
        raise FlagError(f"sinkhorn_knopp needs epsilon > 0 (--epsilon), got {epsilon}")
    if n_iters < 0:
        raise FlagError(f"sinkhorn_knopp needs n_iters >= 0 (--sinkhorn_iterations), got {n_iters}")
    with torch.autocast(device_type=scores.device.type, enabled=False):
        logits = scores.detach().float() / epsilon
        global_max = all_reduce_max(logits.max())
        q = torch.exp(logits - global_max).t()  # K x B_local, as the release's notation
        n_samples = q.shape[1] * get_world_size()
        n_prototypes = q.shape[0]

        total = all_reduce_sum(torch.sum(q))
        q /= total
        for _ in range(n_iters):
            # each prototype gets total mass 1/K (over the global batch)
            row_sums = all_reduce_sum(torch.sum(q, dim=1, keepdim=True))
            q /= row_sums
            q /= n_prototypes
            # each sample gets total mass 1/B
            q /= torch.sum(q, dim=0, keepdim=True)
            q /= n_samples
        q *= n_samples  # columns sum to 1: an assignment per sample
        return q.t()


class SwAVQueue:
    """The SwAV queue: embeddings of past global batches for each crop used for assignment.

    Release behaviour reproduced (``main_suave.py``/``main_swav.py``):
    - the total length ``queue_length`` is rounded down to a multiple of the global batch
      (batch per rank x world size) and split evenly across ranks; each rank keeps a tensor
      ``queue`` of shape (n_crops_for_assign, queue_length // world_size, feat_dim), zeros at first;
    - for assigned crop ``i`` the engine first calls ``scores_with_queue(i, batch_scores, W)``: once the
      queue is *in use* (its last row for crop ``i`` is non-zero, or it was already in use) the queue's
      scores ``queue[i] @ W.T`` are prepended to the batch scores; then ``push(i, embeddings)`` shifts the
      queue by one batch (oldest rows fall off the end) and writes the new embeddings first; then
      ``sinkhorn_knopp(scores)[-batch:]`` gives the batch's targets.

    The release kept ``use_the_queue`` in a local variable reset every epoch and re-derived from the
    last row; here the flag is kept (and saved). Both agree because the last row of a full queue of
    L2-normalised embeddings is never zero.

    Checkpoints (a fix: the release saved one ``queue{rank}.pth`` per rank, which cannot be resumed on
    another number of ranks): ``state_dict()`` gathers every rank's rows into one tensor
    (n_crops_for_assign, total_length, feat_dim) in *global newest-first order*: the newest global
    batch first (its rows in rank order: rank 0's batch, rank 1's, ...), then the batch before, and
    so on. That is exactly the queue a single process with the whole global batch would hold.
    ``load_state_dict()`` splits that sequence again for the current world size, so a queue saved
    with 4 ranks resumes on 2 or 1 with the same rows in the same age order.
    ``state_dict()`` is a collective: call it on every rank.
    """

    def __init__(self, n_crops_for_assign: int, queue_length: int, feat_dim: int,
                 global_batch_size: int, world_size: int, device: torch.device | str = "cpu") -> None:
        if world_size != get_world_size():
            raise ValueError(f"SwAVQueue built for world size {world_size} but the process group has "
                             f"{get_world_size()} ranks; pass src.distributed.get_world_size()")
        if global_batch_size <= 0 or global_batch_size % world_size != 0:
            raise ValueError(f"global batch size {global_batch_size} must be a positive multiple of the "
                             f"world size {world_size} (batch_size per rank x world size)")
        if n_crops_for_assign <= 0 or feat_dim <= 0:
            raise ValueError(f"SwAVQueue needs n_crops_for_assign > 0 and feat_dim > 0, got "
                             f"{n_crops_for_assign} and {feat_dim}")
        total = queue_length - queue_length % global_batch_size
        if total <= 0:
            raise FlagError(f"--queue_length {queue_length} is shorter than the global batch "
                            f"{global_batch_size} (batch_size x world size): use --queue_length 0 to "
                            f"disable the queue, or at least {global_batch_size}")
        self.world_size = world_size
        self.rank = get_rank()
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // world_size
        self.total_length = total
        self.local_length = total // world_size
        self.queue = torch.zeros(n_crops_for_assign, self.local_length, feat_dim, device=device)
        self.in_use = False

    @property
    def n_crops_for_assign(self) -> int:
        return self.queue.shape[0]

    @property
    def feat_dim(self) -> int:
        return self.queue.shape[2]

    def _check_crop(self, i: int) -> None:
        if not 0 <= i < self.n_crops_for_assign:
            raise IndexError(f"queue index {i} out of range: the queue holds {self.n_crops_for_assign} "
                             f"crops (one per --crops_for_assign entry, indexed by position)")

    @torch.no_grad()
    def queue_scores(self, i: int, prototype_weight: torch.Tensor) -> torch.Tensor:
        """Scores of this rank's queued embeddings of assigned crop ``i``: ``queue[i] @ W.T``."""
        self._check_crop(i)
        return torch.mm(self.queue[i], prototype_weight.detach().t())

    @torch.no_grad()
    def scores_with_queue(self, i: int, batch_scores: torch.Tensor,
                          prototype_weight: torch.Tensor) -> torch.Tensor:
        """``batch_scores`` with the queue's scores prepended when the queue is in use (else unchanged).

        Updates the in-use flag first, as the release: in use once the last row of crop ``i`` is non-zero.
        Keep the last ``len(batch_scores)`` rows of the Sinkhorn output for the batch.
        """
        self._check_crop(i)
        if not self.in_use and bool(torch.any(self.queue[i, -1] != 0)):
            self.in_use = True
        if not self.in_use:
            return batch_scores
        queued = self.queue_scores(i, prototype_weight).to(batch_scores.dtype)
        return torch.cat((queued, batch_scores.detach()))

    @torch.no_grad()
    def push(self, i: int, embeddings: torch.Tensor) -> None:
        """Put this rank's batch ``embeddings`` (local batch x feat_dim) first in crop ``i``'s queue.

        The other rows move back by one batch; the oldest batch falls off the end.
        """
        self._check_crop(i)
        n = embeddings.shape[0]
        if embeddings.ndim != 2 or embeddings.shape[1] != self.feat_dim:
            raise ValueError(f"push expects embeddings of shape (batch, {self.feat_dim}), "
                             f"got {tuple(embeddings.shape)}")
        if n != self.local_batch_size:
            raise ValueError(f"push got {n} embeddings but the queue was built for a batch of "
                             f"{self.local_batch_size} per rank (global batch {self.global_batch_size})")
        self.queue[i, n:] = self.queue[i, :-n].clone()
        self.queue[i, :n] = embeddings.detach()

    def state_dict(self) -> dict[str, Any]:
        """{"queue": (n_crops_for_assign, total_length, feat_dim) CPU tensor, global newest-first order,
        "in_use": bool}. Collective (gathers from every rank): call on every rank."""
        gathered = all_gather_cat(self.queue, dim=1)  # rank-major: rank r's local rows, newest first
        n, _, d = gathered.shape
        n_batches = self.local_length // self.local_batch_size
        by_rank = gathered.reshape(n, self.world_size, n_batches, self.local_batch_size, d)
        by_age = by_rank.permute(0, 2, 1, 3, 4).reshape(n, self.total_length, d)
        return {"queue": by_age.detach().cpu().clone(), "in_use": bool(self.in_use)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict()`` saved with any world size; this rank takes its share of each batch.

        If the saved total length differs from this queue's (the rounding to the global batch changed),
        the newest rows are kept, or zero rows are added at the old end; in that case the queue is only
        used again once full (in-use flag cleared), as a fresh queue would be.
        """
        if not isinstance(state, dict) or "queue" not in state or "in_use" not in state:
            raise ValueError("SwAVQueue.load_state_dict expects the dict of SwAVQueue.state_dict() with keys "
                             "'queue' and 'in_use'; the checkpoint's queue entry is not one")
        full = state["queue"]
        if (not isinstance(full, torch.Tensor) or full.ndim != 3 or full.shape[0] != self.n_crops_for_assign
                or full.shape[2] != self.feat_dim):
            shape = tuple(full.shape) if isinstance(full, torch.Tensor) else type(full).__name__
            raise ValueError(f"saved queue has shape {shape}, expected ({self.n_crops_for_assign}, length, "
                             f"{self.feat_dim}): --crops_for_assign and --feat_dim must match the checkpoint")
        in_use = bool(state["in_use"])
        full = full.to(device=self.queue.device, dtype=self.queue.dtype)
        saved_length = full.shape[1]
        if saved_length >= self.total_length:
            full = full[:, :self.total_length]
        else:
            pad = full.new_zeros(full.shape[0], self.total_length - saved_length, full.shape[2])
            full = torch.cat((full, pad), dim=1)
            in_use = False
        n, _, d = full.shape
        n_batches = self.local_length // self.local_batch_size
        by_age = full.reshape(n, n_batches, self.world_size, self.local_batch_size, d)
        self.queue.copy_(by_age[:, :, self.rank].reshape(n, self.local_length, d))
        self.in_use = in_use
