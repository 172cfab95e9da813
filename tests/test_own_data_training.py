"""End-to-end CPU runs on own-data layouts (docs/data.md): separate labelled/unlabelled sources, validation
optional or lacking classes, unreadable images skipped and counted, file lists not rescanned on resume, and the
launcher and torchrun paths."""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest

import job_launcher
import main_daino
import main_suave
from src.checkpoint import read_checkpoint
from src.data import ImageDataset, make_synthetic_own_layout, sources
from src.data_setup import eval_transform
from src.trained import load_trained
from tests.test_training import DAINO_TINY, REPO, SUAVE_TINY, recompute_validation, run

pytestmark = pytest.mark.slow  # end-to-end training runs on own data (and torchrun)

CLASSES = ["c0", "c1", "c2", "c3"]


@pytest.fixture(scope="module")
def own_data(tmp_path_factory):
    # 4 classes x (4 labelled + 12 unlabelled): 48 flat unlabelled + 16 labelled = 64 = 8 batches of 8
    return make_synthetic_own_layout(tmp_path_factory.mktemp("own"), num_classes=4, lab_per_class=4,
                                     unlab_per_class=12, val_per_class=2, size=32)


def own_copy(own_data, tmp_path):
    shutil.copytree(own_data.lab_dir.parent, tmp_path / "data")
    return make_paths(tmp_path / "data")


def make_paths(root):
    return {"lab": str(root / "lab"), "unlab": str(root / "unlab"), "val": str(root / "val"),
            "csv": str(root / "lab.csv"), "list": str(root / "unlab.txt")}


def folders(paths, out, epochs=1, val=False):
    argv = ["--lab_dir", paths["lab"], "--unlab_dir", paths["unlab"], "--output_dir", out, "--epochs", str(epochs)]
    return argv + (["--val_dir", paths["val"]] if val else [])


def log_of(out):
    return open(os.path.join(out, "train.log")).read()


@pytest.mark.parametrize("module,tiny", [(main_suave, SUAVE_TINY), (main_daino, DAINO_TINY)], ids=["suave", "daino"])
def test_folders_without_validation_train_log_and_checkpoint(module, tiny, own_data, tmp_path):
    out = str(tmp_path / "exp")
    paths = make_paths(own_data.lab_dir.parent)
    assert run(module, folders(paths, out) + tiny + ["--max_iters_per_epoch", "3"]) == 0
    log = log_of(out)
    assert log.count("no validation source (--val_dir / --val_csv): this run reports no validation accuracy") == 1
    assert "64 unlabelled, 16 labelled" in log and "validation:" not in log
    stats = pd.read_csv(os.path.join(out, "stats.csv"))
    assert "val_acc1" not in stats and list(stats["bad_images"]) == [0]
    # labelled images are in the unlabelled stream (default) with their class: pseudo-label accuracy on them
    assert "train_pseudo_acc1" in stats
    ckpt = read_checkpoint(os.path.join(out, "checkpoint.pth"))
    assert ckpt["classes"] == CLASSES and ckpt["iteration"] == 3
    assert "val_acc1" not in json.load(open(os.path.join(out, "results.json")))


def test_csv_and_list_with_a_class_missing_from_validation(own_data, tmp_path):
    paths = make_paths(own_data.lab_dir.parent)
    val_csv = tmp_path / "val.csv"
    val_csv.write_text("".join(f"{paths['val']}/{c}/{f},{c}\n" for c in ("c0", "c1")
                               for f in sorted(os.listdir(os.path.join(paths["val"], c)))))
    out = str(tmp_path / "exp")
    argv = ["--lab_csv", paths["csv"], "--unlab_list", paths["list"], "--val_csv", str(val_csv),
            "--unlab_include_labelled", "false", "--output_dir", out, "--epochs", "1", "--max_iters_per_epoch", "2"]
    assert run(main_suave, argv + SUAVE_TINY) == 0
    log = log_of(out)
    assert "validation source has no image of class(es) c2, c3: they are not evaluated" in log
    assert "48 unlabelled, 16 labelled" in log and "4 val images" in log
    stats = pd.read_csv(os.path.join(out, "stats.csv"))
    # validation counts exactly the 4 images of val.csv: equal to a recomputation from the checkpoint
    trained = load_trained(os.path.join(out, "checkpoint.pth"))
    class_to_idx = {name: index for index, name in enumerate(trained.classes)}
    rows = (line.split(",") for line in val_csv.read_text().splitlines())
    samples = [(path, class_to_idx[label]) for path, label in rows]
    val = ImageDataset(samples, class_to_idx, eval_transform(trained.preprocessing))
    acc1, loss = recompute_validation(trained, val, "student")
    assert stats["val_acc1"].iloc[0] == pytest.approx(acc1, abs=1e-9) and len(samples) == 4
    assert stats["val_loss"].iloc[0] == pytest.approx(loss, rel=1e-4)
    assert "train_pseudo_acc1" not in stats  # no unlabelled image has a known class


def test_one_bad_image_is_skipped_named_and_counted(own_data, tmp_path):
    paths = own_copy(own_data, tmp_path)
    images = sorted(glob.glob(os.path.join(paths["unlab"], "*.png")))[:16]  # 2 batches: an epoch reads them all
    bad = images[5]
    open(bad, "wb").write(b"\x89PNG truncated")
    listing = tmp_path / "unlab16.txt"
    listing.write_text("\n".join(images) + "\n")
    out = str(tmp_path / "exp")
    argv = ["--lab_dir", paths["lab"], "--unlab_list", str(listing), "--unlab_include_labelled", "false",
            "--output_dir", out, "--epochs", "1"]
    assert run(main_suave, argv + SUAVE_TINY) == 0
    log = log_of(out)
    assert f"skipped unreadable image {bad}" in log
    assert "1 unreadable image(s) skipped so far (limit --max_bad_images 100)" in log
    assert list(pd.read_csv(os.path.join(out, "stats.csv"))["bad_images"]) == [1]
    assert list(read_checkpoint(os.path.join(out, "checkpoint.pth"))["bad_images"]) == [bad]


def test_too_many_bad_images_stop_the_run_naming_them(own_data, tmp_path, capsys):
    paths = own_copy(own_data, tmp_path)
    bad = sorted(glob.glob(os.path.join(paths["unlab"], "*.png")))[:4]
    for path in bad:
        open(path, "wb").write(b"not an image")
    out = str(tmp_path / "exp")
    assert run(main_suave, folders(paths, out) + SUAVE_TINY + ["--max_bad_images", "2"]) == 2
    err = capsys.readouterr().err
    assert "unreadable images, more than --max_bad_images 2:" in err
    assert sum(path in err for path in bad) >= 3


def test_resume_reads_the_cached_file_lists_without_rescanning(own_data, tmp_path, monkeypatch):
    out = str(tmp_path / "exp")
    paths = make_paths(own_data.lab_dir.parent)
    argv = folders(paths, out, epochs=2) + SUAVE_TINY + ["--max_iters_per_epoch", "2"]
    assert run(main_suave, argv + ["--stop_after_epochs", "1"]) == 0
    assert len(glob.glob(os.path.join(out, "data_files-*.json"))) == 1

    def no_scan(root):
        raise AssertionError(f"rescanned {root}")
    monkeypatch.setattr(sources, "scan_images", no_scan)
    assert run(main_suave, argv) == 0
    assert read_checkpoint(os.path.join(out, "checkpoint.pth"))["epoch"] == 2
    assert "file lists read from" in log_of(out)


def test_own_data_through_the_launcher(own_data, tmp_path):
    paths = make_paths(own_data.lab_dir.parent)
    recipe = tmp_path / "tiny.sh"
    recipe.write_text("main_suave.py \\\n" + " \\\n".join(SUAVE_TINY) + "\n")
    base = str(tmp_path / "exps")
    code = job_launcher.main(["--mode", "local", "--num_gpus", "0", "--method", "suave", "--script_file", str(recipe),
                              "--data_dir", str(own_data.lab_dir.parent), "--name", "own", "--base_experiment_dir",
                              base, "--", "--lab_csv", paths["csv"], "--unlab_dir", paths["unlab"], "--epochs", "1",
                              "--max_iters_per_epoch", "2"], entry_root=REPO)
    assert code == 0
    [exp] = glob.glob(os.path.join(base, "*-own"))
    assert read_checkpoint(os.path.join(exp, "checkpoint.pth"))["classes"] == CLASSES


def test_torchrun_two_processes_on_own_data(own_data, tmp_path):
    paths = make_paths(own_data.lab_dir.parent)
    out = str(tmp_path / "exp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(REPO, "main_daino.py"), *folders(paths, out, val=True), *DAINO_TINY,
           "--max_iters_per_epoch", "2", "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = read_checkpoint(os.path.join(out, "checkpoint.pth"))
    assert ckpt["world_size"] == 2 and ckpt["iteration"] == 2 and ckpt["classes"] == CLASSES
    assert len(glob.glob(os.path.join(out, "data_files-*.json"))) == 1
