"""Images/s per CPU core of the Suave, Daino and labelled data pipelines on ImageNet-like JPEGs.

Generates JPEGs like ImageNet's (500x375 to 640x480, quality 75-90, ~85 KB: smooth random colour fields
at several scales, shapes with edges, sensor-like noise), then times, with one torch thread in one process:

  reference   the release's composition: torchvision/PIL ops in the release's order (``src.data.transforms``,
              the same ops as the release's MultiCropDataset / DataAugmentationDINO / labelled recipe),
              images decoded as torchvision's ``pil_loader`` (open + convert("RGB"))
  +skip RGB copy  the project's ``load_rgb`` (no ``convert`` copy of an RGB JPEG; every pipeline below)
  +hue_table, fast   each lever of ``src.data.fast_aug`` added in turn (cumulative rows); the last,
              ``fast``, is ``--fast_aug true``
  fast, photometric on GPU   the CPU part of ``--gpu_aug true`` (decode, crop, flip, uint8 views)

Times are this process's CPU time (``time.process_time``), so images/s per core is not diluted by other
processes on a shared machine; pipelines are also measured interleaved (each image goes through every
pipeline, in a rotating order, before the next image) and medians over repetitions are reported, so the
ratios stay fair. The breakdown splits each image's time into decode, geometric (crop, flip), photometric
(jitter, grey, blur, solarise) and tensor (to tensor, normalise). ``--workers N`` also times a DataLoader
with N workers end to end (batches of 32, wall-clock time; meant for a machine with N idle cores).

    python benchmarks/data_pipeline.py                    # the table (about 3 minutes on a busy core)
    python benchmarks/data_pipeline.py --workers 8        # plus DataLoader images/s with 8 workers
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import print_table  # noqa: E402
from src.data import transforms as TR  # noqa: E402
from src.data.augmentations import RandomGaussianBlur, RandomSolarize  # noqa: E402
from src.data.fast_aug import LEVERS, ToNormalizedTensor, ToUint8Tensor, accelerate, hue_tables  # noqa: E402
from src.data.images import load_rgb  # noqa: E402

T = TR.T
# CPU time of this process (one torch thread): images per CPU-second is images/s per core, and unlike wall
# time it does not count the time other processes on a shared machine take from this one.
CLOCK = time.process_time
CATEGORIES = ("decode", "geometric", "photometric", "tensor")
GEOMETRIC = (T.RandomResizedCrop, T.RandomHorizontalFlip)
PHOTOMETRIC = (T.RandomApply, T.RandomGrayscale, RandomGaussianBlur, RandomSolarize)
TENSOR = (T.ToTensor, T.Normalize, ToNormalizedTensor, ToUint8Tensor)


# ----------------------------------------------------------------------------------------- the images
def imagenet_like_jpeg(rng: np.random.Generator) -> bytes:
    """One JPEG the size and weight of an ImageNet training image (not flat colour: JPEG and the blur
    cost what they cost on photographs)."""
    w, h = int(rng.integers(500, 641)), int(rng.integers(375, 481))
    field = np.zeros((h, w, 3), np.float32)
    for cells, amplitude in ((4, 70), (12, 40), (40, 25), (120, 24), (200, 17)):
        coarse = rng.normal(0, 1, (cells, int(cells * w / h) + 1, 3)).astype(np.float32)
        field += amplitude * np.stack([np.asarray(Image.fromarray(coarse[..., c]).resize((w, h), Image.BICUBIC))
                                       for c in range(3)], -1)
    field += rng.uniform(60, 190, 3)
    img = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 12))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        box = [x0, y0, x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2))]
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    noisy = np.asarray(img.filter(ImageFilter.GaussianBlur(1.0))).astype(np.float32)
    noisy += rng.normal(0, 10, (h, w, 1)) + rng.normal(0, 3, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=int(rng.integers(75, 91)))
    return buf.getvalue()


def release_loader(path: str) -> Image.Image:
    """torchvision's ``pil_loader`` (the release's ImageFolder): open, convert("RGB")."""
    with open(path, "rb") as f:
        return Image.open(f).convert("RGB")


project_loader = load_rgb


# ----------------------------------------------------------------------------------------- the recipes
def recipes() -> dict[str, Callable]:
    """The released ImageNet recipes' unlabelled and labelled transforms."""
    return {
        "suave": TR.swav_multicrop([224, 96], [2, 8], [0.14, 0.05], [1.0, 0.14]),
        "daino": TR.dino_multicrop((0.25, 1.0), (0.05, 0.25), local_crops_number=8),
        "labelled": TR.labelled_transform("standard", 224),
    }


def variants(method: str) -> list[tuple[str, Callable, Callable]]:
    """(name, loader, transform): the reference, each lever added in turn, then the device-photometric CPU part
    (a fresh transform per row, so that each can be instrumented on its own)."""
    rows = [("reference", release_loader, recipes()[method]), ("+skip RGB copy", project_loader, recipes()[method])]
    for k in range(1, len(LEVERS) + 1):
        name = "fast (--fast_aug)" if k == len(LEVERS) else f"+{LEVERS[k - 1]}"
        rows.append((name, project_loader, accelerate(recipes()[method], levers=LEVERS[:k])))
    rows.append(("fast, photometric on GPU", project_loader,
                 accelerate(recipes()[method], device_photometric=True)))
    for _, _, transform in rows:
        for table, max_factor in hue_tables(transform):
            table.build(max_factor)  # once per worker in a run: not part of the per-image cost
    return rows


class Timed:
    """Wraps one op and adds its time to ``clock[category]``."""

    def __init__(self, op: Callable, category: str, clock: dict[str, float]) -> None:
        self.op, self.category, self.clock = op, category, clock

    def __call__(self, x):
        start = CLOCK()
        out = self.op(x)
        self.clock[self.category] += CLOCK() - start
        return out


def instrument(transform: Callable, clock: dict[str, float]) -> None:
    """Wrap every op of every view's Compose (in place) with a ``Timed`` of its category."""
    views = getattr(transform, "transforms", None)
    composes = [transform.transform] if hasattr(transform, "n_rep") else \
        (views if isinstance(transform, TR.MultiViewTransform) else [transform])
    for compose in {id(c): c for c in composes}.values():
        flat = []
        for op in compose.transforms:
            flat += op.transforms if isinstance(op, T.Compose) else [op]
        compose.transforms = [Timed(op, "geometric" if isinstance(op, GEOMETRIC) else "photometric"
                                    if isinstance(op, PHOTOMETRIC) else "tensor", clock) for op in flat]


def time_image(loader: Callable, transform: Callable, path: str, clock: dict[str, float]) -> float:
    start = CLOCK()
    img = loader(path)
    clock["decode"] += CLOCK() - start
    transform(img)
    return CLOCK() - start


def measure(images: list[str], reps: int, methods: list[str]) -> list[dict]:
    """Images/s and the per-image breakdown (ms) of every (method, variant), medians over repetitions.

    Interleaved image by image: each image goes through every pipeline (in a rotating order) before the next
    image, so a burst of load from other processes hits all pipelines alike."""
    pipelines = []
    for method in methods:
        for name, loader, transform in variants(method):
            clock = dict.fromkeys(CATEGORIES, 0.0)
            instrument(transform, clock)
            pipelines.append({"method": method, "variant": name, "loader": loader, "transform": transform,
                              "clock": clock, "times": [], "parts": []})
    for p in pipelines:  # warm-up (first-call costs)
        for path in images[:4]:
            time_image(p["loader"], p["transform"], path, p["clock"])
    torch.manual_seed(0)
    for rep in range(reps):
        for p in pipelines:
            p["clock"].update(dict.fromkeys(CATEGORIES, 0.0))
            p["times"].append(0.0)
        for k, path in enumerate(images):
            shift = (rep * len(images) + k) % len(pipelines)
            for p in pipelines[shift:] + pipelines[:shift]:
                p["times"][-1] += time_image(p["loader"], p["transform"], path, p["clock"])
        for p in pipelines:
            p["parts"].append(dict(p["clock"]))
    rows = []
    for p in pipelines:
        n = len(images)
        ref = next(q for q in pipelines if q["method"] == p["method"] and q["variant"] == "reference")
        row = {"pipeline": p["method"], "variant": p["variant"], "images/s/core": n / statistics.median(p["times"]),
               "x reference": statistics.median(r / t for r, t in zip(ref["times"], p["times"]))}
        for c in CATEGORIES:
            row[f"{c} ms"] = 1000 * statistics.median(part[c] for part in p["parts"]) / n
        rows.append(row)
    return rows


def decode_rows(images: list[str], reps: int) -> list[dict]:
    """Decoders alone (ms per image, median over interleaved repetitions)."""
    from torchvision.io import decode_jpeg, read_file

    def draft_half(path: str) -> Image.Image:
        img = Image.open(path)
        img.draft("RGB", (img.size[0] // 2, img.size[1] // 2))
        img.load()
        return img

    decoders = {"PIL open + convert (release)": release_loader, "PIL, no RGB copy (load_rgb)": project_loader,
                "torchvision.io.decode_jpeg": lambda path: decode_jpeg(read_file(path)),
                "PIL draft mode at 1/2 (not used)": draft_half}
    times: dict[str, list[float]] = {k: [] for k in decoders}
    for _ in range(reps):
        for name, fn in decoders.items():
            start = CLOCK()
            for data in images:
                fn(data)
            times[name].append(CLOCK() - start)
    return [{"decoder": k, "ms/image": 1000 * statistics.median(v) / len(images)} for k, v in times.items()]


def loader_rows(images: list[str], workers: int, batches: int, methods: list[str]) -> list[dict]:
    """A DataLoader with ``workers`` workers end to end (batches of 32), reference vs fast."""
    from src.data.collate import LabelledCollate, UnlabelledCollate
    from src.data.datasets import ImageDataset
    from src.data.loaders import build_unlabelled_loader

    rows = []
    samples = [(path, 0) for path in images]
    samples = (samples * ((batches + 1) * 32 // len(samples) + 1))[:(batches + 1) * 32]
    for method in methods:
        reference = recipes()[method]
        for name, transform in (("reference", reference), ("fast (--fast_aug)", accelerate(reference)),
                                ("fast, photometric on GPU", accelerate(reference, device_photometric=True))):
            for table, max_factor in hue_tables(transform):
                table.build(max_factor)  # before the workers fork: they inherit the tables
            collate = LabelledCollate() if method == "labelled" else UnlabelledCollate()
            loader = build_unlabelled_loader(ImageDataset(samples, {"x": 0}, transform), 32, workers=workers,
                                             collate_fn=collate)
            it = iter(loader)
            next(it)  # workers started and warm
            start = time.perf_counter()
            for _ in range(batches):
                next(it)
            elapsed = time.perf_counter() - start
            rows.append({"pipeline": method, "variant": name, "workers": workers,
                         "images/s": batches * 32 / elapsed, "images/s/worker": batches * 32 / elapsed / workers})
            del it, loader
    return rows



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=24, help="generated JPEGs (each repetition uses them all)")
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions (medians reported)")
    parser.add_argument("--methods", nargs="+", default=["suave", "daino", "labelled"],
                        choices=["suave", "daino", "labelled"])
    parser.add_argument("--workers", type=int, default=0, help="also time a DataLoader with N workers")
    parser.add_argument("--batches", type=int, default=10, help="timed batches of 32 for --workers")
    parser.add_argument("--seed", type=int, default=0)
    opts = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(opts.seed)
    with tempfile.TemporaryDirectory() as root:
        images = []
        for i in range(opts.images):
            images.append(os.path.join(root, f"{i}.JPEG"))
            Path(images[-1]).write_bytes(imagenet_like_jpeg(rng))
        sizes = sorted(Image.open(p).size for p in images)
        kb = np.mean([os.path.getsize(p) for p in images]) / 1024
        print(f"{len(images)} JPEGs, mean {kb:.1f} KB, {sizes[0]} to {sizes[-1]}; torch {torch.__version__}, "
              f"1 thread, {opts.reps} interleaved repetitions")
        print_table(decode_rows(images, opts.reps), digits=2)
        print_table(measure(images, opts.reps, opts.methods), digits=2)
        if opts.workers:
            print_table(loader_rows(images, opts.workers, opts.batches, opts.methods), digits=2)


if __name__ == "__main__":
    main()
