"""The Fashion-MNIST benchmark sizes each run's schedule to the time budget (benchmarks/fmnist_benchmark.py)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
pytest.importorskip("PIL")
from fmnist_benchmark import size_schedule  # noqa: E402


def test_schedule_keeps_recipe_epochs_and_fills_the_budget():
    epochs, iters = size_schedule(budget_steps=5000, recipe_epochs=4, full_epoch=1875, min_epoch_iters=200)
    assert (epochs, iters) == (4, 1250)


def test_schedule_adds_full_epochs_when_the_recipe_epochs_are_too_few():
    epochs, iters = size_schedule(budget_steps=9000, recipe_epochs=4, full_epoch=1875, min_epoch_iters=200)
    assert epochs == 5 and iters == 1800 and iters <= 1875
    assert epochs * iters <= 9000 < (epochs + 1) * 1875


def test_schedule_drops_epochs_shorter_than_the_minimum():
    epochs, iters = size_schedule(budget_steps=500, recipe_epochs=4, full_epoch=1875, min_epoch_iters=200)
    assert (epochs, iters) == (2, 250)
    assert size_schedule(budget_steps=3, recipe_epochs=4, full_epoch=1875, min_epoch_iters=200) == (1, 4)
