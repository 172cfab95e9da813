"""Fashion-MNIST (IDX files) -> ImageFolder layout with 1% and 10% labelled lists.

    python -m src.data.fashion_mnist --out data/fashion-mnist
        [--source /usr/share/datasets/fashion-mnist] [--download] [--processes 2] [--seed 0]

The source is Debian's ``dataset-fashion-mnist`` package (``apt-get install dataset-fashion-mnist``, files
in /usr/share/datasets/fashion-mnist), any folder holding the four IDX files (``--source``, gzipped or
not), or ``--download`` (torchvision's ``FashionMNIST`` downloader, needs internet). Writes

    OUT/train/<class>/<class>_<index>.png   60,000 28x28 grey PNGs (index = position in the IDX file)
    OUT/val/<class>/<class>_<index>.png     10,000 (the t10k split)
    OUT/subsets/1percent.txt, 10percent.txt 600 / 6,000 train names (ImageNet format), balanced per
                                            class, seeded; the 1% list is inside the 10% list

``--layout own`` writes the same images as your own data would be laid out (docs/data.md) instead:

    OUT/labelled/<class>/<class>_<index>.png  the 600 images of the 1% list (same seed, same images)
    OUT/unlabelled/<index>.png                the other 59,400 train images, flat, no class in path or name
    OUT/val/<class>/<class>_<index>.png       10,000 (the t10k split)

trained with ``--lab_dir OUT/labelled --unlab_dir OUT/unlabelled --val_dir OUT/val`` (the unlabelled stream
then holds the labelled images too, as ``--labels_perc 1`` on the ImageFolder layout: the same 60,000 images).

Folder names (no ``_``, so the ImageNet list format maps a name to its class): label 0-9 of the IDX
files = tshirt, trouser, pullover, dress, coat, sandal, shirt, sneaker, bag, ankleboot; the training
class index is the folder's position in sorted order, as for any ImageFolder. The conversion is written
into a temporary sibling folder and renamed into place, with a completion marker: re-running it on a
finished folder returns at once, an interrupted run leaves nothing half-written at OUT.
"""
from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from src.atomic_io import write_text_atomic

from .errors import DataError
from .make_subset import select_balanced, subset_lines

CLASS_NAMES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankleboot")
DEFAULT_SOURCE = "/usr/share/datasets/fashion-mnist"
SPLIT_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
SPLIT_SIZES = {"train": 60000, "val": 10000}
SUBSET_PERCENTS = (1, 10)
MARKER = ".fashion_mnist_complete.json"
LAYOUTS = ("imagefolder", "own")
INSTALL_HINT = ("install Debian's package (`sudo apt-get install dataset-fashion-mnist`, files in "
                f"{DEFAULT_SOURCE}), give a folder holding the four IDX files with --source PATH, or pass --download "
                "(needs internet)")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (gzipped or not) as a uint8 array of its declared shape."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read IDX file {path}: {err}; the file is damaged, get a fresh copy") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: header says {shape}, found {body.size} values")
    return body.reshape(shape)


def find_idx_file(source: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (source / name).is_file():
            return source / name
    raise DataError(f"Fashion-MNIST file {stem}.gz not found in {source}: {INSTALL_HINT}")


def load_split(source: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 28, 28) uint8, labels (N,) uint8)`` of ``train`` or ``val`` (the t10k files)."""
    images_stem, labels_stem = SPLIT_FILES[split]
    images, labels = read_idx(find_idx_file(source, images_stem)), read_idx(find_idx_file(source, labels_stem))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{source}: {split} images {images.shape} and labels {labels.shape} do not match")
    if labels.size and int(labels.max()) >= len(CLASS_NAMES):
        raise DataError(f"{source}: {split} labels go up to {int(labels.max())}, Fashion-MNIST has 10 classes")
    return images, labels


def download_source(dest: Path) -> Path:
    """Fetch the IDX files with torchvision's downloader into ``dest``; return the folder holding them."""
    from torchvision.datasets import FashionMNIST
    try:
        FashionMNIST(str(dest), train=True, download=True)
        FashionMNIST(str(dest), train=False, download=True)
    except Exception as err:
        raise DataError(f"downloading Fashion-MNIST failed ({type(err).__name__}: {err}); without internet "
                        f"{INSTALL_HINT.split(', or pass')[0]}") from err
    return dest / "FashionMNIST" / "raw"


def _write_pngs(job: tuple[str, list[str], np.ndarray]) -> int:
    folder, names, images = job
    for name, pixels in zip(names, images):
        Image.fromarray(pixels).save(os.path.join(folder, name))
    return len(names)


def _png_jobs(root: Path, split: str, images: np.ndarray, labels: np.ndarray, chunk: int = 2500) -> list:
    jobs = []
    for c, name in enumerate(CLASS_NAMES):
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        (index,) = np.nonzero(labels == c)
        for start in range(0, len(index), chunk):
            part = index[start:start + chunk]
            jobs.append((str(folder), [f"{name}_{i}.png" for i in part], images[part]))
    return jobs


def _remove_stale_temporaries(out: Path) -> None:
    """Delete temporary folders of earlier conversions into ``out`` whose process is gone."""
    for tmp in out.parent.glob(f".{out.name}.tmp-*"):
        try:
            pid = int(tmp.name.rsplit("-", 2)[-2])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue


def is_converted(out: str | os.PathLike) -> bool:
    return (Path(out) / MARKER).is_file()


def _own_layout_jobs(root: Path, images: np.ndarray, labels: np.ndarray, labelled: set[str],
                     chunk: int = 2500) -> list:
    """PNG jobs of ``--layout own``: the listed images into labelled/<class>/, the rest flat into unlabelled/."""
    jobs = []
    for c, name in enumerate(CLASS_NAMES):
        folder = root / "labelled" / name
        folder.mkdir(parents=True, exist_ok=True)
        index = [i for i in np.nonzero(labels == c)[0] if f"{name}_{i}.png" in labelled]
        jobs.append((str(folder), [f"{name}_{i}.png" for i in index], images[index]))
    (root / "unlabelled").mkdir(parents=True, exist_ok=True)
    rest = np.array([i for i in range(len(labels)) if f"{CLASS_NAMES[labels[i]]}_{i}.png" not in labelled], dtype=int)
    for start in range(0, len(rest), chunk):
        part = rest[start:start + chunk]
        jobs.append((str(root / "unlabelled"), [f"{i:05d}.png" for i in part], images[part]))
    return jobs


def convert_fashion_mnist(out: str | os.PathLike, source: str | os.PathLike | None = None, download: bool = False,
                          processes: int = 2, seed: int = 0, log=print, layout: str = "imagefolder") -> Path:
    """Convert once into ``out`` (see the module docstring); returns ``out``. Instant when already done."""
    out = Path(out)
    if layout not in LAYOUTS:
        raise DataError(f"--layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    if is_converted(out):
        done = json.loads((out / MARKER).read_text()).get("layout", "imagefolder")
        if done != layout:
            raise DataError(f"{out} holds Fashion-MNIST in the {done!r} layout, not {layout!r}: choose another --out")
        log(f"{out} already holds the converted Fashion-MNIST (marker {MARKER}); nothing to do")
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} exists and is not a finished Fashion-MNIST conversion (no {MARKER}); remove it or "
                        "choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        if source is not None:
            src = Path(source)
        elif download:
            src = download_source(tmp / "download")
        else:
            src = Path(DEFAULT_SOURCE)
        if not src.is_dir():
            raise DataError(f"Fashion-MNIST source folder {src} does not exist: {INSTALL_HINT}")
        started = time.time()
        splits = {split: load_split(src, split) for split in SPLIT_FILES}
        data = tmp / "data"
        _, train_labels = splits["train"]
        files_by_class = {name: [f"{name}_{i}.png" for i in np.nonzero(train_labels == c)[0]]
                          for c, name in enumerate(CLASS_NAMES)}
        chosen = {percent: select_balanced(files_by_class, percent=percent, seed=seed) for percent in SUBSET_PERCENTS}
        if layout == "own":
            labelled = {f for files in chosen[1].values() for f in files}
            jobs = _own_layout_jobs(data, *splits["train"], labelled) + _png_jobs(data, "val", *splits["val"])
        else:
            jobs = [job for split, (images, labels) in splits.items()
                    for job in _png_jobs(data, split, images, labels)]
        if processes > 1:
            context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods()
                                                  else "spawn")
            with context.Pool(processes) as pool:
                written = sum(pool.imap_unordered(_write_pngs, jobs))
        else:
            written = sum(map(_write_pngs, jobs))
        subsets = {}
        for percent in SUBSET_PERCENTS if layout == "imagefolder" else ():
            lines = subset_lines(chosen[percent], fmt="imagenet")
            write_text_atomic(data / "subsets" / f"{percent}percent.txt", "".join(f"{line}\n" for line in lines),
                              parents=True)
            subsets[f"{percent}percent.txt"] = len(lines)
        record = {"source": str(src), "seed": seed, "layout": layout, "classes": list(CLASS_NAMES), "subsets": subsets,
                  **{split: len(labels) for split, (_, labels) in splits.items()}}
        write_text_atomic(data / MARKER, json.dumps(record, indent=1), parents=True)
        if out.exists():
            out.rmdir()  # empty, checked above
        try:
            os.rename(data, out)
        except OSError:
            if not is_converted(out):  # another conversion may have finished first
                raise
        what = "and the 1%/10% lists" if layout == "imagefolder" else "(600 labelled in class folders, the rest flat)"
        log(f"wrote {written} images {what} to {out} in {time.time() - started:.1f} s")
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.data.fashion_mnist",
                                     description="Convert Fashion-MNIST into DATA/{train,val}/<class>/*.png with "
                                                 "1%/10% labelled lists in DATA/subsets/.")
    parser.add_argument("--out", required=True, help="dataset folder to create (the --data_path of a run)")
    parser.add_argument("--source", default=None, help=f"folder with the IDX files (default {DEFAULT_SOURCE})")
    parser.add_argument("--download", action="store_true", help="download with torchvision (needs internet)")
    parser.add_argument("--processes", type=int, default=2, help="processes writing PNGs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the labelled lists")
    parser.add_argument("--layout", choices=LAYOUTS, default="imagefolder",
                        help="imagefolder: train/<class>/ + val/<class>/ + subsets/; own: the 1%% labelled images in "
                             "labelled/<class>/, the other 59,400 flat in unlabelled/, val/<class>/ (docs/data.md)")
    args = parser.parse_args(argv)
    try:
        convert_fashion_mnist(args.out, args.source, args.download, args.processes, args.seed, layout=args.layout)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
