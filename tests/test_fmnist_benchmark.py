"""The Fashion-MNIST benchmark sizes each run's schedule to the time budget and reads the runs' structured output
(benchmarks/fmnist_benchmark.py)."""
import json
import shlex
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
pytest.importorskip("PIL")
from fmnist_benchmark import (Stage, check_reusable, curve_of, last_epoch_stats, read_jsonl,  # noqa: E402
                              recipe_flags, size_schedule, steady_step_seconds)


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


def _finished_run(out_dir: Path, recipe: str, overrides: dict) -> None:
    """A run folder whose stdout.log starts with the command the benchmark would have launched."""
    entry, flags = recipe_flags(recipe, overrides)
    out_dir.mkdir(parents=True)
    (out_dir / "stdout.log").write_text(shlex.join(["python", f"/repo/{entry}", *flags]) + "\nlog lines\n")


def test_reuse_accepts_a_run_that_differs_only_in_its_sized_schedule(tmp_path):
    recipe = "suave/scripts/fmnist_1perc.sh"
    run_overrides = {"--seed": ["31"], "--output_dir": [str(tmp_path / "suave")], "--epochs": ["4"],
                     "--max_iters_per_epoch": ["884"]}
    _finished_run(tmp_path / "suave", recipe, run_overrides)
    check_reusable(Stage(recipe, tmp_path / "suave", 30), {"--seed": ["31"]})  # no error


def test_reuse_refuses_a_run_made_with_other_flags_and_names_the_flag(tmp_path):
    recipe = "suave/scripts/fmnist_1perc.sh"
    _finished_run(tmp_path / "suave", recipe, {"--seed": ["31"], "--queue_length": ["0"]})
    with pytest.raises(SystemExit, match=r"was run with --queue_length 0 but .*fmnist_1perc.sh with these --flags "
                                         r"gives 4096.*delete .*suave or drop --reuse"):
        check_reusable(Stage(recipe, tmp_path / "suave", 30), {"--seed": ["31"], "--queue_length": ["4096"]})
    with pytest.raises(SystemExit, match=r"was run with --seed 31 but .* gives \(absent\)"):
        check_reusable(Stage(recipe, tmp_path / "suave", 30), {"--queue_length": ["0"]})


def test_accuracy_plot_writes_a_png_of_the_expected_size(tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    from plot import line_plot
    path = tmp_path / "curve.png"
    line_plot({"suave": [(2.5, 70.0), (30.0, 87.0)], "supervised": [(2.5, 75.0), (30.0, 82.0)]}, str(path),
              x_label="training time (min)", y_label="test top-1 (%)", title="t", x_range=(0, 30))
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (840, 540)


def test_the_benchmark_reads_the_runs_structured_output(tmp_path):
    """Step time, images/s and the accuracy curve come from stats.jsonl, evals.jsonl and results.json."""
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"epoch": 0, "train_data_s": 0.1, "train_step_s": 0.5, "train_img_s": 80.0, "train_steady_iter_s": 0.4},
            {"epoch": 1, "train_data_s": 0.1, "train_step_s": 0.3, "train_img_s": 120.0, "train_steady_iter_s": 0.35}]
    (run / "stats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "evals.jsonl").write_text(json.dumps({"train_minutes": 2.5, "epoch": 0, "val_acc1": 0.0}) + "\n"
                                     + json.dumps({"train_minutes": 5.0, "epoch": 1, "val_acc1": 61.5}) + "\n")
    assert steady_step_seconds(run) == 0.35 and last_epoch_stats(run)["train_img_s"] == 120.0
    stage = Stage("suave/scripts/fmnist_1perc.sh", run, 6, results={"train_minutes": 6.0, "val_acc1": 70.0},
                  evals=read_jsonl(run / "evals.jsonl"))
    assert curve_of([stage], classify_from=0) == [(2.5, 0.0), (5.0, 61.5), (6.0, 70.0)]
    rows[-1].pop("train_steady_iter_s")  # an epoch of one step: the whole average
    (run / "stats.jsonl").write_text(json.dumps(rows[-1]) + "\n")
    assert steady_step_seconds(run) == pytest.approx(0.4)
    (run / "stats.jsonl").write_text("")
    with pytest.raises(SystemExit, match="no row in .*stats.jsonl: did the run train at all"):
        steady_step_seconds(run)
