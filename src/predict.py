"""Predict classes of new images: ``python -m src.predict --checkpoint CKPT --images DIR|LIST --out preds.csv``.

Images: a folder (searched recursively for image files) or a text file listing one path per line (relative
paths are taken from the list's folder). Each image gets the checkpoint's own evaluation preprocessing
(Resize, CenterCrop, Normalize) and goes, in batches, on the CPU or a GPU, with the run's validation precision
(bf16/fp16 autocast when it trained so) through the network validation reports first (Daino's teacher, Suave's student; ``--checkpoint_key`` picks the other). The CSV has one row per
image, in input order: ``path, predicted_class, probability, top5, error``: probability = softmax(scores /
temperature) of the predicted class, top5 = the five most probable class names joined by ``;``. An unreadable
image gets an empty prediction and its reason in ``error``; the others are still predicted. When every image
lies in a folder named after one of the classes, the accuracy against those folders is printed.
"""
from __future__ import annotations

import argparse
import csv
import os
import shlex
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from src.atomic_io import atomic_path
from src.data import load_rgb
from src.data.folders import is_image_file
from src.data_setup import eval_transform
from src.errors import UserError
from src.trained import FLAGS_HELP, classifier, load_trained

FIELDS = ["path", "predicted_class", "probability", "top5", "error"]


def list_images(source: str) -> list[str]:
    """Image paths of a folder (recursively, sorted) or of a list file (one per line, in order)."""
    if os.path.isdir(source):
        paths = sorted(os.path.join(root, name) for root, _, names in os.walk(source, followlinks=True)
                       for name in names if is_image_file(name))
        if not paths:
            raise UserError(f"--images {source} holds no image files ({', '.join(('.jpg', '.png', '...'))})")
        return paths
    if not os.path.isfile(source):
        raise UserError(f"--images {source} is neither a folder nor a list file of image paths")
    base = os.path.dirname(os.path.abspath(source))
    with open(source) as handle:
        lines = [line.strip() for line in handle if line.strip() and not line.startswith("#")]
    if not lines:
        raise UserError(f"--images {source} lists no image paths (one per line)")
    return [line if os.path.isabs(line) else os.path.join(base, line) for line in lines]


class ImagesToPredict(Dataset):
    """(image tensor or None, index, reason): a file that cannot be read is reported, not raised."""

    def __init__(self, paths: list[str], transform: Any) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, str]:
        try:
            return self.transform(load_rgb(self.paths[index])), index, ""
        except Exception as error:  # noqa: BLE001 - any unreadable file is listed with its reason
            cause = error.__cause__ or error
            return None, index, f"{type(cause).__name__}: {cause}".replace("\n", " ")


def collate(items: list) -> tuple[torch.Tensor | None, list[int], list[tuple[int, str]]]:
    """Stack the readable images; keep (index, reason) of the others."""
    good = [(image, index) for image, index, reason in items if not reason]
    failed = [(index, reason) for _, index, reason in items if reason]
    images = torch.stack([image for image, _ in good]) if good else None
    return images, [index for _, index in good], failed


@torch.no_grad()
def predict(checkpoint: str, images: str, out: str, batch_size: int = 64, device: str = "auto", workers: int = 0,
            checkpoint_key: str | None = None, data_path: str | None = None, topk: int = 5,
            flags: Sequence[str] = ()) -> dict[str, Any]:
    """Write the predictions CSV; returns a summary (counts, and the accuracy when folders name classes).
    ``flags``: the method's flags for a file the release wrote (``src.trained.load_trained``'s command_line)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    trained = load_trained(checkpoint, device, data_path=data_path, command_line=flags)
    if trained.flags_source:
        print(f"{checkpoint}: network flags from {trained.flags_source}", file=sys.stderr)
    model = classifier(trained, checkpoint_key)
    paths = list_images(images)
    loader = DataLoader(ImagesToPredict(paths, eval_transform(trained.preprocessing)), batch_size=batch_size,
                        num_workers=workers, collate_fn=collate, pin_memory=device.startswith("cuda"))
    rows: list[dict[str, Any]] = [{"path": path} for path in paths]
    precision = trained.eval_precision()
    k = min(topk, len(trained.classes))
    done, failures, start = 0, 0, time.perf_counter()
    for batch, indices, failed in loader:
        for index, reason in failed:
            rows[index].update(predicted_class="", probability="", top5="", error=reason)
        if batch is not None:
            with precision.autocast():
                probabilities = model(trained.prepare(batch)).float().softmax(dim=1).cpu()
            top_p, top_i = probabilities.topk(k, dim=1)
            for row, p, i in zip(indices, top_p.tolist(), top_i.tolist()):
                names = [trained.classes[c] for c in i]
                rows[row].update(predicted_class=names[0], probability=f"{p[0]:.6f}", top5=";".join(names), error="")
        done += len(indices) + len(failed)
        failures += len(failed)
        rate = done / max(time.perf_counter() - start, 1e-9)
        print(f"\rpredicted {done}/{len(paths)} images ({failures} unreadable), {rate:.1f} img/s", end="",
              file=sys.stderr, flush=True)
    print(file=sys.stderr)
    with atomic_path(out, parents=True) as temporary, open(temporary, "x", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    summary: dict[str, Any] = {"images": len(paths), "predicted": len(paths) - failures, "unreadable": failures,
                               "out": out, "network": checkpoint_key or trained.main_network}
    folders = [os.path.basename(os.path.dirname(row["path"])) for row in rows if not row["error"]]
    if folders and set(folders) <= set(trained.classes):
        correct = sum(row["predicted_class"] == folder for row, folder in
                      zip([row for row in rows if not row["error"]], folders))
        summary["accuracy"] = 100.0 * correct / len(folders)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser("python -m src.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="EXP/checkpoint.pth of a Suave or Daino run")
    parser.add_argument("--images", required=True, help="a folder of images (recursive) or a list file")
    parser.add_argument("--out", default="preds.csv", help="CSV to write (default: preds.csv)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--workers", type=int, default=0, help="image-decoding worker processes")
    parser.add_argument("--checkpoint_key", default=None, choices=["student", "teacher"],
                        help="network to predict with (default: Daino's teacher, Suave's student)")
    parser.add_argument("--data_path", default=None, help="for checkpoints without layout_version (version 1) and files the "
                        "release wrote: the training data (its train/ class folders name the classes)")
    parser.add_argument("--flags", default="", help=FLAGS_HELP)
    args = parser.parse_args(argv)
    try:
        summary = predict(args.checkpoint, args.images, args.out, args.batch_size, args.device, args.workers,
                          args.checkpoint_key, args.data_path, flags=shlex.split(args.flags))
    except (UserError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {summary['out']}: {summary['predicted']} images predicted with the {summary['network']}, "
          f"{summary['unreadable']} unreadable (their reason is in the 'error' column)")
    if "accuracy" in summary:
        print(f"accuracy against the images' class folders: {summary['accuracy']:.2f}% "
              f"({summary['predicted']} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
