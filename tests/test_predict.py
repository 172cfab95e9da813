"""``python -m src.predict`` on checkpoints of tiny trained runs: a folder with one corrupt image, a list file;
the CSV's accuracy on the labelled val folder equals ``--evaluate``'s top-1."""
from __future__ import annotations

import json
import os
import shutil

import pandas as pd
import pytest
import torch

import main_daino
import main_suave
from src.cli import run_main
from src.data_setup import eval_transform
from src.data import load_rgb
from src.predict import main as predict_main
from src.models import NetworkOutput
from src.trained import ClassScores, classifier, load_trained

ENTRY = {"suave_momentum": main_suave, "daino": main_daino}


@pytest.mark.slow
@pytest.mark.parametrize("run", ["suave_momentum", "daino"])
def test_predict_a_folder_with_a_corrupt_image(tiny_runs, run, tmp_path, capsys):
    ckpt = tiny_runs[run]["checkpoint"]
    images = tmp_path / "images"
    shutil.copytree(os.path.join(tiny_runs[run]["data"], "val"), images)
    first_class = sorted(os.listdir(images))[0]
    (images / first_class / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    out = tmp_path / "preds.csv"
    assert predict_main(["--checkpoint", ckpt, "--images", str(images), "--out", str(out), "--batch_size", "5"]) == 0
    captured = capsys.readouterr()
    assert "predicted 17/17 images (1 unreadable)" in captured.err
    preds = pd.read_csv(out, keep_default_na=False)
    assert list(preds.columns) == ["path", "predicted_class", "probability", "top5", "error"] and len(preds) == 17
    broken = preds[preds["path"].str.endswith("broken.png")].iloc[0]
    assert broken["predicted_class"] == "" and broken["error"].startswith("UnidentifiedImageError: ")
    good = preds[preds["error"] == ""]
    assert len(good) == 16
    trained = load_trained(ckpt)
    assert set(good["predicted_class"]) <= set(trained.classes)
    for _, row in good.iterrows():
        top5 = row["top5"].split(";")
        assert top5[0] == row["predicted_class"] and sorted(top5) == sorted(trained.classes)  # 4 classes: all

    # every row against the network itself: the checkpoint's preprocessing, softmax(scores / temperature)
    transform = eval_transform(trained.preprocessing)
    batch = torch.stack([transform(load_rgb(path)) for path in good["path"]])
    with torch.no_grad():
        probabilities = classifier(trained)(batch).softmax(dim=1)
    assert list(good["predicted_class"]) == [trained.classes[i] for i in probabilities.argmax(dim=1).tolist()]
    assert good["probability"].astype(float).tolist() == pytest.approx(probabilities.max(dim=1).values.tolist(),
                                                                       abs=1e-6)

    # the CSV's accuracy against the class folders equals --evaluate's top-1 on the same (val) images
    assert run_main(ENTRY[run].get_args_parser, ENTRY[run].main, "eval", ["--evaluate", ckpt,
                                                                          "--output_dir", str(tmp_path)]) == 0
    accuracy = 100 * (good["predicted_class"] == good["path"].map(lambda p: os.path.basename(os.path.dirname(p))))
    report = json.load(open(tmp_path / "eval.json"))
    assert accuracy.mean() == pytest.approx(report["val_acc1"], abs=1e-9)
    assert f"accuracy against the images' class folders: {report['val_acc1']:.2f}%" in captured.out


@pytest.mark.slow
def test_predict_a_list_file_names_missing_images_and_refuses_an_empty_folder(tiny_runs, tmp_path, capsys):
    val = os.path.join(tiny_runs["daino"]["data"], "val")
    first = sorted(os.listdir(val))[0]
    image = os.path.join(val, first, sorted(os.listdir(os.path.join(val, first)))[0])
    listing = tmp_path / "list.txt"
    listing.write_text(f"{image}\nmissing.png\n")
    out = tmp_path / "preds.csv"
    assert predict_main(["--checkpoint", tiny_runs["daino"]["checkpoint"], "--images", str(listing),
                         "--out", str(out), "--device", "cpu"]) == 0
    preds = pd.read_csv(out, keep_default_na=False)
    assert list(preds["path"]) == [image, str(tmp_path / "missing.png")]
    assert preds["error"][0] == "" and preds["predicted_class"][0] != ""
    assert preds["error"][1].startswith("FileNotFoundError: ")
    (tmp_path / "empty").mkdir()
    capsys.readouterr()
    assert predict_main(["--checkpoint", tiny_runs["daino"]["checkpoint"], "--images", str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.startswith(f"error: --images {tmp_path / 'empty'} holds no image files")


@pytest.mark.slow
def test_a_failed_write_leaves_the_previous_csv_intact(tiny_runs, tmp_path, monkeypatch):
    """The CSV is written atomically: a crash while writing rows keeps the last complete file, no temporary."""
    out = tmp_path / "preds.csv"
    out.write_text("the previous predictions\n")
    val = os.path.join(tiny_runs["daino"]["data"], "val")

    def fail(self, rows):
        raise OSError("disk full")

    monkeypatch.setattr("csv.DictWriter.writerows", fail)
    with pytest.raises(OSError, match="disk full"):
        predict_main(["--checkpoint", tiny_runs["daino"]["checkpoint"], "--images", val, "--out", str(out)])
    assert out.read_text() == "the previous predictions\n"
    assert sorted(os.listdir(tmp_path)) == ["preds.csv"]


def test_class_scores_keep_the_validation_arg_max_of_bf16_scores():
    """bf16 scores 1.984375 < 1.9921875 both round to 19.875 once divided by 0.1 in bf16: the predicted class
    must still be validation's arg-max of the raw scores (a bf16 demo run printed 83.43% against --evaluate's
    83.40% before the division moved to fp32)."""
    scores = torch.tensor([[1.984375, 1.9921875]], dtype=torch.bfloat16)
    network = lambda crops: NetworkOutput(embedding=None, scores=scores, probe_logits=[])  # noqa: E731
    assert (scores / 0.1).argmax(1).item() == 0  # the tie the fp32 division avoids
    assert ClassScores(network, 0.1)(torch.zeros(1, 3, 2, 2)).argmax(1).item() == scores.argmax(1).item() == 1
