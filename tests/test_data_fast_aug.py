"""--fast_aug: the fast CPU pipeline draws like the reference and matches its distribution."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as F

from src.data import transforms as TR
from src.data.augmentations import RandomGaussianBlur, RandomSolarize
from src.data.fast_aug import LEVERS, HueTable, accelerate, hue_tables
from src.data.seeding import seeded_rngs
from src.errors import FlagError

T = TR.T


def _photo(size=(40, 30), seed=0) -> Image.Image:
    """A small image with smooth colour gradients, edges and noise (not uniform noise: blur must matter)."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    base = np.stack([200 * x + 30, 180 * y + 40, 120 * (1 - x) * y + 60], -1)
    base[h // 3: 2 * h // 3, w // 4: w // 2] = (230, 40, 90)
    base += rng.normal(0, 12, base.shape)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def _levels(a: torch.Tensor, b: torch.Tensor, std) -> torch.Tensor:
    """|a - b| in 8-bit levels, for views normalised with ``std``."""
    return (a - b).abs() * torch.tensor(std).view(3, 1, 1) * 255


def test_same_draws_give_the_same_views_without_hue():
    """Without colour jitter every fast op is exact: the views equal the reference's (float rounding)."""
    ref = TR.swav_multicrop([24, 12], [2, 3], [0.14, 0.05], [1.0, 0.14], color_jitter=False)
    fast = accelerate(ref)
    img = _photo()
    for seed in range(20):
        with seeded_rngs(seed):
            expected = ref(img)
        with seeded_rngs(seed):
            got = fast(img)
        for e, g in zip(expected, got):
            assert _levels(e, g, TR.SWAV_STD).max() < 1e-3  # float rounding of the fused normalisation


@pytest.mark.parametrize("recipe", ["swav", "dino", "labelled"])
def test_same_draws_with_jitter_differ_by_a_few_levels_without_bias(recipe):
    make = {"swav": lambda: TR.swav_multicrop([24, 12], [2, 3], [0.14, 0.05], [1.0, 0.14]),
            "dino": lambda: TR.dino_multicrop((0.25, 1.0), (0.05, 0.25), 3, global_size=24, local_size=12),
            "labelled": lambda: TR.labelled_transform("standard", 24)}[recipe]
    ref, fast = make(), accelerate(make())
    std = TR.DINO_STD if recipe == "dino" else TR.SWAV_STD
    img, diffs, signed = _photo(), [], []
    for seed in range(40):
        with seeded_rngs(seed):
            expected = ref(img)
        with seeded_rngs(seed):
            got = fast(img)
        for e, g in zip(*(([expected], [got]) if recipe == "labelled" else (expected, got))):
            diffs.append(_levels(e, g, std).flatten())
            signed.append(((g - e) * torch.tensor(std).view(3, 1, 1) * 255).flatten())
    d, s = torch.cat(diffs), torch.cat(signed)
    assert d.mean() < 1.5, f"mean |difference| {d.mean():.2f} levels"
    assert torch.quantile(d, 0.99) < 10
    assert abs(s.mean()) < 0.3, f"bias {s.mean():.3f} levels"


def test_same_draws_without_hue_give_the_same_views():
    """Brightness, contrast and saturation only: the fast jitter gives exactly the reference's pixels."""
    def make():
        return T.Compose([T.RandomResizedCrop(16), T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8)], p=0.8),
                          T.ToTensor(), T.Normalize(TR.IMAGENET_MEAN, TR.SWAV_STD)])
    ref, fast = make(), accelerate(make())
    for seed in range(30):
        with seeded_rngs(seed):
            expected = ref(_photo())
        with seeded_rngs(seed):
            got = fast(_photo())
        assert _levels(expected, got, TR.SWAV_STD).max() < 1e-3


def test_hue_table_matches_torchvision_hue():
    table = HueTable()
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    for factor in (-0.2, -0.07, 0.0, 0.03, 0.11, 0.2):
        exact = np.asarray(F.adjust_hue(img, factor)).astype(int)
        approx = np.asarray(table(img, factor)).astype(int)
        err = np.abs(exact - approx)
        assert err.mean() < 1.6 and err.max() <= 16, (factor, err.mean(), err.max())
        assert abs((approx - exact).mean()) < 0.3
    # torchvision rounds the factor to an integer shift of 255ths: 0.2 asks for 51, so 103 tables at most
    assert {int(np.int32(f * 255)) for f in np.linspace(-0.2, 0.2, 10_001)} == set(range(-51, 52))


def test_fast_recipe_keeps_the_order_and_parameters():
    fast = accelerate(TR.dino_multicrop((0.25, 1.0), (0.05, 0.25), 2, global_size=24, local_size=12))
    g1, g2, local = (fast.transforms[i].transforms for i in (0, 1, 2))
    assert [type(op).__name__ for op in g2] == ["RandomResizedCrop", "RandomHorizontalFlip", "RandomApply",
                                                "RandomGrayscale", "RandomGaussianBlur", "RandomSolarize",
                                                "ToNormalizedTensor"]
    assert g1[0].scale == (0.25, 1.0) and local[0].scale == (0.05, 0.25)
    assert g1[0].interpolation == T.InterpolationMode.BICUBIC
    jitter = g1[2].transforms[0]
    assert (jitter.brightness, jitter.saturation, jitter.hue) == ((0.6, 1.4), (0.8, 1.2), (-0.1, 0.1))
    assert fast.transforms[2] is fast.transforms[3]  # locals share one recipe, and every view one hue table
    assert len({id(t) for t, _ in hue_tables(fast)}) == 1


def test_device_photometric_stops_after_the_flip_in_uint8():
    fast = accelerate(TR.swav_multicrop([24, 12], [1, 1], [0.14, 0.05], [1.0, 0.14]), device_photometric=True)
    views = fast(_photo())
    assert [v.dtype for v in views] == [torch.uint8] * 2 and [tuple(v.shape) for v in views] == [(3, 24, 24),
                                                                                                 (3, 12, 12)]


def test_unknown_ops_and_levers_are_refused():
    with pytest.raises(FlagError, match="no fast version"):
        accelerate(T.Compose([T.RandomResizedCrop(8), T.RandomRotation(10), T.ToTensor()]))
    with pytest.raises(ValueError, match="unknown levers"):
        accelerate(TR.labelled_transform("standard", 8), levers=("warp",))
    assert set(LEVERS) == {"hue_table", "fused_tensor"}


# --------------------------------------------------------------------- the distribution, over many draws
class _Spy:
    """Wraps an op; records whether it changed the image (flip, grey, blur, solarise, jitter applied)."""

    def __init__(self, op, log: dict, key: str) -> None:
        self.op, self.log, self.key = op, log, key

    def __call__(self, img):
        out = self.op(img)
        self.log.setdefault(self.key, []).append(not np.array_equal(np.asarray(img), np.asarray(out)))
        return out


def _spied(transform, log: dict):
    kinds = {T.RandomHorizontalFlip: "flip", T.RandomApply: "jitter", T.RandomGrayscale: "grey",
             RandomGaussianBlur: "blur", RandomSolarize: "solarise"}
    for v, compose in enumerate(transform.transforms):
        compose.transforms = [_Spy(op, log, f"{kinds[type(op)]}{min(v, 2)}") if type(op) in kinds else op
                              for op in compose.transforms]
    return transform


def view_stats(views: torch.Tensor, std=TR.DINO_STD) -> dict[str, np.ndarray]:
    """Per image of a (B, 3, H, W) normalised batch: per-channel mean and std, colourfulness (mean |difference|
    between channels, 0 for grey) and sharpness (mean |horizontal difference|, lower when blurred), the
    last two in 8-bit levels."""
    x = views * torch.tensor(std).view(1, 3, 1, 1) * 255
    return {"mean": views.mean(dim=(2, 3)).numpy(), "std": views.std(dim=(2, 3)).numpy(),
            "colour": (x[:, [0, 1, 2]] - x[:, [1, 2, 0]]).abs().mean(dim=(1, 2, 3)).numpy(),
            "sharp": (x[..., 1:] - x[..., :-1]).abs().mean(dim=(1, 2, 3)).numpy()}


def _draws(transform, seeds, monkeypatch) -> dict:
    """Per draw: crop scale and log aspect ratio, whether each random op fired (per view kind: 0 = global 1,
    1 = global 2, 2 = locals), per-channel mean and std of each output view."""
    log: dict = {}
    _spied(transform, log)
    original = T.RandomResizedCrop.get_params

    def recording(img, scale, ratio):
        i, j, h, w = original(img, scale, ratio)
        log.setdefault("scale", []).append(h * w / (img.size[0] * img.size[1]))
        log.setdefault("log_ratio", []).append(float(np.log(w / h)))
        return i, j, h, w

    monkeypatch.setattr(T.RandomResizedCrop, "get_params", staticmethod(recording))
    img = _photo((48, 36))
    for seed in seeds:
        with seeded_rngs(seed):
            views = transform(img)
        for v, view in enumerate(views):
            for name, value in view_stats(view.unsqueeze(0)).items():
                log.setdefault(f"{name}{min(v, 2)}", []).append(value[0])
    monkeypatch.setattr(T.RandomResizedCrop, "get_params", staticmethod(original))
    return {k: np.asarray(v, dtype=float) for k, v in log.items()}


def _within_sampling_error(a: np.ndarray, b: np.ndarray, name: str, z: float = 4.5) -> None:
    se = np.sqrt(a.var(axis=0) / len(a) + b.var(axis=0) / len(b)) + 1e-12
    gap = np.abs(a.mean(axis=0) - b.mean(axis=0)) / se
    assert np.all(gap < z), f"{name}: means differ by {gap} standard errors"


def test_fast_pipeline_matches_the_reference_distribution(monkeypatch):
    """Independent draws (different seeds) of the DINO recipe on a small image, 500 images x 4 views:
    crop scale and aspect ratio; flip, jitter, grey, blur and solarise rates per view kind; per-channel
    mean and std, colourfulness and sharpness of the outputs: all within sampling error of the reference's."""
    def make():
        return TR.dino_multicrop((0.25, 1.0), (0.05, 0.25), 2, global_size=20, local_size=10)
    ref = _draws(make(), range(500), monkeypatch)
    fast = _draws(accelerate(make()), range(10_000, 10_500), monkeypatch)
    assert set(ref) == set(fast) and len(ref["scale"]) == len(fast["scale"]) == 500 * 4
    assert {"flip0", "jitter0", "grey0", "blur0", "blur1", "solarise1", "blur2", "mean2", "std2", "colour1",
            "sharp2"} <= set(ref)
    for key in ref:
        _within_sampling_error(ref[key], fast[key], key)
    # ops that always change this image when they fire (a blur of radius 0.1 may not: compared above only)
    for key, p in {"flip0": 0.5, "flip2": 0.5, "jitter1": 0.8, "solarise1": 0.2}.items():
        n = len(fast[key])
        assert abs(fast[key].mean() - p) < 4.5 * np.sqrt(p * (1 - p) / n), (key, fast[key].mean(), p)
