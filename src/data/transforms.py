"""Augmentation recipes of the release, with sizes and normalisation as parameters.

So that 224-px ImageNet and 28-px grey images (loaded as RGB) use the same code. Views are returned
in crop order, the global (large) crops first.

- ``swav_multicrop``: SwAV's ``MultiCropDataset`` transform (Suave's unlabelled views).
- ``dino_multicrop``: DINO's ``DataAugmentationDINO`` (Daino's unlabelled views).
- ``labelled_transform``: the release's labelled recipes, ``standard`` / ``light`` (--light_augment_lab)
  / ``augment3`` (--augment3_lab, DeiT III 3-Augment, ``n_rep`` views per image).
  In the release ``--light_augment_lab`` wins when both flags are set.
- ``weak_strong_views``: FixMatch's weak and strong view of each unlabelled image (the yardstick, fixmatch/).
- ``val_transform``: Resize + CenterCrop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from PIL import Image
from torchvision import transforms as T

from src.errors import FlagError

from .augmentations import (Cutout, RandomGaussianBlur, RandomMagnitudeRandAugment, RandomSolarize, colour_distortion,
                            simple_resized_crop)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
SWAV_STD = (0.228, 0.224, 0.225)  # SwAV's and the release's labelled/val std (both methods)
DINO_STD = (0.229, 0.224, 0.225)  # DINO's std, used by the release for Daino's unlabelled views only


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def transform(self) -> T.Compose:
        return T.Compose([T.ToTensor(), T.Normalize(self.mean, self.std)])


SWAV_NORMALIZATION = Normalization(IMAGENET_MEAN, SWAV_STD)
DINO_NORMALIZATION = Normalization(IMAGENET_MEAN, DINO_STD)

LABELLED_KINDS = ("standard", "light", "augment3", "plain")


class MultiViewTransform:
    """Applies each of ``transforms`` to the same image: ``img -> [view_0, view_1, ...]``."""

    def __init__(self, transforms: Sequence[Callable[[Image.Image], torch.Tensor]], sizes: Sequence[int]) -> None:
        if len(transforms) != len(sizes):
            raise ValueError("one size per view")
        self.transforms = list(transforms)
        self.sizes = list(sizes)  # output side of each view, in view order

    def __call__(self, img: Image.Image) -> list[torch.Tensor]:
        return [t(img) for t in self.transforms]

    def __len__(self) -> int:
        return len(self.transforms)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sizes={self.sizes})"


class RepeatedTransform:
    """``n_rep`` independent draws of one transform: ``img -> [t(img), ...]`` (the release's Augment3 n_rep)."""

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor], n_rep: int) -> None:
        if n_rep < 1:
            raise ValueError(f"n_rep must be >= 1, got {n_rep}")
        self.transform, self.n_rep = transform, n_rep

    def __call__(self, img: Image.Image) -> list[torch.Tensor]:
        return [self.transform(img) for _ in range(self.n_rep)]


def swav_multicrop(size_crops: Sequence[int], nmb_crops: Sequence[int], min_scale_crops: Sequence[float],
                   max_scale_crops: Sequence[float], color_jitter: bool = True,
                   normalization: Normalization = SWAV_NORMALIZATION,
                   blur_radius: tuple[float, float] = (0.1, 2.0)) -> MultiViewTransform:
    """SwAV multi-crop: for each group i, ``nmb_crops[i]`` views of RandomResizedCrop(size_crops[i],
    scale=(min_scale_crops[i], max_scale_crops[i])) (bilinear), flip p=0.5, then when ``color_jitter``
    (--color_jit_unlab) the colour distortion (jitter 0.8/0.8/0.8/0.2 p=0.8, grayscale p=0.2) and a PIL
    Gaussian blur (p=0.5, radius U(0.1, 2.0)); ToTensor, Normalize."""
    lengths = {len(size_crops), len(nmb_crops), len(min_scale_crops), len(max_scale_crops)}
    if len(lengths) != 1:
        raise FlagError("--size_crops, --nmb_crops, --min_scale_crops and --max_scale_crops need one value per "
                        f"crop group; got {list(size_crops)}, {list(nmb_crops)}, {list(min_scale_crops)}, "
                        f"{list(max_scale_crops)}")
    views, sizes = [], []
    for size, n, lo, hi in zip(size_crops, nmb_crops, min_scale_crops, max_scale_crops):
        if not 0 < lo <= hi <= 1:
            raise FlagError(f"crop scale range ({lo}, {hi}) must satisfy 0 < min <= max <= 1")
        ops = [T.RandomResizedCrop(size, scale=(lo, hi)), T.RandomHorizontalFlip(p=0.5)]
        if color_jitter:
            ops += [colour_distortion(1.0), RandomGaussianBlur(0.5, *blur_radius)]
        group = T.Compose(ops + [normalization.transform()])
        views += [group] * n
        sizes += [size] * n
    return MultiViewTransform(views, sizes)


def dino_multicrop(global_crops_scale: Sequence[float] = (0.4, 1.0), local_crops_scale: Sequence[float] = (0.05, 0.4),
                   local_crops_number: int = 8, global_size: int = 224, local_size: int = 96,
                   normalization: Normalization = DINO_NORMALIZATION,
                   blur_radius: tuple[float, float] = (0.1, 2.0), color_jitter: bool = True) -> MultiViewTransform:
    """DINO's two asymmetric global crops + ``local_crops_number`` local crops (bicubic RandomResizedCrop).

    All views: flip p=0.5, colour jitter (0.4, 0.4, 0.2, 0.1) p=0.8, grayscale p=0.2. Global 1: blur p=1.0.
    Global 2: blur p=0.1, solarize p=0.2. Locals: blur p=0.5. Defaults are DINO's argparse defaults; the
    Daino recipes pass 0.25-1 and 0.05-0.25.
    """
    bicubic = T.InterpolationMode.BICUBIC
    jitter = [T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
              T.RandomGrayscale(p=0.2)]
    norm = normalization.transform()

    def view(size: int, scale: Sequence[float], *photometric: Callable) -> T.Compose:
        """Crop + flip, then (unless --color_jit_unlab false, e.g. for grey images) jitter and ``photometric``."""
        ops = [T.RandomResizedCrop(size, scale=tuple(scale), interpolation=bicubic), T.RandomHorizontalFlip(p=0.5)]
        return T.Compose(ops + (jitter + list(photometric) if color_jitter else []) + [norm])

    global1 = view(global_size, global_crops_scale, RandomGaussianBlur(1.0, *blur_radius))
    global2 = view(global_size, global_crops_scale, RandomGaussianBlur(0.1, *blur_radius), RandomSolarize(0.2))
    local = view(local_size, local_crops_scale, RandomGaussianBlur(0.5, *blur_radius))
    return MultiViewTransform([global1, global2] + [local] * local_crops_number,
                              [global_size] * 2 + [local_size] * local_crops_number)


def labelled_transform(kind: str = "standard", size: int = 224, normalization: Normalization = SWAV_NORMALIZATION,
                       simple_crop: bool = False, n_rep: int = 2, augment3_jitter: float = 0.3,
                       min_scale: float = 0.08) -> Callable[[Image.Image], torch.Tensor | list[torch.Tensor]]:
    """The release's labelled augmentation.

    ``min_scale`` (--lab_min_scale) is the RandomResizedCrop's lower scale (torchvision's 0.08 by default).

    - ``standard``: RandomResizedCrop(size) (scale 0.08-1, bilinear), flip, jitter (0.4, 0.4, 0.4, 0.1)
      p=0.8, grayscale p=0.2.
    - ``light``: RandomResizedCrop(size), flip, jitter (0.1, 0.1, 0.1, 0.1) p=0.8 (no grayscale).
    - ``augment3``: DeiT III 3-Augment, ``n_rep`` independent views per image (a list): RandomResizedCrop
      (or ``simple_crop``: resize + random crop with reflect padding 4), flip, one of {grayscale, solarize,
      blur} chosen uniformly, jitter (0.3, 0.3, 0.3).
    - ``plain``: RandomResizedCrop(size), flip: the training transform of the release's ``eval_linear.py``
      and ``eval_semisup.py`` (which adds the ``light`` jitter with ``--light_augment true``).
    """
    norm = normalization.transform()
    if kind == "standard":
        return T.Compose([T.RandomResizedCrop(size, scale=(min_scale, 1.0)), T.RandomHorizontalFlip(),
                          T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                          T.RandomGrayscale(p=0.2), norm])
    if kind == "light":
        return T.Compose([T.RandomResizedCrop(size, scale=(min_scale, 1.0)), T.RandomHorizontalFlip(),
                          T.RandomApply([T.ColorJitter(0.1, 0.1, 0.1, 0.1)], p=0.8), norm])
    if kind == "plain":
        return T.Compose([T.RandomResizedCrop(size, scale=(min_scale, 1.0)), T.RandomHorizontalFlip(), norm])
    if kind == "augment3":
        crop = simple_resized_crop(size) if simple_crop else T.RandomResizedCrop(size, scale=(min_scale, 1.0))
        one_of_three = T.RandomChoice([T.RandomGrayscale(p=1.0), RandomSolarize(p=1.0), RandomGaussianBlur(p=1.0)])
        j = augment3_jitter
        return RepeatedTransform(T.Compose([crop, T.RandomHorizontalFlip(), one_of_three,
                                            T.ColorJitter(j, j, j), norm]), n_rep)
    raise FlagError(f"unknown labelled augmentation {kind!r}; expected one of {LABELLED_KINDS}")


def weak_strong_views(size: int, normalization: Normalization = SWAV_NORMALIZATION, translate: float = 0.125,
                      randaugment_ops: int = 2, cutout: float = 0.5) -> MultiViewTransform:
    """FixMatch's two views of an unlabelled image (Sohn et al., NeurIPS 2020, Sec. 2.3), ``[weak, strong]``:

    - weak: flip p=0.5, then a random ``size`` crop after reflect-padding ``round(translate * size)`` pixels
      (the paper's translation by up to 12.5 %);
    - strong: the same flip and translation, then ``randaugment_ops`` RandAugment ops with a random magnitude
      (``RandomMagnitudeRandAugment``), then ``Cutout`` (side up to ``cutout`` x width, grey).
    Images larger than ``size`` are cropped, not resized (the paper's 32-px images; 28 px for Fashion-MNIST).
    """
    pad = round(translate * size)
    geometric = [T.RandomHorizontalFlip(p=0.5), T.RandomCrop(size, padding=pad, padding_mode="reflect",
                                                             pad_if_needed=True)]
    weak = T.Compose(geometric + [normalization.transform()])
    strong = T.Compose(geometric + [RandomMagnitudeRandAugment(num_ops=randaugment_ops), Cutout(cutout),
                                    normalization.transform()])
    return MultiViewTransform([weak, strong], [size, size])


def val_transform(resize: int | None = 256, crop: int | None = 224,
                  normalization: Normalization = SWAV_NORMALIZATION, interpolation: str = "bilinear") -> T.Compose:
    """Resize(resize) (short side; bilinear as SwAV's evaluation, or "bicubic" as DINO's) + CenterCrop(crop),
    ToTensor, Normalize; ``None`` skips a step (e.g. ``resize=None, crop=None`` for 28-px images used as they are)."""
    mode = T.InterpolationMode(interpolation)
    ops = ([T.Resize(resize, interpolation=mode)] if resize else []) + ([T.CenterCrop(crop)] if crop else [])
    return T.Compose(ops + [normalization.transform()])
