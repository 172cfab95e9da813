"""The benchmarks' figures, drawn with matplotlib (Agg backend, no display needed): accuracy against time, and
grouped bars (images/s per lever or pipeline variant).

    line_plot({"suave": [(t0, a0), (t1, a1), ...], ...}, "curve.png", x_label="training time (min)",
              y_label="test top-1 (%)", title="Fashion-MNIST, 1% labels", x_range=(0, 30))
    bar_plot({"Suave, fp16": {"before the levers": 665, "+tf32": 598}, ...}, "levers.png", y_label="images/s")

matplotlib is an optional dependency of the benchmarks only (``pip install matplotlib``); without it the call
stops with that instruction, after the tables (CSV/Markdown) have been written.
"""
from __future__ import annotations

from typing import Sequence


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SystemExit(f"the benchmark plots need matplotlib ({exc}): `pip install matplotlib`; the tables are "
                         "already written") from None
    return plt


def line_plot(series: dict[str, Sequence[tuple[float, float]]], path: str, x_label: str = "", y_label: str = "",
              title: str = "", x_range: tuple[float, float] | None = None,
              styles: dict[str, dict] | None = None) -> None:
    """One line with point markers per series; the x axis ends at ``x_range[1]`` (the budget) when given;
    ``styles[name]`` adds matplotlib line properties (colour, linestyle) to that series."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, points in series.items():
        if points:
            xs, ys = zip(*sorted(points))
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.5, label=name, **(styles or {}).get(name, {}))
    if x_range is not None:
        ax.set_xlim(*x_range)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if any(series.values()):
        ax.legend(loc="lower right", fontsize="small" if len(series) > 6 else None)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def bar_plot(groups: dict[str, dict[str, float]], path: str, y_label: str = "", title: str = "") -> None:
    """Grouped bars: one group per key of ``groups``, one bar per entry of its dict, labelled under the bar."""
    plt = _pyplot()
    names = [(group, bar) for group, bars in groups.items() for bar in bars]
    fig, ax = plt.subplots(figsize=(max(7.0, 0.35 * len(names) + 1.5), 5), dpi=120)
    x, ticks, labels = 0.0, [], []
    for i, (group, bars) in enumerate(groups.items()):
        xs = [x + j for j in range(len(bars))]
        ax.bar(xs, list(bars.values()), color=f"C{i}", label=group)
        ticks += xs
        labels += list(bars)
        x += len(bars) + 1
    ax.set_xticks(ticks, labels, rotation=60, ha="right", fontsize="small")
    ax.set_ylabel(y_label)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
