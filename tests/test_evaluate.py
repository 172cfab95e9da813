"""Evaluation only: ``main_suave.py / main_daino.py --evaluate CKPT`` on checkpoints of tiny trained runs."""
from __future__ import annotations

import json
import os

import pytest
import torch

import main_daino
import main_suave
from src.checkpoint import read_checkpoint
from src.cli import run_main
from tests.test_checkpoint_contract import layout_1

pytestmark = pytest.mark.slow  # every test evaluates checkpoints of real training runs (tiny_runs)

ENTRY = {"suave": main_suave, "suave_momentum": main_suave, "daino": main_daino}
HEADS = {"suave": ["val"], "suave_momentum": ["val", "val_bbone", "val_proj_0", "val_proj_last", "val_ensemble"],
         "daino": ["val", "val_student"]}


def evaluate(module, argv: list[str]) -> int:
    return run_main(module.get_args_parser, module.main, "eval", argv)


@pytest.mark.parametrize("run", ["suave_momentum", "suave", "daino"])
def test_evaluate_reproduces_the_final_validation_of_the_run(tiny_runs, run, capsys):
    ckpt = tiny_runs[run]["checkpoint"]
    assert evaluate(ENTRY[run], ["--evaluate", ckpt]) == 0  # no other flag: everything from the checkpoint
    results = json.load(open(os.path.join(tiny_runs[run]["dir"], "results.json")))
    report = json.load(open(os.path.join(tiny_runs[run]["dir"], "eval.json")))
    expected = {key: value for key, value in results.items() if key.startswith("val_")}
    assert sorted(expected) == sorted(f"{head}_{m}" for head in HEADS[run] for m in ("acc1", "acc5", "loss"))
    assert {key: report[key] for key in expected} == expected  # exactly: the engine's own validation
    assert report["epoch"] == 1 and report["val_images"] == 16 and report["method"] == ENTRY[run].__name__[5:]
    table = capsys.readouterr().out
    main_name = "teacher" if run == "daino" else "prototypes"
    assert f"{main_name:<16}{results['val_acc1']:>8.2f}{results['val_acc5']:>8.2f}" in table


def test_evaluate_writes_into_output_dir_and_reads_another_data_path(tiny_runs, tmp_path):
    ckpt, data = tiny_runs["daino"]["checkpoint"], tiny_runs["daino"]["data"]
    os.symlink(data, tmp_path / "moved")
    out = tmp_path / "report"
    assert evaluate(main_daino, ["--evaluate", ckpt, "--data_path", str(tmp_path / "moved"),
                                 "--output_dir", str(out), "--val_batch_size", "5"]) == 0
    report = json.load(open(out / "eval.json"))
    results = json.load(open(os.path.join(tiny_runs["daino"]["dir"], "results.json")))
    assert report["data_path"] == str(tmp_path / "moved")
    assert report["val_acc1"] == results["val_acc1"] and report["val_student_acc5"] == results["val_student_acc5"]
    assert report["val_loss"] == pytest.approx(results["val_loss"], rel=1e-5)  # other batches, same images


def test_evaluate_refuses_the_other_method_and_missing_data(tiny_runs, tmp_path, capsys):
    assert evaluate(main_daino, ["--evaluate", tiny_runs["suave"]["checkpoint"]]) == 2
    assert capsys.readouterr().err.strip().endswith("is a suave checkpoint: evaluate it with python main_suave.py")
    assert evaluate(main_suave, ["--evaluate", tiny_runs["suave"]["checkpoint"],
                                 "--data_path", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert "nowhere" in err and "--data_path" in err and "\n" not in err
    assert evaluate(main_suave, ["--evaluate", str(tmp_path / "missing.pth")]) == 2
    assert "checkpoint file not found" in capsys.readouterr().err


def test_evaluate_a_layout_1_checkpoint(tiny_runs, tmp_path):
    """A checkpoint of this project from before the contract: classes from DATA/train, preprocessing from its
    flags; the numbers are the run's."""
    path = tmp_path / "checkpoint.pth"
    torch.save(layout_1(read_checkpoint(tiny_runs["daino"]["checkpoint"])), path)
    assert evaluate(main_daino, ["--evaluate", str(path)]) == 0
    report = json.load(open(tmp_path / "eval.json"))
    results = json.load(open(os.path.join(tiny_runs["daino"]["dir"], "results.json")))
    assert report["val_acc1"] == results["val_acc1"] and report["val_student_loss"] == results["val_student_loss"]
