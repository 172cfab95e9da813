"""`python -m src.data.make_subset`: class-balanced, reproducible labelled lists for any ImageFolder."""
from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src.data import make_synthetic_imagefolder
from src.data.errors import DataError
from src.data.folders import class_index
from src.data.make_subset import main, make_subset, select_balanced
from src.data.subsets import labelled_samples

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_synthetic_imagefolder(tmp_path_factory.mktemp("data"), num_classes=3, train_per_class=20,
                                      val_per_class=1, size=8)


def test_per_class_lists_are_balanced_and_reproducible(synthetic):
    lines = make_subset(str(synthetic.root), per_class=3, seed=0)
    assert Counter(line.split("_")[0] for line in lines) == {"c0": 3, "c1": 3, "c2": 3}
    assert all("/" not in line for line in lines)  # ImageNet name format
    assert make_subset(str(synthetic.root), per_class=3, seed=0) == lines
    assert make_subset(str(synthetic.root), per_class=3, seed=1) != lines
    train = str(synthetic.train)
    samples = labelled_samples(_write(synthetic.root / "l.txt", lines), train, class_index(train))
    assert len(samples) == 9


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_percent_is_stratified_and_smaller_lists_nest():
    files = {"big": [f"big_{i}.png" for i in range(300)], "small": [f"small_{i}.png" for i in range(40)],
             "tiny": [f"tiny_{i}.png" for i in range(3)]}
    one = select_balanced(files, percent=1, seed=4)
    ten = select_balanced(files, percent=10, seed=4)
    assert {k: len(v) for k, v in one.items()} == {"big": 3, "small": 1, "tiny": 1}  # at least one per class
    assert {k: len(v) for k, v in ten.items()} == {"big": 30, "small": 4, "tiny": 1}
    assert all(set(one[k]) <= set(ten[k]) for k in files)
    # a reference draw: one generator, classes in sorted order, first k of a permutation
    rng = np.random.default_rng(4)
    for name in sorted(files):
        order = rng.permutation(len(files[name]))
        k = len(ten[name])
        assert ten[name] == sorted(sorted(files[name])[i] for i in order[:k])


def test_path_format_when_names_do_not_carry_the_class(tmp_path):
    for cls in ("a_b", "c"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (4, 4)).save(tmp_path / "train" / cls / f"img{i}.png")
    lines = make_subset(str(tmp_path), per_class=2, seed=0)
    assert all(line.startswith(("a_b/img", "c/img")) for line in lines) and len(lines) == 4
    train = str(tmp_path / "train")
    samples = labelled_samples(_write(tmp_path / "l.txt", lines), train, class_index(train))
    assert Counter(label for _, label in samples) == {0: 2, 1: 2}
    with pytest.raises(DataError, match="--format imagenet needs"):
        make_subset(str(tmp_path), per_class=2, fmt="imagenet")


def test_bad_requests(synthetic):
    with pytest.raises(DataError, match="class 'c0' has only 20 images"):
        make_subset(str(synthetic.root), per_class=21)
    with pytest.raises(DataError, match=r"--percent 0.0: must be in \(0, 100\]"):
        make_subset(str(synthetic.root), percent=0.0)


def test_command_writes_the_list(synthetic, tmp_path, capsys):
    out = tmp_path / "sub" / "10percent.txt"
    assert main(["--data_path", str(synthetic.root), "--percent", "10", "--seed", "3", "--out", str(out)]) == 0
    assert out.read_text().split() == make_subset(str(synthetic.root), percent=10, seed=3)
    assert "wrote 6 labelled images" in capsys.readouterr().out
    assert main(["--data_path", str(tmp_path / "missing"), "--per_class", "1", "--out", str(out)]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_module_command_runs(synthetic, tmp_path):
    out = tmp_path / "list.txt"
    result = subprocess.run([sys.executable, "-m", "src.data.make_subset", "--data_path", str(synthetic.root),
                             "--per_class", "2", "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert len(out.read_text().split()) == 6


def test_draw_from_an_own_labelled_source_only(tmp_path):
    from src.data import make_synthetic_own_layout
    from src.data.make_subset import main as make_subset_main
    from src.data.sources import build_file_lists, OwnDataSpec
    own = make_synthetic_own_layout(tmp_path / "own", num_classes=3, lab_per_class=4, unlab_per_class=6,
                                    val_per_class=1, size=8)
    out = tmp_path / "splits" / "half.csv"
    assert make_subset_main(["--lab_dir", str(own.lab_dir), "--per_class", "2", "--seed", "0", "--out", str(out)]) == 0
    lines = out.read_text().split()
    assert lines[0] == "path,class" and len(lines) == 7
    assert all(line.startswith("../own/lab/") for line in lines[1:])  # labelled images only, relative to the CSV
    lists = build_file_lists(OwnDataSpec(lab_csv=str(out), unlab_dirs=(str(own.unlab_dir),)))
    assert lists.classes == ["c0", "c1", "c2"] and len(lists.labelled) == 6
    again = tmp_path / "again.csv"
    assert make_subset_main(["--lab_csv", str(own.lab_csv), "--per_class", "2", "--seed", "0", "--out", str(again)]) == 0
    assert sorted(build_file_lists(OwnDataSpec(lab_csv=str(again), unlab_dirs=(str(own.unlab_dir),))).labelled) == \
        sorted(lists.labelled)
