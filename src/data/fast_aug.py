"""A faster CPU implementation of the same augmentations (``--fast_aug true``; the PIL path stays the default).

``accelerate(transform)`` rewrites a recipe built by ``src.data.transforms`` (SwAV/DINO multi-crop, the
labelled ``standard``/``light`` recipes) op by op, keeping the op order and every random draw of the
original (same torchvision ``get_params``, same calls to torch's, Python's and numpy's generators), so a
seeded sample gets the same crop boxes, flips, jitter factors, blur radii and solarisations. What changes:

- hue: torchvision's PIL hue goes RGB -> HSV -> RGB through PIL's float conversions. Here the shifted image
  is read from a table indexed by the pixel's colour at 6 bits per channel (``HueTable``), built once per
  integer hue shift with torchvision's own function (the shift is ``int(hue_factor * 255)``, so a recipe has at
  most 103 of them, ~0.8 MB each). Pixel values differ from the exact op by a few levels of 255 (the bounds
  ``tests/test_data_fast_aug.py`` asserts);
- to tensor: one fused ``(x - 255 mean) / (255 std)`` pass from the uint8 array instead of ``ToTensor`` then
  ``Normalize`` (the same values up to float rounding); with ``device_photometric`` the views stay uint8
  after the flip and ``src.data.device_aug`` applies jitter, grey, blur, solarise and normalisation to the
  whole batch on the GPU.

Crops, flips, brightness, contrast, saturation, grayscale, blur and solarise are the original PIL ops
(the timings, and the levers left out: benchmarks/README.md).
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import numpy as np
import torch
import torchvision.transforms.functional as F
from PIL import Image
from torchvision import transforms as T

from src.errors import FlagError

from .augmentations import RandomGaussianBlur, RandomSolarize
from .transforms import MultiViewTransform, RepeatedTransform

HUE_BITS = 6


@functools.lru_cache(maxsize=None)
def hue_shift_table(shift: int, bits: int = HUE_BITS) -> np.ndarray:
    """``(2^3bits, 3)`` uint8: torchvision's PIL ``adjust_hue`` by ``shift``/255 of each colour bin (r, g, b at
    ``bits`` bits, r most significant). A bin holds levels [k s, (k + 1) s) (s = 2^(8 - bits)); its entry
    averages the exact outputs at the two levels around the bin's centre, so the table has no bias (one level
    would shift the output by half a level). A pure function of its arguments, memoised (about 0.8 MB each)."""
    n, step = 1 << bits, 256 >> bits
    factor = shift / 255 + (0.5 / 255 if shift >= 0 else -0.5 / 255)  # int(factor * 255) == shift
    outs = []
    for offset in (step // 2 - 1, step // 2):
        levels = (np.arange(n) * step + offset).astype(np.uint8)
        r, g, b = np.meshgrid(levels, levels, levels, indexing="ij")
        grid = Image.fromarray(np.stack([r, g, b], -1).reshape(n * n, n, 3))
        outs.append(np.asarray(F.adjust_hue(grid, factor), dtype=np.float32).reshape(-1, 3))
    return np.rint(sum(outs) / len(outs)).astype(np.uint8)


class HueTable:
    """Hue shift by table lookup (``hue_shift_table``), for the factors torchvision's ``ColorJitter`` draws."""

    def __init__(self, bits: int = HUE_BITS) -> None:
        self.bits = bits

    def build(self, max_factor: float) -> None:
        """Build now every table a jitter with hue in [-max_factor, max_factor] can ask for."""
        top = int(np.int32(max_factor * 255))
        for shift in range(-top, top + 1):
            hue_shift_table(shift, self.bits)

    def table(self, hue_factor: float) -> np.ndarray:
        return hue_shift_table(int(np.int32(hue_factor * 255)), self.bits)  # torchvision's rounding

    def __call__(self, img: Image.Image, hue_factor: float) -> Image.Image:
        a = np.asarray(img)
        drop = 8 - self.bits
        idx = (a[..., 0] >> drop).astype(np.int32)
        idx <<= self.bits
        idx |= a[..., 1] >> drop
        idx <<= self.bits
        idx |= a[..., 2] >> drop
        return Image.fromarray(np.take(self.table(hue_factor), idx, axis=0))


class TableHueColorJitter(T.ColorJitter):
    """``ColorJitter`` with the same draws and order; hue from a ``HueTable``."""

    def __init__(self, jitter: T.ColorJitter, hue_table: HueTable) -> None:
        super().__init__()
        self.brightness, self.contrast, self.saturation, self.hue = (jitter.brightness, jitter.contrast,
                                                                     jitter.saturation, jitter.hue)
        self.hue_table = hue_table

    def forward(self, img: Image.Image) -> Image.Image:
        order, b, c, s, h = self.get_params(self.brightness, self.contrast, self.saturation, self.hue)
        for op in order:
            if op == 0 and b is not None:
                img = F.adjust_brightness(img, b)
            elif op == 1 and c is not None:
                img = F.adjust_contrast(img, c)
            elif op == 2 and s is not None:
                img = F.adjust_saturation(img, s)
            elif op == 3 and h is not None:
                img = self.hue_table(img, h)
        return img


class ToNormalizedTensor:
    """``ToTensor`` + ``Normalize(mean, std)`` in one pass from the uint8 pixels."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = tuple(mean), tuple(std)
        self.shift = torch.tensor([255.0 * m for m in mean]).view(-1, 1, 1)
        self.scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(-1, 1, 1)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return F.pil_to_tensor(img).float().sub_(self.shift).mul_(self.scale)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


class ToUint8Tensor:
    """uint8 CHW tensor of the view (the device stage normalises it)."""

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return F.pil_to_tensor(img)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


PHOTOMETRIC = (T.RandomApply, T.ColorJitter, T.RandomGrayscale, RandomGaussianBlur, RandomSolarize)


def _flatten(ops: Sequence[Callable]) -> list[Callable]:
    out: list[Callable] = []
    for op in ops:
        out += _flatten(op.transforms) if isinstance(op, T.Compose) else [op]
    return out


LEVERS = ("hue_table", "fused_tensor")


def _fast_op(op: Callable, levers: Sequence[str], hue_table: HueTable) -> Callable | None:
    """The fast equivalent of one op (None: drop it, e.g. ToTensor, replaced together with Normalize);
    ``levers`` names the rewrites to make (all by default; fewer for the benchmark's per-lever rows)."""
    if isinstance(op, T.RandomApply) and len(op.transforms) == 1 and isinstance(op.transforms[0], T.ColorJitter) \
            and "hue_table" in levers:
        return T.RandomApply([TableHueColorJitter(op.transforms[0], hue_table)], p=op.p)
    if isinstance(op, (T.RandomResizedCrop, T.RandomApply, T.RandomHorizontalFlip, T.RandomGrayscale,
                       RandomGaussianBlur, RandomSolarize)):
        return op
    if "fused_tensor" not in levers and isinstance(op, (T.ToTensor, T.Normalize)):
        return op
    if isinstance(op, T.ToTensor):
        return None
    if isinstance(op, T.Normalize):
        return ToNormalizedTensor(op.mean, op.std)
    raise FlagError(f"--fast_aug has no fast version of {op!r}; run this recipe with --fast_aug false")


def accelerate_view(view: T.Compose, device_photometric: bool = False, levers: Sequence[str] = LEVERS,
                    hue_table: HueTable | None = None) -> T.Compose:
    """One view's recipe with its fast ops; ``device_photometric`` stops after the geometric ops (uint8)."""
    ops = _flatten(view.transforms)
    hue_table = hue_table or HueTable()
    if device_photometric:
        geometric = [op for op in ops if not isinstance(op, PHOTOMETRIC + (T.ToTensor, T.Normalize))]
        return T.Compose([_fast_op(op, levers, hue_table) for op in geometric] + [ToUint8Tensor()])
    return T.Compose([f for f in (_fast_op(op, levers, hue_table) for op in ops) if f is not None])


def hue_tables(transform: Callable) -> list[tuple[HueTable, float]]:
    """(table, largest hue factor) of every ``TableHueColorJitter`` in a fast recipe (to build them up front)."""
    views = getattr(transform, "transforms", None)
    composes = [transform.transform] if isinstance(transform, RepeatedTransform) else \
        (views if isinstance(transform, MultiViewTransform) else [transform])
    found = {}
    for compose in composes:
        for op in _flatten(compose.transforms):
            for inner in getattr(op, "transforms", []):
                if isinstance(inner, TableHueColorJitter) and inner.hue is not None:
                    found[id(inner)] = (inner.hue_table, float(max(abs(h) for h in inner.hue)))
    return list(found.values())


def accelerate(transform: Callable, device_photometric: bool = False, levers: Sequence[str] = LEVERS) -> Callable:
    """The fast version of a recipe from ``src.data.transforms`` (multi-view, repeated or single view)."""
    unknown = set(levers) - set(LEVERS)
    if unknown:
        raise ValueError(f"unknown levers {sorted(unknown)}; expected some of {LEVERS}")
    hue_table = HueTable()  # one set of tables for every view (built lazily, per process)
    if isinstance(transform, MultiViewTransform):
        cache: dict[int, T.Compose] = {}  # views sharing one recipe share its fast version
        views = [cache.setdefault(id(t), accelerate_view(t, device_photometric, levers, hue_table))
                 for t in transform.transforms]
        return MultiViewTransform(views, transform.sizes)
    if isinstance(transform, RepeatedTransform):
        return RepeatedTransform(accelerate_view(transform.transform, device_photometric, levers, hue_table),
                                 transform.n_rep)
    if isinstance(transform, T.Compose):
        return accelerate_view(transform, device_photometric, levers, hue_table)
    raise FlagError(f"--fast_aug cannot rewrite {transform!r}")
