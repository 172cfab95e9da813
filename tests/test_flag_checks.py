"""Flags checked before data: each entry point's parser carries one check of its flags' values (``FlagParser.check``)
that ``src.cli.run_main`` runs before ``main`` and ``launch.script_file.validate_flags`` runs at submission. The
refusals' exact messages, that they come before any data module is imported or any file is read, and that every
released recipe passes its check."""
from __future__ import annotations

import glob
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import job_launcher
from launch.script_file import Flag, read_script_file, validate_flags
from src import registry
from src.cli import run_main
from src.errors import FlagError, UserError

REPO = Path(__file__).resolve().parents[1]
ENTRIES = tuple(entry.module for entry in registry.ENTRIES.values())  # every registered entry point


def check(entry: str, argv: list[str]) -> None:
    """Parse ``argv`` with ``entry``'s parser and run its check."""
    parser = importlib.import_module(entry).get_args_parser()
    parser.check(parser.parse_args(argv))


# The four values of the issue, then one refusal of each kind for each entry point.
REFUSALS = [
    ("main_suave", ["--temperature", "0"],
     "--temperature 0: use a value > 0 (the scores are divided by it, so the loss is undefined at 0; the release's 0.1)"),
    ("main_suave", ["--epsilon", "-1"],
     "--epsilon -1: use a value > 0 (Sinkhorn-Knopp computes exp(scores / epsilon); the release's 0.05)"),
    ("main_suave", ["--sinkhorn_iterations", "-1"],
     "--sinkhorn_iterations -1: use a value >= 1 (Sinkhorn-Knopp needs at least one normalisation to give targets "
     "that sum to 1; the release's 3)"),
    ("main_suave", ["--sinkhorn_iterations", "0"],
     "--sinkhorn_iterations 0: use a value >= 1 (Sinkhorn-Knopp needs at least one normalisation to give targets "
     "that sum to 1; the release's 3)"),
    ("main_suave", ["--hidden_mlp", "-3"],
     "--hidden_mlp [-3]: hidden widths must all be positive, or a single 0 for a linear projection"),
    ("main_suave", ["--epochs", "0"], "--epochs 0: use a value >= 1"),
    ("main_suave", ["--label_smoothing", "1.5"], "--label_smoothing 1.5: use a value in [0, 1]"),
    ("main_suave", ["--queue_length", "-1"], "--queue_length -1: use a value >= 0"),
    ("main_suave", ["--min_scale_crops", "0"], "--min_scale_crops 0: use a value in (0, 1] (a fraction of the "
     "image's area)"),
    ("main_suave", ["--nmb_crops", "2", "6"],
     "--nmb_crops, --size_crops, --min_scale_crops and --max_scale_crops need one value per crop group; got "
     "[2, 6] / [224] / [0.14] / [1.0]"),
    ("main_suave", ["--min_scale_crops", "0.5", "--max_scale_crops", "0.4"],
     "--min_scale_crops [0.5] exceeds --max_scale_crops [0.4] in a crop group: each group's min scale must be <= "
     "its max scale"),
    ("main_suave", ["--crops_for_assign", "0", "2"],
     "--crops_for_assign [0, 2]: name crops 0 to 1 (--nmb_crops [2] makes 2 crops)"),
    ("main_suave", ["--nmb_crops", "1", "--crops_for_assign", "0"],
     "--nmb_crops [1]: the assigned crops' targets are predicted by the other crops, so the unlabelled term needs "
     "at least 2 crops"),
    ("main_suave", ["--nmb_crops", "2", "4", "--size_crops", "224", "96", "--min_scale_crops", "0.14", "0.05",
                    "--max_scale_crops", "1", "0.14", "--crops_for_assign", "0", "2", "--use_momentum", "true"],
     "--use_momentum true computes targets from the first --nmb_crops group only: --crops_for_assign [0, 2] "
     "must be < 2"),
    ("main_suave", ["--queue_length", "10", "--batch_size", "32"],
     "--queue_length 10 is shorter than one batch (--batch_size 32): use 0 (no queue) or at least the global batch"),
    ("main_suave", ["--nmb_crops", "3", "--mixup_unlab", "true", "--mixup_unlab_type", "all"],
     "--mixup_unlab_type all mixes consecutive crops of one size: --nmb_crops [3] needs even groups (or use "
     "--mixup_unlab_type globals)"),
    ("main_suave", ["--warmup_epochs", "20", "--epochs", "10"],
     "--warmup_epochs 20: use a number of epochs between 0 and --epochs (10)"),
    ("main_suave", ["--require_init_ckpt", "true"],
     "--require_init_ckpt true: this recipe fine-tunes a checkpoint: pass --swav_init_ckpt PATH (e.g. "
     "EXP/checkpoint.pth of a Suave run, or swav_800ep_pretrain.pth.tar)"),
    ("main_suave", ["--init_proj", "true"],
     "--init_proj true loads from --swav_init_ckpt, which is not given: pass it or drop --init_proj"),
    ("main_suave", ["--sync_bn", "apex"], "--sync_bn apex: use pytorch (SyncBatchNorm across GPUs) or none"),
    ("main_suave", ["--syncbn_process_group_size", "4"],
     "--syncbn_process_group_size 4: not supported (it sized apex's SyncBatchNorm groups; PyTorch's SyncBatchNorm "
     "here spans all processes); drop the flag"),
    ("main_suave", ["--arch", "resnet5"], "--arch resnet5: unknown backbone; choose one of "),
    ("main_suave", ["--std", "0.2", "0", "0.2"], "--std 0.2 0 0.2: use a value > 0 (the images are divided by it)"),
    ("main_suave", ["--blur_radius", "2", "1"],
     "--blur_radius 2 1: use 0 <= MIN <= MAX (the Gaussian blur's radius is drawn between them; the release's 0.1 "
     "2.0)"),
    ("main_suave", ["--lab_dir", "/a", "--lab_csv", "/b"],
     "give one labelled source: --lab_dir ROOT (ROOT/<class>/<image>) or --lab_csv FILE (path,class lines), not "
     "both"),
    ("main_suave", ["--unlab_dir", "/a"],
     "own-data sources need a labelled source (it defines the classes): add --lab_dir ROOT (ROOT/<class>/<image>) "
     "or --lab_csv FILE (path,class lines)"),
    ("main_suave", ["--lab_dir", "/a", "--unlab_list", "/u", "--val_dir", "/v", "--val_csv", "/w"],
     "give one validation source: --val_dir ROOT or --val_csv FILE, not both"),
    ("main_suave", ["--simple_crop", "true"],
     "--simple_crop true: it replaces the crop of 3-Augment only; add --augment3_lab true or drop it"),
    ("main_suave", ["--nan_check_every", "0"], "--nan_check_every 0: use a value >= 1"),
    ("main_daino", ["--temperature", "0"], "--temperature 0: use a value > 0 (the student's scores are divided by "
     "it, so the loss is undefined at 0; the release's 0.1)"),
    ("main_daino", ["--teacher_temp", "0"], "--teacher_temp 0: use a value > 0 (the teacher's centred outputs are "
     "divided by it; the release's 0.04 rising to 0.07)"),
    ("main_daino", ["--warmup_teacher_temp_epochs", "200"],
     "--warmup_teacher_temp_epochs 200: use a number of epochs between 0 and --epochs (100)"),
    ("main_daino", ["--global_crops_scale", "0.4"],
     "--global_crops_scale 0.4: give 2 values (the lower and upper area scale of the crop)"),
    ("main_daino", ["--local_crops_scale", "0.4", "0.05"],
     "--local_crops_scale 0.4 0.05: use 0 < LO <= HI <= 1 (fractions of the image's area)"),
    ("main_daino", ["--patch_size", "16", "--local_crop_size", "14"], "--patch_size 16 is larger than the 14-px "
     "crops (--global_crop_size, --local_crop_size): use a patch size that fits them"),
    ("main_daino", ["--drop_path_rate", "1"], "--drop_path_rate 1: use a value in [0, 1)"),
    ("main_daino", ["--momentum_teacher", "1.1"], "--momentum_teacher 1.1: use a value in [0, 1]"),
    ("main_daino", ["--out_dim", "0"], "--out_dim 0: use a value >= 1"),
    ("main_daino", ["--local_crops_number", "7", "--mixup_unlab", "true", "--mixup_unlab_type", "all"],
     "--mixup_unlab_type all mixes consecutive crops of one size: --local_crops_number 7 must be even (or use "
     "--mixup_unlab_type globals)"),
    ("main_daino", ["--require_init_ckpt", "true"],
     "--require_init_ckpt true: this recipe fine-tunes a checkpoint: pass --dino_init_ckpt PATH (e.g. "
     "EXP/checkpoint.pth of a Daino run, or dino_deitsmall16_pretrain_full_checkpoint.pth)"),
    ("main_fixmatch", ["--threshold", "1.5"], "--threshold 1.5: use a value in [0, 1] (a pseudo-label counts where "
     "its softmax probability reaches it; the paper's 0.95)"),
    ("main_fixmatch", ["--mu", "0"], "--mu 0: use a value >= 1"),
    ("main_fixmatch", ["--translate", "1"], "--translate 1: use a value in [0, 1) (a fraction of the side; the "
     "paper's 0.125)"),
    ("main_fixmatch", ["--cutout", "-0.5"], "--cutout -0.5: use a value in [0, 1] (a fraction of the width; the "
     "paper's 0.5)"),
    ("main_fixmatch", ["--crop_size", "0"], "--crop_size 0: use a value >= 1"),
    ("main_fixmatch", ["--randaugment_ops", "-1"], "--randaugment_ops -1: use a value >= 0"),
    ("main_fixmatch", ["--train_mode", "selfsup"], "--train_mode selfsup: FixMatch needs labels (its pseudo-labels "
     "come from a classifier); use --train_mode semisup or supervised"),
    ("main_fixmatch", ["--mixup_unlab", "true"], "--mixup_unlab true: FixMatch has no unlabelled mixup (its strong "
     "view is the perturbation); drop it"),
    ("main_fixmatch", ["--gpu_aug", "true"], "--gpu_aug true: FixMatch's weak and strong views (padded crop, "
     "RandAugment, Cutout) have no faster version; drop --gpu_aug"),
    ("main_fixmatch", ["--blur_radius", "0.5", "1"], "--blur_radius 0.5 1: not supported (FixMatch's weak and "
     "strong views have no Gaussian blur); drop the flag"),
    ("eval_semisup", ["--hidden_mlp", "-3"],
     "--hidden_mlp [-3]: hidden widths must all be positive, or a single 0 for a linear projection"),
    ("eval_semisup", ["--batch_size", "0"], "--batch_size 0: use a value >= 1"),
    ("eval_semisup", ["--gamma", "0"], "--gamma 0: use a value > 0 (the learning rate is multiplied by it at each "
     "of --decay_epochs)"),
    ("eval_semisup", ["--scheduler_type", "step", "--warmup_epochs", "2"],
     "--warmup_epochs 2: it applies to --scheduler_type cosine only (SwAV's step schedule has none); drop it or use "
     "--scheduler_type cosine"),
    ("eval_semisup", ["--scheduler_type", "step", "--lr", "0"],
     "--lr 0 with --lr_last_layer applied (--apply_lr_last_layer or --scheduler_type step): the head's lr is the "
     "schedule x lr_last_layer / lr; use --lr > 0"),
    ("eval_semisup", ["--ensemble_eval", "true"], "--ensemble_eval true is not supported: the release's "
     "eval_semisup builds that classifier with 0 inputs; fine-tune without it"),
    ("eval_semisup", ["--bn_ensemble", "true"], "--bn_ensemble true: not supported (it configured the "
     "--ensemble_eval classifier, which is not supported); drop the flag"),
    ("eval_semisup", ["--mixup_type", "replace"],
     "--mixup_type replace applies with --mixup true only: add it or drop --mixup_type"),
    ("eval_linear", ["--epochs", "-1"], "--epochs -1: use a value >= 1"),
    ("eval_linear", ["--decay_epochs", "60", "-80"], "--decay_epochs 60 -80: use a value >= 0"),
    ("eval_linear", ["--use_bn", "true"], "--use_bn true applies with --global_pooling false only (the BatchNorm2d "
     "of the pooled feature map; the release ignored it): add --global_pooling false or drop --use_bn"),
]


@pytest.mark.parametrize("entry,argv,message", REFUSALS, ids=[f"{e}{''.join(a)}" for e, a, _ in REFUSALS])
def test_each_refusal_names_the_flag_its_value_and_the_fix(entry, argv, message):
    with pytest.raises(FlagError) as refused:
        check(entry, argv)
    assert str(refused.value).startswith(message) and (message.endswith("one of ") or str(refused.value) == message)


@pytest.mark.parametrize("entry", ENTRIES)
def test_defaults_pass_the_check(entry):
    check(entry, [])


@pytest.mark.parametrize("entry,argv", [("main_suave", ["--temperature", "0"]), ("main_suave", ["--epsilon", "-1"]),
                                        ("main_suave", ["--sinkhorn_iterations", "-1"]),
                                        ("main_suave", ["--hidden_mlp", "-3"]), ("main_daino", ["--temperature", "0"]),
                                        ("main_fixmatch", ["--mu", "0"]), ("eval_semisup", ["--hidden_mlp", "-3"]),
                                        ("eval_linear", ["--lr", "-1"]), ("eval_knn", ["--temperature", "0"])])
def test_the_entry_point_refuses_before_importing_any_data_code(entry, argv, tmp_path):
    """``python ENTRY.py --flag BAD`` exits 2 with the one-line refusal, and neither the data stack (src.data,
    torchvision) nor the method was imported: nothing could have scanned a file (the path does not exist)."""
    program = (f"import runpy, sys\nsys.argv = {[entry + '.py', '--data_path', str(tmp_path / 'none'), *argv]!r}\n"
               "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit as exc:\n"
               "    print(exc.code, sorted(m for m in ('src.data', 'torchvision', 'src.engine', 'src.downstream.data')"
               " if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.stdout.split("\n")[-2] == "2 []", done.stdout + done.stderr
    assert done.stderr.startswith(f"error: {argv[0]} ") and done.stderr.count("\n") == 1


def test_run_main_refuses_the_flag_before_main_reads_the_data(tmp_path, capsys):
    """The check comes before ``main``: a flag error wins over a --data_path that does not exist."""
    import main_suave
    argv = ["--data_path", str(tmp_path / "none"), "--output_dir", str(tmp_path / "out"), "--temperature", "0"]
    assert run_main(main_suave.get_args_parser, main_suave.main, "Suave", argv) == 2
    assert capsys.readouterr().err.startswith("error: --temperature 0: use a value > 0")
    assert not (tmp_path / "out").exists()
    assert run_main(main_suave.get_args_parser, main_suave.main, "Suave", argv[:4]) == 2  # valid flags: the data
    assert "does not exist" in capsys.readouterr().err


RECIPES = sorted(path for pattern in ("suave/scripts/*.sh", "daino/scripts/*.sh", "fixmatch/scripts/*.sh",
                                      "scripts/*.sh") for path in glob.glob(str(REPO / pattern))
                 if os.path.basename(open(path).readline().split()[0]) in {e + ".py" for e in ENTRIES})


def test_every_recipe_is_found():
    assert len(RECIPES) >= 18 and {read_script_file(p).entry for p in RECIPES} == {e + ".py" for e in ENTRIES}


@pytest.mark.parametrize("path", RECIPES, ids=[os.path.relpath(p, REPO) for p in RECIPES])
def test_every_released_recipe_passes_its_check(path):
    script = read_script_file(path)
    flags = list(script.flags) + [Flag(("--data_path", "/d"), "test"), Flag(("--output_dir", "/o"), "test")]
    if any(flag.tokens == ("--require_init_ckpt", "true") for flag in script.flags):  # given at launch (README)
        name = f"--{registry.by_script(script.entry).init_flag}"
        flags.append(Flag((name, "/c"), "test"))
    module = importlib.import_module(script.entry[:-3])
    validate_flags(module.get_args_parser, flags, script.entry)


def test_validate_flags_names_the_recipe_of_the_bad_value(tmp_path):
    recipe = tmp_path / "bad.sh"
    recipe.write_text("main_suave.py \\\n--epochs 5 \\\n--warmup_epochs 0 \\\n--temperature 0\n")
    script = read_script_file(str(recipe))
    import main_suave
    with pytest.raises(UserError) as refused:
        validate_flags(main_suave.get_args_parser, list(script.flags), "main_suave.py")
    assert str(refused.value) == (f"main_suave.py rejects the flags (from {recipe}): --temperature 0: use a value > "
                                  "0 (the scores are divided by it, so the loss is undefined at 0; the release's 0.1)")


def test_job_launcher_refuses_a_bad_flag_before_writing_anything(tmp_path, capsys):
    data = tmp_path / "data"
    for split in ("train", "val"):
        (data / split).mkdir(parents=True)
    base = tmp_path / "experiments"
    argv = ["--num_gpus", "0", "--data_dir", str(data), "--script_file", str(REPO / "suave/scripts/fmnist_1perc.sh"),
            "--base_experiment_dir", str(base), "--dry_run", "--", "--sinkhorn_iterations", "-1"]
    assert job_launcher.main(argv, entry_root=str(REPO)) == 2
    assert capsys.readouterr().err.strip() == (
        "job_launcher.py: error: main_suave.py rejects the flags (from the overrides after --): --sinkhorn_iterations "
        "-1: use a value >= 1 (Sinkhorn-Knopp needs at least one normalisation to give targets that sum to 1; the "
        "release's 3)")
    assert not base.exists()  # no experiment directory, no args.json
