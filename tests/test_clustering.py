"""Sinkhorn-Knopp and the SwAV queue against references written here, single-process and 2-process (gloo)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from src.clustering import SwAVQueue, sinkhorn_knopp
from src.errors import FlagError
from tests.dist_helpers import run_in_processes


def reference_sinkhorn(scores: torch.Tensor, epsilon: float, n_iters: int) -> torch.Tensor:
    """Plain loops in float64, following the SwAV release's distributed_sinkhorn line by line."""
    s = scores.double().tolist()
    n_samples, n_protos = len(s), len(s[0])
    q = [[math.exp(s[b][k] / epsilon) for b in range(n_samples)] for k in range(n_protos)]  # K x B
    total = sum(sum(row) for row in q)
    q = [[x / total for x in row] for row in q]
    for _ in range(n_iters):
        for k in range(n_protos):
            row_sum = sum(q[k])
            q[k] = [x / row_sum / n_protos for x in q[k]]
        for b in range(n_samples):
            col_sum = sum(q[k][b] for k in range(n_protos))
            for k in range(n_protos):
                q[k][b] = q[k][b] / col_sum / n_samples
    return torch.tensor([[q[k][b] * n_samples for k in range(n_protos)] for b in range(n_samples)],
                        dtype=torch.float64)


def cosine_scores(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, 8, generator=g), dim=1)
    w = F.normalize(torch.randn(k, 8, generator=g), dim=1)
    return x @ w.t()


@pytest.mark.parametrize("n_iters", [0, 1, 3])
def test_sinkhorn_equals_plain_loop_reference(n_iters):
    scores = cosine_scores(6, 4, seed=0)
    out = sinkhorn_knopp(scores, epsilon=0.05, n_iters=n_iters)
    assert out.shape == scores.shape and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), reference_sinkhorn(scores, 0.05, n_iters), rtol=1e-5, atol=1e-7)


def test_sinkhorn_marginals():
    scores = cosine_scores(32, 5, seed=1)
    b, k = scores.shape
    q = sinkhorn_knopp(scores, epsilon=0.05, n_iters=3)
    # the last step normalises each sample: every row is a distribution, so the total mass is B
    torch.testing.assert_close(q.sum(dim=1), torch.ones(b), rtol=0, atol=1e-5)
    assert (q >= 0).all()
    torch.testing.assert_close(q.sum(), torch.tensor(float(b)), rtol=1e-5, atol=0)
    # the prototype masses are B/K exactly only at the fixed point: the error shrinks with iterations
    errors = [(sinkhorn_knopp(scores, 0.05, n).sum(dim=0) - b / k).abs().max().item() for n in (1, 3, 10, 300)]
    assert errors[0] > errors[1] > errors[2] > errors[3]
    assert errors[3] < 1e-3 * b / k


def test_sinkhorn_balanced_input_gives_exact_equal_partition():
    # circulant scores: every sample and every prototype is alike up to a cyclic shift, so the
    # K x B matrix stays circulant and each prototype receives exactly B/K after any iteration count
    k = 5
    base = torch.tensor([0.9, 0.1, -0.3, 0.4, -0.8])
    scores = torch.stack([base.roll(b) for b in range(2 * k)])
    q = sinkhorn_knopp(scores, epsilon=0.05, n_iters=3)
    torch.testing.assert_close(q.sum(dim=0), torch.full((k,), 2.0), rtol=1e-5, atol=0)


def test_sinkhorn_global_shift_is_stable_where_the_release_overflows():
    scores = cosine_scores(6, 4, seed=2)
    expected = reference_sinkhorn(scores, 0.05, 3)  # float64: no overflow
    shifted = scores + 5.0  # exp(6 / 0.05) = exp(120) overflows float32
    assert torch.isinf(torch.exp(shifted / 0.05)).any()
    out = sinkhorn_knopp(shifted, 0.05, 3)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-6)


def test_sinkhorn_fp16_input_computes_in_fp32():
    scores16 = cosine_scores(8, 4, seed=3).half()
    assert torch.isinf(torch.exp(scores16 / 0.05)).any()  # exp(20) > fp16 max: an fp16 computation fails
    out = sinkhorn_knopp(scores16, 0.05, 3)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, sinkhorn_knopp(scores16.float(), 0.05, 3), rtol=0, atol=0)
    torch.testing.assert_close(out.double(), reference_sinkhorn(scores16.float(), 0.05, 3), rtol=1e-5, atol=1e-7)


def test_sinkhorn_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        sinkhorn_knopp(torch.zeros(3, 4, 5))
    with pytest.raises(FlagError, match="epsilon"):
        sinkhorn_knopp(torch.zeros(3, 4), epsilon=0.0)


# ---------------------------------------------------------------- queue

def release_queue_steps(queue: torch.Tensor, steps, weight: torch.Tensor, bs: int):
    """The release's queue lines (main_swav.py train loop), on a plain tensor; returns Sinkhorn inputs."""
    use_the_queue = False
    outs = []
    for embedding, output in steps:
        for i in range(queue.shape[0]):
            out = output[i]
            if use_the_queue or not torch.all(queue[i, -1, :] == 0):
                use_the_queue = True
                out = torch.cat((torch.mm(queue[i], weight.t()), out))
            queue[i, bs:] = queue[i, :-bs].clone()
            queue[i, :bs] = embedding[i]
            outs.append(out)
    return outs


def make_steps(n_steps: int, n_assign: int, batch: int, dim: int, k: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    steps = []
    for _ in range(n_steps):
        emb = F.normalize(torch.randn(n_assign, batch, dim, generator=g), dim=-1)
        weight_scores = torch.randn(n_assign, batch, k, generator=g)
        steps.append((emb, weight_scores))
    weight = F.normalize(torch.randn(k, dim, generator=g), dim=1)
    return steps, weight


def run_queue(queue: SwAVQueue, steps, weight, rank: int = 0, world: int = 1):
    """What the engine does per step; returns the Sinkhorn inputs and the batch's assignments."""
    bs = queue.local_batch_size
    outs, assignments = [], []
    for embedding, output in steps:
        for i in range(queue.n_crops_for_assign):
            rows = slice(rank * bs, (rank + 1) * bs)
            out = queue.scores_with_queue(i, output[i][rows], weight)
            queue.push(i, embedding[i][rows])
            outs.append(out)
            assignments.append(sinkhorn_knopp(out, 0.05, 3)[-bs:])
    return outs, assignments


def test_queue_push_and_prepend_match_release():
    bs, dim, k = 3, 4, 5
    steps, weight = make_steps(5, 2, bs, dim, k, seed=0)
    queue = SwAVQueue(2, queue_length=10, feat_dim=dim, global_batch_size=bs, world_size=1)
    assert (queue.total_length, queue.local_length) == (9, 9)  # rounded down to a multiple of the batch
    reference = torch.zeros(2, 9, dim)
    expected = release_queue_steps(reference, steps, weight, bs)
    outs, _ = run_queue(queue, steps, weight)
    # the queue is full after 3 pushes: steps 0-2 see only the batch, steps 3-4 the queue first
    assert [o.shape[0] for o in outs] == [3] * 6 + [12] * 4
    for got, want in zip(outs, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(queue.queue, reference, rtol=0, atol=0)
    assert queue.in_use


def test_queue_errors():
    with pytest.raises(FlagError, match="--queue_length 5 is shorter than the global batch 8"):
        SwAVQueue(2, 5, 4, global_batch_size=8, world_size=1)
    with pytest.raises(ValueError, match="world size 2 but the process group has 1"):
        SwAVQueue(2, 16, 4, global_batch_size=8, world_size=2)
    queue = SwAVQueue(2, 16, 4, global_batch_size=8, world_size=1)
    with pytest.raises(ValueError, match="batch of 8 per rank"):
        queue.push(0, torch.ones(4, 4))
    with pytest.raises(ValueError, match="--feat_dim must match"):
        queue.load_state_dict({"queue": torch.zeros(2, 16, 3), "in_use": True})


def test_queue_state_dict_round_trip_and_length_change():
    bs, dim, k = 4, 3, 5
    steps, weight = make_steps(4, 2, bs, dim, k, seed=1)
    queue = SwAVQueue(2, 12, dim, global_batch_size=bs, world_size=1)
    run_queue(queue, steps, weight)
    state = queue.state_dict()
    assert state["in_use"] is True and state["queue"].device.type == "cpu"
    same = SwAVQueue(2, 12, dim, global_batch_size=bs, world_size=1)
    same.load_state_dict(state)
    torch.testing.assert_close(same.queue, queue.queue, rtol=0, atol=0)
    assert same.in_use
    shorter = SwAVQueue(2, 8, dim, global_batch_size=bs, world_size=1)
    shorter.load_state_dict(state)  # keeps the newest rows
    torch.testing.assert_close(shorter.queue, queue.queue[:, :8], rtol=0, atol=0)
    assert shorter.in_use
    longer = SwAVQueue(2, 16, dim, global_batch_size=bs, world_size=1)
    longer.load_state_dict(state)  # the old end is padded with zeros: used again once full
    torch.testing.assert_close(longer.queue[:, :12], queue.queue, rtol=0, atol=0)
    assert (longer.queue[:, 12:] == 0).all() and not longer.in_use


# ---------------------------------------------------------------- 2 processes vs 1

QUEUE_ARGS = dict(n_crops_for_assign=2, queue_length=13, feat_dim=4)  # 13 -> 12 rows: 3 global batches of 4


def _two_process_worker(rank: int, world: int, scores, steps, weight, state_from_one_process):
    half = scores.shape[0] // world
    assignment = sinkhorn_knopp(scores[rank * half:(rank + 1) * half], 0.05, 3)
    queue = SwAVQueue(**QUEUE_ARGS, global_batch_size=4, world_size=world)
    _, queue_assignments = run_queue(queue, steps, weight, rank, world)
    state = queue.state_dict()
    resumed = SwAVQueue(**QUEUE_ARGS, global_batch_size=4, world_size=world)
    resumed.load_state_dict(state_from_one_process)
    return dict(assignment=assignment, queue_assignments=queue_assignments, state=state,
                local_queue=queue.queue.clone(), resumed_local=resumed.queue.clone(), in_use=resumed.in_use)


@pytest.mark.slow
def test_two_processes_equal_one_process():
    scores = cosine_scores(10, 4, seed=4)
    steps, weight = make_steps(5, 2, 4, 4, 6, seed=2)
    one = SwAVQueue(**QUEUE_ARGS, global_batch_size=4, world_size=1)
    _, one_assignments = run_queue(one, steps, weight)
    one_state = one.state_dict()

    results = run_in_processes(_two_process_worker, 2, scores, steps, weight, one_state)

    # Sinkhorn on two halves (sums all-reduced) == Sinkhorn on the whole batch
    torch.testing.assert_close(torch.cat([r["assignment"] for r in results]), sinkhorn_knopp(scores, 0.05, 3),
                               rtol=1e-5, atol=1e-7)
    # the queue-extended assignments of every step agree too (queue rows split across ranks)
    for step, want in enumerate(one_assignments):
        got = torch.cat([r["queue_assignments"][step] for r in results])
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    # the gathered state of 2 ranks is the 1-process queue, row for row (global newest-first order)
    for r in results:
        torch.testing.assert_close(r["state"]["queue"], one_state["queue"], rtol=0, atol=0)
        assert r["state"]["in_use"] is True
    # saved with 1 process, resumed on 2: each rank gets exactly the rows it would have held
    for r in results:
        torch.testing.assert_close(r["resumed_local"], r["local_queue"], rtol=0, atol=0)
        assert r["in_use"]
    # saved with 2 processes, resumed on 1
    resumed = SwAVQueue(**QUEUE_ARGS, global_batch_size=4, world_size=1)
    resumed.load_state_dict(results[0]["state"])
    torch.testing.assert_close(resumed.queue, one.queue, rtol=0, atol=0)
