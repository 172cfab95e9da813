"""Labelled subset lists: parsing, and finding the standard ImageNet 1% / 10% lists.

Two line formats, detected per line:
- ImageNet (the SimCLR lists used by the release): ``n01440764_10026.JPEG``; the class is the file
  name's prefix before the first ``_`` and the file lies in ``train/<class>/``.
- general: ``<class>/<file>`` (any dataset; the file may lie in sub-folders of the class folder).
Empty lines and lines starting with ``#`` are ignored.

``--labels_perc 1|10`` finds ``{1,10}percent.txt`` in ``DATA/subsets/``, then in ``./subsets/`` (where
the release read them), then in the cache ``~/.cache/suave-daino/imagenet_subsets`` (``$XDG_CACHE_HOME``
respected); failing that, it downloads the SimCLR list once into the cache and checks its sha256. The
release matched the class with ``startswith`` on the prefix (a prefix shared by two classes picked the
first one); here the class must equal the prefix exactly.
"""
from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from src.atomic_io import write_bytes_atomic

from .errors import DataError

SUBSET_URL = "https://raw.githubusercontent.com/google-research/simclr/master/imagenet_subsets/{percent}percent.txt"
IMAGENET_SUBSET_SHA256 = {
    1: "71e82a48ba78252683ae334c4d019ebd5c6e855b9599c1389fbe83eb9549cf17",
    10: "6d09de11e7bdaf5b1f3b1f249b6183695f97310cdd20f0c03e7235b6b9392091",
}
IMAGENET_SUBSET_SIZES = {1: 12811, 10: 128116}
MAKE_SUBSET_HINT = ("pass --subset_file PATH, or write a class-balanced list with "
                    "`python -m src.data.make_subset --data_path DATA --percent 10 --seed 0 "
                    "--out DATA/subsets/10percent.txt`")


@dataclass(frozen=True)
class SubsetEntry:
    class_name: str
    relpath: str  # relative to the train folder, '/'-separated: "<class>/<file>"
    line_no: int  # 1-based line of the list file


def parse_subset_line(line: str) -> tuple[str, str]:
    """``(class_name, relpath)`` of one entry; raises ValueError for a line in neither format."""
    if "/" in line:
        class_name = line.split("/", 1)[0]
        if not class_name or line.endswith("/"):
            raise ValueError("expected '<class>/<file>'")
        return class_name, line
    if "_" not in line or line.startswith("_"):
        raise ValueError("expected an ImageNet-style name '<class>_<id>.<ext>' or '<class>/<file>'")
    class_name = line.split("_", 1)[0]
    return class_name, f"{class_name}/{line}"


def read_subset_entries(path: str | os.PathLike) -> list[SubsetEntry]:
    """All entries of a list file, in order; an unparseable or repeated line stops with its line number."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"labelled subset list {path} does not exist; {MAKE_SUBSET_HINT}")
    entries: list[SubsetEntry] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, raw in enumerate(f, start=1):
            line = raw.strip().replace("\\", "/")
            if not line or line.startswith("#"):
                continue
            try:
                class_name, relpath = parse_subset_line(line)
            except ValueError as err:
                raise DataError(f"{path}, line {line_no}: cannot read {line!r}: {err}") from None
            if relpath in seen:
                raise DataError(f"{path}, line {line_no}: {line!r} is listed twice (first on line {seen[relpath]}); "
                                "remove the duplicate")
            seen[relpath] = line_no
            entries.append(SubsetEntry(class_name, relpath, line_no))
    if not entries:
        raise DataError(f"labelled subset list {path} is empty")
    return entries


def labelled_samples(subset_file: str | os.PathLike, train_dir: str, class_to_idx: dict[str, int],
                     known_files: set[str] | None = None) -> list[tuple[str, int]]:
    """``[(path, class_index)]`` of the listed images, in list order.

    A class that is not a folder of ``train_dir``, or a listed file that is not in ``train_dir``, stops
    with an error naming the entry, the list and the folder. ``known_files`` (paths of the scanned train
    images) replaces one ``stat`` per entry by a set look-up.
    """
    subset_file = os.fspath(subset_file)
    samples = []
    for entry in read_subset_entries(subset_file):
        if entry.class_name not in class_to_idx:
            raise DataError(
                f"{subset_file}, line {entry.line_no}: class {entry.class_name!r} of {entry.relpath!r} is not a "
                f"class folder of {train_dir}. Is this list meant for another dataset? (the --labels_perc lists "
                f"are ImageNet's); {MAKE_SUBSET_HINT}")
        path = os.path.join(train_dir, *entry.relpath.split("/"))
        exists = path in known_files if known_files is not None else os.path.isfile(path)
        if not exists:
            raise DataError(f"{subset_file}, line {entry.line_no}: labelled image {path} is not in {train_dir}; "
                            "restore the file or remove the line from the list")
        samples.append((path, class_to_idx[entry.class_name]))
    return samples


# ---------------------------------------------------------------- finding the standard ImageNet lists
def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "suave-daino" / "imagenet_subsets"


def fetch_url(url: str, timeout: float = 60.0) -> bytes:
    """Download ``url`` (the one network access of the data layer; tests replace it)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_imagenet_subset(percent: int, cache_dir: str | os.PathLike | None = None) -> Path:
    """Download the SimCLR ImageNet ``{percent}percent.txt`` into the cache, check its sha256, return its path."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / f"{percent}percent.txt"
    url = SUBSET_URL.format(percent=percent)
    try:
        data = fetch_url(url)
    except Exception as err:  # offline, proxy, HTTP error...
        raise DataError(
            f"the ImageNet {percent}% labelled list was not found locally and could not be downloaded from {url} "
            f"({type(err).__name__}: {err}). Put the file at DATA/subsets/{percent}percent.txt (beside train/ and "
            f"val/) or at {target}, or pass --subset_file PATH") from err
    digest = hashlib.sha256(data).hexdigest()
    if digest != IMAGENET_SUBSET_SHA256[percent]:
        raise DataError(f"the file downloaded from {url} has sha256 {digest}, expected "
                        f"{IMAGENET_SUBSET_SHA256[percent]}; it was not saved. Download it by hand to "
                        f"DATA/subsets/{percent}percent.txt, or pass --subset_file PATH")
    write_bytes_atomic(target, data, parents=True)
    return target


def resolve_subset_file(data_path: str, labels_perc: int | str | None = None,
                        subset_file: str | os.PathLike | None = None,
                        cache_dir: str | os.PathLike | None = None) -> Path:
    """The labelled list to use: ``subset_file`` when given, else the ``labels_perc`` (1 or 10) list.

    Order for ``labels_perc``: ``DATA/subsets/``, ``./subsets/``, the cache (sha256-checked), a download
    into the cache. Files under ``DATA/subsets/`` and ``./subsets/`` are the user's and are not hashed
    (``python -m src.data.fashion_mnist`` writes its own 1%/10% lists there).
    """
    if subset_file is not None:
        path = Path(subset_file)
        if not path.is_file():
            raise DataError(f"--subset_file {path} does not exist; {MAKE_SUBSET_HINT}")
        return path
    if labels_perc is None:
        raise DataError("no labelled subset: pass --labels_perc 1|10 or --subset_file PATH")
    try:
        percent = int(str(labels_perc))
    except ValueError:
        percent = -1
    if percent not in IMAGENET_SUBSET_SHA256:
        raise DataError(f"--labels_perc {labels_perc!r}: only the standard 1 and 10 lists exist; for another split "
                        f"{MAKE_SUBSET_HINT}")
    name = f"{percent}percent.txt"
    for candidate in (Path(data_path) / "subsets" / name, Path("subsets") / name):
        if candidate.is_file():
            return candidate
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = cache / name
    if cached.is_file():
        digest = sha256_of(cached)
        if digest == IMAGENET_SUBSET_SHA256[percent]:
            return cached
        raise DataError(f"cached list {cached} has sha256 {digest}, expected {IMAGENET_SUBSET_SHA256[percent]}: "
                        "delete it so that it is downloaded again, or put the right file in DATA/subsets/")
    return fetch_imagenet_subset(percent, cache)
