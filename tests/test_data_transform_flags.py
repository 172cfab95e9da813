"""Flags that adapt the released augmentations to small images: --lab_min_scale, --blur_radius,
Daino's --color_jit_unlab."""
from __future__ import annotations

from torchvision import transforms as T

from src.data.augmentations import RandomGaussianBlur
from src.data.transforms import dino_multicrop, labelled_transform, swav_multicrop


def ops_of(transform) -> list:
    found = []
    for op in getattr(transform, "transforms", [transform]):
        found += ops_of(op) if isinstance(op, T.Compose) else [op]
        if isinstance(op, T.RandomApply):
            found += list(op.transforms)
    return found


def test_labelled_min_scale_reaches_the_random_resized_crop():
    for kind in ("standard", "light"):
        crops = [op for op in ops_of(labelled_transform(kind, size=28, min_scale=0.6))
                 if isinstance(op, T.RandomResizedCrop)]
        assert [c.scale for c in crops] == [(0.6, 1.0)]
    default = [op for op in ops_of(labelled_transform("standard")) if isinstance(op, T.RandomResizedCrop)]
    assert default[0].scale == (0.08, 1.0)


def test_daino_without_colour_keeps_only_crops_and_flips():
    transform = dino_multicrop((0.4, 1.0), (0.1, 0.4), 2, global_size=28, local_size=14, color_jitter=False)
    for view in transform.transforms:
        kinds = {type(op) for op in ops_of(view)}
        assert T.ColorJitter not in kinds and RandomGaussianBlur not in kinds and T.RandomGrayscale not in kinds
        assert T.RandomResizedCrop in kinds and T.RandomHorizontalFlip in kinds
    coloured = dino_multicrop((0.4, 1.0), (0.1, 0.4), 2, global_size=28, local_size=14)
    assert T.ColorJitter in {type(op) for op in ops_of(coloured.transforms[0])}


def test_blur_radius_reaches_every_blur():
    for transform in (swav_multicrop([28], [2], [0.3], [1.0], blur_radius=(0.1, 0.5)),
                      dino_multicrop((0.4, 1.0), (0.1, 0.4), 2, 28, 14, blur_radius=(0.1, 0.5))):
        blurs = [op for view in transform.transforms for op in ops_of(view) if isinstance(op, RandomGaussianBlur)]
        assert blurs and all((b.radius_min, b.radius_max) == (0.1, 0.5) for b in blurs)
