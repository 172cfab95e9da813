"""The Fashion-MNIST benchmark sizes each run's schedule to the time budget and reads the runs' structured output
(benchmarks/fmnist_benchmark.py)."""
import csv
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


def test_reuse_reads_back_runs_of_either_precision_when_the_recipe_leaves_it_to_the_machine(tmp_path):
    """The CPU recipes say ``--use_bf16 auto``: runs made before, with ``true``, are still theirs; a flag given
    explicitly must still match."""
    recipe = "suave/scripts/fmnist_1perc.sh"
    assert dict((f.name, f.values) for f in group_flags(recipe_flags(recipe, {})[1], recipe))["--use_bf16"] == ("auto",)
    _finished_run(tmp_path / "suave", recipe, {"--seed": ["31"], "--use_bf16": ["true"]})
    check_reusable(Stage(recipe, tmp_path / "suave", 30), {"--seed": ["31"]})  # no error
    with pytest.raises(SystemExit, match=r"was run with --use_bf16 true but .* gives false"):
        check_reusable(Stage(recipe, tmp_path / "suave", 30), {"--seed": ["31"], "--use_bf16": ["false"]})


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


# --- the five rows, their table and the second labelled split (issue 22) ---------------------------------------

from tests.test_data_fashion_mnist import fake_source  # noqa: E402,F401  (fixture: small IDX files)
from launch.script_file import group_flags  # noqa: E402
from fmnist_benchmark import (DEFAULT_RUNS, GAIN, LABELS, RECIPES, add_gains, common_flags,  # noqa: E402
                              comparison_lines, conversion_seed, end_accuracy, flag_value, read_stage_output,
                              table_row, write_split, write_tables)

SAME_AS_SUPERVISED = ("--train_mode", "--data_path", "--labels_perc", "--arch", "--lab_crop_size", "--val_resize",
                      "--val_crop", "--mean", "--std", "--lab_batch_size", "--use_fp16", "--use_bf16",
                      "--channels_last", "--time_budget_min", "--eval_every_min", "--epochs", "--max_iters_per_epoch",
                      "--all_fixes", "--order_by_seed")


def test_the_default_rows_are_the_issues_five_with_the_strongest_supervised_recipe_first():
    assert DEFAULT_RUNS == ("supervised_strong", "supervised", "fixmatch", "suave", "daino")
    assert "swav+suave" in RECIPES and "swav+suave" not in DEFAULT_RUNS
    assert RECIPES["supervised"] == ["suave/scripts/fmnist_supervised_1perc.sh"]  # the key of earlier tables
    assert LABELS["supervised"] == "supervised (Suave's hyperparameters)"
    entry, strong = recipe_flags(RECIPES["supervised_strong"][0], {})
    _, same = recipe_flags(RECIPES["supervised"][0], {})
    assert entry == "main_suave.py"
    for name in SAME_AS_SUPERVISED:  # same backbone, labelled stream, precision and budget machinery
        assert flag_value(strong, name) == flag_value(same, name), name
    assert flag_value(strong, "--train_mode") == "supervised" and flag_value(strong, "--arch") == "cnn6w2"
    names = {f.name for f in group_flags(strong + same, "recipes")}
    changed = {name: flag_value(strong, name) for name in names if flag_value(strong, name) != flag_value(same, name)}
    assert changed == {"--mixup_lab": "true", "--mixup_lab_type": "replace", "--lab_min_scale": "0.3"}  # the probes


def _synthetic_run(folder: Path, acc_end: float, evals: list[tuple[float, float]], minutes: float = 30.0) -> None:
    """A finished run folder as a training process leaves it: results.json, evals.jsonl, stats.jsonl."""
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"val_acc1": acc_end, "train_minutes": minutes,
                                                     "epochs_completed": 4, "iterations": 4000,
                                                     "wall_time_s": 1900.0}))
    (folder / "evals.jsonl").write_text("".join(json.dumps({"train_minutes": t, "val_acc1": a}) + "\n"
                                                for t, a in evals))
    (folder / "stats.jsonl").write_text(json.dumps({"epoch": 3, "train_img_s": 400.0}) + "\n")


def test_gain_columns_against_a_hand_computed_table(tmp_path):
    """Gains are the semi-supervised rows' end accuracy minus the strongest supervised row's, from the unrounded
    results (Suave: 87.86 - 84.84 = +3.02 -> +3.0, where the rounded 87.9 - 84.8 would say +3.1)."""
    ends = {"supervised_strong": 84.84, "supervised": 82.66, "fixmatch": 86.13, "suave": 87.86, "daino": 84.21}
    rows, got_ends = [], {}
    for name in ("fixmatch", "supervised", "suave", "daino", "supervised_strong"):  # baseline last: gains still set
        _synthetic_run(tmp_path / name, ends[name], [(9.9, ends[name] - 3), (20.1, ends[name] - 1)])
        stage = Stage(RECIPES[name][0], tmp_path / name, 30)
        read_stage_output(stage)
        got_ends[name] = end_accuracy([stage])
        curve = curve_of([stage], classify_from=0)
        rows.append(table_row(name, [stage], curve, labels_perc="1", budget_min=30, eval_every_min=2.5, seed=31,
                              data_path=str(tmp_path)))
        add_gains(rows, got_ends)
    write_tables(rows, tmp_path)
    by_run = {row["run"]: row for row in rows}
    assert {k: by_run[k][GAIN] for k in ends} == {"supervised_strong": "—", "supervised": "—", "fixmatch": "+1.3",
                                                  "suave": "+3.0", "daino": "-0.6"}
    assert by_run["suave"]["top1_end"] == "87.9" and by_run["supervised_strong"]["top1_end"] == "84.8"
    assert (by_run["suave"]["top1_10min"], by_run["suave"]["top1_20min"], by_run["suave"]["top1_30min"]) == \
        ("84.9", "86.9", "87.9")
    assert by_run["suave"]["wall_min"] == "31.7"  # no benchmark record: the training process's 1,900 s
    lines = (tmp_path / "results.md").read_text().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:9] == ["run", "method", "labels", "labelled_list", "top1_10min", "top1_20min", "top1_30min",
                          "top1_end", GAIN]
    assert ("| suave | Suave | 1% | subsets/1percent.txt | 84.9 | 86.9 | 87.9 | 87.9 | +3.0 | 4 | 4000 | 400 | 30.0 | "
            "31.7 | 31 | (command not recorded) |") in lines  # no stdout.log: the list is the conversion's
    with open(tmp_path / "results.csv", newline="") as handle:
        assert [row[GAIN] for row in csv.DictReader(handle)] == ["+1.3", "—", "+3.0", "-0.6", "—"]
    add_gains(rows, {k: v for k, v in got_ends.items() if k != "supervised_strong"})  # no baseline: no gain
    assert {row[GAIN] for row in rows} == {"—"}


def test_the_demo_compares_with_every_row_at_the_same_training_time(tmp_path):
    """A 20-minute run is set against the rows' top-1 at 20 minutes (not their 30-minute end), with its own
    accuracy at 20 minutes read from its curve (its final evaluation, 0.3 min after the mark); missing rows get the
    command that makes them."""
    table = tmp_path / "results.csv"
    table.write_text("run,method,top1_10min,top1_20min,top1_30min,top1_end,train_min,seed,iterations\n"
                     "supervised_strong,strongest supervised (baseline),81.6,83.1,85.0,85.0,27.5,31,3888\n"
                     "fixmatch,FixMatch (yardstick),79.3,79.5,79.9,79.9,30.0,31,1594\n")
    curve = [(10.1, 84.0), (17.6, 85.5), (20.1, 86.2), (20.3, 86.4)]  # the final evaluation last
    lines = comparison_lines(table, "Suave", curve, 20)
    assert lines[0] == f"benchmark rows ({table}), test top-1 at 20 min of training:"
    assert lines[1] == "  strongest supervised (baseline)        83.1%  (seed 31, 3,888 steps in 27.5 min)"
    assert lines[3] == ("  FixMatch (yardstick)                   79.5%  (seed 31, 1,594 steps in 30.0 min)  -3.6 vs "
                        "strongest supervised")
    missing = [line for line in lines if "not in the table" in line]
    assert [line.split()[0] for line in missing] == ["supervised", "Suave", "Daino"]
    assert all("`python benchmarks/fmnist_benchmark.py --reuse`" in line for line in missing)
    assert lines[-1] == "this run (Suave) at 20 min: 86.40%, +3.30 points vs the strongest supervised row at 20 min"
    old = tmp_path / "old.csv"  # a table written before the run column: rows named by method
    old.write_text("method,top1_10min,top1_end,train_min,seed\nsupervised,82.7,82.7,10.0,31\n")
    lines = comparison_lines(old, "Suave", [(10.0, 83.9)], 10.0)
    assert "  supervised (Suave's hyperparameters)   82.7%  (seed 31)" in lines
    assert lines[-1] == "this run (Suave) at 10 min: 83.90%; no strongest supervised row at 10 min to compare with"
    assert comparison_lines(tmp_path / "absent.csv", "Suave", [(1.0, 80.0)], 1.0)[0].startswith(
        f"benchmark table {tmp_path / 'absent.csv'} is missing: `python benchmarks/fmnist_benchmark.py --reuse`")


def test_a_run_shorter_than_the_tables_first_point_is_not_compared_with_longer_rows(tmp_path):
    table = tmp_path / "results.csv"
    table.write_text("run,method,top1_10min,top1_end,train_min,seed\nsupervised_strong,s,81.6,85.0,30.0,31\n")
    assert comparison_lines(table, "Suave", [(2.5, 70.0), (5.0, 76.9)], 5.0) == [
        f"this run's budget was 5 min; the table ({table}) has top-1 at 10, 20, 30 min: train 10 min or more "
        "(`-- --time_budget_min 10`) to compare with it at the same training time"]


def test_the_demo_plot_draws_its_curve_beside_the_tables_rows(tmp_path):
    pytest.importorskip("matplotlib")
    from fmnist_benchmark import demo_plot
    table = tmp_path / "results.csv"
    table.write_text("run,method,top1_10min,top1_20min,top1_30min,top1_end,train_min,seed\n"
                     "suave,Suave,84.7,86.9,87.8,87.8,30.0,31\n")
    path = tmp_path / "exp" / "accuracy_vs_time.png"
    path.parent.mkdir()
    assert demo_plot(table, "Suave", [(2.5, 70.0), (10.0, 83.0)], path) == f"plot            {path}"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def converted_fmnist(fake_source, tmp_path) -> Path:
    """A small Fashion-MNIST conversion (20 train images a class: 2 a class in the 10% list, seed 0)."""
    from src.data import fashion_mnist as FM
    return FM.convert_fashion_mnist(tmp_path / "fm", fake_source, processes=1, log=lambda *_: None)


def test_the_demo_says_when_its_machine_made_fewer_steps_than_the_tables(tmp_path):
    table = tmp_path / "results.csv"
    table.write_text("run,method,top1_30min,top1_end,train_min,seed,iterations\n"
                     "supervised_strong,strongest supervised (baseline),84.8,84.8,30.0,31,4920\n"
                     "suave,Suave,87.8,87.8,30.0,31,4471\n")
    slow = comparison_lines(table, "Suave", [(30.0, 85.0)], 30.0, own_iterations=1700)
    assert slow[-1] == ("this run made 1,700 steps, the table's Suave row 4,471 (38%): this machine is slower than "
                        "the table's: its rows trained longer, compare with that in mind")
    assert comparison_lines(table, "Suave", [(30.0, 87.0)], 30.0, own_iterations=4400)[-1].endswith(
        "(98%): about the table's pace")
    assert not comparison_lines(table, "Suave", [(30.0, 87.0)], 30.0)[-1].startswith("this run made")  # no count


def test_second_split_is_balanced_deterministic_and_not_the_conversions_list(converted_fmnist, tmp_path):
    from collections import Counter

    from src.data.make_subset import make_subset
    from src.data.subsets import read_subset_entries
    data = str(converted_fmnist)
    default = (converted_fmnist / "subsets" / "10percent.txt").read_text()
    assert conversion_seed(data) == 0 and "".join(f"{x}\n" for x in make_subset(data, percent=10, seed=0)) == default
    path = write_split(data, "10", 1, tmp_path / "out")
    assert path == tmp_path / "out" / "subsets" / "10percent_seed1.txt"
    entries = read_subset_entries(path)
    assert Counter(e.class_name for e in entries) == {name: 2 for name in Counter(e.class_name for e in entries)}
    assert len(entries) == 20 and all((converted_fmnist / "train" / e.relpath).is_file() for e in entries)
    first = path.read_text()
    assert write_split(data, "10", 1, tmp_path / "again").read_text() == first  # same seed, same list
    assert first != default and write_split(data, "10", 2, tmp_path / "out").read_text() not in (first, default)
    assert write_split(data, "1", 1, tmp_path / "out").read_text() != (converted_fmnist / "subsets" / "1percent.txt"
                                                                        ).read_text()  # 1 a class
    with pytest.raises(SystemExit, match=r"--split_seed 0 is the seed of the conversion's list .*10percent.txt: pick "
                                         r"another seed"):
        write_split(data, "10", 0, tmp_path / "out")


def test_every_row_trains_on_the_second_split_and_the_table_names_it(converted_fmnist, tmp_path):
    import argparse
    args = argparse.Namespace(flags="--workers 0", data_path=str(converted_fmnist), labels_perc="1", seed=31,
                              split_seed=None)
    common, name = common_flags(args, tmp_path)
    assert "--subset_file" not in common and name == "subsets/1percent.txt (conversion, seed 0)"
    args.split_seed = 7
    common, name = common_flags(args, tmp_path)
    split = tmp_path / "subsets" / "1percent_seed7.txt"
    assert name == "subsets/1percent_seed7.txt (make_subset, seed 7)" and split.is_file()
    for run in DEFAULT_RUNS + ("swav+suave",):
        for recipe in RECIPES[run]:
            _, flags = recipe_flags(recipe, common)
            assert flag_value(flags, "--subset_file") == str(split) and flag_value(flags, "--workers") == "0", recipe


def test_a_row_run_alone_joins_the_earlier_table_instead_of_replacing_it(tmp_path, capsys):
    """Rows run one at a time (the machine alone for each) gather in one table: the earlier rows not run again are
    kept (a table from before the run column gets it), rows of another list are dropped with a message, the rerun
    row replaces its old line, and every gain is set against the merged table's baseline."""
    from fmnist_benchmark import earlier_rows, merged_table
    table = tmp_path / "results.csv"
    table.write_text("method,labels,top1_10min,top1_20min,top1_30min,top1_end,epochs,iterations,images_per_s,"
                     "train_min,wall_min,seed\n"
                     "supervised,1%,80.2,79.7,82.7,82.7,7,6616,463,30.0,32.7,31\n"
                     "suave,1%,84.7,86.9,87.8,87.8,3,4471,419,30.0,32.2,31\n"
                     "daino,10%,86.3,89.8,89.8,89.8,2,4826,454,30.0,33.5,31\n"
                     "fixmatch,1%,70.0,75.0,80.0,80.0,8,1000,250,30.0,31.0,31\n")
    conversion = "subsets/1percent.txt"  # the conversion's list, named without its marker file (tmp_path has none)
    kept = earlier_rows(table, "1%", conversion, ["supervised_strong", "fixmatch"], on_conversion_list=True)
    assert [(row["run"], row["method"]) for row in kept] == [("supervised", "supervised (Suave's hyperparameters)"),
                                                             ("suave", "Suave")]
    assert "dropping the row daino of" in capsys.readouterr().err
    _synthetic_run(tmp_path / "supervised_strong", 84.84, [(10.0, 81.0)])
    stage = Stage(RECIPES["supervised_strong"][0], tmp_path / "supervised_strong", 30)
    read_stage_output(stage)
    new = table_row("supervised_strong", [stage], curve_of([stage], classify_from=0), labels_perc="1",
                    budget_min=30, eval_every_min=2.5, seed=31, data_path=str(tmp_path))
    rows = merged_table([new], kept, {"supervised_strong": end_accuracy([stage])})
    write_tables(rows, tmp_path)
    with open(table, newline="") as handle:
        written = list(csv.DictReader(handle))
    assert [(r["run"], r["top1_end"], r[GAIN]) for r in written] == [
        ("supervised_strong", "84.8", "—"), ("supervised", "82.7", "—"), ("suave", "87.8", "+3.0")]  # 87.8 - 84.84
    assert written[1]["labelled_list"] == conversion and written[1]["iterations"] == "6616"  # an old table's row
    again = earlier_rows(table, "1%", conversion, ["fixmatch"], on_conversion_list=True)
    assert [row["run"] for row in again] == ["supervised_strong", "supervised", "suave"]  # kept on the next run too
    second = "subsets/1percent_seed1.txt (make_subset, seed 1)"
    assert earlier_rows(table, "1%", second, [], on_conversion_list=False) == []  # every row names another list
    assert earlier_rows(table.with_name("absent.csv"), "1%", second, [], on_conversion_list=False) == []
    old = table.with_name("old.csv")
    old.write_text("method,labels,top1_end\nsuave,1%,87.0\n")
    assert earlier_rows(old, "1%", second, [], on_conversion_list=False) == []  # made before --split_seed existed
    assert earlier_rows(old, "1%", conversion, [], on_conversion_list=True)[0]["labelled_list"] == conversion


def test_the_plot_shows_the_earlier_rows_whose_folder_holds_their_run(tmp_path, capsys):
    """The plot of a table gathered one row at a time shows every earlier row whose run folder holds the run the row
    reports (its curve read from evals.jsonl); a row copied from another table (no folder, or a folder whose end
    accuracy is another run's) is left out and named."""
    from fmnist_benchmark import LABELS, earlier_curves
    _synthetic_run(tmp_path / "supervised_strong", 84.84, [(10.0, 81.0), (20.0, 83.5)])
    _synthetic_run(tmp_path / "suave", 86.0, [(10.0, 84.0)])  # an older recipe's run: the row says 87.8
    for stage, acc in (("swav+suave_stage1", None), ("swav+suave_stage2", 81.4)):
        _synthetic_run(tmp_path / stage, acc if acc is not None else float("nan"), [(5.0, 70.0)], minutes=15.0)
    rows = [{"run": "supervised_strong", "top1_end": "84.8"}, {"run": "suave", "top1_end": "87.8"},
            {"run": "daino", "top1_end": "85.2"}, {"run": "swav+suave", "top1_end": "81.4"}]
    curves = earlier_curves(tmp_path, rows, budget_min=30, pretrain_fraction=0.5)
    assert curves == {LABELS["supervised_strong"]: [(10.0, 81.0), (20.0, 83.5), (30.0, 84.84)],
                      LABELS["swav+suave"]: [(20.0, 70.0), (30.0, 81.4)]}  # stage 2 only, after stage 1's 15 min
    err = capsys.readouterr().err
    assert "leaves out the row suave" in err and "leaves out the row daino" in err


def test_the_table_names_the_list_and_flags_each_run_actually_used(converted_fmnist, tmp_path):
    """A run trained on another list through --flags "--subset_file LIST" is named by that list, not by the
    conversion's default; a reused run reports the list, seed and flags of its own command (stdout.log), and the
    flags column lists what differs from the recipe file (a recipe flag the run lacked included)."""
    import argparse
    other = tmp_path / "lists" / "mine.txt"
    args = argparse.Namespace(flags=f"--subset_file {other}", data_path=str(converted_fmnist), labels_perc="1",
                              seed=31, split_seed=None)
    assert common_flags(args, tmp_path)[1] == str(other)
    recipe = RECIPES["fixmatch"][0]
    _synthetic_run(tmp_path / "fixmatch", 83.93, [(10.0, 79.8)])
    entry, flags = recipe_flags(recipe, {"--subset_file": ["/elsewhere/out/subsets/1percent_seed1.txt"],
                                         "--seed": ["32"], "--arch": ["cnn6"], "--output_dir": ["/x"]})
    bn = flags.index("--bn_momentum")
    flags = flags[:bn] + flags[bn + 2:]  # made before the recipe set --bn_momentum
    (tmp_path / "fixmatch" / "stdout.log").write_text(shlex.join(["python", f"/repo/{entry}", *flags]) + "\n")
    stage = Stage(recipe, tmp_path / "fixmatch", 30)
    read_stage_output(stage)
    row = table_row("fixmatch", [stage], curve_of([stage], classify_from=0), labels_perc="1", budget_min=30,
                    eval_every_min=2.5, seed=31, data_path=str(converted_fmnist))
    assert row["labelled_list"] == "subsets/1percent_seed1.txt (make_subset, seed 1)"
    assert row["seed"] == "32" and row["flags"] == "--arch cnn6 (no --bn_momentum)"
