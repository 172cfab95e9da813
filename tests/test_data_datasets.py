"""Datasets: one class map for the three sets, RGB conversion, and the error of each bad input."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from src.data import DataError, ImageLoadError, build_datasets, make_synthetic_imagefolder
from src.data.datasets import ImageDataset
from src.data.folders import check_same_classes, class_index, scan_image_folder
from src.data.transforms import Normalization, val_transform

IDENTITY = Normalization((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


@pytest.fixture
def synthetic(tmp_path):
    return make_synthetic_imagefolder(tmp_path / "data", num_classes=3, train_per_class=6, val_per_class=2,
                                      size=16, subset_per_class=2)


def _build(paths, subset_file=None):
    t = val_transform(None, None, IDENTITY)
    return build_datasets(str(paths.root), t, t, t, subset_file=subset_file or paths.subset_file)


def test_class_maps_agree_across_the_three_sets(synthetic):
    data = _build(synthetic)
    assert data.class_to_idx == {"c0": 0, "c1": 1, "c2": 2}
    for ds in (data.unlabelled, data.labelled, data.val):
        assert ds.class_to_idx == data.class_to_idx and ds.classes == ["c0", "c1", "c2"]
        for path, label in ds.samples:
            assert os.path.basename(os.path.dirname(path)) == ds.classes[label]
    assert (len(data.unlabelled), len(data.labelled), len(data.val)) == (18, 6, 6)
    unlabelled_label = dict(data.unlabelled.samples)
    assert all(unlabelled_label[path] == label for path, label in data.labelled.samples)
    image, label = data.val[0]
    assert image.shape == (3, 16, 16) and label == 0


def test_class_index_is_sorted_folder_order_and_skips_hidden(tmp_path):
    for name in ["zebra", "Ant", "bee", ".ipynb_checkpoints"]:
        (tmp_path / name).mkdir()
    (tmp_path / "file.txt").touch()
    assert class_index(str(tmp_path)) == {"Ant": 0, "bee": 1, "zebra": 2}


def test_grey_image_becomes_three_equal_channels(tmp_path):
    pixels = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    Image.fromarray(pixels).save(tmp_path / "g.png")
    image, _ = ImageDataset([(str(tmp_path / "g.png"), 0)], {"a": 0}, val_transform(None, None, IDENTITY))[0]
    assert image.shape == (3, 28, 28)
    expected = torch.from_numpy(pixels).float() / 255
    for channel in image:
        torch.testing.assert_close(channel, expected)


def test_class_missing_from_val_names_class_and_both_folders(synthetic):
    shutil.rmtree(synthetic.val / "c2")
    with pytest.raises(DataError) as err:
        _build(synthetic)
    message = str(err.value)
    assert "'c2'" in message and str(synthetic.train) in message and str(synthetic.val) in message


def test_class_missing_from_train_is_reported_too(synthetic):
    (synthetic.val / "c9").mkdir()
    with pytest.raises(DataError, match=r"'c9' exist in .*val but not in .*train"):
        check_same_classes(str(synthetic.train), str(synthetic.val))


def test_empty_class_folder_is_named(synthetic):
    (synthetic.train / "c3").mkdir()
    (synthetic.val / "c3").mkdir()
    shutil.copy(synthetic.val / "c0" / "c0_0.png", synthetic.val / "c3" / "c3_0.png")
    with pytest.raises(DataError, match=r"class folder .*train/c3 holds no image"):
        _build(synthetic)


def test_missing_data_path_mentions_the_flag(tmp_path):
    t = val_transform(None, None)
    with pytest.raises(DataError, match=r"nowhere/train is not a directory.*--data_path"):
        build_datasets(str(tmp_path / "nowhere"), t, t, t, subset_file=tmp_path / "x.txt")


def test_listed_file_missing_from_train(synthetic, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("c0_0.png\nc1_99.png\n")
    with pytest.raises(DataError) as err:
        _build(synthetic, listing)
    assert str(synthetic.train / "c1" / "c1_99.png") in str(err.value) and str(listing) in str(err.value)


def _corrupt(path):
    path.write_bytes(b"this is not an image")


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", [_corrupt, _truncate])
def test_unreadable_image_names_the_file(synthetic, damage):
    bad = synthetic.train / "c1" / "c1_3.png"
    damage(bad)
    data = _build(synthetic)
    index = [p for p, _ in data.unlabelled.samples].index(str(bad))
    with pytest.raises(ImageLoadError, match=rf"{bad}.*corrupt or truncated"):
        data.unlabelled[index]


def test_unreadable_image_in_a_worker_still_names_the_file(synthetic):
    bad = synthetic.train / "c0" / "c0_2.png"
    _corrupt(bad)
    data = _build(synthetic)
    loader = DataLoader(data.unlabelled, batch_size=4, num_workers=1)
    with pytest.raises(ImageLoadError, match=rf"cannot decode image {bad}"):
        for _ in loader:
            pass


def test_scan_finds_nested_images_and_ignores_other_files(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ["a/x.JPEG", "a/deep/y.png", "a/notes.txt"]:
        (tmp_path / name).touch()
    samples = scan_image_folder(str(tmp_path), {"a": 0})
    assert samples == [(str(tmp_path / "a" / "x.JPEG"), 0), (str(tmp_path / "a" / "deep" / "y.png"), 0)]
