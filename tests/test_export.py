"""``python -m src.export``: the backbone of an engine-written checkpoint loads strict=True into the real
torchvision resnet50 / timm vit_small_patch16_224 and gives our outputs (1e-5, fp32); the classifier program
runs with torch alone and gives our class scores. timm and safetensors are test-only (requirements-test.txt)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import main_daino
import main_suave
from src.checkpoint import load_pretrained_backbone, read_checkpoint
from src.cli import run_main
from src.export import main as export_main
from src.models import build_backbone
from src.trained import classifier, load_trained
from tests.test_training import DAINO_TINY, SUAVE_TINY

pytestmark = pytest.mark.slow  # every test exports checkpoints of real training runs

timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")
torchvision = pytest.importorskip("torchvision")


def _replace(flags: list[str], changes: dict[str, str | None]) -> list[str]:
    flags = list(flags)
    for flag, value in changes.items():
        i = flags.index(flag)
        if value is None:
            del flags[i:i + 2]
        else:
            flags[i + 1] = value
    return flags


@pytest.fixture(scope="module")
def full_size_runs(tiny_runs, tmp_path_factory) -> dict:
    """One iteration of Suave with the real ResNet-50 and of Daino with the real ViT-S/16, on 32-px images."""
    root = tmp_path_factory.mktemp("full_size")
    data = tiny_runs["suave"]["data"]
    runs = {"suave": (main_suave, _replace(SUAVE_TINY, {"--arch": "resnet50", "--small_stem": None})),
            "daino": (main_daino, _replace(DAINO_TINY, {"--arch": "vit_small", "--patch_size": "16"})
                      + ["--optimizer", "sgd"])}  # smaller file than AdamW's two moments
    out = {}
    for name, (module, flags) in runs.items():
        argv = ["--data_path", data, "--subset_file", os.path.join(data, "subsets", "labelled.txt"), "--output_dir",
                str(root / name), "--epochs", "1", "--max_iters_per_epoch", "1", *flags]
        assert run_main(module.get_args_parser, module.main, name, argv) == 0
        out[name] = str(root / name / "checkpoint.pth")
    return out


def real_model(name: str) -> nn.Module:
    """The public models, built here independently of src.export."""
    if name == "suave":
        model = torchvision.models.resnet50(weights=None)
        model.fc = nn.Identity()
        return model.eval()
    return timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0).eval()


@pytest.mark.parametrize("method, network, size", [("suave", "student", 64), ("daino", "teacher", 224)])
def test_backbone_export_loads_strict_into_the_real_model_with_our_outputs(full_size_runs, method, network, size,
                                                                           tmp_path, capsys):
    path = full_size_runs[method]
    assert export_main(["--checkpoint", path, "--out", str(tmp_path), "--no_program"]) == 0
    printed = capsys.readouterr().out
    assert f"exported the {network} of {path}" in printed and "strict load, max |output diff|" in printed
    state = torch.load(tmp_path / "backbone.pth", weights_only=True)
    from_safetensors = safetensors_torch.load_file(str(tmp_path / "backbone.safetensors"))
    assert sorted(state) == sorted(from_safetensors)  # safetensors stores keys sorted
    stored = read_checkpoint(path)[network]  # Daino exports the teacher: the network validation reports
    for key, value in state.items():
        assert torch.equal(value, from_safetensors[key]) and torch.equal(value, stored["backbone." + key]), key

    model = real_model(method)
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        untrained = model(images)
        model.load_state_dict(state, strict=True)
        theirs = model(images)
        ours = build_backbone("resnet50") if method == "suave" else build_backbone("vit_small", patch_size=16)
        load_pretrained_backbone(ours, path, checkpoint_key=network)
        ours = ours.eval()(images)
    assert theirs.shape == ours.shape == (2, 2048 if method == "suave" else 384)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)
    assert (untrained - ours).abs().max() > 1e-2  # the comparison can fail: loading changed the outputs
    record = json.load(open(tmp_path / "export.json"))
    assert record["verification"]["verified"] and record["verification"]["max_abs_diff"] <= 1e-5
    assert record["classes"] == read_checkpoint(path)["classes"]


PROGRAM_CHECK = """
import json, sys, torch
images = torch.load(sys.argv[1], weights_only=True)
for folder in sys.argv[2:]:
    extra = {"export.json": ""}
    program = torch.export.load(folder + "/classifier.pt2", extra_files=extra).module()
    torch.save(program(images), folder + "/scores.pt")
    print(json.loads(extra["export.json"])["classes"])
assert not any(name == "src" or name.startswith(("src.", "suave", "daino")) for name in sys.modules)
"""


def test_classifier_programs_run_with_torch_alone_and_give_our_scores(tiny_runs, tmp_path):
    """Suave (student: prototypes of a run with probes and a momentum encoder) and Daino (teacher, the default;
    the student through --checkpoint_key is the same code path), in one torch-only process."""
    runs = {"suave_momentum": "student", "daino": "teacher"}
    for run in runs:
        assert export_main(["--checkpoint", tiny_runs[run]["checkpoint"], "--out", str(tmp_path / run)]) == 0
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))  # 3: not the traced batch of 2
    torch.save(images, tmp_path / "images.pt")
    done = subprocess.run([sys.executable, "-c", PROGRAM_CHECK, str(tmp_path / "images.pt"),
                           *(str(tmp_path / run) for run in runs)],
                          capture_output=True, text=True, cwd=str(tmp_path), timeout=300)
    assert done.returncode == 0, done.stderr
    for line, (run, network) in zip(done.stdout.strip().splitlines(), runs.items()):
        trained = load_trained(tiny_runs[run]["checkpoint"])
        assert line == str(trained.classes)
        pre = trained.preprocessing
        mean, std = torch.tensor(pre["mean"]).view(1, 3, 1, 1), torch.tensor(pre["std"]).view(1, 3, 1, 1)
        with torch.no_grad():
            ours = classifier(trained, network)((images - mean) / std)
        assert ours.shape == (3, 4)
        theirs = torch.load(tmp_path / run / "scores.pt", weights_only=True)
        torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)


def test_export_refuses_a_network_the_checkpoint_lacks(tiny_runs, tmp_path, capsys):
    path = tiny_runs["suave"]["checkpoint"]
    assert export_main(["--checkpoint", path, "--out", str(tmp_path), "--checkpoint_key", "teacher"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {path} has no 'teacher' network; it holds: student. Pass --checkpoint_key student"
    assert not os.path.exists(tmp_path / "backbone.pth")
