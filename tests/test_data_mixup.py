"""Mixup/CutMix: parameters against a reference written here (timm's batch mode), targets that sum to 1
and match the lambda visible in the mixed pixels, and the labelled/unlabelled collates."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from src.data.collate import LabelledBatch, LabelledCollate, UnlabelledBatch, UnlabelledCollate
from src.data.mixup import MixParams, apply_mix, one_hot, sample_mix_params, soft_mixed_labels
from src.data.seeding import seeded_rngs
from src.errors import FlagError


def reference_params(h, w, rng, mixup_alpha=1.0, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5):
    """timm/release ``Mixup._params_per_batch`` + ``cutmix_bbox_and_lam(correct_lam=True)``."""
    if not rng.random() < prob:
        return 1.0, None
    use_cutmix = rng.random() < switch_prob
    lam = rng.beta(cutmix_alpha, cutmix_alpha) if use_cutmix else rng.beta(mixup_alpha, mixup_alpha)
    if not use_cutmix:
        return float(lam), None
    ratio = np.sqrt(1 - lam)
    cut_h, cut_w = int(h * ratio), int(w * ratio)
    cy, cx = rng.integers(0, h), rng.integers(0, w)
    yl, yh = np.clip(cy - cut_h // 2, 0, h), np.clip(cy + cut_h // 2, 0, h)
    xl, xh = np.clip(cx - cut_w // 2, 0, w), np.clip(cx + cut_w // 2, 0, w)
    return 1 - (yh - yl) * (xh - xl) / (h * w), (yl, yh, xl, xh)


def test_parameters_match_the_reference():
    for seed in range(200):
        ours = sample_mix_params(24, 20, np.random.default_rng(seed), prob=0.8)
        lam, box = reference_params(24, 20, np.random.default_rng(seed), prob=0.8)
        assert ours.lam == pytest.approx(lam, abs=1e-12)
        assert ours.box == (None if box is None else tuple(int(v) for v in box))


def test_parameter_statistics():
    rng = np.random.default_rng(0)
    draws = [sample_mix_params(32, 32, rng) for _ in range(2000)]
    assert abs(np.mean([d.box is not None for d in draws]) - 0.5) < 0.05  # switch prob 0.5
    mix_lams = np.array([d.lam for d in draws if d.box is None])
    assert abs(mix_lams.mean() - 0.5) < 0.03 and abs((mix_lams < 0.25).mean() - 0.25) < 0.04  # Beta(1, 1)
    assert all(not d.mixed for d in (sample_mix_params(8, 8, rng, prob=0.0) for _ in range(20)))


def _constant_batch(values, size=8):
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, size, size).clone()


def _pixel_lambda(mixed, x1, x2):
    """Per-row share of x1 in ``mixed`` = lam * x1 + (1 - lam) * x2.flip(0) (mixup: from values; cutmix:
    from the share of pixels that kept x1's value)."""
    a, b = x1[:, 0, 0, 0], x2.flip(0)[:, 0, 0, 0]
    by_value = ((mixed.mean(dim=(1, 2, 3)) - b) / (a - b))
    kept = (mixed == a.view(-1, 1, 1, 1)).float().mean(dim=(1, 2, 3))
    return by_value, kept


@pytest.mark.parametrize("seed", range(12))
def test_mixed_pixels_carry_the_reported_lambda(seed):
    x1 = _constant_batch([1, 2, 3, 4, 5, 6])
    x2 = _constant_batch([10, 20, 30, 40, 50, 60])
    params = sample_mix_params(8, 8, np.random.default_rng(seed))
    mixed = apply_mix(x1, x2, params)
    by_value, kept = _pixel_lambda(mixed, x1, x2)
    torch.testing.assert_close(by_value, torch.full((6,), params.lam), atol=1e-5, rtol=0)
    if params.box is not None:  # corrected lambda = exact share of kept pixels, even for clipped boxes
        torch.testing.assert_close(kept, torch.full((6,), params.lam), atol=1e-6, rtol=0)


def test_no_mix_returns_a_copy():
    x = _constant_batch([1, 2])
    out = apply_mix(x, x, MixParams(1.0))
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


def test_soft_targets():
    labels = torch.tensor([0, 2, 1, 2])
    y = soft_mixed_labels(labels, 3, 0.3)
    torch.testing.assert_close(y.sum(1), torch.ones(4))
    torch.testing.assert_close(y[0], torch.tensor([0.3, 0.0, 0.7]))  # row 0 mixes with row 3 (label 2)
    torch.testing.assert_close(y[1], torch.tensor([0.0, 0.7, 0.3]))  # row 1 (label 2) with row 2 (label 1)
    smooth = one_hot(labels, 3, smoothing=0.3)
    torch.testing.assert_close(smooth[0], torch.tensor([0.8, 0.1, 0.1]))


# --------------------------------------------------------------------------------- labelled collate
def _labelled_samples(values, labels):
    return [(torch.full((3, 8, 8), float(v)), l) for v, l in zip(values, labels)]


def test_labelled_without_mixup():
    batch = LabelledCollate()(_labelled_samples([1, 2, 3], [2, 0, 1]))
    assert isinstance(batch, LabelledBatch) and batch.n_clean == 3
    assert batch.targets.dtype == torch.long and torch.equal(batch.targets, torch.tensor([2, 0, 1]))
    assert torch.equal(batch.labels, batch.targets) and batch.images.shape == (3, 3, 8, 8)


@pytest.mark.parametrize("seed", range(6))
def test_labelled_extend_appends_mixed_copies_with_matching_targets(seed):
    labels = [0, 1, 2, 3]
    samples = _labelled_samples([1, 2, 3, 4], labels)
    with seeded_rngs(seed):
        batch = LabelledCollate(num_classes=5, mixup="extend")(samples)
    clean = torch.stack([s[0] for s in samples])
    assert batch.batch_size == 8 and batch.n_clean == 4 and torch.equal(batch.labels, torch.tensor(labels))
    assert torch.equal(batch.images[:4], clean)
    torch.testing.assert_close(batch.targets.sum(1), torch.ones(8))
    torch.testing.assert_close(batch.targets[:4], one_hot(torch.tensor(labels), 5))
    by_value, _ = _pixel_lambda(batch.images[4:], clean, clean)
    soft = batch.targets[4:]
    # target of mixed row i: lam on its own label, 1 - lam on the label of row 3 - i
    torch.testing.assert_close(soft[torch.arange(4), torch.tensor(labels)], by_value, atol=1e-5, rtol=0)
    torch.testing.assert_close(soft[torch.arange(4), torch.tensor(labels[::-1])], 1 - by_value, atol=1e-5, rtol=0)


def test_labelled_replace_probability_and_clean_rows():
    samples = _labelled_samples([1, 2, 3, 4], [0, 1, 2, 3])
    with seeded_rngs(0):
        always = LabelledCollate(num_classes=4, mixup="replace", mixup_prob=1.0)(samples)
        never = LabelledCollate(num_classes=4, mixup="replace", mixup_prob=0.0)(samples)
        flags = [LabelledCollate(num_classes=4, mixup="replace", mixup_prob=0.5)(samples).n_clean == 0
                 for _ in range(300)]
    assert always.images.shape[0] == 4 and always.n_clean == 0 and always.labels.numel() == 0
    torch.testing.assert_close(always.targets.sum(1), torch.ones(4))
    assert never.n_clean == 4 and torch.equal(never.labels, torch.arange(4))
    torch.testing.assert_close(never.targets, one_hot(torch.arange(4), 4))
    assert torch.equal(never.images, torch.stack([s[0] for s in samples]))
    assert abs(np.mean(flags) - 0.5) < 0.1


def test_repeated_augmentation_concatenates_repetitions():
    samples = [([torch.full((3, 4, 4), 10.0 * i + r) for r in range(2)], label) for i, label in enumerate([5, 6, 7])]
    plain = LabelledCollate()(samples)
    assert plain.images[:, 0, 0, 0].tolist() == [0, 10, 20, 1, 11, 21]
    assert plain.labels.tolist() == [5, 6, 7, 5, 6, 7] and plain.n_clean == 6
    with seeded_rngs(0):
        extended = LabelledCollate(num_classes=8, mixup="extend")(samples)
    assert extended.images.shape[0] == 12 and extended.n_clean == 6 and extended.labels.tolist() == [5, 6, 7] * 2


def test_labelled_mixup_needs_enough_outputs():
    with pytest.raises(FlagError, match="--nmb_prototypes / --out_dim"):
        LabelledCollate(num_classes=3, mixup="extend")(_labelled_samples([1, 2], [0, 3]))
    with pytest.raises(ValueError, match="needs num_classes"):
        LabelledCollate(mixup="extend")


# ------------------------------------------------------------------------------- unlabelled collate
def _multiview_samples(n_images, sizes):
    """View v of image i is constant 100 * v + i + 1."""
    return [([torch.full((3, s, s), 100.0 * v + i + 1) for v, s in enumerate(sizes)], i % 3) for i in range(n_images)]


def test_unlabelled_without_mixup():
    batch = UnlabelledCollate()(_multiview_samples(4, [8, 8, 4]))
    assert isinstance(batch, UnlabelledBatch)
    assert [tuple(v.shape) for v in batch.views] == [(4, 3, 8, 8), (4, 3, 8, 8), (4, 3, 4, 4)]
    assert batch.labels.tolist() == [0, 1, 2, 0] and batch.views[2][:, 0, 0, 0].tolist() == [201, 202, 203, 204]
    assert batch.mixed_views == [] and batch.mix_lams == [] and batch.mix_pairs == []
    assert batch.batch_size == 4


@pytest.mark.parametrize("mode, pairs", [("globals", [(0, 1)]), ("all", [(0, 1), (2, 3), (4, 5)])])
def test_unlabelled_mixing_pairs_and_lambdas(mode, pairs):
    samples = _multiview_samples(6, [8, 8, 4, 4, 4, 4])
    with seeded_rngs(7):
        batch = UnlabelledCollate(mixup=mode)(samples)
    assert batch.mix_pairs == pairs and batch.mix_target_pairs == [(0, 1)] * len(pairs)
    assert len(batch.mixed_views) == len(batch.mix_lams) == len(pairs)
    for mixed, lam, (a, b) in zip(batch.mixed_views, batch.mix_lams, pairs):
        assert mixed.shape == batch.views[a].shape
        by_value, _ = _pixel_lambda(mixed, batch.views[a], batch.views[b])
        torch.testing.assert_close(by_value, torch.full((6,), lam), atol=1e-4, rtol=0)
    q0, q1 = torch.rand(6, 5).softmax(1), torch.rand(6, 5).softmax(1)
    for lam in batch.mix_lams:
        torch.testing.assert_close((lam * q0 + (1 - lam) * q1.flip(0)).sum(1), torch.ones(6))


def test_unlabelled_mixing_errors():
    with pytest.raises(FlagError, match="even number of views"):
        UnlabelledCollate(mixup="all")(_multiview_samples(2, [8, 8, 4]))
    with pytest.raises(FlagError, match="pairs must have one crop size"):
        UnlabelledCollate(mixup="all")(_multiview_samples(2, [8, 8, 4, 2]))
    with pytest.raises(ValueError, match="unlabelled mixup mode"):
        UnlabelledCollate(mixup="locals")


def test_batches_move_and_keep_their_type(monkeypatch):
    batch = UnlabelledCollate(mixup="globals")(_multiview_samples(2, [4, 4]))
    moved = batch.to("cpu")
    assert isinstance(moved, UnlabelledBatch) and moved.mix_pairs == batch.mix_pairs
    assert all(torch.equal(a, b) for a, b in zip(moved.views, batch.views))
    # the DataLoader's pin-memory thread calls batch.pin_memory(): every tensor, also inside lists, is pinned
    pinned_ids = []

    def fake_pin(tensor, *args, **kwargs):
        out = tensor.clone()
        pinned_ids.append(id(out))
        return out
    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    from torch.utils.data._utils.pin_memory import pin_memory as loader_pin
    pinned = loader_pin(batch)
    assert isinstance(pinned, UnlabelledBatch) and pinned.mix_lams == batch.mix_lams
    tensors = pinned.views + pinned.mixed_views + [pinned.labels]
    assert sorted(id(t) for t in tensors) == sorted(pinned_ids) and len(tensors) == 4
    labelled = loader_pin(LabelledCollate()(_labelled_samples([1, 2], [0, 1])))
    assert isinstance(labelled, LabelledBatch) and labelled.n_clean == 2
