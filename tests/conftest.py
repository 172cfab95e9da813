import gzip
import os
import shutil

import pytest
import torch

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))

# A copy of ../shared/reference (the public SwAV/DINO checkpoint layouts and the standard ImageNet 1%/10% lists,
# gzipped), so that no test skips in a clean clone.
REFERENCE_FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "reference")


@pytest.fixture(scope="session")
def shared_reference(tmp_path_factory) -> str:
    """A folder laid out as ../shared/reference, made from tests/fixtures/reference (the .gz files unpacked)."""
    out = tmp_path_factory.mktemp("reference")
    for folder, _, files in os.walk(REFERENCE_FIXTURES):
        target = out / os.path.relpath(folder, REFERENCE_FIXTURES)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            source = os.path.join(folder, name)
            if name.endswith(".gz"):
                with gzip.open(source, "rb") as src, open(target / name[:-3], "wb") as dst:
                    shutil.copyfileobj(src, dst)
            else:
                shutil.copy(source, target / name)
    return str(out)


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> dict:
    """Checkpoints the engine really wrote: one epoch of 2 iterations on a tiny generated ImageFolder (4 classes).

    ``suave_momentum`` (momentum encoder + online probes: a 'teacher' and probe heads), ``suave`` (no momentum
    encoder: the student only) and ``daino`` (student + EMA teacher). Values: {"dir", "checkpoint", "data"}.
    """
    import main_daino
    import main_suave
    from src.cli import run_main
    from src.data.synthetic import make_synthetic_imagefolder
    from tests.test_training import DAINO_TINY, SUAVE_TINY

    root = tmp_path_factory.mktemp("trained")
    info = make_synthetic_imagefolder(str(root / "data"), num_classes=4, train_per_class=16, val_per_class=4,
                                      size=32, seed=0, subset_per_class=4)
    runs = {"suave_momentum": (main_suave, SUAVE_TINY + ["--use_momentum", "true", "--multihead_eval", "true"]),
            "suave": (main_suave, SUAVE_TINY), "daino": (main_daino, DAINO_TINY)}
    out = {}
    for name, (module, flags) in runs.items():
        run_dir = str(root / name)
        argv = ["--data_path", str(root / "data"), "--subset_file", str(info.subset_file), "--output_dir", run_dir,
                "--epochs", "1", "--max_iters_per_epoch", "2", *flags]
        assert run_main(module.get_args_parser, module.main, name, argv) == 0
        out[name] = {"dir": run_dir, "checkpoint": os.path.join(run_dir, "checkpoint.pth"), "data": str(root / "data")}
    return out
