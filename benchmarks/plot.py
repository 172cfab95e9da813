"""Accuracy-against-time figures of the benchmarks, drawn with matplotlib (Agg backend, no display needed).

    line_plot({"suave": [(t0, a0), (t1, a1), ...], ...}, "curve.png", x_label="training time (min)",
              y_label="test top-1 (%)", title="Fashion-MNIST, 1% labels", x_range=(0, 30))

matplotlib is an optional dependency of the benchmarks only (``pip install matplotlib``); without it the call
stops with that instruction, after the tables (CSV/Markdown) have been written.
"""
from __future__ import annotations

from typing import Sequence


def line_plot(series: dict[str, Sequence[tuple[float, float]]], path: str, x_label: str = "", y_label: str = "",
              title: str = "", x_range: tuple[float, float] | None = None) -> None:
    """One line with point markers per series; the x axis ends at ``x_range[1]`` (the budget) when given."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SystemExit(f"the benchmark plots need matplotlib ({exc}): `pip install matplotlib`; the tables are "
                         "already written") from None
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, points in series.items():
        if points:
            xs, ys = zip(*sorted(points))
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.5, label=name)
    if x_range is not None:
        ax.set_xlim(*x_range)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if any(series.values()):
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
