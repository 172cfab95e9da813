"""Own-data sources (src.data.sources), the dataset they build, and skipping unreadable images (bad_images)."""
from __future__ import annotations

import os
import time

import pytest
import torch

from src.data import DataError, ImageDataset, make_synthetic_own_layout
from src.data import sources
from src.data.bad_images import BadImageTracker, SkipBadImages, SkippedCollate
from src.data.collate import LabelledCollate
from src.data.datasets import build_own_datasets
from src.data.sources import UNKNOWN_LABEL, OwnDataSpec, build_file_lists, cached_file_lists


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    return make_synthetic_own_layout(tmp_path_factory.mktemp("own"), num_classes=3, lab_per_class=2,
                                     unlab_per_class=4, val_per_class=2, size=8)


def spec(**kw) -> OwnDataSpec:
    return OwnDataSpec(**{k: (tuple(str(p) for p in v) if isinstance(v, (list, tuple)) else
                              str(v) if isinstance(v, os.PathLike) else v) for k, v in kw.items()})


def test_class_folders_plus_flat_unlabelled_folder(own):
    lists = build_file_lists(spec(lab_dir=own.lab_dir, unlab_dirs=[own.unlab_dir], val_dir=own.val_dir))
    assert lists.classes == ["c0", "c1", "c2"]
    assert sorted(label for _, label in lists.labelled) == [0, 0, 1, 1, 2, 2]
    # 12 unlabelled (sub-folder included: recursive) + the 6 labelled ones, which keep their known class
    assert len(lists.unlabelled) == 18
    known = [(os.path.basename(p), y) for p, y in lists.unlabelled if y != UNKNOWN_LABEL]
    assert sorted(known) == sorted((os.path.basename(p), y) for p, y in lists.labelled)
    assert sum(1 for p, _ in lists.unlabelled if "/more/" in p) == 6
    assert len(lists.val) == 6 and lists.val_missing_classes == []


def test_csv_and_list_give_the_same_sets_as_the_folders(own):
    folders = build_file_lists(spec(lab_dir=own.lab_dir, unlab_dirs=[own.unlab_dir]))
    files = build_file_lists(spec(lab_csv=own.lab_csv, unlab_lists=[own.unlab_list]))
    assert sorted(files.labelled) == sorted(folders.labelled)
    assert sorted(files.unlabelled) == sorted(folders.unlabelled)
    assert files.val is None


def test_mixed_sources_are_deduplicated_and_labelled_images_can_be_excluded(own):
    both = build_file_lists(spec(lab_csv=own.lab_csv, unlab_dirs=[own.unlab_dir], unlab_lists=[own.unlab_list]))
    assert len(both.unlabelled) == 18  # the list names the folder's images again: counted once
    excluded = build_file_lists(spec(lab_csv=own.lab_csv, unlab_dirs=[own.unlab_dir, own.lab_dir],
                                     include_labelled=False))
    assert len(excluded.unlabelled) == 12 and all(y == UNKNOWN_LABEL for _, y in excluded.unlabelled)


def test_val_lacking_a_class_is_reported_and_unknown_val_class_is_an_error(own, tmp_path):
    val_csv = tmp_path / "val.csv"
    val_csv.write_text("".join(f"{own.val_dir}/c0/{f},c0\n" for f in os.listdir(own.val_dir / "c0")))
    lists = build_file_lists(spec(lab_dir=own.lab_dir, unlab_dirs=[own.unlab_dir], val_csv=val_csv))
    assert lists.val_missing_classes == ["c1", "c2"] and {y for _, y in lists.val} == {0}
    val_csv.write_text(f"{own.val_dir}/c0/{os.listdir(own.val_dir / 'c0')[0]},zebra\n")
    with pytest.raises(DataError, match=r"\['zebra'\] are not classes of the labelled set"):
        build_file_lists(spec(lab_dir=own.lab_dir, unlab_dirs=[own.unlab_dir], val_csv=val_csv))


@pytest.mark.parametrize("kw,message", [
    ({"unlab_dirs": ["UNLAB"]}, "need a labelled source"),
    ({"lab_dir": "LAB"}, "need unlabelled images"),
    ({"lab_dir": "LAB", "lab_csv": "CSV", "unlab_dirs": ["UNLAB"]}, "not both"),
    ({"lab_dir": "LAB", "unlab_dirs": ["/nonexistent/unlab"]}, "/nonexistent/unlab does not exist"),
])
def test_incomplete_sources_are_one_line_errors(own, kw, message):
    subst = {"LAB": str(own.lab_dir), "CSV": str(own.lab_csv), "UNLAB": str(own.unlab_dir)}
    kw = {k: (tuple(subst.get(x, x) for x in v) if isinstance(v, list) else subst.get(v, v)) for k, v in kw.items()}
    with pytest.raises(DataError, match=message):
        build_file_lists(OwnDataSpec(**kw))


def test_bad_csv_line_and_missing_labelled_file_name_the_line_and_file(own, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("lab/c0/c0_0.png\n")
    with pytest.raises(DataError, match=r"bad.csv, line 1: cannot read 'lab/c0/c0_0.png': expected 'path,class'"):
        build_file_lists(spec(lab_csv=bad, unlab_dirs=[own.unlab_dir]))
    bad.write_text("gone.png,c0\n")
    with pytest.raises(DataError, match=rf"{tmp_path}/gone.png"):
        build_file_lists(spec(lab_csv=bad, unlab_dirs=[own.unlab_dir]))


def test_file_lists_are_cached_and_not_rescanned(own, tmp_path, monkeypatch):
    s = spec(lab_dir=own.lab_dir, unlab_dirs=[own.unlab_dir], val_dir=own.val_dir)
    first = cached_file_lists(s, str(tmp_path))
    assert len(list(tmp_path.glob("data_files-*.json"))) == 1

    def no_scan(root):
        raise AssertionError(f"rescanned {root}")
    monkeypatch.setattr(sources, "scan_images", no_scan)
    again = cached_file_lists(s, str(tmp_path))
    assert again == first
    with pytest.raises(AssertionError, match="rescanned"):  # --rescan_data true scans again
        cached_file_lists(s, str(tmp_path), rescan=True)


def test_a_changed_source_changes_the_cache_key(own, tmp_path):
    listing = tmp_path / "unlab.txt"
    listing.write_text(own.unlab_list.read_text())
    s = spec(lab_csv=own.lab_csv, unlab_lists=[listing])
    key = sources.cache_key(s)
    listing.write_text("\n".join(own.unlab_list.read_text().split()[:3]) + "\n")
    assert sources.cache_key(s) != key
    assert sources.cache_key(spec(lab_csv=own.lab_csv, unlab_lists=[listing], include_labelled=False)) != \
        sources.cache_key(s)


def test_a_million_listed_paths_build_in_seconds(own, tmp_path):
    listing = tmp_path / "million.txt"
    listing.write_text("".join(f"images/{i // 1000:04d}/{i:07d}.jpg\n" for i in range(1_000_000)))
    started = time.perf_counter()
    lists = cached_file_lists(spec(lab_csv=own.lab_csv, unlab_lists=[listing]), str(tmp_path))
    elapsed = time.perf_counter() - started
    assert len(lists.unlabelled) == 1_000_006
    assert lists.unlabelled[0] == (str(tmp_path / "images/0000/0000000.jpg"), UNKNOWN_LABEL)
    assert elapsed < 30, f"{elapsed:.1f} s"  # ~3 s on one busy core; no per-file stat


def test_own_datasets_expose_class_names_and_optional_val(own, tmp_path):
    data = build_own_datasets(spec(lab_csv=own.lab_csv, unlab_lists=[own.unlab_list]), None, None, None,
                              cache_dir=str(tmp_path))
    assert data.class_names == ["c0", "c1", "c2"] and data.val is None
    image, label = data.labelled[0]
    assert image.size == (8, 8) and label == 0


# ------------------------------------------------------------------------------------- unreadable images
def _dataset_with_bad(tmp_path, own, n_bad: int) -> ImageDataset:
    good = sorted(str(p) for p in own.lab_dir.rglob("*.png"))
    bad = []
    for i in range(n_bad):
        path = tmp_path / f"bad{i}.png"
        path.write_bytes(b"not a png")
        bad.append(str(path))
    samples = [(p, 0) for p in [good[0], *bad, *good[1:]]]
    return ImageDataset(samples, {"c0": 0}, lambda img: torch.zeros(1))


def test_a_bad_image_is_replaced_by_the_next_readable_one_and_named(own, tmp_path):
    ds = SkipBadImages(_dataset_with_bad(tmp_path, own, 1))
    x, y, skipped = ds[1]
    assert y == 0 and len(skipped) == 1 and skipped[0].startswith(f"{tmp_path}/bad0.png: UnidentifiedImageError: cannot identify")
    assert ds[0][2] == () and ds[2][2] == ()
    batch = SkippedCollate(LabelledCollate())([ds[0], ds[1], ds[2]])
    assert batch.images.shape[0] == 3 and batch.skipped == [skipped[0]]
    assert batch.to("cpu").skipped == batch.skipped  # survives the move to the device


def test_tracker_counts_unique_files_and_stops_past_the_limit(own, tmp_path):
    tracker = BadImageTracker(limit=2)
    tracker.observe(["/d/a.jpg: truncated", "/d/a.jpg: truncated"])
    tracker.observe(["/d/b.jpg: truncated"])
    assert list(tracker.state_dict()) == ["/d/a.jpg", "/d/b.jpg"]
    with pytest.raises(DataError, match=r"3 unreadable images, more than --max_bad_images 2: /d/a.jpg, /d/b.jpg, "
                                        r"/d/c.jpg"):
        tracker.observe(["/d/c.jpg: bad header"])
    resumed = BadImageTracker(limit=2)
    resumed.load_state_dict({"/d/a.jpg": "truncated"})
    resumed.observe(["/d/a.jpg: truncated"])
    assert len(resumed.files) == 1


def _meters_where_rank1_never_logs_pseudo_acc(rank: int, world: int) -> dict:
    from src.logging_utils import MetricLogger
    meters = MetricLogger()
    meters.update(loss=1.0 + rank)
    if rank == 0:  # rank 1 saw no unlabelled image of known class: it never logs pseudo_acc1
        meters.update(pseudo_acc1=40.0)
        meters.update(pseudo_acc1=60.0)
    meters.synchronize()
    return meters.global_averages()


@pytest.mark.slow
def test_a_meter_only_some_ranks_update_is_averaged_over_those_updates():
    from tests.dist_helpers import run_in_processes
    results = run_in_processes(_meters_where_rank1_never_logs_pseudo_acc, 2)
    for averages in results:
        assert averages["loss"] == pytest.approx(1.5) and averages["pseudo_acc1"] == pytest.approx(50.0)
