"""--fast_aug and --gpu_aug in tiny end-to-end CPU runs (the GPU stage runs on the CPU device here)."""
from __future__ import annotations

import os

import pandas as pd
import pytest

import main_daino
import main_suave
from src.checkpoint import read_checkpoint

from .test_training import DAINO_TINY, SUAVE_TINY, common, run, tiny_data  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow  # an end-to-end training run


@pytest.mark.parametrize("module,tiny,flags,path", [
    (main_daino, DAINO_TINY, ["--fast_aug", "true"], "fast CPU path"),
    # unlabelled mixup: the collate draws the parameters, the device stage mixes the finished views
    (main_suave, SUAVE_TINY, ["--fast_aug", "true", "--gpu_aug", "true", "--mixup_unlab", "true",
                              "--mixup_unlab_type", "globals"], "photometric ops on the device"),
], ids=["daino-fast", "suave-fast+gpu_aug+mixup"])
def test_training_runs_with_the_fast_pipelines(module, tiny, flags, path, tiny_data, tmp_path):  # noqa: F811
    out = str(tmp_path / "exp")
    assert run(module, common(tiny_data, out, 1) + tiny + ["--max_iters_per_epoch", "2"] + flags) == 0
    with open(os.path.join(out, "train.log")) as f:
        assert path in f.read()
    assert read_checkpoint(os.path.join(out, "checkpoint.pth"))["iteration"] == 2
    loss = pd.read_csv(os.path.join(out, "stats.csv"))["train_loss"].item()
    assert 0 < loss < 50
