"""Fashion-MNIST conversion: logic on small fake IDX files (fast), then the real Debian package
(converted once per session; skipped when /usr/share/datasets/fashion-mnist is not installed)."""
from __future__ import annotations

import gzip
import os
import struct
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from src.data import fashion_mnist as FM
from src.data import build_datasets
from src.data.errors import DataError
from src.data.folders import class_index, scan_image_folder
from src.data.transforms import Normalization, val_transform

REAL_SOURCE = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, array: np.ndarray) -> None:
    """Reference IDX writer: magic 0x00000800 | ndim, big-endian dims, unsigned bytes."""
    header = struct.pack(">I", 0x0800 | array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def read_idx_reference(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data[4 + 4 * ndim:], dtype=np.uint8).reshape(shape)


@pytest.fixture
def fake_source(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    source = tmp_path / "source"
    source.mkdir()
    for stem, n in (("train", 200), ("t10k", 30)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        write_idx(source / f"{stem}-images-idx3-ubyte.gz", rng.integers(0, 256, size=(n, 28, 28)))
        write_idx(source / f"{stem}-labels-idx1-ubyte.gz", labels)
    return source


def test_conversion_layout_pixels_and_lists(fake_source, tmp_path):
    out = FM.convert_fashion_mnist(tmp_path / "fm", fake_source, processes=1, log=lambda *_: None)
    images = read_idx_reference(fake_source / "train-images-idx3-ubyte.gz")
    labels = read_idx_reference(fake_source / "train-labels-idx1-ubyte.gz")
    classes = class_index(str(out / "train"))
    assert sorted(classes) == sorted(FM.CLASS_NAMES) and len(classes) == 10
    assert len(scan_image_folder(str(out / "train"), classes)) == 200
    assert len(scan_image_folder(str(out / "val"), classes)) == 30
    for i in (0, 17, 199):
        png = out / "train" / FM.CLASS_NAMES[labels[i]] / f"{FM.CLASS_NAMES[labels[i]]}_{i}.png"
        assert np.array_equal(np.asarray(Image.open(png)), images[i])
    one, ten = ((out / "subsets" / f"{p}percent.txt").read_text().split() for p in (1, 10))
    assert Counter(n.split("_")[0] for n in ten) == {name: 2 for name in FM.CLASS_NAMES}  # 10% of 20
    assert Counter(n.split("_")[0] for n in one) == {name: 1 for name in FM.CLASS_NAMES}  # at least one
    assert set(one) <= set(ten)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fm.tmp")]


def test_own_layout_splits_the_same_images_and_the_same_1_percent(fake_source, tmp_path):
    folders = FM.convert_fashion_mnist(tmp_path / "fm", fake_source, processes=1, log=lambda *_: None)
    own = FM.convert_fashion_mnist(tmp_path / "own", fake_source, processes=1, log=lambda *_: None, layout="own")
    one = set((folders / "subsets" / "1percent.txt").read_text().split())
    labelled = {p.name for p in (own / "labelled").rglob("*.png")}
    assert labelled == one and all(p.parent.name == p.name.split("_")[0] for p in (own / "labelled").rglob("*.png"))
    flat = sorted((own / "unlabelled").iterdir())
    assert len(flat) == 200 - len(one) and all(p.is_file() for p in flat)
    images = read_idx_reference(fake_source / "train-images-idx3-ubyte.gz")
    assert np.array_equal(np.asarray(Image.open(flat[0])), images[int(flat[0].stem)])
    assert not (own / "train").exists() and len(list((own / "val").rglob("*.png"))) == 30
    with pytest.raises(DataError, match="in the 'own' layout, not 'imagefolder'"):
        FM.convert_fashion_mnist(own, fake_source, log=lambda *_: None)


def test_rerun_is_instant_and_touches_nothing(fake_source, tmp_path):
    out = FM.convert_fashion_mnist(tmp_path / "fm", fake_source, processes=2, log=lambda *_: None)
    marker_time = (out / FM.MARKER).stat().st_mtime_ns
    messages = []
    started = time.perf_counter()
    FM.convert_fashion_mnist(out, fake_source, log=messages.append)
    assert time.perf_counter() - started < 0.5 and "already holds" in messages[0]
    assert (out / FM.MARKER).stat().st_mtime_ns == marker_time


def test_interrupted_conversion_leaves_nothing_behind(fake_source, tmp_path, monkeypatch):
    def fail(job):
        raise KeyboardInterrupt

    monkeypatch.setattr(FM, "_write_pngs", fail)
    with pytest.raises(KeyboardInterrupt):
        FM.convert_fashion_mnist(tmp_path / "fm", fake_source, processes=1, log=lambda *_: None)
    assert sorted(os.listdir(tmp_path)) == ["source"]


def test_missing_package_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as err:
        FM.convert_fashion_mnist(tmp_path / "fm", tmp_path / "nothing-here", log=lambda *_: None)
    message = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in message and "--source" in message and "--download" in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz not found in .*empty.*apt-get install"):
        FM.convert_fashion_mnist(tmp_path / "fm", tmp_path / "empty", log=lambda *_: None)
    assert FM.main(["--out", str(tmp_path / "fm"), "--source", str(tmp_path / "empty")]) == 2


def test_refuses_to_overwrite_a_foreign_folder(fake_source, tmp_path):
    (tmp_path / "fm").mkdir()
    (tmp_path / "fm" / "mine.txt").touch()
    with pytest.raises(DataError, match="not a finished Fashion-MNIST conversion"):
        FM.convert_fashion_mnist(tmp_path / "fm", fake_source, log=lambda *_: None)


def test_damaged_idx_is_reported(fake_source, tmp_path):
    path = fake_source / "t10k-images-idx3-ubyte.gz"
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[:-100]))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz is truncated"):
        FM.convert_fashion_mnist(tmp_path / "fm", fake_source, processes=1, log=lambda *_: None)


# -------------------------------------------------------------------------------- the real package
@pytest.fixture(scope="session")
def real_fashion_mnist(tmp_path_factory) -> Path:
    if not (REAL_SOURCE / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST not installed at {REAL_SOURCE} (apt-get install dataset-fashion-mnist)")
    return FM.convert_fashion_mnist(tmp_path_factory.mktemp("fashion") / "fm", REAL_SOURCE, processes=2,
                                    log=lambda *_: None)


@pytest.mark.slow  # converts all 70,000 real images
def test_real_fashion_mnist_counts_and_classes(real_fashion_mnist):
    classes = class_index(str(real_fashion_mnist / "train"))
    assert len(classes) == 10
    train = scan_image_folder(str(real_fashion_mnist / "train"), classes)
    val = scan_image_folder(str(real_fashion_mnist / "val"), classes)
    assert len(train) == 60000 and len(val) == 10000
    assert Counter(y for _, y in train) == {c: 6000 for c in range(10)}
    assert Counter(y for _, y in val) == {c: 1000 for c in range(10)}


@pytest.mark.slow  # converts all 70,000 real images
def test_real_fashion_mnist_labelled_lists(real_fashion_mnist):
    lists = {p: (real_fashion_mnist / "subsets" / f"{p}percent.txt").read_text().split() for p in (1, 10)}
    assert len(lists[1]) == 600 and len(lists[10]) == 6000
    assert Counter(n.split("_")[0] for n in lists[1]) == {name: 60 for name in FM.CLASS_NAMES}
    assert Counter(n.split("_")[0] for n in lists[10]) == {name: 600 for name in FM.CLASS_NAMES}
    assert set(lists[1]) <= set(lists[10])
    labels = read_idx_reference(REAL_SOURCE / "train-labels-idx1-ubyte.gz")
    for name in lists[10][::97]:
        cls, index = name[:-4].split("_")
        assert FM.CLASS_NAMES[labels[int(index)]] == cls


@pytest.mark.slow  # converts all 70,000 real images
def test_real_fashion_mnist_pixels_and_loading(real_fashion_mnist):
    images = read_idx_reference(REAL_SOURCE / "t10k-images-idx3-ubyte.gz")
    labels = read_idx_reference(REAL_SOURCE / "t10k-labels-idx1-ubyte.gz")
    for i in (0, 4321, 9999):
        name = FM.CLASS_NAMES[labels[i]]
        assert np.array_equal(np.asarray(Image.open(real_fashion_mnist / "val" / name / f"{name}_{i}.png")), images[i])
    t = val_transform(None, None, Normalization((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)))
    data = build_datasets(str(real_fashion_mnist), t, t, t, labels_perc=1)
    assert len(data.labelled) == 600 and len(data.unlabelled) == 60000 and len(data.val) == 10000
    image, label = data.labelled[0]
    assert image.shape == (3, 28, 28) and torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert data.labelled.samples[0][0].startswith(str(real_fashion_mnist / "train" / data.labelled.classes[label]))
