"""The checkpoint contract (src/checkpoint.py docstring) on checkpoints the engine really wrote (tiny runs):
what the file holds, and engine save -> load_pretrained_backbone / --swav_init_ckpt / --dino_init_ckpt for each
method and each --checkpoint_key, tensor for tensor; a key the file lacks is one line naming what it holds."""
from __future__ import annotations

import os

import pytest
import torch

import main_daino
import main_suave
from src.checkpoint import LAYOUT_VERSION, CheckpointError, RunCheckpoint, load_pretrained_backbone, read_checkpoint
from src.cli import run_main
from src.data import IMAGENET_MEAN, class_index
from src.errors import UserError
from src.models import build_backbone
from src.trained import method_args, method_parts

pytestmark = pytest.mark.slow  # every test reads checkpoints of real training runs (tiny_runs)

BACKBONES = {"suave": lambda: build_backbone("resnet18", small_stem=True),
             "suave_momentum": lambda: build_backbone("resnet18", small_stem=True),
             "daino": lambda: build_backbone("vit_tiny", patch_size=8)}
KEYS = [("suave_momentum", "student"), ("suave_momentum", "teacher"), ("suave", "student"),
        ("daino", "student"), ("daino", "teacher")]


def _part(state: dict, prefix: str) -> dict:
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


@pytest.mark.parametrize("run, method, teacher, std", [
    ("suave_momentum", "suave", True, [0.228, 0.224, 0.225]), ("suave", "suave", False, [0.228, 0.224, 0.225]),
    ("daino", "daino", True, [0.228, 0.224, 0.225])])  # Daino's release validates with 0.228 (docs/differences.md)
def test_the_engine_writes_the_contract(tiny_runs, run, method, teacher, std):
    ckpt = read_checkpoint(tiny_runs[run]["checkpoint"])
    assert ckpt["layout_version"] == LAYOUT_VERSION == 2 and ckpt["method_name"] == method
    train_classes = class_index(os.path.join(tiny_runs[run]["data"], "train"))
    assert ckpt["classes"] == sorted(train_classes, key=train_classes.__getitem__) and len(ckpt["classes"]) == 4
    assert ckpt["eval_preprocessing"] == {"resize": 32, "crop": 32, "mean": list(IMAGENET_MEAN), "std": std}
    assert ckpt["args"]["arch"] in ("resnet18", "vit_tiny") and ckpt["args"]["epochs"] == 1
    assert ("teacher" in ckpt) is teacher
    assert "teacher" not in ckpt["method"] and "ema" not in ckpt["method"]  # one copy, under the contract's name
    if teacher:  # the EMA network moved away from the student in 2 steps: a test that mixes them up fails
        assert set(ckpt["teacher"]) == set(ckpt["student"])
        assert not torch.equal(ckpt["teacher"]["backbone.conv1.weight" if method == "suave" else
                                                "backbone.patch_embed.proj.weight"],
                               ckpt["student"]["backbone.conv1.weight" if method == "suave" else
                                               "backbone.patch_embed.proj.weight"])


@pytest.mark.parametrize("run, key", KEYS)
def test_load_pretrained_backbone_loads_exactly_the_asked_network(tiny_runs, run, key):
    path = tiny_runs[run]["checkpoint"]
    expected = _part(read_checkpoint(path)[key], "backbone.")
    backbone = BACKBONES[run]()
    assert load_pretrained_backbone(backbone, path, checkpoint_key=key) == list(backbone.state_dict())
    for name, value in backbone.state_dict().items():
        assert torch.equal(value, expected[name]), name


@pytest.mark.parametrize("run, key", KEYS)
def test_init_flags_start_from_exactly_the_asked_network(tiny_runs, run, key):
    """--swav_init_ckpt / --dino_init_ckpt CKPT --checkpoint_key KEY --init_proj --init_prototypes: the new
    run's student equals network KEY of CKPT (backbone, projection and class layer)."""
    path = tiny_runs[run]["checkpoint"]
    ckpt = read_checkpoint(path)
    method = ckpt["method_name"]
    flag = "swav_init_ckpt" if method == "suave" else "dino_init_ckpt"
    parts = method_parts(method)
    args = method_args(RunCheckpoint.from_dict(ckpt), parts,
                       {flag: path, "checkpoint_key": key, "init_proj": True, "init_prototypes": True})
    student = parts.method_class(args, 4, torch.device("cpu")).student
    loaded = student.state_dict()
    for name, value in ckpt[key].items():  # online probes included (--init_probes, on by default)
        assert torch.equal(loaded[name], value), name


def test_asking_for_a_network_the_file_lacks_is_one_line(tiny_runs, capsys):
    path = tiny_runs["suave"]["checkpoint"]
    with pytest.raises(CheckpointError) as error:
        load_pretrained_backbone(BACKBONES["suave"](), path, checkpoint_key="teacher")
    assert isinstance(error.value, UserError)
    assert str(error.value) == (
        f"checkpoint {path} has no 'teacher' network (a Suave run without --use_momentum keeps no teacher / "
        "momentum encoder); it holds: student. Pass --checkpoint_key student (checkpoint_key=...) to load that one")
    from tests.test_training import SUAVE_TINY
    data = tiny_runs["suave"]["data"]
    argv = ["--data_path", data, "--subset_file", os.path.join(data, "subsets", "labelled.txt"), "--output_dir",
            os.path.join(tiny_runs["suave"]["dir"], "refused"), "--epochs", "1", *SUAVE_TINY,
            "--swav_init_ckpt", path, "--checkpoint_key", "teacher"]
    assert run_main(main_suave.get_args_parser, main_suave.main, "Suave", argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: checkpoint ") and "it holds: student" in err and "\n" not in err


def layout_1(ckpt: dict) -> dict:
    """The same checkpoint as the engine wrote it before the contract: the teacher / momentum encoder inside
    ``method`` (Daino: "teacher", Suave: "ema"), no layout_version, method_name, classes or preprocessing."""
    old = {key: value for key, value in ckpt.items()
           if key not in ("layout_version", "method_name", "classes", "eval_preprocessing", "teacher")}
    old["method"] = dict(ckpt["method"])
    if ckpt["method_name"] == "daino":
        old["method"]["teacher"] = ckpt["teacher"]
    else:
        old["method"]["ema"] = ckpt.get("teacher")
    return old


@pytest.mark.parametrize("run", ["suave_momentum", "daino"])
def test_layout_1_checkpoints_still_load_each_network(tiny_runs, run, tmp_path):
    ckpt = read_checkpoint(tiny_runs[run]["checkpoint"])
    path = tmp_path / "old.pth"
    torch.save(layout_1(ckpt), path)
    for key in ("student", "teacher"):
        backbone = BACKBONES[run]()
        load_pretrained_backbone(backbone, path, checkpoint_key=key)
        expected = _part(ckpt[key], "backbone.")
        for name, value in backbone.state_dict().items():
            assert torch.equal(value, expected[name]), (key, name)


def test_daino_resumes_a_layout_1_checkpoint_with_its_teacher(tiny_runs, tmp_path):
    """An interrupted run of the old layout continues: the teacher is read from method["teacher"]."""
    from tests.test_training import DAINO_TINY
    ckpt = read_checkpoint(tiny_runs["daino"]["checkpoint"])
    out = tmp_path / "resumed"
    out.mkdir()
    torch.save(layout_1(ckpt), out / "checkpoint.pth")
    data = tiny_runs["daino"]["data"]
    argv = ["--data_path", data, "--subset_file", os.path.join(data, "subsets", "labelled.txt"), "--output_dir",
            str(out), "--epochs", "1", "--max_iters_per_epoch", "2", *DAINO_TINY]
    from daino.method import DainoMethod, data_config
    from src.engine import Trainer
    trainer = Trainer(main_daino.get_args_parser().parse_args(argv), data_config, DainoMethod)
    for name, value in trainer.method.teacher.state_dict().items():
        assert torch.equal(value, ckpt["teacher"][name]), name


# --- the fine-tuning start: online probes load as the release's strict=False load did (issue 48) ---------------

PROBE_NET = ["--arch", "resnet18", "--small_stem", "true", "--hidden_mlp", "32", "--feat_dim", "16",
             "--multihead_eval", "true", "--ensemble_eval", "true"]


def _suave(tmp_path, *flags, seed=2):
    """Suave's start as the entry point builds it (parser defaults + ``flags``), torch seeded with ``seed``."""
    import argparse
    from suave.args import get_args_parser
    from suave.method import SuaveMethod
    args = argparse.ArgumentParser(parents=[get_args_parser()]).parse_args(
        ["--data_path", str(tmp_path), "--output_dir", str(tmp_path), *PROBE_NET, *flags])
    torch.manual_seed(seed)
    return SuaveMethod(args, 4, torch.device("cpu")).student


def _release_file(tmp_path, student, keep=lambda key: True) -> str:
    """``checkpoint.pth.tar`` as the Suave release saves it: the DDP model's state_dict under ``state_dict``."""
    path = os.path.join(tmp_path, "checkpoint.pth.tar")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in student.state_dict().items() if keep(k)},
                "ema_state_dict": None, "optimizer": {}, "scaler": None}, path)
    return path


def _probes(network) -> dict:
    from src.method import PROBE_PREFIXES
    return {k: v for k, v in network.state_dict().items() if k.startswith(PROBE_PREFIXES)}


def test_fine_tuning_loads_the_probes_the_file_holds_unless_init_probes_false(tmp_path, caplog):
    trained = _suave(tmp_path, seed=1)
    with torch.no_grad():
        for name, parameter in trained.named_parameters():
            parameter.add_(1.0 if name.startswith("cls_") else 0.5)  # "trained" values
    path = _release_file(tmp_path, trained)
    fresh = _probes(_suave(tmp_path))  # the probes' initialisation under seed 2

    started = _suave(tmp_path, "--swav_init_ckpt", path)  # the default: as the release
    assert len(_probes(started)) == 2 * (3 + 1)  # probes on backbone, hidden layer, embedding + ensemble: W, b
    for key, value in _probes(started).items():
        assert torch.equal(value, trained.state_dict()[key]), key
    assert torch.equal(started.backbone.conv1.weight, trained.backbone.conv1.weight)
    assert not torch.equal(started.prototypes.weight, trained.prototypes.weight)  # the release skipped them

    restarted = _suave(tmp_path, "--swav_init_ckpt", path, "--init_probes", "false")
    assert torch.equal(restarted.backbone.conv1.weight, trained.backbone.conv1.weight)
    for key, value in _probes(restarted).items():
        assert torch.equal(value, fresh[key]) and not torch.equal(value, trained.state_dict()[key]), key

    caplog.set_level("INFO", logger="src.method")  # a SwAV-like file without probes: they stay at initialisation
    swav_like = _release_file(tmp_path, trained, keep=lambda key: not key.startswith("cls_"))
    no_probes = _suave(tmp_path, "--swav_init_ckpt", swav_like)
    assert all(torch.equal(value, fresh[key]) for key, value in _probes(no_probes).items())
    assert "0 tensors loaded; at their initialisation: cls_ensemble, cls_heads.0" in caplog.text


def test_a_probe_of_another_shape_is_one_line_naming_init_probes_false(tmp_path):
    other = _suave(tmp_path, "--hidden_mlp", "24")
    path = _release_file(tmp_path, other, keep=lambda key: not key.startswith("projection_head."))
    with pytest.raises(CheckpointError) as error:
        _suave(tmp_path, "--swav_init_ckpt", path)
    assert str(error.value) == (
        f"online probe cls_heads.1.weight has shape (4, 24) in {path} (given by --swav_init_ckpt) but (4, 32) "
        "here (other --hidden_mlp, --feat_dim or classes): pass --init_probes false to start the probes at their "
        "initialisation")
    _suave(tmp_path, "--swav_init_ckpt", path, "--init_probes", "false")  # starts
