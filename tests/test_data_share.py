"""benchmarks/data_share.py reads the data and step times of the engine's own progress lines."""
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.data_share import steady_means  # noqa: E402
from src.logging_utils import MetricLogger  # noqa: E402


def engine_like_log(path: Path, data_s: list[float], step_s: list[float], log_freq: int = 10) -> None:
    """Progress lines as Engine.train_one_epoch writes them (same meters, same MetricLogger, same cadence)."""
    meters, lines, total = MetricLogger(), [], len(data_s)
    for it, (d, s) in enumerate(zip(data_s, step_s)):
        meters.update(loss=2.3, lr=0.1, data_s=d, step_s=s, img_s=48 / (d + s))
        if it % log_freq == 0 or it == total - 1:
            lines.append("2026-11-30 00:00:00 [rank 0] " + meters.progress_line("Epoch [0/1]", it, total, 1.0))
    path.write_text("\n".join(["2026-11-30 00:00:00 [rank 0] training suave for 1 epochs"] + lines) + "\n")


def test_steady_means_leave_out_the_prefetched_start(tmp_path):
    # 40 slow start-up iterations, then 60 steady ones (data 0.01 s, step 0.1 s)
    data = [1.0] * 40 + [0.01] * 60
    step = [2.0] * 40 + [0.1] * 60
    engine_like_log(tmp_path / "train.log", data, step)
    means = steady_means(tmp_path / "train.log", skip=40)
    assert means["iterations"] == 100
    assert means["data_s"] == pytest.approx(0.01, rel=1e-3)
    assert means["step_s"] == pytest.approx(0.1, rel=1e-3)
    # without skipping, the start-up windows dominate: what the skip exists for
    everything = steady_means(tmp_path / "train.log", skip=-20)
    assert everything["data_s"] > 0.3


def test_steady_means_average_the_windows(tmp_path):
    data = [0.001 * (i % 7) for i in range(80)]
    step = [0.05 + 0.001 * (i % 5) for i in range(80)]
    engine_like_log(tmp_path / "train.log", data, step)
    means = steady_means(tmp_path / "train.log", skip=20)
    # lines at iterations 41, 51, 61, 71, 80, each the mean of its last 20 iterations
    ends = [41, 51, 61, 71, 80]
    expected = statistics.mean(statistics.mean(data[e - 20:e]) for e in ends)
    assert means["data_s"] == pytest.approx(expected, rel=1e-3)


def test_a_log_without_progress_lines_is_an_error(tmp_path):
    (tmp_path / "train.log").write_text("2026-11-30 00:00:00 [rank 0] training suave\n")
    with pytest.raises(RuntimeError, match="no progress line"):
        steady_means(tmp_path / "train.log", skip=0)
