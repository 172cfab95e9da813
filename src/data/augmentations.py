"""PIL image operations of the release that torchvision lacks in the same form.

Their randomness comes from Python's ``random`` (as the release's DINO/DeiT-III ops); the loaders seed it
per sample (``src.data.seeding``), so results are reproducible.
"""
from __future__ import annotations

import random

import torch
from PIL import Image, ImageDraw, ImageFilter, ImageOps
from torchvision import transforms as T


class RandomGaussianBlur:
    """PIL Gaussian blur with probability ``p`` and radius ~ U(radius_min, radius_max) (SimCLR/SwAV/DINO).

    Applied when ``u <= p`` for u ~ U[0, 1) as the release (so ``p = 1`` always blurs).
    """

    def __init__(self, p: float = 0.5, radius_min: float = 0.1, radius_max: float = 2.0) -> None:
        self.p, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() > self.p:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.radius_min, self.radius_max)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, radius=({self.radius_min}, {self.radius_max}))"


class RandomSolarize:
    """``PIL.ImageOps.solarize`` (threshold 128) with probability ``p`` (BYOL/DINO), applied when ``u < p``."""

    def __init__(self, p: float = 0.2) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img) if random.random() < self.p else img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


def simple_resized_crop(size: int) -> T.Compose:
    """DeiT III "simple random crop": resize the short side to ``size`` (bicubic), then a random
    ``size`` x ``size`` crop with 4 pixels of reflect padding."""
    return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
                      T.RandomCrop(size, padding=4, padding_mode="reflect")])


def colour_distortion(strength: float = 1.0) -> T.Compose:
    """SimCLR/SwAV colour distortion: jitter (0.8s, 0.8s, 0.8s, 0.2s) with p=0.8, then grayscale p=0.2."""
    s = strength
    return T.Compose([T.RandomApply([T.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8),
                      T.RandomGrayscale(p=0.2)])


class RandomMagnitudeRandAugment(T.RandAugment):
    """torchvision's RandAugment (``num_ops`` ops drawn uniformly from its 14, each signed at random) with the
    magnitude bin drawn uniformly per image instead of fixed: the "RandAugment with random magnitude" of FixMatch
    (Sohn et al., NeurIPS 2020, Sec. 2.3). Its draws use torch's generator, which the loaders seed per sample."""

    def forward(self, img: Image.Image) -> Image.Image:
        self.magnitude = int(torch.randint(self.num_magnitude_bins, (1,)))
        return super().forward(img)


class Cutout:
    """Grey out a square of side U(0, ``max_fraction``) x image width centred on a uniformly drawn pixel, clipped
    at the border (DeVries & Taylor 2017; FixMatch's last strong op, side up to 0.5 of the width, grey fill)."""

    def __init__(self, max_fraction: float = 0.5, fill: int = 127) -> None:
        if not 0 <= max_fraction <= 1:
            raise ValueError(f"Cutout side fraction must lie in [0, 1], got {max_fraction}")
        self.max_fraction, self.fill = max_fraction, fill

    def __call__(self, img: Image.Image) -> Image.Image:
        width, height = img.size
        side = random.uniform(0, self.max_fraction) * width
        cx, cy = random.uniform(0, width), random.uniform(0, height)
        x0, y0 = max(0, round(cx - side / 2)), max(0, round(cy - side / 2))
        x1, y1 = min(width, round(cx + side / 2)), min(height, round(cy + side / 2))
        if x1 <= x0 or y1 <= y0:
            return img
        img = img.copy()
        ImageDraw.Draw(img).rectangle((x0, y0, x1 - 1, y1 - 1), fill=(self.fill,) * len(img.getbands()))
        return img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_fraction={self.max_fraction}, fill={self.fill})"
