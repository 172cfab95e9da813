"""Labelled lists: the real ImageNet 1%/10% lists against a fake ImageFolder, formats, errors, and how
--labels_perc finds (or fetches and checks) the standard lists. Never touches the network."""
from __future__ import annotations

import hashlib
import os
import urllib.error
from collections import Counter
from pathlib import Path

import pytest

from src.data import subsets as S
from src.data.errors import DataError
from src.data.folders import class_index


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def imagenet_lists(shared_reference) -> dict[int, Path]:
    return {p: Path(shared_reference) / "imagenet_subsets" / f"{p}percent.txt" for p in (1, 10)}


@pytest.fixture(scope="module")
def fake_imagenet(tmp_path_factory, imagenet_lists) -> Path:
    """DATA/train/<wnid>/ for the 1,000 classes, holding the 1% list's files (empty)."""
    root = tmp_path_factory.mktemp("imagenet")
    lines = _lines(imagenet_lists[1])
    for wnid in sorted({line.split("_")[0] for line in lines}):
        (root / "train" / wnid).mkdir(parents=True)
    for line in lines:
        (root / "train" / line.split("_")[0] / line).touch()
    return root


def test_hard_coded_hashes_are_those_of_the_reference_lists(imagenet_lists):
    for percent, path in imagenet_lists.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == S.IMAGENET_SUBSET_SHA256[percent]


def test_imagenet_1percent_list_parsed_against_a_fake_tree(fake_imagenet, imagenet_lists):
    train = str(fake_imagenet / "train")
    classes = class_index(train)
    samples = S.labelled_samples(imagenet_lists[1], train, classes)  # checks every file on disk
    lines = _lines(imagenet_lists[1])
    assert len(classes) == 1000 and len(samples) == 12811
    expected = Counter(classes[line.split("_")[0]] for line in lines)
    assert Counter(label for _, label in samples) == expected
    assert len(expected) == 1000
    wnids = sorted(classes)
    for (path, label), line in zip(samples, lines):
        assert os.path.basename(path) == line
        assert Path(path).parent.name == wnids[label] == line.split("_")[0]


def test_imagenet_10percent_list_counts_per_class(fake_imagenet, imagenet_lists):
    train = str(fake_imagenet / "train")
    classes = class_index(train)
    lines = _lines(imagenet_lists[10])
    known = {os.path.join(train, line.split("_")[0], line) for line in lines}
    samples = S.labelled_samples(imagenet_lists[10], train, classes, known_files=known)
    assert len(samples) == 128116
    counts = Counter(label for _, label in samples)
    assert counts == Counter(classes[line.split("_")[0]] for line in lines)
    assert len(counts) == 1000
    assert sum(counts.values()) == 128116


def _tree(root: Path, files: dict[str, list[str]]) -> str:
    for cls, names in files.items():
        (root / "train" / cls).mkdir(parents=True, exist_ok=True)
        for name in names:
            path = root / "train" / cls / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    return str(root / "train")


def test_general_and_imagenet_formats_mix_per_line(tmp_path):
    train = _tree(tmp_path, {"cat_big": ["a.png", "sub/b.png"], "dog": ["dog_1.png", "dog_2.png"]})
    listing = tmp_path / "list.txt"
    listing.write_text("# my split\ncat_big/a.png\n\ndog_2.png\r\ncat_big/sub/b.png\n")
    samples = S.labelled_samples(listing, train, class_index(train))
    assert samples == [(os.path.join(train, "cat_big", "a.png"), 0), (os.path.join(train, "dog", "dog_2.png"), 1),
                       (os.path.join(train, "cat_big", "sub", "b.png"), 0)]


def test_unknown_class_names_the_line_the_list_and_the_folder(tmp_path):
    train = _tree(tmp_path, {"dog": ["dog_1.png"]})
    listing = tmp_path / "list.txt"
    listing.write_text("dog_1.png\nn01440764_10026.JPEG\n")
    with pytest.raises(DataError, match=r"line 2: class 'n01440764'.*not a class folder of .*train") as err:
        S.labelled_samples(listing, train, class_index(train))
    assert str(listing) in str(err.value) and "--subset_file" in str(err.value)


def test_listed_file_missing_from_train_names_file_and_list(tmp_path):
    train = _tree(tmp_path, {"dog": ["dog_1.png"]})
    listing = tmp_path / "list.txt"
    listing.write_text("dog_1.png\ndog_7.png\n")
    with pytest.raises(DataError) as err:
        S.labelled_samples(listing, train, class_index(train))
    message = str(err.value)
    assert os.path.join(train, "dog", "dog_7.png") in message and str(listing) in message and "line 2" in message


@pytest.mark.parametrize("content, pattern", [("dog_1.png\ndog_1.png\n", "listed twice"),
                                              ("dog_1.png\nnounderscore.png\n", "line 2: cannot read"),
                                              ("\n# nothing\n", "is empty")])
def test_malformed_lists(tmp_path, content, pattern):
    listing = tmp_path / "list.txt"
    listing.write_text(content)
    with pytest.raises(DataError, match=pattern):
        S.read_subset_entries(listing)


# ------------------------------------------------------------------------ resolving --labels_perc
@pytest.fixture
def no_network(monkeypatch):
    def refuse(url, timeout=60.0):
        raise AssertionError(f"unexpected download of {url}")
    monkeypatch.setattr(S, "fetch_url", refuse)


def test_subset_file_wins_and_must_exist(tmp_path, no_network):
    listing = tmp_path / "mine.txt"
    listing.write_text("dog_1.png\n")
    assert S.resolve_subset_file(str(tmp_path), labels_perc=1, subset_file=listing) == listing
    with pytest.raises(DataError, match=r"--subset_file .*nope.txt does not exist.*make_subset"):
        S.resolve_subset_file(str(tmp_path), subset_file=tmp_path / "nope.txt")


def test_labels_perc_found_beside_the_data_then_in_release_location(tmp_path, monkeypatch, no_network):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    (tmp_path / "subsets").mkdir()
    (tmp_path / "subsets" / "10percent.txt").write_text("x_1.png\n")
    assert S.resolve_subset_file(str(data), 10, cache_dir=tmp_path / "cache") == Path("subsets") / "10percent.txt"
    (data / "subsets").mkdir(parents=True)
    (data / "subsets" / "10percent.txt").write_text("y_1.png\n")  # not ImageNet's: not hashed
    assert S.resolve_subset_file(str(data), "10", cache_dir=tmp_path / "cache") == data / "subsets" / "10percent.txt"
    with pytest.raises(DataError, match="only the standard 1 and 10"):
        S.resolve_subset_file(str(data), 5)


def test_fetch_once_into_cache_with_hash_check(tmp_path, monkeypatch, imagenet_lists):
    monkeypatch.chdir(tmp_path)
    calls = []

    def fake_fetch(url, timeout=60.0):
        calls.append(url)
        return imagenet_lists[1].read_bytes()

    monkeypatch.setattr(S, "fetch_url", fake_fetch)
    cache = tmp_path / "cache"
    path = S.resolve_subset_file(str(tmp_path / "data"), 1, cache_dir=cache)
    assert path == cache / "1percent.txt" and path.read_bytes() == imagenet_lists[1].read_bytes()
    assert calls == ["https://raw.githubusercontent.com/google-research/simclr/master/imagenet_subsets/1percent.txt"]
    assert S.resolve_subset_file(str(tmp_path / "data"), 1, cache_dir=cache) == path
    assert len(calls) == 1  # the cache is used from then on


def test_download_with_wrong_hash_is_refused_and_not_saved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(S, "fetch_url", lambda url, timeout=60.0: b"n01440764_1.JPEG\n")
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"sha256 .* expected 6d09de11"):
        S.resolve_subset_file(str(tmp_path / "data"), 10, cache_dir=cache)
    assert not (cache / "10percent.txt").exists()


def test_corrupted_cache_file_is_reported(tmp_path, monkeypatch, no_network):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "1percent.txt").write_text("tampered\n")
    with pytest.raises(DataError, match=r"cached list .*1percent.txt has sha256"):
        S.resolve_subset_file(str(tmp_path / "data"), 1, cache_dir=tmp_path / "cache")


def test_offline_error_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def offline(url, timeout=60.0):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(S, "fetch_url", offline)
    data = tmp_path / "data"
    with pytest.raises(DataError) as err:
        S.resolve_subset_file(str(data), 1, cache_dir=tmp_path / "cache")
    message = str(err.value)
    assert "DATA/subsets/1percent.txt" in message and str(tmp_path / "cache" / "1percent.txt") in message
    assert "--subset_file" in message and "no route to host" in message


def test_default_cache_respects_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert S.default_cache_dir() == tmp_path / "suave-daino" / "imagenet_subsets"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert S.default_cache_dir() == Path.home() / ".cache" / "suave-daino" / "imagenet_subsets"
