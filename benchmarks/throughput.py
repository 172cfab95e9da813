"""Throughput of a full Suave / Daino training step, and the share of it spent outside the networks.

For each method it times, side by side in one run and alternating, on the same fixed batch:
  step     the production step (src.train_step.TrainStep): forward, targets (Sinkhorn + queue / teacher
           centering), loss, backward, gradient rules, clipping, optimiser, EMA
  network  the same networks' forward (student on every crop, teacher/momentum encoder on the globals),
           backward of a trivial loss, and the optimiser step
and prints images/s of the step and overhead = (step - network) / step (negative: below the timing noise):
what targets, Sinkhorn, queue, EMA, loss and bookkeeping cost. Data loading is excluded (the engine logs data time separately).

    python benchmarks/throughput.py                       # CPU: small-image recipes
    python benchmarks/throughput.py --preset fmnist --precisions fp32 bf16   # the Fashion-MNIST CPU recipes' step
    python benchmarks/throughput.py --preset imagenet     # the released 224-px recipes (meant for a GPU)
    python benchmarks/throughput.py --preset imagenet --levers   # one row per speed lever, added in turn
    python benchmarks/throughput.py --levers 6                   # CPU: all but --compile
    python benchmarks/throughput.py --preset imagenet --device_aug   # + the --gpu_aug stage's ms per batch

``--levers`` times the step (timed in blocks of steps with one device sync per block, so that a step that
does not wait for the GPU shows it) with: the step as it ran before the levers (cudnn.benchmark and TF32 off),
then cumulatively cudnn.benchmark (the default), --nan_check_every 50, --tf32 (the default, as the release's
PyTorch 1.11), --channels_last, --fused_optimizer, --compile. Extra method flags can be passed after ``--``.
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
from benchmarks.report import print_table  # noqa: E402
from src.data import LabelledBatch, UnlabelledBatch  # noqa: E402
from src import perf  # noqa: E402
from src.train_step import Precision, TrainStep  # noqa: E402
from suave.args import get_args_parser as suave_parser  # noqa: E402
from suave.method import SuaveMethod  # noqa: E402
from benchmarks.fmnist_benchmark import recipe_flags  # noqa: E402

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
    "fmnist": {  # the CPU recipes of the Fashion-MNIST benchmark (cnn6w2, 28/14 px), as their files say
        "classes": 10,
        "suave": recipe_flags("suave/scripts/fmnist_1perc.sh", {})[1],
        "daino": recipe_flags("daino/scripts/fmnist_1perc.sh", {})[1],
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
        scores = method.student([lab.images] + unlab.views).scores
        with torch.no_grad():
            other = method.ema_network()  # Daino's teacher, Suave's momentum encoder
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


LEVERS = [("before the levers", ["--cudnn_benchmark", "false", "--tf32", "false"]),
          ("+cudnn_benchmark (default)", ["--tf32", "false"]),  # TF32 (on by default) joins at its own row
          ("+nan_check_every 50", ["--nan_check_every", "50"]),
          ("+tf32", ["--tf32", "true"]),
          ("+channels_last", ["--channels_last", "true"]),
          ("+fused_optimizer", ["--fused_optimizer", "true"]),
          ("+compile", ["--compile", "true"])]


PRECISION_FLAGS = {"recipe": [], "fp32": ["--use_fp16", "false", "--use_bf16", "false"],
                   "bf16": ["--use_bf16", "true"], "auto": ["--use_bf16", "auto"]}


def build(method_name: str, preset: str, device: torch.device, total_steps: int, bf16: bool | str,
          extra: list[str]):
    """The method, its optimiser and TrainStep as the engine builds them (speed flags included), and a batch.
    ``bf16``: True/False (the ``--bf16`` option) or a ``PRECISION_FLAGS`` key."""
    spec = PRESETS[preset]
    parser_fn, cls = (suave_parser, SuaveMethod) if method_name == "suave" else (daino_parser, DainoMethod)
    precision_flags = PRECISION_FLAGS[bf16] if isinstance(bf16, str) else (["--use_bf16", "true"] if bf16 else [])
    args = parse(parser_fn, spec[method_name] + precision_flags + extra)
    perf_config = perf.PerfConfig.from_args(args)
    perf.configure_backends(perf_config, device)
    method = cls(args, spec["classes"], device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    for module in method.networks():
        module.to(device, memory_format=memory_format)
    method.set_train_modes(first_epoch_of_run=True)
    method.forward_student = perf.maybe_compile(method.student, perf_config)
    optimizer = perf.maybe_fuse(method.build_optimizer(), perf_config, device)
    schedules = method.build_schedules(total_steps + 1)
    precision = Precision(args.use_fp16, args.use_bf16, device)
    step = TrainStep(method, optimizer, schedules, precision, method.clip_grad, perf_config.nan_check_every)
    lab, unlab, images = fixed_batches(method_name, args, spec["classes"], device)
    if args.channels_last:
        lab, unlab = lab.to(device, channels_last=True), unlab.to(device, channels_last=True)
    return method, optimizer, precision, step, lab, unlab, images


def bench_levers(method_name: str, preset: str, device: torch.device, steps: int, warmup: int, bf16: bool,
                 extra: list[str], rows_wanted: int = len(LEVERS), block: int = 5) -> list[dict]:
    """Images/s of the step with each lever added in turn (``LEVERS``), steps timed in blocks of ``block``."""
    rows, base = [], None
    for k, (name, _) in enumerate(LEVERS[:rows_wanted]):
        if k == 0:
            current = list(extra) + LEVERS[0][1]
        else:
            current = list(extra) + [flag for _, lever in LEVERS[1:k + 1] for flag in lever]
        _, _, precision, step, lab, unlab, images = build(method_name, preset, device, steps + warmup, bf16, current)
        for i in range(warmup):
            step(lab, unlab, 0, i)
        times = []
        for b in range(max(steps // block, 1)):
            times.append(timed(lambda: [step(lab, unlab, 0, warmup + b * block + i) for i in range(block)],
                               device) / block)
        t = statistics.median(times)
        base = base or t
        rows.append({"method": method_name, "lever": name, "precision": precision.describe(),
                     "step ms": 1000 * t, "images/s": images / t, "x before": base / t})
        print(f"  {method_name:6} {name:28} {1000 * t:8.1f} ms {images / t:8.1f} images/s  "
              f"x{base / t:.2f}", flush=True)  # as measured: a slow --compile row cut short keeps the others
    return rows


def bench_device_aug(method_name: str, device: torch.device, steps: int) -> dict:
    """Time of ``--gpu_aug``'s photometric stage on one batch of the released recipe's uint8 views
    (Suave: 32 x (2 x 224 + 8 x 96), Daino: 64 x the same), to set against the step time."""
    from src.data import transforms as TR
    from src.data.collate import UnlabelledBatch
    from src.data.device_aug import DevicePhotometric

    if method_name == "suave":
        recipe, batch = TR.swav_multicrop([224, 96], [2, 8], [0.14, 0.05], [1.0, 0.14]), 32
    else:
        recipe, batch = TR.dino_multicrop((0.25, 1.0), (0.05, 0.25), 8), 64
    stage = DevicePhotometric.from_transform(recipe, seed=0)
    g = torch.Generator().manual_seed(0)
    views = [torch.randint(0, 256, (batch, 3, s, s), generator=g, dtype=torch.uint8).to(device) for s in recipe.sizes]
    unlab = UnlabelledBatch(views, torch.zeros(batch, dtype=torch.long, device=device))
    stage(unlab, 0)
    times = [timed(lambda: stage(unlab, i), device) for i in range(steps)]
    return {"method": method_name, "stage": "--gpu_aug photometric", "device": str(device), "images": batch,
            "ms per batch": 1000 * statistics.median(times)}


def bench(method_name: str, preset: str, device: torch.device, steps: int, warmup: int, bf16: bool | str,
          extra: list[str] | None = None) -> dict:
    method, optimizer, precision, step, lab, unlab, images = build(method_name, preset, device, steps + warmup,
                                                                   bf16, extra or [])
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



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="small (CPU default) or imagenet (GPU default)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--methods", nargs="+", default=["suave", "daino"], choices=["suave", "daino"])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast instead of the recipe's precision")
    parser.add_argument("--precisions", nargs="+", choices=sorted(PRECISION_FLAGS), default=None,
                        help="one row per precision, side by side (e.g. fp32 bf16), with its step time relative "
                             "to the first's; recipe = the preset's own, auto = --use_bf16 auto on this machine")
    parser.add_argument("--levers", type=int, nargs="?", const=len(LEVERS), default=0,
                        help="one row per speed lever, added in turn (a number: only the first N rows, e.g. 6 "
                             "leaves out --compile)")
    parser.add_argument("--device_aug", action="store_true",
                        help="also time --gpu_aug's photometric stage on one batch of the 224-px recipe's views")
    parser.add_argument("extra", nargs="*", help="method flags after --, e.g. -- --tf32 false")
    opts = parser.parse_args()
    device = torch.device("cuda" if opts.device == "cuda" or (opts.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    preset = opts.preset or ("imagenet" if device.type == "cuda" else "small")
    torch.manual_seed(0)
    if opts.levers:
        rows = [row for m in opts.methods
                for row in bench_levers(m, preset, device, opts.steps, opts.warmup, opts.bf16, opts.extra,
                                        opts.levers)]
    elif opts.precisions:
        rows = []
        for m in opts.methods:
            first = None
            for name in opts.precisions:
                row = bench(m, preset, device, opts.steps, opts.warmup, name, opts.extra)
                first = first or row["step ms"]
                rows.append({**row, f"step time / {opts.precisions[0]}'s": row["step ms"] / first})
                print(f"  {m:6} {name:6} {row['step ms']:9.1f} ms a step", flush=True)
    else:
        rows = [bench(m, preset, device, opts.steps, opts.warmup, opts.bf16, opts.extra) for m in opts.methods]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""))
    print_table(rows)
    if opts.device_aug:
        print_table([bench_device_aug(m, device, opts.steps) for m in opts.methods])


if __name__ == "__main__":
    main()
