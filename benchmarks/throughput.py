"""Throughput of a full Suave / Daino training step, and the share of it spent outside the networks.

For each method it times, side by side in one run and alternating, on the same fixed batch:
  step     the production step (src.engine.TrainStep): forward, targets (Sinkhorn + queue / teacher
           centering), loss, backward, gradient rules, clipping, optimiser, EMA
  network  the same networks' forward (student on every crop, teacher/momentum encoder on the globals),
           backward of a trivial loss, and the optimiser step
and prints images/s of the step and overhead = (step - network) / step (negative: below the timing noise):
what targets, Sinkhorn, queue, EMA, loss and bookkeeping cost. Data loading is excluded (the engine logs data time separately).

    python benchmarks/throughput.py                       # CPU: small-image recipes
    python benchmarks/throughput.py --preset imagenet     # the released 224-px recipes (meant for a GPU)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daino.args import get_args_parser as daino_parser  # noqa: E402
from daino.method import DainoMethod  # noqa: E402
from src.data import LabelledBatch, UnlabelledBatch  # noqa: E402
from src.engine import Precision, TrainStep  # noqa: E402
from suave.args import get_args_parser as suave_parser  # noqa: E402
from suave.method import SuaveMethod  # noqa: E402

PRESETS = {
    "small": {
        "classes": 10,
        "suave": ["--arch", "resnet18", "--small_stem", "true", "--hidden_mlp", "512", "--feat_dim", "128",
                  "--nmb_crops", "2", "4", "--size_crops", "32", "16", "--batch_size", "32", "--lab_batch_size", "16",
                  "--queue_length", "256", "--epoch_queue_starts", "0", "--lab_crop_size", "32"],
        "daino": ["--arch", "vit_tiny", "--patch_size", "4", "--global_crop_size", "32", "--local_crop_size", "16",
                  "--local_crops_number", "4", "--batch_size_per_gpu", "32", "--lab_batch_size_per_gpu", "16",
                  "--lab_crop_size", "32", "--clip_grad", "3.0"],
    },
    "imagenet": {
        "classes": 1000,
        "suave": ["--arch", "resnet50", "--nmb_crops", "2", "8", "--size_crops", "224", "96", "--batch_size", "32",
                  "--lab_batch_size", "16", "--queue_length", "3840", "--epoch_queue_starts", "0",
                  "--hidden_mlp", "2048", "--multihead_eval", "true", "--use_fp16", "true"],
        "daino": ["--arch", "vit_small", "--patch_size", "16", "--local_crops_number", "8",
                  "--batch_size_per_gpu", "64", "--lab_batch_size_per_gpu", "32", "--use_fp16", "false",
                  "--clip_grad", "0", "--norm_last_layer", "false"],
    },
}


def parse(parser_fn, argv: list[str]) -> argparse.Namespace:
    return argparse.ArgumentParser(parents=[parser_fn()]).parse_args(argv + ["--epochs", "1", "--warmup_epochs", "0"])


def crop_sizes(method_name: str, args: argparse.Namespace) -> list[int]:
    if method_name == "suave":
        return [s for n, s in zip(args.nmb_crops, args.size_crops) for _ in range(n)]
    return [args.global_crop_size] * 2 + [args.local_crop_size] * args.local_crops_number


def fixed_batches(method_name: str, args: argparse.Namespace, classes: int, device: torch.device):
    unlab_bs = args.batch_size if method_name == "suave" else args.batch_size_per_gpu
    lab_bs = args.lab_batch_size if method_name == "suave" else args.lab_batch_size_per_gpu
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(unlab_bs, 3, s, s, generator=g) for s in crop_sizes(method_name, args)]
    labels = torch.randint(0, classes, (lab_bs,), generator=g)
    lab = LabelledBatch(torch.randn(lab_bs, 3, args.lab_crop_size, args.lab_crop_size, generator=g), labels,
                        labels, lab_bs)
    unlab = UnlabelledBatch(views, torch.randint(0, classes, (unlab_bs,), generator=g))
    return lab.to(device), unlab.to(device), unlab_bs + lab_bs


def network_only(method, optimizer, precision: Precision, lab, unlab) -> None:
    """Forward of the student on every crop (and of the teacher/momentum encoder on the globals), backward of
    a trivial loss, optimiser step: the part of a step that is the networks themselves."""
    with precision.autocast():
        out = method.student([lab.images] + unlab.views)
        scores = method.class_scores(out)
        with torch.no_grad():
            other = getattr(method, "teacher", None) or getattr(method, "ema", None)
            if other is not None:
                other(unlab.views[:2])
        loss = scores.float().square().mean()
    optimizer.zero_grad(set_to_none=True)
    if precision.scaler is not None:
        precision.scaler.scale(loss).backward()
        precision.scaler.step(optimizer)
        precision.scaler.update()
    else:
        loss.backward()
        optimizer.step()


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench(method_name: str, preset: str, device: torch.device, steps: int, warmup: int, bf16: bool) -> dict:
    spec = PRESETS[preset]
    parser_fn, cls = (suave_parser, SuaveMethod) if method_name == "suave" else (daino_parser, DainoMethod)
    args = parse(parser_fn, spec[method_name] + (["--use_bf16", "true"] if bf16 else []))
    method = cls(args, spec["classes"], device)
    for network in method.networks():
        network.to(device)
    method.set_train_modes(first_epoch_of_run=True)
    method.forward_student = method.student
    optimizer = method.build_optimizer()
    schedules = method.build_schedules(steps + warmup + 1)
    precision = Precision(args.use_fp16, args.use_bf16, device)
    step = TrainStep(method, optimizer, schedules, precision, args.clip_grad)
    lab, unlab, images = fixed_batches(method_name, args, spec["classes"], device)
    for i in range(warmup):
        step(lab, unlab, 0, i)
        network_only(method, optimizer, precision, lab, unlab)
    step_times, net_times = [], []
    for i in range(steps):
        step_times.append(timed(lambda: step(lab, unlab, 0, warmup + i), device))
        net_times.append(timed(lambda: network_only(method, optimizer, precision, lab, unlab), device))
    t_step, t_net = statistics.median(step_times), statistics.median(net_times)
    return {"method": method_name, "preset": preset, "device": str(device), "precision": precision.describe(),
            "images/step": images, "step ms": 1000 * t_step, "network ms": 1000 * t_net,
            "images/s": images / t_step, "overhead %": 100 * (t_step - t_net) / t_step}


def print_table(rows: list[dict]) -> None:
    columns = list(rows[0])
    cells = [[f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="small (CPU default) or imagenet (GPU default)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--methods", nargs="+", default=["suave", "daino"], choices=["suave", "daino"])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast instead of the recipe's precision")
    opts = parser.parse_args()
    device = torch.device("cuda" if opts.device == "cuda" or (opts.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    preset = opts.preset or ("imagenet" if device.type == "cuda" else "small")
    torch.manual_seed(0)
    rows = [bench(m, preset, device, opts.steps, opts.warmup, opts.bf16) for m in opts.methods]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""))
    print_table(rows)


if __name__ == "__main__":
    main()
