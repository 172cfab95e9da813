"""The unlabelled views' photometric ops on the GPU, for a whole batch at once (``--gpu_aug true``).

With ``--gpu_aug`` the loader workers only decode, crop and flip (``src.data.fast_aug.accelerate(...,
device_photometric=True)``: uint8 views, a quarter of the bytes to copy); the engine then runs
``DevicePhotometric`` on the device. It reads each view's photometric ops and their parameters from the
reference recipe (``src.data.transforms``), in the recipe's order, and draws every random parameter per
image, as the PIL ops do: colour jitter with probability p (brightness, contrast, saturation and hue
factors uniform in the recipe's ranges, applied in a random order per image), grayscale (ITU-R 601 luma, as
PIL's ``convert("L")``), Gaussian blur with sigma uniform in the recipe's radius range (PIL's radius is the
Gaussian's standard deviation; PIL approximates it with three box blurs, here it is the exact separable
kernel), solarise (values >= 128/255 inverted), then normalisation. Ops run in float on [0, 1] without
PIL's rounding to 8 bits between ops, and the hue factor is continuous (PIL's is a multiple of 1/255):
differences far below the augmentation's own spread (``tests/test_data_device_aug.py`` checks the
distribution against the PIL recipe). No host synchronisation: masks select per image with ``torch.where``.

Unlabelled mixup (``--mixup_unlab``): the collate draws the mixing parameters as usual but leaves the mixed
views to this stage, which mixes the finished views on the device (the CPU path mixes normalised views too).

Randomness: a generator on the device seeded from (run seed, rank, iteration), so a resumed run draws the
same parameters as an uninterrupted one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torchvision import transforms as T

from src.errors import FlagError

from .augmentations import RandomGaussianBlur, RandomSolarize
from .mixup import apply_mix
from .seeding import derive_seed
from .transforms import MultiViewTransform

STREAM_DEVICE = 2
LUMA = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale, PIL's convert("L") weights


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen, device=device)


def _per_image(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


def grey(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) luma of RGB images in [0, 1]."""
    w = torch.tensor(LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    return torch.stack([h, s, maxc], 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """The closed form: channel = v - v s clamp(min(k, 4 - k), 0, 1), k = (n + 6 h) mod 6, n = 5, 3, 1 for
    R, G, B (no per-sextant gather: three small temporaries instead of six stacked candidates)."""
    h, s, v = x.unbind(1)
    h6 = h * 6.0
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = (h6 + n) % 6.0
        channels.append(v - v * s * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))
    return torch.stack(channels, 1)


@dataclass(frozen=True)
class BatchColorJitter:
    """torchvision's ``RandomApply([ColorJitter(...)], p)`` for a batch, parameters drawn per image."""
    p: float
    brightness: tuple[float, float] | None
    contrast: tuple[float, float] | None
    saturation: tuple[float, float] | None
    hue: tuple[float, float] | None

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, dev = x.shape[0], x.device
        applied = _per_image(torch.rand(n, generator=gen, device=dev) <= self.p)
        order = torch.rand(n, 4, generator=gen, device=dev).argsort(1)  # a uniform random permutation per image
        factors = [None if r is None else _per_image(_uniform(n, *r, gen, dev))
                   for r in (self.brightness, self.contrast, self.saturation, self.hue)]

        def op(k: int, img: torch.Tensor) -> torch.Tensor:
            f = factors[k]
            if k == 0:
                return (img * f).clamp(0, 1)
            if k == 1:
                mean = grey(img).mean(dim=(1, 2, 3), keepdim=True)
                return (f * img + (1 - f) * mean).clamp(0, 1)
            if k == 2:
                return (f * img + (1 - f) * grey(img)).clamp(0, 1)
            hsv = rgb_to_hsv(img)
            hsv = torch.cat([(hsv[:, :1] + f) % 1.0, hsv[:, 1:]], 1)
            return hsv_to_rgb(hsv)

        for position in range(4):
            out = x
            for k in range(4):
                if factors[k] is not None:
                    chosen = applied & _per_image(order[:, position] == k)
                    out = torch.where(chosen, op(k, x), out)
            x = out
        return x


@dataclass(frozen=True)
class BatchGrayscale:
    p: float

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        chosen = _per_image(torch.rand(x.shape[0], generator=gen, device=x.device) < self.p)
        return torch.where(chosen, grey(x).expand_as(x), x)


@dataclass(frozen=True)
class BatchGaussianBlur:
    """Gaussian blur with probability p, sigma ~ U(radius_min, radius_max) per image (edges replicated)."""
    p: float
    radius_min: float
    radius_max: float

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        chosen = _per_image(torch.rand(n, generator=gen, device=x.device) <= self.p)
        sigma = _uniform(n, self.radius_min, self.radius_max, gen, x.device)
        half = max(1, math.ceil(3 * self.radius_max))
        taps = torch.arange(-half, half + 1, device=x.device, dtype=x.dtype)
        kernel = torch.exp(-taps.square() / (2 * sigma.view(-1, 1).square()))
        kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n c, taps)
        y = x.reshape(1, n * c, h, w)
        y = F.conv2d(F.pad(y, (half, half, 0, 0), mode="replicate"), kernel.view(n * c, 1, 1, -1), groups=n * c)
        y = F.conv2d(F.pad(y, (0, 0, half, half), mode="replicate"), kernel.view(n * c, 1, -1, 1), groups=n * c)
        return torch.where(chosen, y.view(n, c, h, w), x)


@dataclass(frozen=True)
class BatchSolarize:
    p: float

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        chosen = _per_image(torch.rand(x.shape[0], generator=gen, device=x.device) < self.p)
        return torch.where(chosen & (x >= 128 / 255), 1.0 - x, x)


class ViewPhotometric:
    """One view recipe's photometric ops (in the recipe's order) and normalisation, for uint8 batches."""

    def __init__(self, ops: Sequence[Callable], mean: Sequence[float], std: Sequence[float]) -> None:
        self.ops, self.mean, self.std = list(ops), tuple(mean), tuple(std)

    @classmethod
    def from_recipe(cls, view: T.Compose) -> "ViewPhotometric":
        ops, mean, std, stack = [], None, None, list(view.transforms)
        while stack:
            op = stack.pop(0)
            if isinstance(op, T.Compose):
                stack = list(op.transforms) + stack
            elif isinstance(op, T.RandomApply) and len(op.transforms) == 1 \
                    and isinstance(op.transforms[0], T.ColorJitter):
                j = op.transforms[0]
                ops.append(BatchColorJitter(op.p, j.brightness, j.contrast, j.saturation, j.hue))
            elif isinstance(op, T.RandomGrayscale):
                ops.append(BatchGrayscale(op.p))
            elif isinstance(op, RandomGaussianBlur):
                ops.append(BatchGaussianBlur(op.p, op.radius_min, op.radius_max))
            elif isinstance(op, RandomSolarize):
                ops.append(BatchSolarize(op.p))
            elif isinstance(op, T.Normalize):
                mean, std = op.mean, op.std
            elif not isinstance(op, (T.RandomResizedCrop, T.RandomHorizontalFlip, T.ToTensor)):
                raise FlagError(f"--gpu_aug has no device version of {op!r}; run with --gpu_aug false")
        if mean is None:
            raise FlagError("--gpu_aug: the view recipe has no Normalize")
        return cls(ops, mean, std)

    def __call__(self, views: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x = views.float().div_(255.0)
        for op in self.ops:
            x = op(x, gen)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return x.sub_(mean).div_(std)


class DevicePhotometric:
    """``batch -> batch`` with every unlabelled view's photometric ops applied on the batch's device.

    Views that share a recipe (SwAV's crop groups, DINO's locals) are processed as one batch."""

    def __init__(self, recipes: Sequence[ViewPhotometric], seed: int, rank: int = 0) -> None:
        self.recipes, self.seed, self.rank = list(recipes), seed, rank
        groups: dict[int, list[int]] = {}
        for v, recipe in enumerate(self.recipes):
            groups.setdefault(id(recipe), []).append(v)
        self.groups = list(groups.values())

    @classmethod
    def from_transform(cls, reference: MultiViewTransform, seed: int, rank: int = 0) -> "DevicePhotometric":
        cache: dict[int, ViewPhotometric] = {}
        recipes = [cache.setdefault(id(t), ViewPhotometric.from_recipe(t)) for t in reference.transforms]
        return cls(recipes, seed, rank)

    def views(self, views: Sequence[torch.Tensor], iteration: int) -> list[torch.Tensor]:
        if len(views) != len(self.recipes):
            raise ValueError(f"{len(views)} views for {len(self.recipes)} view recipes")
        gen = torch.Generator(device=views[0].device)
        gen.manual_seed(derive_seed(self.seed, STREAM_DEVICE, self.rank, iteration))
        out: list[torch.Tensor | None] = [None] * len(views)
        for group in self.groups:
            sizes = {tuple(views[v].shape[1:]) for v in group}
            if len(sizes) == 1:  # one batch for the whole group
                done = self.recipes[group[0]](torch.cat([views[v] for v in group]), gen).split(views[group[0]].shape[0])
            else:
                done = [self.recipes[v](views[v], gen) for v in group]
            for v, tensor in zip(group, done):
                out[v] = tensor
        return out  # type: ignore[return-value]

    def __call__(self, batch, iteration: int, channels_last: bool = False):
        """An ``UnlabelledBatch`` of uint8 views -> the same batch with normalised float views, and its mixed
        views (unlabelled mixup: parameters drawn by the collate, ``defer_mix``) made from them, as the CPU
        path mixes the normalised views."""
        views = self.views(batch.views, iteration)
        mixed = [apply_mix(views[a], views[b], params) for (a, b), params in zip(batch.mix_pairs, batch.mix_params)]
        if channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
            mixed = [v.contiguous(memory_format=torch.channels_last) for v in mixed]
        return replace(batch, views=views, mixed_views=mixed)
