"""The synthetic ImageFolder used by the engine's tests: layout, list, determinism, learnable classes."""
from __future__ import annotations

import numpy as np
from PIL import Image

from src.data import make_synthetic_imagefolder
from src.data.folders import class_index, scan_image_folder
from src.data.subsets import labelled_samples


def _mean_rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0)


def test_layout_and_labelled_list(tmp_path):
    paths = make_synthetic_imagefolder(tmp_path, num_classes=5, train_per_class=6, val_per_class=2, size=12,
                                       subset_per_class=3)
    classes = class_index(str(paths.train))
    assert list(classes) == list(paths.classes) == ["c0", "c1", "c2", "c3", "c4"]
    assert len(scan_image_folder(str(paths.train), classes)) == 30
    assert len(scan_image_folder(str(paths.val), classes)) == 10
    assert (paths.train / "c3" / "c3_5.png").is_file()
    assert Image.open(paths.val / "c1" / "c1_0.png").size == (12, 12)
    lines = paths.subset_file.read_text().split()
    assert lines[:3] == ["c0_0.png", "c0_1.png", "c0_2.png"] and len(lines) == 15
    assert len(labelled_samples(paths.subset_file, str(paths.train), classes)) == 15


def test_deterministic_for_a_seed(tmp_path):
    small = dict(num_classes=2, train_per_class=3, val_per_class=1, size=8, subset_per_class=1)
    a = make_synthetic_imagefolder(tmp_path / "a", **small)
    b = make_synthetic_imagefolder(tmp_path / "b", **small)
    c = make_synthetic_imagefolder(tmp_path / "c", seed=1, **small)
    name = "train/c1/c1_2.png"
    assert (a.root / name).read_bytes() == (b.root / name).read_bytes() != (c.root / name).read_bytes()


def test_classes_are_learnable_by_a_nearest_centroid_on_mean_colour(tmp_path):
    paths = make_synthetic_imagefolder(tmp_path, num_classes=4, train_per_class=16, val_per_class=8, size=32)
    classes = class_index(str(paths.train))
    train = scan_image_folder(str(paths.train), classes)
    centroids = np.stack([np.mean([_mean_rgb(p) for p, y in train if y == c], axis=0) for c in range(4)])
    val = scan_image_folder(str(paths.val), classes)
    predictions = [int(np.argmin(((centroids - _mean_rgb(p)) ** 2).sum(1))) for p, _ in val]
    accuracy = np.mean([pred == y for pred, (_, y) in zip(predictions, val)])
    assert accuracy >= 0.9
