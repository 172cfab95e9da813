"""A minimal line plot written with PIL (torchvision already depends on Pillow; no matplotlib needed).

    line_plot({"suave": [(t0, a0), (t1, a1), ...], ...}, "curve.png", x_label="wall time (min)",
              y_label="test top-1 (%)", title="Fashion-MNIST, 1% labels")

Draws axes with "nice" ticks, light grid lines, one coloured polyline with point markers per series, and a
legend. Enough for a benchmark figure in a README; not a general plotting library.
"""
from __future__ import annotations

import math
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75),
           (227, 119, 194), (127, 127, 127)]


def nice_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Round tick values covering [lo, hi] with about ``target`` intervals (steps of 1, 2, 2.5 or 5 x 10^k)."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(target, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(lo / step) * step
    ticks, value = [], first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < hi:
        ticks.append(round(value, 10))
    return ticks


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def line_plot(series: dict[str, Sequence[tuple[float, float]]], path: str, x_label: str = "", y_label: str = "",
              title: str = "", size: tuple[int, int] = (1000, 620), y_range: tuple[float, float] | None = None,
              x_range: tuple[float, float] | None = None) -> None:
    """Write a PNG with one polyline per series (points sorted by x); empty series are listed but not drawn."""
    points = [p for pts in series.values() for p in pts]
    if not points and (x_range is None or y_range is None):
        raise ValueError("nothing to plot: every series is empty (did the runs write any evaluation?)")
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    xticks = nice_ticks(*(x_range or (min(0.0, *xs), max(xs))))
    yticks = nice_ticks(*(y_range or (min(ys), max(ys))))
    width, height = size
    left, right, top, bottom = 90, 240, 50, 70
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(16), _font(13)
    x0, x1, y0, y1 = xticks[0], xticks[-1], yticks[0], yticks[-1]

    def to_px(x: float, y: float) -> tuple[float, float]:
        px = left + (x - x0) / (x1 - x0) * (width - left - right)
        py = height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)
        return px, py

    for t in xticks:
        px, _ = to_px(t, y0)
        draw.line([(px, top), (px, height - bottom)], fill=(230, 230, 230))
        draw.text((px, height - bottom + 8), f"{t:g}", fill="black", font=small, anchor="ma")
    for t in yticks:
        _, py = to_px(x0, t)
        draw.line([(left, py), (width - right, py)], fill=(230, 230, 230))
        draw.text((left - 8, py), f"{t:g}", fill="black", font=small, anchor="rm")
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    draw.text(((left + width - right) / 2, height - 25), x_label, fill="black", font=font, anchor="mm")
    draw.text((20, top - 30), y_label, fill="black", font=font, anchor="la")
    draw.text(((left + width - right) / 2, 20), title, fill="black", font=font, anchor="mm")
    for i, (name, pts) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        pixels = [to_px(x, y) for x, y in sorted(pts)]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=3)
        for px, py in pixels:
            draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=colour)
        ly = top + 10 + 26 * i
        draw.line([(width - right + 15, ly), (width - right + 45, ly)], fill=colour, width=3)
        draw.text((width - right + 52, ly), name, fill="black", font=small, anchor="lm")
    image.save(path)
