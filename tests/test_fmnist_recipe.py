"""The CPU Fashion-MNIST recipe learns on real images: a few hundred of them, 32 iterations."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import main_suave
from src.cli import run_main
from src.data.fashion_mnist import CLASS_NAMES, DEFAULT_SOURCE, load_split
from launch.script_file import flatten, group_flags, merge_flags, read_script_file

pytestmark = pytest.mark.slow  # an end-to-end training run on real images

REPO = Path(__file__).resolve().parents[1]
TRAIN_PER_CLASS, VAL_PER_CLASS, LABELLED_PER_CLASS = 48, 20, 16  # 160 labelled: one batch of 128


@pytest.fixture(scope="module")
def small_fmnist(tmp_path_factory) -> Path:
    if not os.path.isdir(DEFAULT_SOURCE):
        pytest.skip(f"{DEFAULT_SOURCE} absent: install Debian's dataset-fashion-mnist (.ci/run does)")
    root = tmp_path_factory.mktemp("fmnist_small")
    lines = []
    for split, per_class in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        images, labels = load_split(Path(DEFAULT_SOURCE), split)
        for k, name in enumerate(CLASS_NAMES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for n, index in enumerate(np.flatnonzero(labels == k)[:per_class]):
                file = f"{name}_{index}.png"
                Image.fromarray(images[index]).save(folder / file)
                if split == "train" and n < LABELLED_PER_CLASS:
                    lines.append(file)
    (root / "labelled.txt").write_text("\n".join(lines) + "\n")
    return root


def test_fmnist_recipe_loss_decreases_and_accuracy_beats_chance(small_fmnist, tmp_path):
    recipe = read_script_file(str(REPO / "suave" / "scripts" / "fmnist_1perc.sh"))
    assert recipe.entry == "main_suave.py"
    overrides = ["--data_path", str(small_fmnist), "--subset_file", str(small_fmnist / "labelled.txt"),
                 "--output_dir", str(tmp_path / "exp"), "--epochs", "4", "--max_iters_per_epoch", "8",
                 "--time_budget_min", "0", "--eval_every_min", "0", "--workers", "0", "--val_batch_size", "200"]
    argv = flatten(merge_flags(list(recipe.flags), group_flags(overrides, "test")))
    assert run_main(main_suave.get_args_parser, main_suave.main, "Suave", argv) == 0
    stats = pd.read_csv(tmp_path / "exp" / "stats.csv")
    assert len(stats) == 4
    assert stats["train_loss"].iloc[-1] < stats["train_loss"].iloc[0]
    assert stats["train_lab_loss"].iloc[-1] < stats["train_lab_loss"].iloc[0]
    assert stats["val_acc1"].iloc[-1] > 30.0  # 10 classes: chance is 10%
