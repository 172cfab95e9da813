"""benchmarks/throughput.py's ``fmnist`` preset times what the Fashion-MNIST CPU recipes train, in the precision
asked for (its step times are in benchmarks/results/measured_without_run_files.md)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from throughput import build  # noqa: E402

CPU = torch.device("cpu")


@pytest.mark.parametrize("precision, dtype", [("fp32", None), ("bf16", torch.bfloat16)])
def test_the_fmnist_preset_builds_the_suave_recipes_step_and_batches(precision, dtype):
    method, _, built_precision, _, lab, unlab, images = build("suave", "fmnist", CPU, 2, precision, [])
    assert built_precision.dtype is dtype
    args = method.args
    assert (args.arch, args.batch_size, args.lab_batch_size, args.queue_length) == ("cnn6w2", 32, 128, 1024)
    assert [v.shape[-1] for v in unlab.views] == [28, 28, 14, 14] and lab.images.shape == (128, 3, 28, 28)
    assert images == 32 + 128
    assert lab.images.is_contiguous(memory_format=torch.channels_last)  # the recipe's --channels_last true


def test_the_fmnist_preset_builds_dainos_recipe():
    method, _, _, _, lab, unlab, images = build("daino", "fmnist", CPU, 2, "fp32", [])
    assert method.args.arch == "cnn6w2"
    assert images == method.args.batch_size_per_gpu + method.args.lab_batch_size_per_gpu
