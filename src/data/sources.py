"""Your own data: the two training streams (and validation) from separate sources, beside the ImageFolder layout.

- unlabelled: one or more folders searched recursively (``--unlab_dir``) and/or list files of paths, one a line
  (``--unlab_list``); no class structure. Images the labelled set also lists are added to (default, as the
  paper and release: the unlabelled stream is the whole training set, labelled images included) or removed
  from the unlabelled set (``--unlab_include_labelled false``).
- labelled: class folders ``ROOT/<class>/<image>`` (``--lab_dir``) or ``path,class`` lines (``--lab_csv``). The
  class names, sorted, give the class indices (as ImageFolder's sorted folders).
- validation (optional): class folders (``--val_dir``) or a ``path,class`` file (``--val_csv``). A class of
  the labelled set missing there is named in a warning; a class the labelled set lacks is an error.

Relative paths in list/CSV files are relative to the file's own folder. The file lists are scanned once and
cached (``cache_dir``, the run's output directory) under a key made of the sources' paths, sizes and mtimes,
so a resumed run does not scan again; a folder's mtime changes only when entries directly inside it change,
so after adding images in sub-folders pass ``--rescan_data true``. Listed unlabelled paths are not checked
one by one (a million ``stat`` calls on a network file system take minutes): a missing or corrupt file is
skipped during training and counted (``src.data.bad_images``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Callable

from src.args import own_data_problem
from src.atomic_io import write_text_atomic

from .errors import DataError
from .folders import is_image_file, list_class_folders

CACHE_VERSION = 1
OWN_FLAGS = ("--unlab_dir", "--unlab_list", "--lab_dir", "--lab_csv", "--val_dir", "--val_csv")
UNKNOWN_LABEL = -1  # label of an unlabelled image whose class is not known (no pseudo-label accuracy on it)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OwnDataSpec:
    """Where each stream comes from (absolute paths); ``active`` when any source is given."""
    unlab_dirs: tuple[str, ...] = ()
    unlab_lists: tuple[str, ...] = ()
    lab_dir: str | None = None
    lab_csv: str | None = None
    val_dir: str | None = None
    val_csv: str | None = None
    include_labelled: bool = True

    @property
    def active(self) -> bool:
        return bool(self.unlab_dirs or self.unlab_lists or self.lab_dir or self.lab_csv or self.val_dir
                    or self.val_csv)

    @classmethod
    def from_args(cls, args) -> "OwnDataSpec":
        def absolute(value):
            return os.path.abspath(os.path.expanduser(value)) if value else None
        return cls(unlab_dirs=tuple(absolute(p) for p in args.unlab_dir or ()),
                   unlab_lists=tuple(absolute(p) for p in args.unlab_list or ()),
                   lab_dir=absolute(args.lab_dir), lab_csv=absolute(args.lab_csv),
                   val_dir=absolute(args.val_dir), val_csv=absolute(args.val_csv),
                   include_labelled=args.unlab_include_labelled)

    def check(self) -> None:
        problem = own_data_problem(self.unlab_dirs or self.unlab_lists, self.lab_dir, self.lab_csv, self.val_dir,
                                   self.val_csv)
        if problem:
            raise DataError(problem)


@dataclass
class FileLists:
    """The scanned sources: what is cached between invocations (plain JSON)."""
    classes: list[str]
    labelled: list[tuple[str, int]]
    unlabelled: list[tuple[str, int]]  # label UNKNOWN_LABEL unless the image is also labelled
    val: list[tuple[str, int]] | None
    val_missing_classes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """Plain data; the unlabelled images as paths only (their known labels come back from ``labelled``)."""
        return {"version": CACHE_VERSION, "classes": self.classes, "labelled": self.labelled,
                "unlabelled": [p for p, _ in self.unlabelled], "val": self.val,
                "val_missing_classes": self.val_missing_classes}

    @classmethod
    def from_json(cls, raw: dict) -> "FileLists":
        if raw.get("version") != CACHE_VERSION:
            raise ValueError(f"cache version {raw.get('version')}, expected {CACHE_VERSION}")
        labelled = [(p, int(y)) for p, y in raw["labelled"]]
        known = dict(labelled)
        return cls(list(raw["classes"]), labelled, [(p, known.get(p, UNKNOWN_LABEL)) for p in raw["unlabelled"]],
                   None if raw["val"] is None else [(p, int(y)) for p, y in raw["val"]],
                   list(raw.get("val_missing_classes", [])))


# ------------------------------------------------------------------------------------------- scanning
def scan_images(root: str) -> list[str]:
    """Every image file under ``root`` (recursive, links followed, hidden folders skipped), sorted."""
    if not os.path.isdir(root):
        raise DataError(f"image folder {root} does not exist (check --unlab_dir)")
    found = []
    for dirpath, dirnames, files in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(os.path.join(dirpath, f) for f in files if is_image_file(f))
    found.sort()
    return found


def _lines(path: str, flag: str) -> list[tuple[int, str]]:
    if not os.path.isfile(path):
        _missing(path, flag)
    with open(path, encoding="utf-8") as f:
        return [(n, s) for n, s in ((n, raw.strip()) for n, raw in enumerate(f, start=1)) if s and s[0] != "#"]


def _resolve(base: str, path: str) -> str:
    """``path`` made absolute against ``base``; cheap for the common clean relative path (a million of them)."""
    if path.startswith("~"):
        path = os.path.expanduser(path)
    joined = path if path.startswith("/") else base + "/" + path
    if "/." in joined or "//" in joined:
        joined = os.path.normpath(joined)
    return joined


def read_path_list(path: str) -> list[str]:
    """Image paths of a list file, one a line (``#`` comments, blank lines skipped), relative to its folder."""
    if not os.path.isfile(path):
        _missing(path, "--unlab_list")
    base = os.path.dirname(os.path.abspath(path))
    with open(path, encoding="utf-8") as f:
        return [_resolve(base, line) for line in (raw.strip() for raw in f) if line and line[0] != "#"]


def _missing(path: str, flag: str):
    raise DataError(f"{flag} {path} does not exist")


def read_labelled_csv(path: str, flag: str = "--lab_csv") -> list[tuple[str, str]]:
    """``(image path, class name)`` of each ``path,class`` line (the last comma splits, so paths may hold
    commas); a first line ``path,class`` is a header. Paths are relative to the file's folder."""
    base = os.path.dirname(os.path.abspath(path))
    rows = []
    for line_no, line in _lines(path, flag):
        image, sep, name = line.rpartition(",")
        image, name = image.strip().strip('"'), name.strip().strip('"')
        if line_no == 1 and (image.lower(), name.lower()) in {("path", "class"), ("path", "label")}:
            continue
        if not sep or not image or not name:
            raise DataError(f"{path}, line {line_no}: cannot read {line!r}: expected 'path,class'")
        rows.append((_resolve(base, image), name))
    if not rows:
        raise DataError(f"{flag} {path} lists no image")
    return rows


def read_class_folders(root: str, flag: str) -> list[tuple[str, str]]:
    """``(image path, class name)`` for ``root/<class>/**/<image>``."""
    if not os.path.isdir(root):
        raise DataError(f"{flag} {root} does not exist: expected class folders {root}/<class>/<image>")
    rows = []
    for name in list_class_folders(root):
        images = scan_images(os.path.join(root, name))
        if not images:
            raise DataError(f"class folder {os.path.join(root, name)} holds no image: add its images or remove it")
        rows.extend((p, name) for p in images)
    return rows


# ------------------------------------------------------------------------------------------- file lists
def build_file_lists(spec: OwnDataSpec) -> FileLists:
    """Scan every source of ``spec`` (the slow part the cache saves) and join them into ``FileLists``."""
    spec.check()
    named = read_class_folders(spec.lab_dir, "--lab_dir") if spec.lab_dir else read_labelled_csv(spec.lab_csv)
    classes = sorted({name for _, name in named})
    index = {name: i for i, name in enumerate(classes)}
    labelled, seen = [], {}
    for path, name in named:
        if path in seen:
            if seen[path] != name:
                raise DataError(f"labelled image {path} is listed with two classes, {seen[path]!r} and {name!r}")
            continue
        seen[path] = name
        labelled.append((path, index[name]))
    missing = [p for p, _ in labelled if not os.path.isfile(p)]
    if missing:
        raise DataError(f"{len(missing)} labelled image(s) listed in {spec.lab_csv} do not exist, e.g. "
                        f"{', '.join(missing[:3])}: fix the paths (relative paths are relative to the CSV's folder)")
    unlab_paths: dict[str, None] = {}
    for root in spec.unlab_dirs:
        unlab_paths.update(dict.fromkeys(scan_images(root)))
    for list_file in spec.unlab_lists:
        unlab_paths.update(dict.fromkeys(read_path_list(list_file)))
    known = dict(labelled)
    if spec.include_labelled:
        unlab_paths.update(dict.fromkeys(p for p, _ in labelled))
        unlabelled = [(p, known.get(p, UNKNOWN_LABEL)) for p in unlab_paths]
    else:
        unlabelled = [(p, UNKNOWN_LABEL) for p in unlab_paths if p not in known]
    if not unlabelled:
        raise DataError("the unlabelled sources hold no image (" + ", ".join(spec.unlab_dirs + spec.unlab_lists) + ")")
    val, val_missing = None, []
    if spec.val_dir or spec.val_csv:
        val_named = (read_class_folders(spec.val_dir, "--val_dir") if spec.val_dir
                     else read_labelled_csv(spec.val_csv, "--val_csv"))
        unknown = sorted({name for _, name in val_named} - set(index))
        if unknown:
            raise DataError(f"validation class(es) {unknown[:10]} are not classes of the labelled set "
                            f"({spec.lab_dir or spec.lab_csv}); the network has no output for them: remove them "
                            "from the validation source or label some training images of those classes")
        val = [(p, index[name]) for p, name in val_named]
        val_missing = sorted(set(classes) - {name for _, name in val_named})
    return FileLists(classes, labelled, unlabelled, val, val_missing)


def cache_key(spec: OwnDataSpec) -> str:
    """Hash of the sources: their paths, the include flag, and each source's size and mtime."""
    def stamp(path: str | None):
        if not path:
            return None
        try:
            st = os.stat(path)
            return [path, st.st_size, st.st_mtime_ns]
        except OSError:
            return [path, None, None]
    record = {"version": CACHE_VERSION, "spec": asdict(spec),
              "stamps": [stamp(p) for p in (*spec.unlab_dirs, *spec.unlab_lists, spec.lab_dir, spec.lab_csv,
                                            spec.val_dir, spec.val_csv)]}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(spec: OwnDataSpec, cache_dir: str) -> str:
    return os.path.join(cache_dir, f"data_files-{cache_key(spec)}.json")


def cached_file_lists(spec: OwnDataSpec, cache_dir: str | None, rescan: bool = False,
                      scan: Callable[[OwnDataSpec], FileLists] = build_file_lists) -> FileLists:
    """``FileLists`` from the cache in ``cache_dir`` when its key matches, else scanned and written there."""
    if cache_dir is None:
        return scan(spec)
    path = cache_path(spec, cache_dir)
    if not rescan and os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                lists = FileLists.from_json(json.load(f))
            log.info("data: file lists read from %s (not rescanned; --rescan_data true scans again)", path)
            return lists
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("data: file list cache %s is unreadable (%s): scanning again", path, err)
    lists = scan(spec)
    write_text_atomic(path, json.dumps(lists.to_json(), separators=(",", ":")), parents=True)
    log.info("data: scanned the sources and cached the file lists in %s", path)
    return lists
