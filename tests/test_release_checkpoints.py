"""Files the Suave-Daino release (pietroastolfi/suave-daino) wrote load through every entry point that reads a
checkpoint: ``--swav_init_ckpt`` / ``--dino_init_ckpt`` (``--init_proj``), ``--evaluate``, ``src.predict``,
``src.export`` and the evaluation scripts' ``--pretrained`` with ``--checkpoint_key student|teacher``.

The files are written here as the release's save calls write them, with the release's module trees rebuilt in
the test from its model definitions (small backbones of this project stand in for ResNet-50 / ViT-S):

- Suave (suave/main_suave.py + src/resnet50.py): the DDP-wrapped ResNet (``module.`` prefix; the backbone's
  modules at the top level; ``projection_head`` an ``nn.ModuleList`` of ``Sequential(Linear, BatchNorm1d,
  ReLU)`` stages then a ``Linear``; ``cls_heads`` with ``--multihead_eval``; ``prototypes``) in
  ``{"epoch", "state_dict", "ema_state_dict", "optimizer", "scaler"}``, saved to ``checkpoint.pth.tar``, copied
  to ``checkpoints/ckp-{epoch}.pth``, with ``queue{rank}.pth`` beside.
- Daino (daino/main_daino.py + src/vision_transformer.py): DINO's layout, ``{"student" (DDP: ``module.``),
  "teacher", "optimizer", "epoch", "args" (Namespace), "dino_loss"}`` in ``checkpoint.pth`` and
  ``checkpoint{epoch:04}.pth``; the head's last layer under the legacy ``weight_norm`` (``weight_g`` /
  ``weight_v``).

Every loaded tensor is compared with the module of the release's tree it came from (not with renamed keys).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import warnings

import pandas as pd
import pytest
import torch
from torch import nn

import eval_linear
import eval_semisup
import main_daino
import main_suave
from launch.script_file import flatten, read_script_file
from src.checkpoint import (CheckpointError, RunCheckpoint, flatten_projection_head, read_checkpoint,
                            release_method)
from src.checkpoint.release_files import SUAVE_RECIPE_NETWORK
from src.cli import run_main
from src.data.synthetic import make_synthetic_imagefolder
from src.downstream.backbone import build_pretrained_backbone, load_matching_head
from src.downstream.models import FineTuneNetwork
from src.export import export_model
from src.models import build_backbone
from src.predict import main as predict_main
from src.trained import load_trained
from tests.test_training import DAINO_TINY

K = 4  # classes of the generated data
SUAVE_NET = ["--arch", "resnet18", "--small_stem", "true", "--hidden_mlp", "32", "--feat_dim", "16"]
SUAVE_EVAL = [*SUAVE_NET, "--val_resize", "32", "--val_crop", "32", "--use_fp16", "false"]
DAINO_EVAL = ["--val_resize", "32", "--val_crop", "32"]
RECIPE = ("the released recipe (suave/scripts/train_{1,10}perc.sh: --arch resnet50 --hidden_mlp 2048 --feat_dim 128 "
          "--detach_ensemble true) and the heads the file saved (--use_momentum true --multihead_eval true "
          "--ensemble_eval false --bn_ensemble false)")
# the flags of the release's daino/main_daino.py parser (its args Namespace holds these and nothing of ours)
DAINO_RELEASE_FLAGS = (
    "arch patch_size out_dim norm_last_layer momentum_teacher use_bn_in_head warmup_teacher_temp teacher_temp "
    "warmup_teacher_temp_epochs temperature use_fp16 weight_decay weight_decay_end clip_grad batch_size_per_gpu "
    "lab_batch_size_per_gpu epochs freeze_last_layer lr warmup_epochs min_lr optimizer drop_path_rate init_proj "
    "dino_init_ckpt label_smoothing global_crops_scale local_crops_number local_crops_scale data_path labels_perc "
    "mixup_unlab mixup_unlab_type mixup_lab mixup_lab_type mixup_lab_prob output_dir saveckp_freq seed "
    "num_workers dist_url local_rank wandb").split()


# ---------------------------------------------------------------------------------------------------------------
# the release's module trees and save calls
# ---------------------------------------------------------------------------------------------------------------


class ReleaseResNet(nn.Module):
    """The module tree of the release's ``src/resnet50.py`` ``ResNet`` (backbone modules at the top level)."""

    def __init__(self, backbone: nn.Module, hidden: list[int], feat_dim: int, num_classes: int,
                 multihead: bool) -> None:
        super().__init__()
        for name, child in backbone.named_children():
            self.add_module(name, child)
        dims = [backbone.num_features, *hidden]
        self.projection_head = nn.ModuleList(
            [nn.Sequential(nn.Linear(dims[i - 1], dims[i]), nn.BatchNorm1d(dims[i]), nn.ReLU(inplace=True))
             for i in range(1, len(dims))] + [nn.Linear(dims[-1], feat_dim)])
        self.cls_heads = nn.ModuleList(
            [nn.Linear(d, num_classes) for d in dims] + [nn.Linear(feat_dim, num_classes)] if multihead else [])
        self.cls_ensemble = None
        self.prototypes = nn.Linear(feat_dim, num_classes, bias=False)


class ReleaseDINOHead(nn.Module):
    """The release's (DINO's) ``DINOHead``: 3-layer GELU MLP, legacy weight-normalised last layer."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim),
                                 nn.GELU(), nn.Linear(hidden_dim, bottleneck_dim))
        self.cls_heads = nn.ModuleList([])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the legacy API the release used
            self.last_layer = nn.utils.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))


class ReleaseMultiCrop(nn.Module):
    """DINO's ``MultiCropWrapper``: ``backbone`` and ``head``."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head


def randomize(module: nn.Module, seed: int) -> nn.Module:
    """Every parameter and buffer random, so that equal values can only come from the file."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
            else:
                tensor.fill_(int(torch.randint(1, 100, (1,), generator=generator)))
    return module


def suave_release_model(seed: int, multihead: bool = True) -> ReleaseResNet:
    backbone = build_backbone("resnet18", small_stem=True)
    return randomize(ReleaseResNet(backbone, [32], 16, K, multihead), seed)


def write_suave_release(run_dir: str, model: nn.Module, ema: nn.Module | None, epoch: int) -> str:
    """suave/main_suave.py's save: checkpoint.pth.tar, its copy checkpoints/ckp-{epoch}.pth, queue0.pth."""
    os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
    wrapped = nn.DataParallel(model)  # the release's DDP wrapper: the same "module." prefix
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.1, momentum=0.9)
    save_dict = {"epoch": epoch + 1, "state_dict": wrapped.state_dict(),
                 "ema_state_dict": nn.DataParallel(ema).state_dict() if ema is not None else None,
                 "optimizer": optimizer.state_dict(), "scaler": None}
    torch.save(save_dict, os.path.join(run_dir, "checkpoint.pth.tar"))
    shutil.copyfile(os.path.join(run_dir, "checkpoint.pth.tar"), os.path.join(run_dir, "checkpoints",
                                                                               f"ckp-{epoch}.pth"))
    torch.save({"queue": torch.zeros(2, 8, 16)}, os.path.join(run_dir, "queue0.pth"))
    return os.path.join(run_dir, "checkpoint.pth.tar")


def daino_release_args(data_path: str) -> argparse.Namespace:
    ours = vars(main_daino.get_args_parser().parse_args([*DAINO_TINY, "--data_path", data_path, "--out_dim", str(K)]))
    ours["dino_init_ckpt"] = "./dino_deitsmall16_pretrain_full_checkpoint.pth"  # the recipes' value
    return argparse.Namespace(**{name: ours[name] for name in DAINO_RELEASE_FLAGS if name in ours}, gpu=0, rank=0,
                              world_size=1)  # set by the release's init_distributed_mode


def daino_release_networks(seed: int) -> tuple[ReleaseMultiCrop, ReleaseMultiCrop]:
    def network(offset: int) -> ReleaseMultiCrop:
        backbone = build_backbone("vit_tiny", patch_size=8)
        return randomize(ReleaseMultiCrop(backbone, ReleaseDINOHead(backbone.num_features, K)), seed + offset)
    return network(0), network(1)


def write_daino_release(run_dir: str, student: nn.Module, teacher: nn.Module, args: argparse.Namespace,
                        epoch: int) -> str:
    """daino/main_daino.py's save: checkpoint.pth and checkpoint{epoch:04}.pth (DINO's layout)."""
    os.makedirs(run_dir, exist_ok=True)
    wrapped = nn.DataParallel(student)
    save_dict = {"student": wrapped.state_dict(), "teacher": teacher.state_dict(),
                 "optimizer": torch.optim.AdamW(wrapped.parameters()).state_dict(), "epoch": epoch + 1,
                 "args": args, "dino_loss": {"center": torch.randn(1, K)}}
    torch.save(save_dict, os.path.join(run_dir, "checkpoint.pth"))
    torch.save(save_dict, os.path.join(run_dir, f"checkpoint{epoch:04}.pth"))
    return os.path.join(run_dir, "checkpoint.pth")


# ---------------------------------------------------------------------------------------------------------------
# comparisons module by module
# ---------------------------------------------------------------------------------------------------------------


def assert_same(ours: nn.Module, theirs: nn.Module, what: str) -> None:
    mine, release = ours.state_dict(), theirs.state_dict()
    assert len(mine) == len(release), what
    for (name, value), (_, reference) in zip(mine.items(), release.items()):
        assert torch.equal(value, reference), f"{what}: {name}"


def assert_suave_backbone(backbone: nn.Module, release: ReleaseResNet) -> None:
    for name, child in backbone.named_children():
        assert_same(child, getattr(release, name), f"backbone.{name}")


def assert_suave_network(network: nn.Module, release: ReleaseResNet, probes_from: ReleaseResNet | None = None):
    """SwAVNetwork == the release's ResNet: stage i layer j -> projection_head[3i + j], last -> [3n]."""
    assert_suave_backbone(network.backbone, release)
    stages = len(release.projection_head) - 1
    for i in range(stages):
        assert_same(network.projection_head[3 * i], release.projection_head[i][0], f"stage {i} Linear")
        assert_same(network.projection_head[3 * i + 1], release.projection_head[i][1], f"stage {i} BatchNorm")
    assert_same(network.projection_head[3 * stages], release.projection_head[stages], "last Linear")
    assert_same(network.prototypes, release.prototypes, "prototypes")
    assert_same(network.cls_heads, (probes_from or release).cls_heads, "probes")


def assert_daino_network(network: nn.Module, release: ReleaseMultiCrop) -> None:
    assert_same(network.backbone, release.backbone, "backbone")
    assert_same(network.head.mlp, release.head.mlp, "head.mlp")
    last = network.head.last_layer.parametrizations.weight
    assert torch.equal(last.original0, release.head.last_layer.weight_g)
    assert torch.equal(last.original1, release.head.last_layer.weight_v)


# ---------------------------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_synthetic_imagefolder(str(tmp_path_factory.mktemp("release_data") / "data"), num_classes=K,
                                      train_per_class=4, val_per_class=2, size=32, seed=0, subset_per_class=2)


@pytest.fixture(scope="module")
def data(synthetic) -> str:
    return str(synthetic.root)


@pytest.fixture(scope="module")
def suave(tmp_path_factory) -> dict:
    run_dir = str(tmp_path_factory.mktemp("suave_release"))
    model, ema = suave_release_model(1), suave_release_model(2, multihead=False)
    path = write_suave_release(run_dir, model, ema, epoch=3)
    return {"path": path, "ckp": os.path.join(run_dir, "checkpoints", "ckp-3.pth"), "model": model, "ema": ema}


@pytest.fixture(scope="module")
def daino(tmp_path_factory, data) -> dict:
    run_dir = str(tmp_path_factory.mktemp("daino_release"))
    student, teacher = daino_release_networks(3)
    path = write_daino_release(run_dir, student, teacher, daino_release_args(data), epoch=2)
    return {"path": path, "snapshot": os.path.join(run_dir, "checkpoint0002.pth"), "student": student,
            "teacher": teacher}


# ---------------------------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------------------------


def test_the_layouts_are_recognised(suave, daino, tmp_path):
    assert release_method(read_checkpoint(suave["path"])) == "suave"
    assert release_method(read_checkpoint(suave["ckp"])) == "suave"
    assert release_method(read_checkpoint(daino["snapshot"])) == "daino"
    dino = read_checkpoint(daino["path"])
    dino["args"] = argparse.Namespace(arch="vit_small")  # DINO's own full checkpoint: no dino_init_ckpt flag
    assert release_method(dino) is None
    swav = {"state_dict": read_checkpoint(suave["path"])["state_dict"]}  # SwAV's {"state_dict"} file
    assert release_method(swav) is None


def test_flatten_projection_head_maps_stages_and_refuses_a_misplaced_last_layer():
    weight = torch.zeros(1)
    release = {"projection_head.0.0.weight": weight, "projection_head.0.1.running_var": weight,
               "projection_head.1.0.bias": weight, "projection_head.1.1.num_batches_tracked": weight,
               "projection_head.2.weight": weight, "prototypes.weight": weight}
    assert list(flatten_projection_head(release)) == [
        "projection_head.0.weight", "projection_head.1.running_var", "projection_head.3.bias",
        "projection_head.4.num_batches_tracked", "projection_head.6.weight", "prototypes.weight"]
    flat = {"projection_head.0.weight": weight, "projection_head.3.weight": weight}  # SwAV's / ours: unchanged
    assert flatten_projection_head(flat) == flat
    with pytest.raises(CheckpointError) as error:
        flatten_projection_head({"projection_head.0.0.weight": weight, "projection_head.3.weight": weight}, "F")
    assert str(error.value) == ("checkpoint F: projection_head.3.weight is not the last layer of a projection head "
                                "with 1 hidden stage(s) (projection_head.0-0.*)")


def test_recipe_network_flags_are_the_released_recipes():
    parser = main_suave.get_args_parser()
    for recipe in ("train_1perc.sh", "train_10perc.sh"):
        args = vars(parser.parse_args(flatten(list(read_script_file(f"suave/scripts/{recipe}").flags))))
        assert {name: args[name] for name in SUAVE_RECIPE_NETWORK} == SUAVE_RECIPE_NETWORK, recipe


@pytest.mark.parametrize("key", ["student", "teacher"])
def test_suave_release_starts_a_run_with_init_proj(suave, key):
    args = main_suave.get_args_parser().parse_args(
        [*SUAVE_NET, "--swav_init_ckpt", suave["ckp"], "--init_proj", "true", "--init_prototypes", "true",
         "--checkpoint_key", key])
    from suave.method import SuaveMethod
    method = SuaveMethod(args, K, torch.device("cpu"))
    release = suave["model"] if key == "student" else suave["ema"]
    student = method.student
    assert_suave_backbone(student.backbone, release)
    for i, layer in ((0, 0), (1, 1)):
        assert_same(student.projection_head[i], release.projection_head[0][layer], f"projection {i}")
    assert_same(student.projection_head[3], release.projection_head[1], "last Linear")
    assert_same(student.prototypes, release.prototypes, "prototypes")


@pytest.mark.parametrize("key", ["student", "teacher"])
def test_daino_release_starts_a_run_with_init_proj(daino, key):
    args = main_daino.get_args_parser().parse_args(
        [*DAINO_TINY, "--dino_init_ckpt", daino["path"], "--init_proj", "true", "--checkpoint_key", key])
    from daino.method import DainoMethod
    method = DainoMethod(args, K, torch.device("cpu"))
    assert_same(method.student.backbone, daino[key].backbone, "backbone")
    assert_same(method.student.head.mlp, daino[key].head.mlp, "head.mlp")


def test_suave_release_evaluate_predict_export(suave, data, tmp_path, capsys):
    for path in (suave["path"], suave["ckp"]):
        trained = load_trained(path, data_path=data, command_line=SUAVE_EVAL)
        assert trained.method_name == "suave" and trained.epoch == 4 and trained.classes == sorted(os.listdir(
            os.path.join(data, "train")))
        assert_suave_network(trained.networks["student"], suave["model"])
        # the momentum encoder has no probes in the release: ours take the student's
        assert_suave_network(trained.networks["teacher"], suave["ema"], probes_from=suave["model"])
        assert trained.flags_source == (
            f"{RECIPE}, replaced by the command line (--val_resize 32 --val_crop 32 --use_fp16 false --feat_dim 16 --arch resnet18 --small_stem "
            "true --hidden_mlp 32)")  # in the parser's order

    out = tmp_path / "eval"
    capsys.readouterr()
    assert run_main(main_suave.get_args_parser, main_suave.main, "eval",
                    ["--evaluate", suave["ckp"], "--data_path", data, "--output_dir", str(out), *SUAVE_EVAL]) == 0
    report = json.load(open(out / "eval.json"))
    assert report["epoch"] == 4 and report["val_images"] == 2 * K and report["val_loss"] == report["val_loss"]
    logged = [line for line in capsys.readouterr().out.splitlines() if "was written by the Suave release" in line]
    assert len(logged) == 1 and logged[0].endswith(
        f"{suave['ckp']} was written by the Suave release: network flags from {RECIPE}, replaced by the command line "
        "(--val_resize 32 --val_crop 32 --feat_dim 16 --arch resnet18 --small_stem true --hidden_mlp 32); "
        f"classes: the 4 sorted class folders of {os.path.join(data, 'train')}")

    preds = tmp_path / "preds.csv"
    assert predict_main(["--checkpoint", suave["path"], "--images", os.path.join(data, "val"), "--out", str(preds),
                         "--data_path", data, "--device", "cpu", "--flags", " ".join(SUAVE_EVAL)]) == 0
    assert "network flags from the released recipe" in capsys.readouterr().err
    table = pd.read_csv(preds, keep_default_na=False)
    assert len(table) == 2 * K and set(table["predicted_class"]) <= set(trained.classes)
    accuracy = 100 * (table["predicted_class"] == table["path"].map(lambda p: os.path.basename(os.path.dirname(p))))
    assert accuracy.mean() == pytest.approx(report["val_acc1"], abs=1e-9)  # predict agrees with --evaluate

    record = export_model(suave["path"], str(tmp_path / "export"), data_path=data, program=False, flags=SUAVE_EVAL)
    assert record["flags_source"] == trained.flags_source and record["classes"] == trained.classes
    backbone = build_backbone("resnet18", small_stem=True)
    backbone.load_state_dict(torch.load(tmp_path / "export" / "backbone.pth", weights_only=True))
    assert_suave_backbone(backbone, suave["model"])


def test_suave_release_without_its_flags_is_refused_in_one_line(suave, data, capsys):
    where = suave["path"]
    with pytest.raises(CheckpointError) as error:
        load_trained(where, data_path=data)  # the released recipe: ResNet-50, hidden 2048 -- not this file
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"checkpoint {where} lacks student tensor(s) ")
    assert message.endswith(
        f"; the student was built with the network flags of {RECIPE}: pass the flags the run was trained with on the command line "
        "(--arch, --hidden_mlp, --feat_dim, --multihead_eval, --ensemble_eval, --bn_ensemble; Daino: --arch, "
        "--patch_size, --out_dim, --use_bn_in_head)")
    # a hidden width the file does not have: the shapes are named
    with pytest.raises(CheckpointError, match=r"has student tensor\(s\) of the wrong shape, .*projection_head\.0\."
                                              r"weight \(32, 512\) in file vs \(64, 512\) in model"):
        load_trained(where, data_path=data, command_line=[*SUAVE_EVAL, "--hidden_mlp", "64"])
    # no classes: one line naming --data_path
    with pytest.raises(Exception) as error:
        load_trained(where, command_line=SUAVE_EVAL)
    assert str(error.value) == (f"{where} was written by the Suave release and does not name its classes: pass "
                                "--data_path DATA (the data it was trained on) to take them from DATA/train")
    # predict says it in one line too
    assert predict_main(["--checkpoint", where, "--images", os.path.join(data, "val"), "--data_path", data]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"error: {message}"


def test_suave_release_heads_come_from_the_file(tmp_path, data):
    """Without --use_momentum and --multihead_eval (the parser's defaults, not the recipe's --multihead_eval true):
    the network has the heads the file saved, and only those."""
    model = suave_release_model(6, multihead=False)
    path = write_suave_release(str(tmp_path), model, None, epoch=0)
    trained = load_trained(path, data_path=data, command_line=SUAVE_EVAL)
    assert list(trained.networks) == ["student"] and len(trained.networks["student"].cls_heads) == 0
    assert_suave_network(trained.networks["student"], model)
    assert "the heads the file saved (--use_momentum false --multihead_eval false" in trained.flags_source
    with pytest.raises(CheckpointError, match=r"lacks student tensor\(s\) 6 key\(s\): cls_heads\.0\.weight"):
        load_trained(path, data_path=data, command_line=[*SUAVE_EVAL, "--multihead_eval", "true"])


def test_suave_release_without_class_layer_is_refused(suave, tmp_path):
    checkpoint = read_checkpoint(suave["path"])
    del checkpoint["state_dict"]["module.prototypes.weight"]
    path = str(tmp_path / "checkpoint.pth.tar")
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError) as error:
        load_trained(path, command_line=SUAVE_EVAL)
    assert str(error.value) == f"{path} is a file of the suave release without its class layer prototypes.weight"


def test_daino_release_checkpoint_pth_is_evaluated_not_resumed(daino, data, tmp_path, capsys):
    for path in (daino["path"], daino["snapshot"]):
        trained = load_trained(path, command_line=DAINO_EVAL)  # classes: the stored --data_path's folders
        assert trained.method_name == "daino" and trained.epoch == 3 and len(trained.classes) == K
        assert_daino_network(trained.networks["student"], daino["student"])
        assert_daino_network(trained.networks["teacher"], daino["teacher"])
        assert trained.flags_source == ("the flags stored in the file (its args), replaced by the command line "
                                        "(--val_resize 32 --val_crop 32)")

    out = tmp_path / "eval"
    assert run_main(main_daino.get_args_parser, main_daino.main, "eval",
                    ["--evaluate", daino["path"], "--data_path", data, "--output_dir", str(out), *DAINO_EVAL]) == 0
    report = json.load(open(out / "eval.json"))
    preds = tmp_path / "preds.csv"
    assert predict_main(["--checkpoint", daino["path"], "--images", os.path.join(data, "val"), "--out", str(preds),
                         "--device", "cpu", "--flags", " ".join(DAINO_EVAL)]) == 0
    table = pd.read_csv(preds, keep_default_na=False)
    accuracy = 100 * (table["predicted_class"] == table["path"].map(lambda p: os.path.basename(os.path.dirname(p))))
    assert accuracy.mean() == pytest.approx(report["val_acc1"], abs=1e-9)  # with the teacher, as --evaluate
    record = export_model(daino["path"], str(tmp_path / "export"), program=False, flags=DAINO_EVAL)
    backbone = build_backbone("vit_tiny", patch_size=8)
    backbone.load_state_dict(torch.load(tmp_path / "export" / "backbone.pth", weights_only=True))
    assert record["network"] == "teacher" and record["epoch"] == 3
    assert_same(backbone, daino["teacher"].backbone, "exported teacher backbone")

    # --evaluate through the other method's entry point, and a resume, are refused in one line
    assert run_main(main_suave.get_args_parser, main_suave.main, "eval",
                    ["--evaluate", daino["path"], "--data_path", data]) != 0
    assert f"{daino['path']} is a daino checkpoint: evaluate it with python main_daino.py" in capsys.readouterr().err
    with pytest.raises(CheckpointError) as error:
        RunCheckpoint.load(daino["path"])
    assert str(error.value) == (f"{daino['path']} was written by the daino release, not by a run of this project: "
                                "start a run from it with --dino_init_ckpt (another --output_dir), or evaluate it "
                                "with --evaluate / src.predict / src.export")


def test_a_run_does_not_resume_from_a_daino_release_checkpoint(daino, data, synthetic, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copyfile(daino["path"], run_dir / "checkpoint.pth")
    before = read_checkpoint(run_dir / "checkpoint.pth")
    argv = ["--data_path", data, "--subset_file", str(synthetic.subset_file), "--output_dir", str(run_dir),
            "--epochs", "1", "--max_iters_per_epoch", "1", *DAINO_TINY]
    assert run_main(main_daino.get_args_parser, main_daino.main, "daino", argv) != 0
    assert "was written by the daino release, not by a run of this project" in capsys.readouterr().err
    after = read_checkpoint(run_dir / "checkpoint.pth")
    assert torch.equal(after["teacher"]["head.mlp.0.weight"], before["teacher"]["head.mlp.0.weight"])


def parse(module, argv: list[str]) -> argparse.Namespace:
    return argparse.ArgumentParser(parents=[module.get_args_parser()]).parse_args(argv)


@pytest.mark.parametrize("key", ["student", "teacher"])
def test_eval_semisup_loads_the_suave_release_hidden_layer(suave, data, key):
    args = parse(eval_semisup, ["--data_path", data, "--pretrained", suave["path"], "--checkpoint_key", key,
                                "--arch", "resnet18", "--small_stem", "true", "--hidden_mlp", "32"])
    backbone, checkpoint = build_pretrained_backbone(args)
    release = suave["model"] if key == "student" else suave["ema"]
    assert_suave_backbone(backbone, release)
    model = FineTuneNetwork(backbone, [32], num_classes=K)
    last = {k: v.clone() for k, v in model.projection_head[3].state_dict().items()}
    loaded = load_matching_head(model, checkpoint, key, "projection_head.")
    assert sorted(loaded) == sorted(f"projection_head.{k}" for k in
                                    [*(f"0.{n}" for n in ("weight", "bias")),
                                     *(f"1.{n}" for n in ("weight", "bias", "running_mean", "running_var",
                                                          "num_batches_tracked"))])
    assert_same(model.projection_head[0], release.projection_head[0][0], "hidden Linear")
    assert_same(model.projection_head[1], release.projection_head[0][1], "hidden BatchNorm")
    for name, value in model.projection_head[3].state_dict().items():  # K classes vs 16-d: initialised here
        assert torch.equal(value, last[name])


def test_eval_semisup_fine_tunes_a_suave_release_file(suave, synthetic, tmp_path):
    out = tmp_path / "ft"
    argv = ["--data_path", str(synthetic.root), "--subset_file", str(synthetic.subset_file), "--pretrained",
            suave["ckp"], "--checkpoint_key", "student", "--arch", "resnet18", "--small_stem", "true",
            "--hidden_mlp", "32", "--crop_size", "32", "--val_resize", "0", "--val_crop", "0", "--workers", "0",
            "--batch_size", "4", "--epochs", "1", "--dump_path", str(out)]
    assert run_main(eval_semisup.get_args_parser, eval_semisup.main, eval_semisup.NAME, argv) == 0
    log = (out / "train.log").read_text()
    assert ("head: loaded 7 tensors from the checkpoint (projection_head.0.weight, projection_head.0.bias, "
            "projection_head.1.weight, projection_head.1.bias, projection_head.1.running_mean, "
            "projection_head.1.running_var, projection_head.1.num_batches_tracked); initialised here: "
            "projection_head.3.weight, projection_head.3.bias") in log


def test_suave_release_without_momentum_encoder_names_the_missing_teacher(tmp_path, data):
    path = write_suave_release(str(tmp_path), suave_release_model(5), None, epoch=0)
    args = parse(eval_linear, ["--data_path", data, "--pretrained", path, "--checkpoint_key", "teacher",
                               "--arch", "resnet18", "--small_stem", "true"])
    with pytest.raises(CheckpointError) as error:
        build_pretrained_backbone(args)
    assert str(error.value) == (f"checkpoint {path} (given by --pretrained) has no 'teacher' network; it holds: "
                                "student. Pass --checkpoint_key student (checkpoint_key=...) to load that one")


@pytest.mark.parametrize("key", ["student", "teacher"])
def test_eval_linear_loads_the_daino_release_backbone(daino, data, key):
    args = parse(eval_linear, ["--data_path", data, "--pretrained", daino["snapshot"], "--checkpoint_key", key,
                               "--arch", "vit_tiny", "--patch_size", "8"])
    backbone, _ = build_pretrained_backbone(args)
    assert_same(backbone, daino[key].backbone, f"{key} backbone")
    args = parse(eval_linear, ["--data_path", data, "--pretrained", daino["snapshot"], "--arch", "vit_small"])
    with pytest.raises(CheckpointError) as error:  # the file's args name its arch
        build_pretrained_backbone(args)
    assert str(error.value) == (f"--arch vit_small does not match --pretrained {daino['snapshot']}, a vit_tiny "
                                "checkpoint: pass --arch vit_tiny")
