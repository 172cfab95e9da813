"""src/registry.py, the one table of methods and evaluations: every entry resolves, no other product module spells
a registered name, and a fourth method needs only its own package, its entry script and one registry line."""
from __future__ import annotations

import ast
import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import job_launcher
from launch.script_file import read_script_file
from src import registry
from src.checkpoint import read_checkpoint
from src.cli import run_main
from src.data.synthetic import make_synthetic_imagefolder
from src.errors import UserError
from src.trained import load_trained

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", registry.names())
def test_every_entry_resolves_to_its_script_parser_and_method(name):
    entry = registry.entry(name)
    assert (REPO / entry.script).is_file() and registry.by_script(entry.script) is entry
    args = entry.get_parser().parse_args([])  # every flag has a default (src.trained rebuilds runs from them)
    if entry.method:  # the class names itself (the checkpoint's method_name), its module has data_config, and
        assert entry.method_class().name == name and callable(entry.data_config())  # backbone_from_flags reads:
        assert {"arch", "patch_size", "small_stem"} <= set(vars(args))


# the registry, and the reader of the release's two file layouts, which are named by the release that wrote them
NAMING_MODULES = {("src", "registry.py"), ("src", "checkpoint", "release_files.py")}


def test_no_product_module_spells_a_registered_name_but_its_own():
    """A name is a literal only in src/registry.py, its own package and its entry script (docs, recipes, tests
    and benchmarks/ aside)."""
    names = set(registry.names())
    allowed = {name: {registry.entry(name).script, name} for name in names}
    found = []
    for path in REPO.rglob("*.py"):
        parts = path.relative_to(REPO).parts
        if parts[0] in {".venv", "tests", "benchmarks", "experiments", "data"} or parts in NAMING_MODULES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names and parts[0] not in allowed[node.value]:
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.value!r}")
    assert found == []


TOY_ARGS = '''
import argparse

from src.args import FlagParser, add_backbone_args, add_data_args, add_run_args, check_shared_args
from src.flag_checks import POSITIVE, require


def check_args(args):
    check_shared_args(args)
    require(args, POSITIVE, "lr")


def get_args_parser():
    parser = FlagParser("Toy", add_help=False, check=check_args)
    add_data_args(parser)
    add_run_args(parser)
    parser.set_defaults(train_mode="supervised", temperature=1.0)
    g = parser.add_argument_group("toy")
    add_backbone_args(g, "cnn6")
    g.add_argument("--epochs", type=int, default=1)
    g.add_argument("--batch_size", type=int, default=4)
    g.add_argument("--lr", type=float, default=0.1)
    return parser
'''
TOY_METHOD = '''
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from src.data import SWAV_STD
from src.data_setup import DataConfig
from src.method import Method, Schedules, StepOutput
from src.models import NetworkOutput, backbone_from_flags, forward_by_resolution


def data_config(args):
    return DataConfig.from_args(args, unlab_batch_size=args.batch_size, lab_batch_size=args.batch_size, workers=0,
                                multicrop=None, default_std=SWAV_STD)


class Linear(nn.Module):
    def __init__(self, backbone, num_classes):
        super().__init__()
        self.backbone, self.fc = backbone, nn.Linear(backbone.num_features, num_classes)

    def forward(self, crops):
        return NetworkOutput(embedding=None, scores=self.fc(forward_by_resolution(self.backbone, crops)),
                             probe_logits=[])


class ToyMethod(Method):
    name = "toy"

    def __init__(self, args, num_classes, device):
        super().__init__(args, num_classes, device)
        self.student = Linear(backbone_from_flags(args), num_classes).to(device)

    def build_optimizer(self):
        return torch.optim.SGD(self.student.parameters(), lr=self.args.lr)

    def build_schedules(self, iters_per_epoch):
        return Schedules(lr=np.full(self.args.epochs * iters_per_epoch, self.args.lr))

    def training_step(self, lab, unlab, epoch, iteration):
        loss = F.cross_entropy(self.forward_student([lab.images]).scores, lab.labels)
        return StepOutput(loss=loss, logs={"loss": loss.detach()})
'''
TOY_MAIN = '''
import sys

from src.cli import run_main, train_or_evaluate
from toy.args import get_args_parser


def main(args):
    return train_or_evaluate(args, "toy")


if __name__ == "__main__":
    sys.exit(run_main(get_args_parser, main, "Toy"))
'''
TOY_ENTRY = registry.Entry("toy", "main_toy.py", "toy.args:get_args_parser", "toy.method:ToyMethod",
                           main_head="linear")


@pytest.fixture
def toy_checkout(tmp_path, monkeypatch):
    """A folder holding the toy method's package, its entry script and a recipe; importable (sys.path)."""
    root = tmp_path / "checkout"
    (root / "toy" / "scripts").mkdir(parents=True)
    (root / "toy" / "__init__.py").write_text("")
    (root / "toy" / "args.py").write_text(TOY_ARGS)
    (root / "toy" / "method.py").write_text(TOY_METHOD)
    (root / "main_toy.py").write_text(TOY_MAIN)
    (root / "toy" / "scripts" / "train_10perc.sh").write_text(textwrap.dedent("""\
        python main_toy.py \\
        --arch cnn6 \\
        --lr 0.05 \\
        --epochs 1
        """))
    monkeypatch.syspath_prepend(str(root))
    yield root
    for module in [m for m in sys.modules if m == "main_toy" or m.split(".")[0] == "toy"]:
        del sys.modules[module]


def test_a_fourth_method_needs_its_package_and_one_registry_line(toy_checkout, tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    info = make_synthetic_imagefolder(str(data), num_classes=3, train_per_class=8, val_per_class=4, size=32, seed=0,
                                      subset_per_class=4)
    recipe = toy_checkout / "toy" / "scripts" / "train_10perc.sh"
    launch = ["--method", "toy", "--data_dir", str(data), "--base_experiment_dir", str(tmp_path / "exp"),
              "--experiment_dir", "toy_run", "--num_gpus", "0", "--dry_run", "--", "--subset_file",
              str(info.subset_file)]

    # without its registry line nothing knows the toy
    with pytest.raises(UserError, match="unknown method 'toy'"):
        registry.entry("toy")
    with pytest.raises(UserError, match="the first word of .* must be one of"):
        read_script_file(str(recipe))
    assert job_launcher.main(launch, entry_root=str(toy_checkout)) == 2
    assert "invalid choice: 'toy'" in capsys.readouterr().err

    monkeypatch.setitem(registry.ENTRIES, "toy", TOY_ENTRY)  # the one line

    # the recipe reader and the launcher's plan
    script = read_script_file(str(recipe))
    assert script.entry == "main_toy.py" and [f.tokens for f in script.flags][:2] == [("--arch", "cnn6"),
                                                                                      ("--lr", "0.05")]
    assert job_launcher.main(launch, entry_root=str(toy_checkout)) == 0
    record = json.load(open(tmp_path / "exp" / "toy_run" / "args.json"))
    assert record["method"] == "toy" and record["entry_script"] == str(toy_checkout / "main_toy.py")
    assert record["train_args"]["lr"] == 0.05 and record["train_args"]["device"] == "cpu"
    assert record["train_args"]["subset_file"] == str(info.subset_file)

    # training through the entry script, then load_trained and --evaluate read the checkpoint it wrote
    import main_toy

    run_dir = tmp_path / "run"
    train = ["--data_path", str(data), "--subset_file", str(info.subset_file), "--output_dir", str(run_dir),
             "--device", "cpu", "--max_iters_per_epoch", "2", "--val_resize", "32", "--val_crop", "32",
             "--lab_crop_size", "32", "--use_fp16", "false"]
    assert run_main(main_toy.get_args_parser, main_toy.main, "Toy", train) == 0
    checkpoint = read_checkpoint(str(run_dir / "checkpoint.pth"))
    assert checkpoint["method_name"] == "toy"
    trained = load_trained(str(run_dir / "checkpoint.pth"))
    assert type(trained.method).__name__ == "ToyMethod" and trained.main_network == "student"
    assert trained.classes == sorted(os.listdir(data / "train"))
    weights = trained.networks["student"].state_dict()
    stored = read_checkpoint(str(run_dir / "checkpoint.pth"))
    assert any(torch.equal(weights["fc.weight"], tensor) for tensor in _tensors(stored))
    assert run_main(main_toy.get_args_parser, main_toy.main, "Toy", ["--evaluate", str(run_dir / "checkpoint.pth")]) == 0
    report = json.load(open(run_dir / "eval.json"))
    results = json.load(open(run_dir / "results.json"))
    assert report["method"] == "toy" and report["val_acc1"] == results["val_acc1"]
    assert f"{'linear':<16}{results['val_acc1']:>8.2f}" in capsys.readouterr().out


def _tensors(tree) -> list[torch.Tensor]:
    """Every tensor in a checkpoint's nested dicts."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for value in tree.values() for t in _tensors(value)]
    return []
