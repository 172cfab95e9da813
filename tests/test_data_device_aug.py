"""--gpu_aug: the batched photometric stage (run here on the CPU device) matches the PIL recipe's distribution."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from src.data import transforms as TR
from src.data.collate import UnlabelledBatch, UnlabelledCollate
from src.data.mixup import apply_mix
from src.data.device_aug import (BatchColorJitter, BatchGaussianBlur, BatchGrayscale, BatchSolarize,
                                 DevicePhotometric, ViewPhotometric, hsv_to_rgb, rgb_to_hsv)
from src.data.fast_aug import accelerate
from src.data.seeding import seeded_rngs
from src.errors import FlagError

from .test_data_fast_aug import _photo, _within_sampling_error, view_stats


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _batch(n=6, size=16, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).random((n, 3, size, size), dtype=np.float32))


def test_hsv_round_trip_and_hue_matches_torchvision():
    x = _batch()
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5, rtol=0)
    hsv = rgb_to_hsv(x)
    shifted = hsv_to_rgb(torch.cat([(hsv[:, :1] + 0.13) % 1.0, hsv[:, 1:]], 1))
    torch.testing.assert_close(shifted, TF.adjust_hue(x, 0.13), atol=1e-5, rtol=0)


def test_jitter_draws_per_image_and_matches_torchvision_ops_one_at_a_time():
    x = _batch(1).expand(8, -1, -1, -1).contiguous()  # one image, eight times
    out = BatchColorJitter(1.0, (0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1))(x, _gen())
    assert all(not torch.allclose(out[0], out[i]) for i in range(1, 8))  # independent parameters per image
    bright = BatchColorJitter(1.0, (1.3, 1.3), None, None, None)(x[:2], _gen())
    torch.testing.assert_close(bright, TF.adjust_brightness(x[:2], 1.3))
    contrast = BatchColorJitter(1.0, None, (0.7, 0.7), None, None)(x[:2], _gen())
    torch.testing.assert_close(contrast, TF.adjust_contrast(x[:2], 0.7))
    sat = BatchColorJitter(1.0, None, None, (1.2, 1.2), None)(x[:2], _gen())
    torch.testing.assert_close(sat, TF.adjust_saturation(x[:2], 1.2))
    never = BatchColorJitter(0.0, (0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1))(x, _gen())
    torch.testing.assert_close(never, x)


def test_grey_blur_solarise():
    x = _batch(4)
    g = BatchGrayscale(1.0)(x, _gen())
    assert torch.allclose(g[:, 0], g[:, 1]) and torch.allclose(g[:, 1], g[:, 2])
    torch.testing.assert_close(g, TF.rgb_to_grayscale(x, 3), atol=1e-6, rtol=0)
    s = BatchSolarize(1.0)(x, _gen())
    torch.testing.assert_close(s, torch.where(x >= 128 / 255, 1 - x, x))
    flat = torch.full((2, 3, 12, 12), 0.4)
    torch.testing.assert_close(BatchGaussianBlur(1.0, 0.1, 2.0)(flat, _gen()), flat)  # weights sum to one
    # against PIL's blur (three box blurs approximating the same sigma): close on a real image
    img = _photo((32, 32))
    x = TF.pil_to_tensor(img).float().div(255).unsqueeze(0)
    ours = BatchGaussianBlur(1.0, 1.5, 1.5)(x, _gen())
    from PIL import ImageFilter
    pil = TF.pil_to_tensor(img.filter(ImageFilter.GaussianBlur(1.5))).float().div(255)
    assert (ours[0] - pil)[:, 4:-4, 4:-4].abs().mean() < 2.5 / 255


def test_same_iteration_same_draws_and_recipe_order():
    ref = TR.dino_multicrop((0.25, 1.0), (0.05, 0.25), 2, global_size=16, local_size=8)
    stage = DevicePhotometric.from_transform(ref, seed=5)
    assert [type(op).__name__ for op in stage.recipes[1].ops] == ["BatchColorJitter", "BatchGrayscale",
                                                                  "BatchGaussianBlur", "BatchSolarize"]
    assert stage.recipes[2] is stage.recipes[3] and stage.groups == [[0], [1], [2, 3]]
    assert stage.recipes[0].std == TR.DINO_STD
    views = [(_batch(4, s, seed=i) * 255).to(torch.uint8) for i, s in enumerate((16, 16, 8, 8))]
    batch = UnlabelledBatch(views, torch.zeros(4, dtype=torch.long))
    a, b, c = stage(batch, 7), stage(batch, 7), stage(batch, 8)
    assert all(torch.equal(x, y) for x, y in zip(a.views, b.views))
    assert not torch.equal(a.views[2], c.views[2])
    assert a.views[0].dtype == torch.float32 and a.labels is batch.labels


def test_deferred_unlabelled_mixup_mixes_the_finished_views():
    ref = TR.swav_multicrop([16, 8], [2, 2], [0.14, 0.05], [1.0, 0.14])
    cpu_part, stage = accelerate(ref, device_photometric=True), DevicePhotometric.from_transform(ref, seed=1)
    samples = []
    for seed in range(6):
        with seeded_rngs(seed):
            samples.append((cpu_part(_photo()), 0))
    torch.manual_seed(4)
    batch = UnlabelledCollate(mixup="globals", defer_mix=True)(samples)
    torch.manual_seed(4)
    eager = UnlabelledCollate(mixup="globals")(samples)
    assert batch.mixed_views == [] and batch.mix_lams == eager.mix_lams and len(batch.mix_params) == 1
    done = stage(batch, iteration=3)
    assert done.mix_lams == batch.mix_lams and len(done.mixed_views) == 1
    torch.testing.assert_close(done.mixed_views[0], apply_mix(done.views[0], done.views[1], batch.mix_params[0]))
    assert done.mixed_views[0].dtype == torch.float32


def test_unknown_op_is_refused():
    with pytest.raises(FlagError, match="no device version"):
        ViewPhotometric.from_recipe(T_compose_with_rotation())


def T_compose_with_rotation():
    T = TR.T
    return T.Compose([T.RandomResizedCrop(8), T.RandomRotation(5), T.ToTensor(), T.Normalize((0,) * 3, (1,) * 3)])


@pytest.mark.parametrize("recipe", ["swav", "dino"])
def test_device_stage_matches_the_pil_recipe_distribution(recipe):
    """400 images through the PIL recipe and, with other seeds, through the uint8 CPU part + the device
    stage (CPU device here): per view kind, the per-channel mean and std, colourfulness (grey rate, jitter)
    and sharpness (blur) of the outputs agree within sampling error."""
    def make():
        if recipe == "swav":
            return TR.swav_multicrop([20, 10], [2, 2], [0.14, 0.05], [1.0, 0.14])
        return TR.dino_multicrop((0.25, 1.0), (0.05, 0.25), 2, global_size=20, local_size=10)
    ref, cpu_part = make(), accelerate(make(), device_photometric=True)
    stage = DevicePhotometric.from_transform(make(), seed=3)
    img, n = _photo((48, 36)), 400
    stats: dict = {}
    for name, seeds in (("ref", range(n)), ("device", range(50_000, 50_000 + n))):
        per_image = []
        for seed in seeds:
            with seeded_rngs(seed):
                per_image.append(ref(img) if name == "ref" else cpu_part(img))
        views = [torch.stack([views[v] for views in per_image]) for v in range(len(per_image[0]))]
        if name == "device":
            views = stage.views(views, iteration=0)
        std = TR.SWAV_STD if recipe == "swav" else TR.DINO_STD
        for v, batch in enumerate(views):
            for key, value in view_stats(batch, std).items():
                stats.setdefault(name, {}).setdefault(f"{key}{min(v, 2)}", []).extend(value)
    assert len(stats["ref"]) == 12
    for key in stats["ref"]:
        _within_sampling_error(np.asarray(stats["ref"][key]), np.asarray(stats["device"][key]), key)
