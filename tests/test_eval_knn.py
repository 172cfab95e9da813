"""eval_knn.py: DINO's weighted k-NN against a brute-force k-NN written here, end-to-end runs on a checkpoint of
this project and on a file in the public DINO layout (results against features computed here from the file's
tensors), the 2-process run against the 1-process one, the recipes and the refusals of bad flags."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import eval_knn
import job_launcher
import main_suave
from launch.script_file import flatten, group_flags, merge_flags, read_script_file
from src.checkpoint import read_checkpoint
from src.cli import run_main
from src.data import DINO_STD, IMAGENET_MEAN, Normalization, val_transform
from src.downstream.knn import knn_classify
from src.models import build_backbone
from tests.dist_helpers import run_in_processes
from tests.test_checkpoint import DINO_BACKBONE_FILE, LAYOUTS, _random_tensors
from tests.test_eval_scripts import SUAVE_CNN6

REPO = Path(__file__).resolve().parents[1]
CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, LABELLED_PER_CLASS = 3, 10, 5, 4


# ------------------------------------------------------------------------------------------------ reference
def brute_force_knn(train: torch.Tensor, train_labels: list[int], test: torch.Tensor, test_labels: list[int],
                    k: int, temperature: float, num_classes: int) -> tuple[float, float]:
    """Top-1/top-5 (%) of DINO's weighted k-NN, one test point at a time: sort the cosine similarities, let the k
    nearest vote exp(sim / T) for their class, rank the classes by votes (ties: lower class first)."""
    top1 = top5 = 0
    train = train.double() / train.double().norm(dim=1, keepdim=True)
    for x, label in zip(test.double(), test_labels):
        x = x / x.norm()
        sims = [float(train[j] @ x) for j in range(len(train))]
        nearest = sorted(range(len(sims)), key=lambda j: -sims[j])[:k]
        votes = [0.0] * num_classes
        for j in nearest:
            votes[train_labels[j]] += math.exp(sims[j] / temperature)
        ranking = sorted(range(num_classes), key=lambda c: (-votes[c], c))
        top1 += ranking[0] == label
        top5 += label in ranking[:min(5, k)]
    return 100.0 * top1 / len(test_labels), 100.0 * top5 / len(test_labels)


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_knn_classifier_equals_a_brute_force_knn(temperature):
    generator = torch.Generator().manual_seed(0)
    num_classes, ks = 12, [1, 3, 5, 20, 200]
    train, test = torch.randn(200, 16, generator=generator), torch.randn(300, 16, generator=generator)
    train_labels = torch.randint(0, num_classes, (200,), generator=generator)
    test_labels = torch.randint(0, num_classes, (300,), generator=generator)
    counts = knn_classify(F.normalize(train, dim=1), train_labels, F.normalize(test, dim=1), test_labels, ks,
                          temperature, num_classes)  # 300 test rows: two chunks
    assert [c.k for c in counts] == ks and all(c.total == 300 for c in counts)
    for count in counts:
        expected = brute_force_knn(train, train_labels.tolist(), test, test_labels.tolist(), count.k, temperature,
                                   num_classes)
        assert count.accuracies() == expected, count.k
    # not all the same: the numbers depend on k (a classifier that ignored k would pass the loop above only by luck)
    assert len({c.accuracies() for c in counts}) > 2


def test_knn_classifier_refuses_more_neighbours_than_training_images():
    with pytest.raises(ValueError, match="--nb_knn 5 exceeds the 4 training images"):
        knn_classify(torch.eye(4), torch.arange(4), torch.eye(4), torch.arange(4), [1, 5], 0.07, 4)


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def noise_data(tmp_path_factory) -> dict:
    """3 classes of random-noise 32-px images (train 10, val 5 per class; 4 labelled per class): the classes carry
    no signal, so the accuracies are far from 0 and 100 and a misplaced feature or label changes them."""
    root = tmp_path_factory.mktemp("knn_noise")
    rng = np.random.default_rng(0)
    lines = []
    for split, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for c in range(CLASSES):
            folder = root / "data" / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"c{c}_{i}.png")
                if split == "train" and i < LABELLED_PER_CLASS:
                    lines.append(f"c{c}_{i}.png")
    (root / "labelled.txt").write_text("\n".join(lines) + "\n")
    ckpt_dir = root / "suave"
    argv = ["--data_path", str(root / "data"), "--subset_file", str(root / "labelled.txt"), "--output_dir",
            str(ckpt_dir)] + SUAVE_CNN6
    assert run_main(main_suave.get_args_parser, main_suave.main, "Suave", argv) == 0
    return {"data": root / "data", "subset": root / "labelled.txt", "ckpt": ckpt_dir / "checkpoint.pth"}


def knn_argv(data: dict, out: Path, *extra: str) -> list[str]:
    return ["--data_path", str(data["data"]), "--subset_file", str(data["subset"]), "--val_resize", "0",
            "--val_crop", "0", "--num_workers", "0", "--batch_size_per_gpu", "7", "--device", "cpu",
            "--output_dir", str(out), *extra]


def reference_accuracies(backbone: torch.nn.Module, data: dict, labelled_only: bool, ks: list[int],
                         normalization: Normalization) -> dict[int, tuple[float, float]]:
    """Features of every image computed here, one at a time, then the brute-force k-NN."""
    transform = val_transform(None, None, normalization)
    backbone.eval()

    def features(split: str, keep) -> tuple[torch.Tensor, list[int]]:
        rows, labels = [], []
        for c in range(CLASSES):
            for path in sorted((data["data"] / split / f"c{c}").iterdir()):
                if keep(path.name):
                    with torch.no_grad():
                        rows.append(backbone(transform(Image.open(path).convert("RGB")).unsqueeze(0))[0])
                    labels.append(c)
        return torch.stack(rows), labels

    listed = set(data["subset"].read_text().split())
    train, train_labels = features("train", lambda name: name in listed or not labelled_only)
    test, test_labels = features("val", lambda name: True)
    return {k: brute_force_knn(train, train_labels, test, test_labels, k, 0.07, CLASSES) for k in ks}


def results_by_k(out: Path) -> dict[int, tuple[float, float]]:
    rows = json.loads((out / "results.json").read_text())["knn"]
    return {row["k"]: (row["top1"], row["top5"]) for row in rows}


def test_project_checkpoint_end_to_end(noise_data, tmp_path, capsys):
    out = tmp_path / "knn"
    argv = knn_argv(noise_data, out, "--pretrained", str(noise_data["ckpt"]), "--checkpoint_key", "student",
                    "--arch", "cnn6", "--nb_knn", "1", "3", "12")
    assert run_main(eval_knn.get_args_parser, eval_knn.main, eval_knn.NAME, argv) == 0
    student = read_checkpoint(str(noise_data["ckpt"]))["student"]
    backbone = build_backbone("cnn6")
    backbone.load_state_dict({k[len("backbone."):]: v for k, v in student.items() if k.startswith("backbone.")})
    expected = reference_accuracies(backbone, noise_data, True, [1, 3, 12], Normalization(IMAGENET_MEAN, DINO_STD))
    assert results_by_k(out) == expected
    results = json.loads((out / "results.json").read_text())
    assert results["train_images"] == CLASSES * LABELLED_PER_CLASS and results["val_images"] == CLASSES * VAL_PER_CLASS
    csv = (out / "results.csv").read_text().splitlines()
    assert csv[0] == "k,top1,top5,train_images,val_images" and len(csv) == 4
    printed = capsys.readouterr().out
    top1, top5 = expected[12]
    assert f"12-NN classifier result: Top1: {top1}, Top5: {top5}" in printed
    assert f"12-NN classifier result: Top1: {top1}" in (out / "knn.log").read_text()


def test_public_dino_layout_end_to_end(noise_data, tmp_path):
    """DINO's backbone-only ViT-S/16 file (names, shapes, dtypes of the release; random values), all of train/."""
    with open(LAYOUTS) as handle:
        layout = json.load(handle)[DINO_BACKBONE_FILE]["keys"]
    state = _random_tensors(layout, torch.Generator().manual_seed(3))
    path = tmp_path / DINO_BACKBONE_FILE
    torch.save(state, path)
    out = tmp_path / "knn"
    argv = knn_argv(noise_data, out, "--pretrained_weights", str(path), "--arch", "vit_small", "--patch_size", "16",
                    "--train_subset", "all", "--nb_knn", "5", "20")
    argv.remove("--subset_file"), argv.remove(str(noise_data["subset"]))
    assert run_main(eval_knn.get_args_parser, eval_knn.main, eval_knn.NAME, argv) == 0
    backbone = build_backbone("vit_small", patch_size=16)
    backbone.load_state_dict(state, strict=True)
    expected = reference_accuracies(backbone, noise_data, False, [5, 20], Normalization(IMAGENET_MEAN, DINO_STD))
    assert results_by_k(out) == expected
    assert json.loads((out / "results.json").read_text())["train_images"] == CLASSES * TRAIN_PER_CLASS


def _knn_in_process(rank: int, world: int, argv: list[str]) -> dict:
    args = argparse.ArgumentParser(parents=[eval_knn.get_args_parser()]).parse_args(argv)
    results = eval_knn.evaluate(args)  # not main(): the helper owns the process group
    return {"knn": results["knn"], "processes": results["processes"]}


@pytest.mark.slow
def test_two_processes_give_the_single_process_results(noise_data, tmp_path):
    """15 val and 30 train images over 2 gloo processes: shards of 8 and 7, gathered without duplicates."""
    argv = knn_argv(noise_data, tmp_path / "one", "--pretrained", str(noise_data["ckpt"]), "--checkpoint_key",
                    "student", "--arch", "cnn6", "--train_subset", "all", "--nb_knn", "1", "5", "30")
    argv.remove("--subset_file"), argv.remove(str(noise_data["subset"]))
    single = _knn_in_process(0, 1, argv)
    two = run_in_processes(_knn_in_process, 2, [a if a != str(tmp_path / "one") else str(tmp_path / "two")
                                                for a in argv])
    assert single["processes"] == 1 and [r["processes"] for r in two] == [2, 2]
    assert two[0]["knn"] == single["knn"] and two[1]["knn"] == single["knn"]
    assert json.loads((tmp_path / "two" / "results.json").read_text())["knn"] == single["knn"]


# ------------------------------------------------------------------------------------------------ flags, recipes
@pytest.mark.parametrize("flags,message", [
    (["--temperature", "0"], "--temperature 0: use a value > 0 (the votes are exp(similarity / T); DINO's 0.07)"),
    (["--nb_knn", "20", "0"], "--nb_knn 20 0: use a value >= 1"),
    (["--nb_knn", "100"], "--nb_knn 100 exceeds the 12 training images"),
    (["--train_subset", "all", "--nb_knn", "31"], "--nb_knn 31 exceeds the 30 training images"),
])
def test_bad_flags_are_refused_in_one_line(flags, message, noise_data, tmp_path, capsys):
    argv = knn_argv(noise_data, tmp_path / "bad", "--arch", "cnn6", *flags)
    if "all" in flags:
        argv.remove("--subset_file"), argv.remove(str(noise_data["subset"]))
    assert run_main(eval_knn.get_args_parser, eval_knn.main, eval_knn.NAME, argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bad" / "results.json").exists()


@pytest.mark.parametrize("recipe", ["eval_knn.sh", "eval_knn_fmnist.sh"])
def test_job_launcher_starts_the_knn_recipes(recipe, noise_data, tmp_path):
    base = tmp_path / "exps"
    argv = ["--method", "eval_knn", "--script_file", str(REPO / "scripts" / recipe), "--data_dir",
            str(noise_data["data"]), "--num_gpus", "0", "--base_experiment_dir", str(base), "--name", "x",
            "--dry_run", "--", "--pretrained", str(noise_data["ckpt"])]
    assert job_launcher.main(argv) == 0
    (exp,) = list(base.iterdir())
    record = json.loads((exp / "args.json").read_text())
    assert record["method"] == "eval_knn" and record["entry_script"].endswith("eval_knn.py")
    args = record["train_args"]
    assert args["output_dir"] == str(exp) and args["pretrained"] == str(noise_data["ckpt"])
    assert args["temperature"] == 0.07 and 20 in args["nb_knn"]
    if recipe == "eval_knn.sh":  # DINO's ViT-S/16 evaluation
        assert (args["arch"], args["train_subset"], args["val_resize"], args["val_crop"], args["nb_knn"],
                args["checkpoint_key"], args["batch_size"]) == ("vit_small", "all", 256, 224, [10, 20, 100, 200],
                                                                "teacher", 128)


def test_fmnist_recipe_preprocesses_as_the_other_fmnist_recipes(tmp_path):
    """The CPU recipe reads the images as eval_linear_fmnist.sh validates them (28 px as they are, same mean/std)."""
    script = read_script_file(str(REPO / "scripts" / "eval_knn_fmnist.sh"))
    argv = flatten(merge_flags(list(script.flags), group_flags(["--output_dir", str(tmp_path)], "test")))
    args = argparse.ArgumentParser(parents=[eval_knn.get_args_parser()]).parse_args(argv)
    lin = read_script_file(str(REPO / "scripts" / "eval_linear_fmnist.sh"))
    lin_flags = {f.name: f.values for f in lin.flags}
    assert (str(args.val_resize), str(args.val_crop)) == (lin_flags["--val_resize"][0], lin_flags["--val_crop"][0])
    assert [str(v) for v in args.mean] == list(lin_flags["--mean"]) and args.arch == lin_flags["--arch"][0]
    assert [str(v) for v in args.std] == list(lin_flags["--std"])
