"""Checkpoints written by the code before issue 47's one checkpoint type (tests/fixtures/checkpoints/, made by
its make_fixtures.py) still load: a Suave run resumes, ``--evaluate`` and ``src.predict`` read it and agree
with the network computed here, an eval_linear run resumes; ``RunCheckpoint`` keeps the training file's layout
and reads the evaluation scripts' old one."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

import eval_linear
import eval_semisup
import main_suave
from src.checkpoint import CheckpointError, RunCheckpoint, read_checkpoint
from src.cli import run_main
from src.data import load_rgb
from src.data.synthetic import make_synthetic_imagefolder
from src.data_setup import eval_transform
from src.predict import main as predict_main
from src.trained import classifier, load_trained

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "checkpoints"
SUAVE = FIXTURES / "suave_cnn6_main.pth"
LINEAR = FIXTURES / "eval_linear_cnn6_main.pth"
SUAVE_FLAGS = ["--arch", "cnn6", "--hidden_mlp", "32", "--feat_dim", "16", "--nmb_crops", "2", "--size_crops", "32",
               "--min_scale_crops", "0.3", "--max_scale_crops", "1", "--batch_size", "8", "--lab_batch_size", "4",
               "--base_lr", "0.3", "--final_lr", "0.003", "--warmup_epochs", "0", "--warmup_proj_nepochs", "0",
               "--workers", "0", "--use_fp16", "false", "--lab_crop_size", "32", "--val_resize", "0",
               "--val_crop", "0", "--queue_length", "0", "--max_iters_per_epoch", "2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The generated data the fixtures were trained on (same seed: same class names and images)."""
    root = tmp_path_factory.mktemp("fixture_data")
    return make_synthetic_imagefolder(str(root / "data"), num_classes=4, train_per_class=8, val_per_class=4,
                                      size=32, seed=0, subset_per_class=4)


def test_suave_checkpoint_of_main_resumes(data, tmp_path, capsys):
    out = tmp_path / "suave"
    out.mkdir()
    shutil.copy(SUAVE, out / "checkpoint.pth")
    argv = ["--data_path", str(data.root), "--subset_file", str(data.subset_file), "--output_dir", str(out),
            "--epochs", "2", *SUAVE_FLAGS]
    assert run_main(main_suave.get_args_parser, main_suave.main, "Suave", argv) == 0
    log = (out / "train.log").read_text()
    assert "resumed from" in log and "epoch 1, iteration 2" in log
    results = json.loads((out / "results.json").read_text())
    assert results["epochs_completed"] == 2 and results["iterations"] == 4


def test_suave_checkpoint_of_main_evaluates_and_predicts(data, tmp_path):
    trained = load_trained(str(SUAVE))
    assert trained.method_name == "suave" and trained.epoch == 1 and len(trained.classes) == 4
    # the top-1 of --evaluate and of predict's CSV against the network computed here on DATA/val
    val = os.path.join(str(data.root), "val")
    paths = sorted(str(p) for p in Path(val).rglob("*.png"))
    transform = eval_transform(trained.preprocessing)
    with torch.no_grad():
        scores = classifier(trained)(torch.stack([transform(load_rgb(p)) for p in paths]))
    truth = [trained.classes.index(os.path.basename(os.path.dirname(p))) for p in paths]
    expected = 100 * sum(int(s == t) for s, t in zip(scores.argmax(1).tolist(), truth)) / len(paths)
    argv = ["--evaluate", str(SUAVE), "--data_path", str(data.root), "--output_dir", str(tmp_path)]
    assert run_main(main_suave.get_args_parser, main_suave.main, "Suave", argv) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["val_acc1"] == pytest.approx(expected)
    out = tmp_path / "preds.csv"
    assert predict_main(["--checkpoint", str(SUAVE), "--images", val, "--out", str(out)]) == 0
    preds = pd.read_csv(out, keep_default_na=False).sort_values("path")
    assert list(preds["path"]) == paths
    assert list(preds["predicted_class"]) == [trained.classes[i] for i in scores.argmax(1).tolist()]


LINEAR_FLAGS = ["--pretrained", str(SUAVE), "--checkpoint_key", "student", "--arch", "cnn6", "--crop_size", "32",
                "--val_resize", "0", "--val_crop", "0", "--workers", "0", "--batch_size", "8",
                "--scheduler_type", "step", "--decay_epochs", "1", "--max_iters_per_epoch", "2"]


def test_eval_linear_checkpoint_of_main_resumes(data, tmp_path):
    """The probe, its MultiStepLR (milestones stored as plain data) and the best accuracy come back."""
    out = tmp_path / "linear"
    out.mkdir()
    shutil.copy(LINEAR, out / "checkpoint.pth")
    argv = ["--data_path", str(data.root), "--dump_path", str(out), "--epochs", "2", *LINEAR_FLAGS]
    assert run_main(eval_linear.get_args_parser, eval_linear.main, "eval_linear", argv) == 0
    assert "resumed from" in (out / "train.log").read_text() and "at epoch 1 (best top-1 so far 25.00)" in \
        (out / "train.log").read_text()
    stats = pd.read_csv(out / "stats.csv")
    assert list(stats["epoch"]) == [1] and stats["train_lr"].tolist() == pytest.approx([0.03])  # 0.3 x 0.1 after 1
    results = json.loads((out / "results.json").read_text())
    assert results["epochs_completed"] == 2


def _assert_same(a, b, where="file"):
    assert type(a) is type(b) or (isinstance(a, dict) and isinstance(b, dict)), where
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_run_checkpoint_keeps_the_layout_of_a_training_file(tmp_path):
    """Loaded and saved again through RunCheckpoint, the training run's file holds the same entries, in the same
    order, with the same values."""
    ckpt = RunCheckpoint.load(SUAVE)
    assert (ckpt.method_name, ckpt.layout_version, ckpt.epoch, ckpt.iteration) == ("suave", 2, 1, 2)
    assert ckpt.classes == ["c0", "c1", "c2", "c3"] and set(ckpt.state) == {"method", "lab_loader", "bad_images"}
    assert ckpt.networks == {}  # Suave without --use_momentum keeps no teacher
    ckpt.save(tmp_path / "again.pth")
    raw = read_checkpoint(SUAVE)
    again = read_checkpoint(tmp_path / "again.pth")
    assert sorted(again) == sorted(raw)
    _assert_same({k: again[k] for k in raw}, raw)


def test_run_checkpoint_reads_the_old_evaluation_layout():
    raw = read_checkpoint(LINEAR)
    assert raw["layout"] == "suave-daino evaluation checkpoint v1"  # what the scripts wrote before RunCheckpoint
    ckpt = RunCheckpoint.load(LINEAR)
    assert ckpt.method_name == "eval_linear" and ckpt.epoch == 1 and ckpt.classes == raw["class_names"]
    _assert_same(ckpt.student, raw["model"])
    assert set(ckpt.state) == {"scheduler", "best_acc"} and ckpt.state["best_acc"] == raw["best_acc"]
    again = RunCheckpoint.from_dict(ckpt.to_dict())
    _assert_same(again.student, ckpt.student)
    assert (again.method_name, again.epoch, again.classes, again.state) == \
        (ckpt.method_name, ckpt.epoch, ckpt.classes, ckpt.state)


def test_run_checkpoint_refuses_files_that_are_not_runs(tmp_path):
    plain = tmp_path / "weights.pth"  # a released-style plain state_dict
    torch.save({"conv1.weight": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match=r"weights.pth is not a checkpoint of a run of this project"):
        RunCheckpoint.load(plain)
    with pytest.raises(ValueError, match="may not hold the contract's entries"):
        RunCheckpoint("suave", {}, {}, state={"epoch": 3}).to_dict()


def test_another_scripts_checkpoint_is_refused_in_one_line(data, tmp_path, capsys):
    """eval_semisup pointed at a --dump_path that holds eval_linear's checkpoint (the old layout) says so."""
    out = tmp_path / "semisup"
    out.mkdir()
    shutil.copy(LINEAR, out / "checkpoint.pth")
    argv = ["--data_path", str(data.root), "--pretrained", str(SUAVE), "--checkpoint_key", "student", "--arch",
            "cnn6", "--crop_size", "32", "--val_resize", "0", "--val_crop", "0", "--workers", "0", "--dump_path",
            str(out), "--subset_file", str(data.subset_file), "--hidden_mlp", "32", "--batch_size", "4",
            "--epochs", "1"]
    assert run_main(eval_semisup.get_args_parser, eval_semisup.main, "eval_semisup", argv) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {out / 'checkpoint.pth'} is a checkpoint of eval_linear, not eval_semisup: give this run "
                   "another --output_dir (or resume that one with its own entry point)\n")
