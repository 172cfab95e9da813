"""--time_budget_min / --eval_every_min: a timed validation due at the step that ends an epoch or the budget is the
end-of-epoch validation, run once (src.run_hooks.TrainClock)."""
import json
from pathlib import Path

import main_suave
from tests.test_training import SUAVE_TINY, common, run, tiny_data  # noqa: F401  (tiny_data: the fixture)


def _validations(out: Path) -> int:
    return (out / "train.log").read_text().count("validation:")


def _evals(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "evals.jsonl").read_text().splitlines()]


def test_a_timed_validation_at_the_end_of_an_epoch_is_not_run_again(tiny_data, tmp_path):
    out = tmp_path / "epoch_end"
    assert run(main_suave, common(tiny_data, str(out), 1) + SUAVE_TINY + ["--max_iters_per_epoch", "3",
                                                                         "--eval_every_min", "1e-6"]) == 0
    assert [row["iteration"] for row in _evals(out)] == [1, 2, 3]  # one row a step, the last the epoch's own
    assert _validations(out) == 3  # not 4: the epoch's validation gives the third row


def test_the_budget_ends_with_one_validation(tiny_data, tmp_path):
    """The budget runs out at the first step, where a timed validation is also due: one validation, whose numbers
    are both the timed row and the run's result."""
    out = tmp_path / "budget"
    assert run(main_suave, common(tiny_data, str(out), 2) + SUAVE_TINY + [
        "--max_iters_per_epoch", "5", "--eval_every_min", "1e-6", "--time_budget_min", "1e-6"]) == 0
    assert _validations(out) == 1
    results = json.loads((out / "results.json").read_text())
    (row,) = _evals(out)
    assert row["iteration"] == results["iterations"] == 1 and results["stopped_early"]
    assert row["val_acc1"] == results["val_acc1"] and row["val_loss"] == results["val_loss"]
