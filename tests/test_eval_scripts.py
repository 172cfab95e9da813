"""eval_semisup.py and eval_linear.py: tiny CPU runs on generated data and on real Fashion-MNIST, exact resume,
one-line refusals of bad input, and the arithmetic of a step against references written here."""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import eval_linear
import eval_semisup
import job_launcher
import main_suave
from src.checkpoint import RunCheckpoint, read_checkpoint
from src.cli import run_main
from src.data.synthetic import make_synthetic_imagefolder
from src.downstream.backbone import build_pretrained_backbone, load_matching_head
from src.downstream.models import FineTuneNetwork
from src.downstream.runner import EvalRunner
from launch.script_file import flatten, group_flags, merge_flags, read_script_file
from src.models import SwAVNetwork, build_backbone
from tests.test_fmnist_recipe import small_fmnist  # noqa: F401  (fixture: a few hundred real images)

REPO = Path(__file__).resolve().parents[1]
SUAVE_CNN6 = ["--arch", "cnn6", "--hidden_mlp", "32", "--feat_dim", "16", "--nmb_crops", "2", "--size_crops", "32",
              "--min_scale_crops", "0.3", "--max_scale_crops", "1", "--batch_size", "8", "--lab_batch_size", "4",
              "--base_lr", "0.3", "--final_lr", "0.003", "--warmup_epochs", "0", "--warmup_proj_nepochs", "0",
              "--workers", "0", "--use_fp16", "false", "--lab_crop_size", "32", "--val_resize", "0", "--val_crop", "0",
              "--queue_length", "0", "--epochs", "1", "--max_iters_per_epoch", "2"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    """Generated 4-class data (32 train, 16 val, 16 labelled images) and a cnn6 Suave checkpoint the engine wrote."""
    root = tmp_path_factory.mktemp("eval_tiny")
    info = make_synthetic_imagefolder(str(root / "data"), num_classes=4, train_per_class=8, val_per_class=4,
                                      size=32, seed=0, subset_per_class=4)
    ckpt_dir = str(root / "suave")
    argv = ["--data_path", str(info.root), "--subset_file", str(info.subset_file), "--output_dir", ckpt_dir] + SUAVE_CNN6
    assert run_main(main_suave.get_args_parser, main_suave.main, "Suave", argv) == 0
    return {"data": str(info.root), "subset": str(info.subset_file), "ckpt": os.path.join(ckpt_dir, "checkpoint.pth")}


def common(tiny: dict[str, str], out: Path, *extra: str) -> list[str]:
    return ["--data_path", tiny["data"], "--pretrained", tiny["ckpt"], "--checkpoint_key", "student", "--arch", "cnn6",
            "--crop_size", "32", "--val_resize", "0", "--val_crop", "0", "--workers", "0", "--log_freq", "2",
            "--dump_path", str(out), *extra]


def semisup_argv(tiny, out, *extra):
    return common(tiny, out, "--subset_file", tiny["subset"], "--hidden_mlp", "32", "--batch_size", "4", *extra)


def linear_argv(tiny, out, *extra):
    return common(tiny, out, "--batch_size", "8", *extra)


def run(module, argv: list[str]) -> int:
    return run_main(module.get_args_parser, module.main, module.NAME, argv)


def parse(module, argv: list[str]) -> argparse.Namespace:
    return argparse.ArgumentParser(parents=[module.get_args_parser()]).parse_args(argv)


# ------------------------------------------------------------------------------------------------ runs
@pytest.mark.slow
def test_eval_semisup_fine_tunes_and_records(tiny, tmp_path):
    out = tmp_path / "ft"
    assert run(eval_semisup, semisup_argv(tiny, out, "--epochs", "2", "--mixup", "true", "--light_augment", "true")) == 0
    stats = pd.read_csv(out / "stats.csv")
    assert list(stats["epoch"]) == [0, 1]
    for column in ["train_loss", "train_acc1", "train_lr", "train_data_s", "train_step_s", "val_acc1", "val_acc5",
                   "val_loss", "best_acc1"]:
        assert stats[column].notna().all(), column
    results = json.loads((out / "results.json").read_text())
    assert results["best_acc1"] == stats["val_acc1"].max() and results["epochs_completed"] == 2
    log = (out / "train.log").read_text()
    assert "eta" in log and "data_s" in log and "lr_last" in log
    assert f"Fine-tuning with the labels of {tiny['subset']} completed. Test accuracies: top-1" in log
    ckpt = RunCheckpoint.load(str(out / "checkpoint.pth"))
    assert ckpt.epoch == 2 and ckpt.classes == ["c0", "c1", "c2", "c3"] and ckpt.method_name == "eval_semisup"


def test_eval_linear_trains_only_the_classifier(tiny, tmp_path):
    out = tmp_path / "lin"
    argv = linear_argv(tiny, out, "--epochs", "2", "--global_pooling", "false", "--use_bn", "true",
                       "--max_iters_per_epoch", "2")  # 32 images in batches of 8: 4 iterations, capped at 2
    assert run(eval_linear, argv) == 0
    ckpt = RunCheckpoint.load(str(out / "checkpoint.pth"))
    # cnn6 at 32 px: a 128 x 8 x 8 map, pooled 6x6 with stride 1 -> 128 x 3 x 3 inputs, BatchNorm2d first
    assert ckpt.student["linear.weight"].shape == (4, 128 * 3 * 3) and "bn.running_mean" in ckpt.student
    assert not any(key.startswith("backbone") for key in ckpt.student) and ckpt.method_name == "eval_linear"
    log = (out / "train.log").read_text()
    assert "Top-1 test accuracy" in log and "Epoch [1/2] [2/2]" in log and "[3/4]" not in log
    assert len(pd.read_csv(out / "stats.csv")) == 2


# ------------------------------------------------------------------------------------------------ loading
def test_project_checkpoint_loads_backbone_and_matching_head_layers(tiny):
    args = parse(eval_semisup, semisup_argv(tiny, Path("unused")))
    backbone, checkpoint = build_pretrained_backbone(args)
    model = FineTuneNetwork(backbone, [32], num_classes=4)
    loaded = load_matching_head(model, checkpoint, "student", "projection_head.")
    student = checkpoint["student"]
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, student[f"backbone.{key}"]), key
    # the hidden Linear + BatchNorm load; the last layer (4 classes vs the 16-d projection) does not
    assert sorted(loaded) == sorted(k for k in student if k.startswith(("projection_head.0", "projection_head.1")))
    assert torch.equal(model.projection_head[0].weight, student["projection_head.0.weight"])


def test_release_layouts_load_the_requested_network(tmp_path):
    """SwAV's file (``module.`` keys) and DINO's full checkpoint (student under ``module.backbone.``, teacher
    under ``backbone.``): --checkpoint_key picks the network."""
    torch.manual_seed(0)
    swav = SwAVNetwork(build_backbone("cnn6"), [32], 16, 4)
    torch.save({f"module.{k}": v for k, v in swav.state_dict().items()}, tmp_path / "swav.pth")
    teacher, student = build_backbone("cnn6"), build_backbone("cnn6")
    torch.save({"student": {f"module.backbone.{k}": v for k, v in student.state_dict().items()},
                "teacher": {f"backbone.{k}": v for k, v in teacher.state_dict().items()}}, tmp_path / "dino.pth")
    for path, key, reference in [("swav.pth", "teacher", swav.backbone), ("dino.pth", "teacher", teacher),
                                 ("dino.pth", "student", student)]:
        args = parse(eval_linear, ["--arch", "cnn6", "--pretrained", str(tmp_path / path), "--checkpoint_key", key])
        backbone, _ = build_pretrained_backbone(args)
        for name, value in backbone.state_dict().items():
            assert torch.equal(value, reference.state_dict()[name]), (path, key, name)


@pytest.mark.parametrize("case", ["missing", "wrong_key", "arch_ours", "arch_release"])
def test_bad_input_is_refused_with_one_line(case, tiny, tmp_path, capsys):
    swav_file = tmp_path / "swav.pth"
    torch.save({f"module.{k}": v for k, v in build_backbone("cnn6").state_dict().items()}, swav_file)
    argv, message = {
        "missing": (["--pretrained", str(tmp_path / "nope.pth")], "checkpoint file not found"),
        "wrong_key": (["--checkpoint_key", "teacher"], "has no 'teacher' network"),
        "arch_ours": (["--arch", "cnn8"], "--arch cnn8 does not match"),
        "arch_release": (["--arch", "cnn6w2", "--pretrained", str(swav_file)], "wrong shape"),
    }[case]
    for module, make in ((eval_semisup, semisup_argv), (eval_linear, linear_argv)):
        assert run(module, make(tiny, tmp_path / case) + argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and message in err, err
        assert not (tmp_path / case / "checkpoint.pth").exists()


# ------------------------------------------------------------------------------------------------ resume
@pytest.mark.parametrize("module,make,extra", [
    (eval_semisup, semisup_argv, ["--mixup", "true", "--scheduler_type", "step", "--decay_epochs", "1"]),
    (eval_linear, linear_argv, ["--scheduler_type", "cosine"]),
], ids=["semisup", "linear"])
@pytest.mark.slow
def test_resume_equals_uninterrupted(module, make, extra, tiny, tmp_path):
    full, parts = tmp_path / "full", tmp_path / "parts"
    assert run(module, make(tiny, full, "--epochs", "3", *extra)) == 0
    for _ in range(2):  # killed after each epoch, the same command again
        assert run(module, make(tiny, parts, "--epochs", "3", "--stop_after_epochs", "1", *extra)) == 0
    assert read_checkpoint(str(parts / "checkpoint.pth"))["epoch"] == 2
    assert run(module, make(tiny, parts, "--epochs", "3", *extra)) == 0
    a, b = (RunCheckpoint.load(str(d / "checkpoint.pth")) for d in (full, parts))
    for key, value in a.student.items():
        assert torch.equal(value, b.student[key]), key
    columns = ["epoch", "train_loss", "train_acc1", "train_lr", "val_loss", "val_acc1", "best_acc1"]
    pd.testing.assert_frame_equal(pd.read_csv(full / "stats.csv")[columns], pd.read_csv(parts / "stats.csv")[columns])


# ------------------------------------------------------------------------------------------------ arithmetic
def sgd_reference(model: torch.nn.Module, loss: torch.Tensor, lr_of, wd: float, nesterov: bool = False) -> None:
    """One first step of torch.optim.SGD(momentum=0.9): d = g + wd p; buf = d; (nesterov: d + 0.9 buf)."""
    loss.backward()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.grad is None:
                continue
            d = p.grad + wd * p
            p -= lr_of(name) * (d + 0.9 * d if nesterov else d)


@pytest.mark.parametrize("apply_last", ["false", "true"])
def test_semisup_step_matches_reference(apply_last, tiny, tmp_path):
    """16 labelled images, batch 16: one iteration per epoch. Epoch 2 of 3, warm-up 1 epoch: the release's cosine
    gives the trunk final + (lr - final)(1 + cos(pi * 1 / 2)) / 2; the head gets the same (the release's schedule
    overwrites both groups) unless --apply_lr_last_layer true (x lr_last_layer / lr)."""
    lr, last, final, wd = 0.05, 0.5, 0.001, 1e-3
    args = parse(eval_semisup, semisup_argv(tiny, tmp_path / "ft", "--batch_size", "16", "--epochs", "3",
                                            "--warmup_epochs", "1", "--lr", str(lr), "--lr_last_layer", str(last),
                                            "--final_lr", str(final), "--wd", str(wd), "--mixup", "true",
                                            "--apply_lr_last_layer", apply_last))
    runner = EvalRunner(args, eval_semisup.build_data, eval_semisup.build_task)
    reference = copy.deepcopy(runner.task.model)
    loader = runner.data.train_loader
    loader.sampler.set_epoch(2)
    (batch,) = list(loader)
    assert batch.targets.ndim == 2 and batch.images.shape[0] == 32  # mixup "extend": 16 clean + 16 mixed rows
    runner.train_one_epoch(2)
    trunk_lr = final + (lr - final) * (1 + math.cos(math.pi * 1 / 2)) / 2
    head_lr = trunk_lr * (last / lr if apply_last == "true" else 1.0)
    reference.train()
    loss = F.cross_entropy(reference(batch.images), batch.targets)
    sgd_reference(reference, loss, lambda n: head_lr if n.startswith("projection_head.") else trunk_lr, wd)
    groups = runner.task.optimizer.param_groups
    assert groups[0]["lr"] == pytest.approx(trunk_lr) and groups[-1]["lr"] == pytest.approx(head_lr)
    for (name, ours), theirs in zip(runner.task.model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6, msg=name)


def test_semisup_step_schedule_is_swav_multistep():
    args = parse(eval_semisup, ["--epochs", "5", "--lr", "0.1", "--lr_last_layer", "1", "--scheduler_type", "step",
                                "--decay_epochs", "2", "4", "--gamma", "0.2"])
    schedule = eval_semisup.lr_schedule(args, iters_per_epoch=3)
    expected = [0.1] * 6 + [0.1 * 0.2] * 6 + [0.1 * 0.04] * 3
    assert schedule.tolist() == pytest.approx(expected)
    assert eval_semisup.head_lr_scale(args) == pytest.approx(10.0)  # SwAV: the head at --lr_last_layer


def test_linear_step_and_epoch_schedules_match_reference(tiny, tmp_path):
    """32 images, batch 32: one iteration per epoch. The first step is SGD with Nesterov momentum on the probe
    only; the lr then follows CosineAnnealingLR: final + (lr - final)(1 + cos(pi e / T)) / 2 at epoch e."""
    lr, wd, final, epochs = 0.3, 1e-3, 0.01, 3
    args = parse(eval_linear, linear_argv(tiny, tmp_path / "lin", "--batch_size", "32", "--epochs", str(epochs),
                                          "--nesterov", "true", "--wd", str(wd), "--final_lr", str(final)))
    runner = EvalRunner(args, eval_linear.build_data, eval_linear.build_task)
    probe = copy.deepcopy(runner.task.model)
    backbone = build_pretrained_backbone(args)[0].eval()
    runner.data.train_loader.sampler.set_epoch(0)
    (batch,) = list(runner.data.train_loader)
    runner.train_one_epoch(0)
    with torch.no_grad():
        features = backbone(batch.images)
    sgd_reference(probe, F.cross_entropy(probe(features), batch.targets), lambda n: lr, wd, nesterov=True)
    for (name, ours), theirs in zip(runner.task.model.state_dict().items(), probe.state_dict().values()):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7, msg=name)
    out = tmp_path / "schedules"
    assert run(eval_linear, linear_argv(tiny, out, "--batch_size", "32", "--epochs", str(epochs),
                                        "--final_lr", str(final))) == 0
    expected = [final + (lr - final) * (1 + math.cos(math.pi * e / epochs)) / 2 for e in range(epochs)]
    assert pd.read_csv(out / "stats.csv")["train_lr"].tolist() == pytest.approx(expected)
    out = tmp_path / "step"
    assert run(eval_linear, linear_argv(tiny, out, "--batch_size", "32", "--epochs", str(epochs),
                                        "--scheduler_type", "step", "--decay_epochs", "1", "2")) == 0
    assert pd.read_csv(out / "stats.csv")["train_lr"].tolist() == pytest.approx([0.3, 0.03, 0.003])


# ------------------------------------------------------------------------------------------------ Fashion-MNIST
def recipe_argv(recipe: str, overrides: list[str]) -> list[str]:
    script = read_script_file(str(REPO / "scripts" / recipe))
    return flatten(merge_flags(list(script.flags), group_flags(overrides, "test")))


@pytest.mark.slow
def test_fmnist_recipes_fine_tune_and_probe_real_images(small_fmnist, tmp_path):  # noqa: F811
    """The CPU recipes on a few hundred real images: fine-tuning (from random weights here, to stay fast; the
    tests above load pretrained ones), then a linear probe on the fine-tuned backbone, whose checkpoint
    --pretrained accepts too."""
    fmnist = ["--data_path", str(small_fmnist), "--workers", "0", "--val_batch_size", "200"]
    ft = recipe_argv("eval_semisup_fmnist.sh", fmnist + ["--subset_file", str(small_fmnist / "labelled.txt"),
                                                         "--pretrained", "", "--dump_path", str(tmp_path / "ft"),
                                                         "--epochs", "2", "--batch_size", "16"])
    assert run(eval_semisup, ft) == 0
    lin = recipe_argv("eval_linear_fmnist.sh", fmnist + ["--pretrained", str(tmp_path / "ft" / "checkpoint.pth"),
                                                         "--dump_path", str(tmp_path / "lin"), "--epochs", "2",
                                                         "--batch_size", "16", "--lr", "0.1"])
    assert run(eval_linear, lin) == 0
    for name in ("ft", "lin"):
        stats = pd.read_csv(tmp_path / name / "stats.csv")
        assert stats["val_acc1"].iloc[-1] > 25.0, (name, stats)  # 10 classes: chance is 10%
        assert stats["train_loss"].iloc[-1] < stats["train_loss"].iloc[0], (name, stats)


@pytest.mark.parametrize("method,recipe", [("eval_semisup", "eval_semisup_1perc.sh"),
                                           ("eval_linear", "eval_linear.sh")])
def test_job_launcher_starts_the_evaluation_recipes(method, recipe, tiny, tmp_path):
    base = tmp_path / "exps"
    argv = ["--method", method, "--script_file", str(REPO / "scripts" / recipe), "--data_dir", tiny["data"],
            "--num_gpus", "0", "--base_experiment_dir", str(base), "--name", "x", "--dry_run", "--",
            "--pretrained", tiny["ckpt"], "--arch", "cnn6"]
    assert job_launcher.main(argv) == 0
    (exp,) = list(base.iterdir())
    record = json.loads((exp / "args.json").read_text())
    assert record["method"] == method and record["entry_script"].endswith(f"{method}.py")
    assert record["train_args"]["output_dir"] == str(exp) and record["train_args"]["pretrained"] == tiny["ckpt"]
    assert job_launcher.main(["--method", method, "--data_dir", tiny["data"], "--dry_run"]) == 2
