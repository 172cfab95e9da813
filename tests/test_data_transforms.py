"""Augmentation recipes: view counts and shapes, recipe facts, and statistics over many draws."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from src.data import transforms as TR
from src.data.augmentations import RandomGaussianBlur, RandomSolarize
from src.data.seeding import seeded_rngs
from src.errors import FlagError

IDENTITY = TR.Normalization((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def _colourful(size=48, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8))


def _coordinates() -> Image.Image:
    """256 x 256 image with R = x, G = y: a crop's position and size can be read back from its pixels."""
    x, y = np.meshgrid(np.arange(256), np.arange(256))
    return Image.fromarray(np.stack([x, y, np.zeros_like(x)], axis=2).astype(np.uint8))


def test_swav_multicrop_views_in_crop_order():
    t = TR.swav_multicrop([32, 16], [2, 3], [0.14, 0.05], [1.0, 0.14])
    views = t(_colourful())
    assert len(views) == len(t) == 5 and t.sizes == [32, 32, 16, 16, 16]
    assert [tuple(v.shape) for v in views] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    assert not torch.equal(views[0], views[1])  # independent draws


def test_swav_multicrop_rejects_mismatched_groups():
    with pytest.raises(FlagError, match="one value per crop group"):
        TR.swav_multicrop([224, 96], [2], [0.14, 0.05], [1.0, 0.14])


def test_dino_multicrop_views_and_recipe_facts():
    t = TR.dino_multicrop((0.25, 1.0), (0.05, 0.25), local_crops_number=4, global_size=32, local_size=16)
    views = t(_colourful())
    assert [tuple(v.shape) for v in views] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 4
    global1, global2, local = t.transforms[0], t.transforms[1], t.transforms[2]

    def ops(compose, kind):
        return [op for op in compose.transforms if isinstance(op, kind)]
    assert [b.p for b in ops(global1, RandomGaussianBlur)] == [1.0]
    assert [b.p for b in ops(global2, RandomGaussianBlur)] == [0.1]
    assert [s.p for s in ops(global2, RandomSolarize)] == [0.2]
    assert not ops(global1, RandomSolarize) and not ops(local, RandomSolarize)
    assert [b.p for b in ops(local, RandomGaussianBlur)] == [0.5]
    assert global1.transforms[0].scale == (0.25, 1.0) and local.transforms[0].scale == (0.05, 0.25)
    assert global1.transforms[0].interpolation == TR.T.InterpolationMode.BICUBIC


def test_normalisation_constants_and_arithmetic():
    assert TR.SWAV_STD == (0.228, 0.224, 0.225) and TR.DINO_STD == (0.229, 0.224, 0.225)
    assert TR.IMAGENET_MEAN == (0.485, 0.456, 0.406)
    image = Image.new("RGB", (20, 20), (200, 100, 50))
    out = TR.val_transform(16, 8, TR.SWAV_NORMALIZATION)(image)
    expected = [(v / 255 - m) / s for v, m, s in zip((200, 100, 50), TR.IMAGENET_MEAN, TR.SWAV_STD)]
    assert out.shape == (3, 8, 8)
    torch.testing.assert_close(out.mean(dim=(1, 2)), torch.tensor(expected))


def _crop_geometry(view: torch.Tensor) -> tuple[float, float, bool]:
    """(scale, aspect ratio, flipped) of a crop of the coordinate image (identity normalisation)."""
    r, g = view[0] * 255, view[1] * 255
    n = view.shape[-1]
    left, right = r[:, 0].mean().item(), r[:, -1].mean().item()
    width = abs(right - left) * n / (n - 1)
    height = (g[-1, :].mean().item() - g[0, :].mean().item()) * n / (n - 1)
    return width * height / 256 ** 2, width / height, right < left


@pytest.mark.parametrize("lo, hi", [(0.05, 0.14), (0.14, 1.0)])
def test_crop_scale_range_and_flip_rate_over_many_draws(lo, hi):
    t = TR.swav_multicrop([64], [1], [lo], [hi], color_jitter=False, normalization=IDENTITY)
    image = _coordinates()
    scales, ratios, flips = [], [], []
    with seeded_rngs(0):
        for _ in range(400):
            scale, ratio, flipped = _crop_geometry(t(image)[0])
            scales.append(scale), ratios.append(ratio), flips.append(flipped)
    scales = np.array(scales)
    span = hi - lo
    assert scales.min() >= lo - 0.02 and scales.max() <= hi + 0.02
    assert scales.min() < lo + 0.1 * span and scales.max() > hi - 0.15 * span  # the whole range is used
    assert min(ratios) > 0.75 - 0.05 and max(ratios) < 4 / 3 + 0.07
    assert abs(np.mean(flips) - 0.5) < 0.1


def test_grayscale_rate_of_the_swav_colour_distortion():
    t = TR.swav_multicrop([24], [1], [0.5], [1.0], color_jitter=True, normalization=IDENTITY)
    image = _colourful(32)
    with seeded_rngs(1):
        views = [t(image)[0] for _ in range(400)]
    grey = [bool(torch.allclose(v[0], v[1]) and torch.allclose(v[1], v[2])) for v in views]
    assert abs(np.mean(grey) - 0.2) < 0.07
    plain = TR.swav_multicrop([24], [1], [0.5], [1.0], color_jitter=False, normalization=IDENTITY)
    with seeded_rngs(1):
        plain_views = [plain(image)[0] for _ in range(50)]
    assert not any(torch.allclose(v[0], v[1]) for v in plain_views)


@pytest.mark.parametrize("p", [0.1, 0.5, 1.0])
def test_blur_probability(p):
    image = Image.new("RGB", (16, 16), (0, 0, 0))
    image.paste((255, 255, 255), (8, 0, 16, 16))  # a sharp edge: any blur changes it
    reference = np.asarray(image)
    blur = RandomGaussianBlur(p)
    random.seed(0)
    rate = np.mean([not np.array_equal(np.asarray(blur(image)), reference) for _ in range(400)])
    assert abs(rate - p) < 0.07


def test_solarize_probability_and_effect():
    image = _colourful(8)
    solarized = np.asarray(ImageOps.solarize(image))
    op = RandomSolarize(0.2)
    random.seed(0)
    outputs = [np.asarray(op(image)) for _ in range(400)]
    hits = [np.array_equal(o, solarized) for o in outputs]
    assert abs(np.mean(hits) - 0.2) < 0.07
    assert all(h or np.array_equal(o, np.asarray(image)) for h, o in zip(hits, outputs))


def test_labelled_recipes():
    image = _colourful(40)
    with seeded_rngs(0):
        standard = TR.labelled_transform("standard", 24)(image)
        light = TR.labelled_transform("light", 24)(image)
        reps = TR.labelled_transform("augment3", 24, n_rep=2)(image)
        simple = TR.labelled_transform("augment3", 24, simple_crop=True, n_rep=3)(image)
    assert standard.shape == light.shape == (3, 24, 24)
    assert isinstance(reps, list) and len(reps) == 2 and not torch.equal(reps[0], reps[1])
    assert len(simple) == 3 and all(v.shape == (3, 24, 24) for v in simple)
    with pytest.raises(FlagError, match="unknown labelled augmentation"):
        TR.labelled_transform("heavy")


def test_light_recipe_never_greys():
    t = TR.labelled_transform("light", 16, normalization=IDENTITY)
    image = _colourful(24)
    with seeded_rngs(3):
        assert not any(torch.allclose(v[0], v[1]) for v in (t(image) for _ in range(100)))


def test_val_transform_is_deterministic_resize_then_centre_crop():
    image = _colourful(40).resize((50, 40))
    t = TR.val_transform(36, 32, IDENTITY)
    out = t(image)
    assert out.shape == (3, 32, 32) and torch.equal(out, t(image))
    expected = TR.T.functional.center_crop(TR.T.functional.resize(image, 36), 32)
    torch.testing.assert_close(out, TR.T.functional.to_tensor(expected))
    small = Image.new("RGB", (28, 28), (10, 20, 30))
    assert TR.val_transform(None, None)(small).shape == (3, 28, 28)
