"""src/checkpoint/: the released SwAV / DINO files and this project's own load as laid out in
tests/fixtures/reference/checkpoint_layouts.json (a copy of ../shared/reference/checkpoint_layouts.json); reading is
weights_only; writing is atomic. Round trips on checkpoints the engine writes: tests/test_checkpoint_contract.py."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import pathlib
from collections import OrderedDict, namedtuple

import numpy as np
import pytest
import torch
from torch import nn

import src.checkpoint.files as checkpoint_module
import src.models as models
from src.checkpoint import (
    CheckpointError,
    copy_snapshot,
    extract_state_dict,
    load_pretrained_backbone,
    load_pretrained_projection,
    read_checkpoint,
    resize_pos_embed,
    save_checkpoint_atomic,
)
from src.errors import MissingPathError

SWAV_FILE = "swav_800ep_pretrain.pth.tar"
DINO_BACKBONE_FILE = "dino_deitsmall16_pretrain.pth"
DINO_FULL_FILE = "dino_deitsmall16_pretrain_full_checkpoint.pth"
DINO_LAST_LAYER_DIM = 65536


# ------------------------------------------------------------------------------------------------------------
# files shaped exactly like the releases (random values), built once per session
# ------------------------------------------------------------------------------------------------------------


def _random_tensors(entries: list, generator: torch.Generator) -> OrderedDict:
    """A state_dict with the layout's key names, shapes and dtypes, filled with random values."""
    state = OrderedDict()
    for name, shape, dtype in entries:
        dtype = getattr(torch, dtype)
        if dtype.is_floating_point:
            state[name] = torch.empty(shape, dtype=dtype).normal_(generator=generator)
        else:
            state[name] = torch.randint(0, 1000, shape, dtype=dtype, generator=generator)
    return state


LAYOUTS = os.path.join(os.path.dirname(__file__), "fixtures", "reference", "checkpoint_layouts.json")


@pytest.fixture(scope="session")
def layouts() -> dict:
    with open(LAYOUTS) as handle:
        return json.load(handle)


@pytest.fixture(scope="session")
def release_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("releases")


@pytest.fixture(scope="session")
def swav_release(layouts, release_dir):
    """SwAV 800-epoch file: a plain state_dict of the DDP model, every key prefixed 'module.'."""
    state = _random_tensors(layouts[SWAV_FILE]["keys"], torch.Generator().manual_seed(0))
    path = release_dir / SWAV_FILE
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="session")
def dino_backbone_release(layouts, release_dir):
    """DINO ViT-S/16 backbone-only file: a plain state_dict without prefix."""
    state = _random_tensors(layouts[DINO_BACKBONE_FILE]["keys"], torch.Generator().manual_seed(1))
    path = release_dir / DINO_BACKBONE_FILE
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="session")
def dino_full_release(layouts, release_dir):
    """DINO full checkpoint: student (module.*), teacher, optimizer, epoch, args (Namespace), dino_loss, fp16_scaler."""
    entries = layouts[DINO_FULL_FILE]["entries"]
    assert entries["args"] == "argparse.Namespace" and entries["epoch"] == "int"
    generator = torch.Generator().manual_seed(2)
    student = _random_tensors(entries["student"], generator)
    teacher = _random_tensors(entries["teacher"], generator)
    # the legacy torch.nn.utils.weight_norm names, as in the release
    assert "module.head.last_layer.weight_g" in student and "head.last_layer.weight_v" in teacher
    params = list(student)
    checkpoint = {
        "student": student,
        "teacher": teacher,
        # AdamW's container; moments for two parameters only (the layout does not describe them, and the
        # loaders never read them: they only have to pass weights_only unpickling)
        "optimizer": {
            "state": {i: {"step": torch.tensor(1000.0), "exp_avg": torch.zeros_like(student[params[i]]),
                          "exp_avg_sq": torch.zeros_like(student[params[i]])} for i in range(2)},
            "param_groups": [
                {"lr": 1e-5, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.4, "amsgrad": False,
                 "maximize": False, "foreach": None, "capturable": False, "differentiable": False,
                 "fused": None, "params": list(range(0, len(params), 2))},
                {"lr": 1e-5, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False,
                 "maximize": False, "foreach": None, "capturable": False, "differentiable": False,
                 "fused": None, "params": list(range(1, len(params), 2))},
            ],
        },
        "epoch": 800,
        "args": argparse.Namespace(arch="vit_small", patch_size=16, out_dim=DINO_LAST_LAYER_DIM,
                                   norm_last_layer=False, lr=0.0005, global_crops_scale=(0.25, 1.0)),
        "dino_loss": _random_tensors(entries["dino_loss"], generator),
        "fp16_scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                        "growth_interval": 2000, "_growth_tracker": 17},
    }
    path = release_dir / DINO_FULL_FILE
    torch.save(checkpoint, path)
    return path, checkpoint


def _assert_loaded(module: nn.Module, expected: dict, prefix: str) -> None:
    """Every tensor of module.state_dict() equals expected[prefix + key]."""
    for key, value in module.state_dict().items():
        assert torch.equal(value, expected[prefix + key]), key


# ------------------------------------------------------------------------------------------------------------
# backbones from the released files
# ------------------------------------------------------------------------------------------------------------


def test_swav_release_loads_every_resnet50_tensor(swav_release):
    path, state = swav_release
    backbone = models.build_backbone("resnet50")
    assert not torch.equal(backbone.state_dict()["conv1.weight"], state["module.conv1.weight"])
    loaded = load_pretrained_backbone(backbone, path, flag="--swav_init_ckpt")
    assert loaded == list(backbone.state_dict())
    _assert_loaded(backbone, state, "module.")
    # the SwAV checkpoints that wrap the same state_dict in {"state_dict": ...}
    fresh = models.build_backbone("resnet50")
    assert load_pretrained_backbone(fresh, {"state_dict": state}) == loaded
    _assert_loaded(fresh, state, "module.")


def test_dino_backbone_release_loads_every_vit_small_tensor(dino_backbone_release):
    path, state = dino_backbone_release
    backbone = models.build_backbone("vit_small", patch_size=16)
    loaded = load_pretrained_backbone(backbone, path)
    assert loaded == list(backbone.state_dict())
    assert set(loaded) == set(state)
    _assert_loaded(backbone, state, "")


@pytest.mark.parametrize("checkpoint_key, prefix", [("teacher", "backbone."), ("student", "module.backbone.")])
def test_dino_full_release_loads_student_or_teacher_backbone(dino_full_release, checkpoint_key, prefix, caplog):
    path, checkpoint = dino_full_release
    backbone = models.build_backbone("vit_small", patch_size=16)
    with caplog.at_level(logging.INFO, logger="src.checkpoint"):
        loaded = load_pretrained_backbone(backbone, path, checkpoint_key=checkpoint_key)
    assert loaded == list(backbone.state_dict())
    _assert_loaded(backbone, checkpoint[checkpoint_key], prefix)
    # the head's keys are reported as ignored, not loaded
    assert "ignored (not in the backbone): 8 key(s): head.mlp.0.weight" in caplog.text


def test_released_dino_vit_resized_to_another_image_size(dino_backbone_release, caplog):
    """pos_embed of a 14x14 grid (224 px) is interpolated to the model's 10x10 grid (160 px)."""
    path, state = dino_backbone_release
    backbone = models.build_backbone("vit_small", patch_size=16, img_size=[160])
    assert backbone.state_dict()["pos_embed"].shape == (1, 1 + 100, 384)
    with caplog.at_level(logging.INFO, logger="src.checkpoint"):
        load_pretrained_backbone(backbone, path)
    assert "resized pos_embed from a 14x14 to a 10x10 patch grid" in caplog.text
    loaded = backbone.state_dict()
    expected = _reference_bicubic_pos_embed(state["pos_embed"], 10)
    torch.testing.assert_close(loaded["pos_embed"], expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(loaded["pos_embed"][:, 0], state["pos_embed"][:, 0])  # CLS position untouched
    for key in state:
        if key != "pos_embed":
            assert torch.equal(loaded[key], state[key]), key


def _cubic_weights(size_in: int, size_out: int) -> torch.Tensor:
    """(size_out, size_in) matrix of 1-D bicubic interpolation: Keys' kernel a=-0.75, half-pixel centres,
    edge samples repeated (the convention of PyTorch's and OpenCV's bicubic, align_corners=False)."""
    a = -0.75

    def kernel(x: float) -> float:
        x = abs(x)
        if x <= 1:
            return ((a + 2) * x - (a + 3)) * x * x + 1
        if x < 2:
            return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
        return 0.0

    weights = torch.zeros(size_out, size_in, dtype=torch.float64)
    for out in range(size_out):
        source = (out + 0.5) * size_in / size_out - 0.5
        base = math.floor(source)
        for tap in range(base - 1, base + 3):
            weights[out, min(max(tap, 0), size_in - 1)] += kernel(source - tap)
    return weights


def _reference_bicubic_pos_embed(pos_embed: torch.Tensor, new_side: int) -> torch.Tensor:
    old_side = math.isqrt(pos_embed.shape[1] - 1)
    grid = pos_embed[0, 1:].double().reshape(old_side, old_side, -1)
    weights = _cubic_weights(old_side, new_side)
    resized = torch.einsum("ij,jkc,lk->ilc", weights, grid, weights)  # rows, then columns
    return torch.cat([pos_embed[:, :1], resized.reshape(1, new_side * new_side, -1).float()], dim=1)


@pytest.mark.parametrize("old_side, new_side", [(14, 10), (4, 7), (6, 6)])
def test_resize_pos_embed_equals_separable_bicubic(old_side, new_side):
    pos_embed = torch.randn(1, 1 + old_side * old_side, 8, generator=torch.Generator().manual_seed(3))
    resized = resize_pos_embed(pos_embed, new_side * new_side)
    torch.testing.assert_close(resized, _reference_bicubic_pos_embed(pos_embed, new_side), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------------------
# --init_proj
# ------------------------------------------------------------------------------------------------------------


def _swav_network(nmb_prototypes: int = 10):
    return models.SwAVNetwork(models.build_backbone("resnet50"), hidden_mlp=[2048], feat_dim=128,
                              nmb_prototypes=nmb_prototypes)


def _dino_network(out_dim: int = 10, norm_last_layer: bool = True):
    backbone = models.build_backbone("vit_small", patch_size=16)
    head = models.DINOHead(backbone.num_features, out_dim, norm_last_layer=norm_last_layer)
    return models.DINONetwork(backbone, head)


def test_init_proj_loads_swav_projection_head_only(swav_release):
    path, state = swav_release
    network = _swav_network()
    before = {key: value.clone() for key, value in network.state_dict().items()}
    loaded = load_pretrained_projection(network, path, flag="--swav_init_ckpt")
    projection_keys = [key for key in network.state_dict() if key.startswith("projection_head.")]
    assert loaded == projection_keys and len(loaded) == 9  # Linear (2), BatchNorm (5 tensors), Linear (2)
    for key, value in network.state_dict().items():
        if key.startswith("projection_head."):
            assert torch.equal(value, state["module." + key]), key
        else:  # backbone, prototypes (K differs from the file's 3000) and probes untouched
            assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("checkpoint_key, prefix", [("student", "module.head."), ("teacher", "head.")])
def test_init_proj_loads_dino_head_mlp_only(dino_full_release, checkpoint_key, prefix):
    path, checkpoint = dino_full_release
    network = _dino_network()
    before = {key: value.clone() for key, value in network.state_dict().items()}
    loaded = load_pretrained_projection(network, path, checkpoint_key=checkpoint_key)
    assert loaded == ["head.mlp.0.weight", "head.mlp.0.bias", "head.mlp.2.weight", "head.mlp.2.bias",
                      "head.mlp.4.weight", "head.mlp.4.bias"]
    for key, value in network.state_dict().items():
        if key.startswith("head.mlp."):
            assert torch.equal(value, checkpoint[checkpoint_key][prefix + key[len("head."):]]), key
        else:
            assert torch.equal(value, before[key]), key


def test_load_classifier_converts_legacy_weight_norm_to_parametrizations(dino_full_release, caplog):
    """weight_g / weight_v of the released last layer -> parametrizations.weight.original0 / original1."""
    path, checkpoint = dino_full_release
    teacher = checkpoint["teacher"]
    network = _dino_network(out_dim=DINO_LAST_LAYER_DIM, norm_last_layer=True)
    with caplog.at_level(logging.WARNING, logger="src.checkpoint"):
        loaded = load_pretrained_projection(network, read_checkpoint(path), load_classifier=True)
    # norm_last_layer freezes the magnitudes: loading values other than 1 into them is worth a warning
    assert "head.last_layer.parametrizations.weight.original0 is frozen (norm_last_layer)" in caplog.text
    state = network.state_dict()
    assert "head.last_layer.parametrizations.weight.original0" in loaded
    assert torch.equal(state["head.last_layer.parametrizations.weight.original0"], teacher["head.last_layer.weight_g"])
    assert torch.equal(state["head.last_layer.parametrizations.weight.original1"], teacher["head.last_layer.weight_v"])
    # the effective weight is g * v / ||v|| row by row, as with the legacy weight_norm
    g, v = teacher["head.last_layer.weight_g"][:50], teacher["head.last_layer.weight_v"][:50]
    torch.testing.assert_close(network.head.last_layer.weight[:50], g * v / v.norm(dim=1, keepdim=True))
    for key in state:
        if key.startswith("head.mlp."):
            assert torch.equal(state[key], teacher[key]), key


class _LegacyHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, 6), nn.GELU(), nn.Linear(6, 3))
        self.last_layer = nn.utils.weight_norm(nn.Linear(3, out_dim, bias=False))


class _LegacyDINONetwork(nn.Module):
    """A network with DINONetwork's attributes whose last layer uses the legacy torch.nn.utils.weight_norm."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(4, 4)
        self.head = _LegacyHead(4, 5)


@pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")
@pytest.mark.filterwarnings("ignore:.*weight_norm.*:DeprecationWarning")
def test_load_classifier_converts_parametrizations_to_legacy_weight_norm():
    source = _LegacyDINONetwork()
    saved = {"student": {}}
    for key, value in source.state_dict().items():
        key = key.replace("weight_g", "parametrizations.weight.original0").replace(
            "weight_v", "parametrizations.weight.original1")
        saved["student"]["module." + key] = torch.randn_like(value)
    target = _LegacyDINONetwork()
    loaded = load_pretrained_projection(target, saved, checkpoint_key="student", load_classifier=True)
    assert set(loaded) == {key for key in target.state_dict() if key.startswith("head.")}
    state = target.state_dict()
    assert torch.equal(state["head.last_layer.weight_g"],
                       saved["student"]["module.head.last_layer.parametrizations.weight.original0"])
    assert torch.equal(state["head.last_layer.weight_v"],
                       saved["student"]["module.head.last_layer.parametrizations.weight.original1"])


def test_load_classifier_with_other_number_of_classes_names_the_shapes(swav_release):
    path, _ = swav_release
    with pytest.raises(CheckpointError, match=r"prototypes\.weight \(3000, 128\) in file vs \(10, 128\) in model"):
        load_pretrained_projection(_swav_network(nmb_prototypes=10), path, load_classifier=True)


def test_init_proj_rejects_a_network_without_projection():
    with pytest.raises(TypeError, match="neither 'projection_head'"):
        load_pretrained_projection(nn.Linear(2, 2), {"weight": torch.zeros(2, 2)})


# ------------------------------------------------------------------------------------------------------------
# this project's own checkpoints (engine layout)
# ------------------------------------------------------------------------------------------------------------


def test_checkpoint_without_teacher_refuses_the_teacher_and_names_what_it_holds(tmp_path):
    network = models.SwAVNetwork(models.build_backbone("resnet18", small_stem=True), hidden_mlp=[32], feat_dim=8,
                                 nmb_prototypes=5)
    path = tmp_path / "checkpoint.pth"
    save_checkpoint_atomic({"student": network.state_dict(), "teacher": None, "optimizer": {"state": {}},
                            "epoch": 3, "args": argparse.Namespace(arch="resnet18")}, path)
    backbone = models.build_backbone("resnet18", small_stem=True)
    with pytest.raises(CheckpointError, match=r"has no 'teacher' network; it holds: student\. Pass --checkpoint_key "
                                              r"student"):
        load_pretrained_backbone(backbone, path)
    loaded = load_pretrained_backbone(backbone, path, checkpoint_key="student")
    assert loaded == list(backbone.state_dict())
    _assert_loaded(backbone, network.backbone.state_dict(), "")

    # fine-tuning from it: projection and prototypes (same K) come back too
    fresh = models.SwAVNetwork(models.build_backbone("resnet18", small_stem=True), hidden_mlp=[32], feat_dim=8,
                               nmb_prototypes=5)
    loaded = load_pretrained_projection(fresh, path, checkpoint_key="student", load_classifier=True)
    assert "prototypes.weight" in loaded
    for key in loaded:
        assert torch.equal(fresh.state_dict()[key], network.state_dict()[key]), key


def test_own_daino_checkpoint_with_ddp_and_compile_prefixes(tmp_path):
    backbone = models.build_backbone("vit_tiny", patch_size=16, img_size=[32])
    network = models.DINONetwork(backbone, models.DINOHead(backbone.num_features, 7, hidden_dim=16, bottleneck_dim=8))
    state = network.state_dict()
    saved = {"student": {"module._orig_mod." + key: value for key, value in state.items()},
             "teacher": {"_orig_mod." + key: value + 1 for key, value in state.items()}}
    path = tmp_path / "checkpoint.pth"
    save_checkpoint_atomic(saved, path)
    target = models.build_backbone("vit_tiny", patch_size=16, img_size=[32])
    load_pretrained_backbone(target, path)  # teacher by default
    _assert_loaded(target, {key: value + 1 for key, value in network.backbone.state_dict().items()}, "")
    load_pretrained_backbone(target, path, checkpoint_key="student")
    _assert_loaded(target, network.backbone.state_dict(), "")


def test_extract_state_dict_containers():
    weights = {"a": torch.zeros(1)}
    ema = {"a": torch.ones(1)}
    assert extract_state_dict(weights) is not weights and extract_state_dict(weights) == weights
    # the Suave release's own checkpoint: state_dict + ema_state_dict (momentum encoder)
    release = {"epoch": 3, "state_dict": weights, "ema_state_dict": ema, "optimizer": {}}
    assert extract_state_dict(release, "teacher")["a"] is ema["a"]
    assert extract_state_dict(release, "student")["a"] is weights["a"]
    without_ema = {"epoch": 3, "state_dict": weights, "ema_state_dict": None}
    with pytest.raises(CheckpointError, match=r"has no 'teacher' network; it holds: student"):
        extract_state_dict(without_ema, "teacher")
    # a plain state_dict is one network: any key loads it
    assert extract_state_dict(weights, "student") == extract_state_dict(weights, "teacher") == weights
    with pytest.raises(CheckpointError, match=r"no state_dict found under 'teacher'.*\['epoch', 'queue'\]"):
        extract_state_dict({"epoch": 3, "queue": [1]})


# ------------------------------------------------------------------------------------------------------------
# errors a user gets
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def small_resnet_file(tmp_path_factory):
    """A resnet18 backbone's own state_dict saved as the SwAV release would be (module. prefix)."""
    state = {"module." + key: value for key, value in models.build_backbone("resnet18").state_dict().items()}
    path = tmp_path_factory.mktemp("small") / "resnet18.pth"
    torch.save(state, path)
    return path, state


def test_missing_backbone_key_is_named_with_the_file(small_resnet_file, tmp_path):
    _, state = small_resnet_file
    broken = dict(state)
    del broken["module.layer2.0.bn1.running_var"], broken["module.layer4.1.conv2.weight"]
    path = tmp_path / "broken.pth"
    torch.save(broken, path)
    with pytest.raises(CheckpointError, match=(
        rf"checkpoint {path} \(given by --swav_init_ckpt\) lacks backbone 2 key\(s\): "
        r"layer2\.0\.bn1\.running_var, layer4\.1\.conv2\.weight")):
        load_pretrained_backbone(models.build_backbone("resnet18"), path, flag="--swav_init_ckpt")


def test_many_missing_keys_are_counted(small_resnet_file):
    # the file of a resnet18 does not fit a resnet50: its Bottleneck conv3/bn3 keys are missing
    _, state = small_resnet_file
    with pytest.raises(CheckpointError, match=r"lacks backbone \d{2,} key\(s\): layer1\.0\.conv3\.weight, .*, \.\.\."):
        load_pretrained_backbone(models.build_backbone("resnet50"), state)


def test_wrong_shape_is_named_with_both_shapes(small_resnet_file):
    _, state = small_resnet_file
    backbone = models.build_backbone("resnet18", small_stem=True)  # conv1 3x3 instead of 7x7
    with pytest.raises(CheckpointError, match=(
            r"wrong shape, 1 key\(s\): conv1\.weight \(64, 3, 7, 7\) in file vs \(64, 3, 3, 3\) in model")):
        load_pretrained_backbone(backbone, state)


def test_missing_projection_key_is_named(swav_release):
    _, state = swav_release
    broken = {key: value for key, value in state.items() if key != "module.projection_head.1.running_mean"}
    with pytest.raises(CheckpointError, match=r"lacks SwAV projection 1 key\(s\): projection_head\.1\.running_mean"):
        load_pretrained_projection(_swav_network(), broken)


def test_missing_file_names_the_path_and_the_flag(tmp_path):
    path = tmp_path / "nowhere" / "swav_800ep_pretrain.pth.tar"
    with pytest.raises(MissingPathError, match=rf"{path} \(given by --swav_init_ckpt\).*set --swav_init_ckpt"):
        read_checkpoint(path, flag="--swav_init_ckpt")
    with pytest.raises(MissingPathError, match=rf"not found: {path}"):
        load_pretrained_backbone(nn.Linear(1, 1), path)
    with pytest.raises(CheckpointError, match=rf"a directory, not a file: {tmp_path} \(given by --pretrained\)"):
        read_checkpoint(tmp_path, flag="--pretrained")


@pytest.mark.parametrize("zip_format", [True, False])
@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.99])
def test_truncated_file_gives_a_clear_error(tmp_path, zip_format, fraction):
    path = tmp_path / "checkpoint.pth"
    torch.save({"weight": torch.randn(64, 64), "epoch": 3}, path, _use_new_zipfile_serialization=zip_format)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CheckpointError, match=rf"cannot read checkpoint {path} \(given by --dino_init_ckpt\): "
                                              r"the file is truncated or corrupt"):
        read_checkpoint(path, flag="--dino_init_ckpt")


class _Payload:
    """Unpickling this runs open(marker, 'w'): the side effect weights_only=True must prevent."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def test_arbitrary_pickled_objects_are_refused(tmp_path):
    path, marker = tmp_path / "evil.pth", tmp_path / "executed"
    torch.save({"weight": torch.zeros(1), "extra": _Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match=r"contains pickled Python objects.*GLOBAL (io|builtins)\.open"):
        read_checkpoint(path)
    assert not marker.exists()
    torch.load(path, weights_only=False).pop("extra").close()  # the payload is real: unsafe loading runs it
    assert marker.exists()


def test_namespace_is_allowed_only_during_the_call(dino_full_release):
    path, checkpoint = dino_full_release
    loaded = read_checkpoint(path)
    assert loaded["args"] == checkpoint["args"] and isinstance(loaded["args"], argparse.Namespace)
    assert loaded["epoch"] == 800 and loaded["fp16_scaler"] == checkpoint["fp16_scaler"]
    assert argparse.Namespace not in torch.serialization.get_safe_globals()


class _Allowed:
    pass


def test_namespace_allow_list_without_the_context_manager_of_torch_2_5(tmp_path, monkeypatch):
    """torch 2.4 has add_safe_globals but no safe_globals: the previous allow-list is restored after the call."""
    path = tmp_path / "args.pth"
    torch.save({"args": argparse.Namespace(lr=0.1, crops=[2, 6])}, path)
    monkeypatch.delattr(torch.serialization, "safe_globals")
    previous = list(torch.serialization.get_safe_globals())
    torch.serialization.add_safe_globals([_Allowed])
    try:
        expected = set(torch.serialization.get_safe_globals())
        assert argparse.Namespace not in expected
        assert read_checkpoint(path)["args"] == argparse.Namespace(lr=0.1, crops=[2, 6])
        assert set(torch.serialization.get_safe_globals()) == expected
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(previous)


# ------------------------------------------------------------------------------------------------------------
# atomic writing
# ------------------------------------------------------------------------------------------------------------


def _plain_state() -> dict:
    return {
        "student": OrderedDict(w=torch.randn(3, 2), b=torch.arange(3)),
        "teacher": None,
        "optimizer": {"state": {0: {"momentum_buffer": torch.ones(2)}},
                      "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0]}]},
        "epoch": 7,
        "args": argparse.Namespace(arch="resnet50", hidden_mlp=[2048], base_lr=4.8, use_fp16=True, output_dir="x"),
        "rng": {"torch": torch.get_rng_state(), "dtype": torch.float16, "shape": torch.Size([2, 3])},
    }


def test_save_round_trip_with_namespace_stored_as_dict(tmp_path):
    path = tmp_path / "checkpoint.pth"
    state = _plain_state()
    save_checkpoint_atomic(state, path)
    loaded = read_checkpoint(path)
    assert loaded["args"] == vars(state["args"]) and type(loaded["args"]) is dict
    assert isinstance(loaded["student"], OrderedDict)
    torch.testing.assert_close(loaded["student"], state["student"])
    torch.testing.assert_close(loaded["optimizer"], state["optimizer"])
    assert loaded["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert loaded["epoch"] == 7 and loaded["teacher"] is None
    assert torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])
    assert loaded["rng"]["dtype"] is torch.float16 and loaded["rng"]["shape"] == torch.Size([2, 3])
    assert os.listdir(tmp_path) == ["checkpoint.pth"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # not the 0o600 of a tempfile


@pytest.mark.parametrize("value, where", [
    (np.float64(0.5), r"state\['best_acc'\] is a numpy\.float64"),  # a float subclass
    (OrderedDict(a=namedtuple("Pair", "x y")(1, 2)), r"state\['best_acc'\]\['a'\] is a .*Pair"),
    ({"dir": pathlib.Path("/x")}, r"state\['best_acc'\]\['dir'\] is a pathlib\..*Path"),
])
def test_save_rejects_what_weights_only_cannot_reload(tmp_path, value, where):
    path = tmp_path / "checkpoint.pth"
    with pytest.raises(TypeError, match=rf"checkpoint entry {where}"):
        save_checkpoint_atomic({"epoch": 1, "best_acc": value}, path)
    assert os.listdir(tmp_path) == []


def _previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pth"
    save_checkpoint_atomic({"epoch": 1, "w": torch.ones(4)}, path)
    return path, path.read_bytes()


def test_crash_inside_torch_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path, previous = _previous_checkpoint(tmp_path)
    real_save = torch.save

    def save_then_crash(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt("preempted mid-write")

    monkeypatch.setattr(torch, "save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint_atomic({"epoch": 2, "w": torch.zeros(4)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == previous
    assert os.listdir(tmp_path) == ["checkpoint.pth"]
    assert read_checkpoint(path)["epoch"] == 1


def test_failing_replace_keeps_the_previous_file(tmp_path, monkeypatch):
    path, previous = _previous_checkpoint(tmp_path)

    def failing_replace(source, target):
        raise OSError("disk quota exceeded")

    monkeypatch.setattr(checkpoint_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk quota exceeded"):
        save_checkpoint_atomic({"epoch": 2, "w": torch.zeros(4)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == previous
    assert os.listdir(tmp_path) == ["checkpoint.pth"]


def test_save_into_a_missing_directory_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"directory {tmp_path / 'missing'} does not exist"):
        save_checkpoint_atomic({"epoch": 1}, tmp_path / "missing" / "checkpoint.pth")


def test_copy_snapshot_is_an_exact_atomic_copy(tmp_path, monkeypatch):
    path, previous = _previous_checkpoint(tmp_path)
    snapshot = tmp_path / "ckp-0.pth"
    copy_snapshot(path, snapshot)
    assert snapshot.read_bytes() == previous
    # a later save replaces checkpoint.pth but never the snapshot
    save_checkpoint_atomic({"epoch": 2, "w": torch.zeros(4)}, path)
    assert snapshot.read_bytes() == previous
    # an interrupted copy over an existing snapshot leaves it as it was
    monkeypatch.setattr(checkpoint_module.shutil, "copyfileobj", lambda *a, **k: (_ for _ in ()).throw(OSError("io")))
    with pytest.raises(OSError, match="io"):
        copy_snapshot(path, snapshot)
    monkeypatch.undo()
    assert snapshot.read_bytes() == previous
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pth", "ckp-0.pth"]
    with pytest.raises(FileNotFoundError, match="nothing.pth does not exist"):
        copy_snapshot(tmp_path / "nothing.pth", snapshot)
