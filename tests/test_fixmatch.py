"""FixMatch, the yardstick (fixmatch/method.py): its loss against a reference written here, no gradient through
the pseudo-labels, its weak/strong views, its schedule, and a tiny end-to-end run that learns."""
from __future__ import annotations

import json
import math
import os
import random
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import main_fixmatch
from fixmatch.method import FixMatchMethod, fixmatch_lr, unlabelled_loss
from src.cli import run_main
from src.data import LabelledBatch, Normalization, UnlabelledBatch, weak_strong_views
from src.data.augmentations import Cutout, RandomMagnitudeRandAugment
from src.data.synthetic import make_synthetic_imagefolder
from src.errors import UserError
from src.method import Schedules
from tests.test_training import FIXMATCH_TINY

NORM = Normalization((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def test_unlabelled_loss_masks_rows_below_the_threshold_and_averages_over_all_rows():
    weak = torch.tensor([[10.0, 0.0, 0.0],   # p_max ~ 0.9999: kept, pseudo-label 0
                         [1.0, 0.0, 0.0],    # p_max ~ 0.58: masked
                         [0.0, 0.0, 6.0],    # p_max ~ 0.995: kept, pseudo-label 2
                         [0.0, 3.0, 0.0]])   # p_max ~ 0.91: masked at 0.95
    strong = torch.tensor([[0.5, 1.0, -1.0], [2.0, 0.0, 0.0], [0.0, 1.0, 0.2], [0.3, 0.1, 0.0]])
    loss, mask, pseudo = unlabelled_loss(weak, strong, threshold=0.95)
    log_p = strong.log_softmax(-1)
    reference = -(log_p[0, 0] + log_p[2, 2]) / 4  # masked rows count in the mean as zeros (Eq. 4: 1/(mu B))
    torch.testing.assert_close(loss, reference)
    assert mask.tolist() == [1.0, 0.0, 1.0, 0.0] and mask.mean().item() == 0.5
    assert pseudo.tolist() == [0, 0, 2, 1]
    loss_low, mask_low, _ = unlabelled_loss(weak, strong, threshold=0.5)  # every row clears 0.5
    assert mask_low.tolist() == [1.0] * 4
    torch.testing.assert_close(loss_low, F.cross_entropy(strong, torch.tensor([0, 0, 2, 1])))


def test_no_gradient_flows_through_the_pseudo_labels():
    weak = torch.randn(6, 4, requires_grad=True)
    strong = torch.randn(6, 4, requires_grad=True)
    loss, _, _ = unlabelled_loss(weak * 5, strong, threshold=0.0)
    loss.backward()
    assert weak.grad is None and strong.grad is not None and strong.grad.abs().sum() > 0


def tiny_method(**overrides) -> FixMatchMethod:
    args = main_fixmatch.get_args_parser().parse_args(["--arch", "cnn6", "--lab_batch_size", "4", "--mu", "2"])
    for key, value in overrides.items():
        setattr(args, key, value)
    torch.manual_seed(0)
    method = FixMatchMethod(args, num_classes=3, device=torch.device("cpu"))
    method.forward_student = method.student
    return method


def checked(argv: list[str]) -> None:
    """FixMatch's check of its flags (run by the entry point before anything reads data)."""
    parser = main_fixmatch.get_args_parser()
    parser.check(parser.parse_args(argv))


@pytest.mark.parametrize("flag,value,message", [("threshold", "1.5", "--threshold 1.5"), ("mu", "0", "--mu 0"),
                                                ("train_mode", "selfsup", "needs labels"),
                                                ("mixup_unlab", "true", "--mixup_unlab")])
def test_bad_flags_are_one_line_errors_naming_them(flag, value, message):
    with pytest.raises(UserError, match=message):
        checked([f"--{flag}", value])


@pytest.mark.parametrize("flag,value", [("cutout", "2"), ("randaugment_ops", "-1"), ("crop_size", "0"),
                                        ("translate", "1")])
def test_bad_view_flags_are_refused_before_the_data_is_built(flag, value, tmp_path, capsys):
    """The entry point refuses them before reading any data (the --data_path does not exist)."""
    argv = ["--data_path", str(tmp_path / "none"), "--output_dir", str(tmp_path), f"--{flag}", value]
    assert run_main(main_fixmatch.get_args_parser, main_fixmatch.main, "FixMatch", argv) == 2
    assert capsys.readouterr().err.startswith(f"error: --{flag} {value}: use a value")


def tiny_batches(seed: int = 0) -> tuple[LabelledBatch, UnlabelledBatch]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([0, 1, 2, 1])
    lab = LabelledBatch(torch.randn(4, 3, 16, 16, generator=g), labels, labels, 4)
    views = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)]
    return lab, UnlabelledBatch(views, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))


@pytest.mark.parametrize("lambda_u,masked", [(1.0, False), (2.5, True)])
def test_training_step_is_labelled_ce_plus_lambda_u_times_the_masked_unlabelled_ce(lambda_u, masked):
    method = tiny_method(lambda_u=lambda_u, threshold=0.0)
    lab, unlab = tiny_batches()
    with torch.no_grad():  # train-mode BatchNorm: the same batch gives the same logits in the step
        logits = method.student([lab.images, *unlab.views]).scores
    probs = logits[4:12].softmax(-1)
    if masked:  # a threshold between the rows' confidences: half the rows pass
        method.args.threshold = probs.max(-1).values.median().item() + 1e-6
    keep = probs.max(-1).values >= method.args.threshold
    assert keep.sum() == (4 if masked else 8)
    out = method.training_step(lab, unlab, epoch=0, iteration=0)
    lab_ce = F.cross_entropy(logits[:4], lab.targets)
    per_row = F.cross_entropy(logits[12:20], probs.argmax(-1), reduction="none")
    expected = lab_ce + lambda_u * (per_row * keep).sum() / 8
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.logs["mask_rate"], keep.float().mean())


def test_the_weak_rows_get_no_gradient_in_the_joint_forward():
    method = tiny_method(threshold=0.0)
    lab, unlab = tiny_batches(1)
    out = method.student([lab.images, *unlab.views])
    logits = out.scores
    logits.retain_grad()
    method.forward_student = lambda crops: out
    method.training_step(lab, unlab, epoch=0, iteration=0).loss.backward()
    assert logits.grad[4:12].abs().max() == 0  # the weak view only makes targets
    assert logits.grad[:4].abs().max() > 0 and logits.grad[12:].abs().max() > 0


def test_ema_follows_the_parameters_and_copies_the_batchnorm_statistics():
    method = tiny_method(ema_decay=0.9)
    method.restart_ema_from_student()
    before = {k: v.clone() for k, v in method.ema.state_dict().items()}
    lab, unlab = tiny_batches()
    method.training_step(lab, unlab, 0, 0)  # train-mode forward: the student's running statistics move
    with torch.no_grad():
        for p in method.student.parameters():
            p.add_(1.0)
    method.after_optimizer_step(0, 0, Schedules(lr=np.zeros(1), momentum=np.full(1, 0.9)))
    ema, student = method.ema.state_dict(), method.student.state_dict()
    for name, p in method.student.named_parameters():
        torch.testing.assert_close(ema[name], 0.9 * before[name] + 0.1 * p.detach())
    bn = "backbone.features.0.1.running_mean"
    torch.testing.assert_close(ema[bn], student[bn])
    assert not torch.equal(ema[bn], before[bn])


@pytest.mark.parametrize("bn_momentum", [0.001, 0.3])
def test_batchnorm_statistics_move_by_bn_momentum_towards_the_batch(bn_momentum):
    """The reference TF code's BatchNorm momentum 0.999 (0.001 in PyTorch's convention) is the default: the
    statistics the EMA model validates with then average over as many steps as its weights."""
    method = tiny_method(bn_momentum=bn_momentum)
    bn = method.student.backbone.features[0][1]
    seen = []
    bn.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].detach()))
    before_mean, before_var = bn.running_mean.clone(), bn.running_var.clone()
    lab, unlab = tiny_batches()
    method.training_step(lab, unlab, 0, 0)
    x = torch.cat(seen).float()  # the one joint forward: [labelled, weak, strong]
    batch_mean, batch_var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=True)
    torch.testing.assert_close(bn.running_mean, (1 - bn_momentum) * before_mean + bn_momentum * batch_mean)
    torch.testing.assert_close(bn.running_var, (1 - bn_momentum) * before_var + bn_momentum * batch_var)
    assert main_fixmatch.get_args_parser().get_default("bn_momentum") == 0.001


@pytest.mark.parametrize("value", ["0", "1.5"])
def test_bn_momentum_outside_0_1_is_refused(value):
    with pytest.raises(UserError, match=re.escape(f"--bn_momentum {value}: use a value in (0, 1] (PyTorch's")):
        checked(["--bn_momentum", value])


def test_lr_schedule_is_the_papers_cosine_and_sgd_is_nesterov_with_decay_on_weights_only():
    lr = fixmatch_lr(0.03, 1000)
    assert lr[0] == 0.03 and math.isclose(lr[500], 0.03 * math.cos(7 * math.pi / 32))
    assert math.isclose(lr[-1], 0.03 * math.cos(7 * math.pi * 999 / 16000))
    method = tiny_method()
    optimizer = method.build_optimizer()
    assert all(g["nesterov"] and g["momentum"] == 0.9 for g in optimizer.param_groups)
    decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 5e-4 for p in g["params"]}
    for name, p in method.student.named_parameters():
        assert (id(p) in decay) == (p.ndim > 1), name  # conv/linear weights decay; biases and BatchNorm do not
    assert len(method.build_schedules(10).lr) == method.args.epochs * 10


def test_weak_and_strong_views_have_the_expected_shape_and_differ():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).convert("RGB")
    transform = weak_strong_views(28, NORM)
    random.seed(0)
    torch.manual_seed(0)
    differ = 0
    for _ in range(5):
        weak, strong = transform(image)
        assert weak.shape == strong.shape == (3, 28, 28)
        differ += not torch.allclose(weak, strong)
    assert differ == 5
    plain = NORM.transform()(image)  # the weak view is the image translated (and maybe flipped): same pixels
    torch.manual_seed(1)
    weak, _ = weak_strong_views(28, NORM, translate=0.0)(image)
    assert torch.equal(weak, plain) or torch.equal(weak, plain.flip(-1))


def test_cutout_greys_a_square_of_at_most_the_given_side():
    image = Image.new("RGB", (28, 28), (255, 255, 255))
    random.seed(3)
    for _ in range(20):
        out = np.asarray(Cutout(0.5)(image))
        grey = np.argwhere((out == 127).all(-1))
        if len(grey):
            (y0, x0), (y1, x1) = grey.min(0), grey.max(0)
            assert len(grey) == (y1 - y0 + 1) * (x1 - x0 + 1) and max(y1 - y0, x1 - x0) + 1 <= 14 + 1
    assert np.asarray(Cutout(0.0)(image)).min() == 255


def test_randaugment_draws_its_magnitude_per_image():
    augment = RandomMagnitudeRandAugment(num_ops=2)
    image = Image.new("RGB", (28, 28), (120, 30, 200))
    torch.manual_seed(0)
    magnitudes = set()
    for _ in range(20):
        augment(image)
        magnitudes.add(augment.magnitude)
    assert len(magnitudes) > 5 and all(0 <= m < augment.num_magnitude_bins for m in magnitudes)


@pytest.mark.slow
def test_tiny_run_learns_separable_classes(tmp_path):
    info = make_synthetic_imagefolder(str(tmp_path / "data"), num_classes=4, train_per_class=16, val_per_class=8,
                                      size=32, seed=0, subset_per_class=4)
    out = str(tmp_path / "exp")
    argv = ["--data_path", str(info.root), "--subset_file", str(info.subset_file), "--output_dir", out,
            "--epochs", "4", *FIXMATCH_TINY, "--threshold", "0.7"]
    assert run_main(main_fixmatch.get_args_parser, main_fixmatch.main, "FixMatch", argv) == 0
    stats = pd.read_csv(os.path.join(out, "stats.csv"))
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["method"] == "fixmatch" and results["iterations"] == 4 * 8
    # chance: 25 % and a loss of ln 4 = 1.39; "main" is the EMA model (BatchNorm on 32 val images: noisy epochs)
    assert results["val_student_acc1"] >= 60 and results["val_acc1"] >= 60
    assert results["val_student_loss"] < 1.0 and results["val_loss"] < 1.0
    assert stats["val_student_acc1"].max() >= 90
    assert stats["train_mask_rate"].iloc[-1] > 0  # confident pseudo-labels: the unlabelled term is at work
    assert stats["train_lab_loss"].iloc[-1] < stats["train_lab_loss"].iloc[0]
    evaluate = ["--evaluate", os.path.join(out, "checkpoint.pth"), "--workers", "0"]  # rebuilt from the file alone
    assert run_main(main_fixmatch.get_args_parser, main_fixmatch.main, "FixMatch", evaluate) == 0
    evaluated = json.load(open(os.path.join(out, "eval.json")))
    assert (evaluated["val_acc1"], evaluated["val_student_acc1"]) == (results["val_acc1"], results["val_student_acc1"])


@pytest.mark.slow
def test_evaluate_names_the_student_main_without_an_ema(tmp_path, capsys):
    """--ema_decay 0: validation's main head is the student; --evaluate's table called it 'ema'."""
    info = make_synthetic_imagefolder(str(tmp_path / "data"), num_classes=4, train_per_class=8, val_per_class=2,
                                      size=32, seed=0, subset_per_class=4)
    out = str(tmp_path / "exp")
    argv = ["--data_path", str(info.root), "--subset_file", str(info.subset_file), "--output_dir", out,
            "--epochs", "1", "--max_iters_per_epoch", "1", *FIXMATCH_TINY, "--ema_decay", "0"]
    assert run_main(main_fixmatch.get_args_parser, main_fixmatch.main, "FixMatch", argv) == 0
    capsys.readouterr()
    evaluate = ["--evaluate", os.path.join(out, "checkpoint.pth"), "--workers", "0"]
    assert run_main(main_fixmatch.get_args_parser, main_fixmatch.main, "FixMatch", evaluate) == 0
    lines = capsys.readouterr().out.splitlines()
    table = lines[lines.index(f"{'head':<16}{'top-1':>8}{'top-5':>8}"):]
    report = json.load(open(os.path.join(out, "eval.json")))
    assert table[1:] == [f"{'student':<16}{report['val_acc1']:>8.2f}{report['val_acc5']:>8.2f}",
                         f"wrote {os.path.join(out, 'eval.json')}"]


SHARED_WITH_SUAVE = ("--data_path", "--labels_perc", "--arch", "--lab_crop_size", "--val_resize", "--val_crop", "--mean",
                     "--std", "--lab_batch_size", "--val_batch_size", "--use_fp16", "--use_bf16", "--channels_last",
                     "--workers", "--time_budget_min", "--eval_every_min", "--all_fixes", "--order_by_seed")


def test_recipe_shares_suaves_backbone_labelled_stream_precision_and_budget():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from fmnist_benchmark import RECIPES, flag_value, full_epoch_iters, recipe_flags

    entry, flags = recipe_flags(RECIPES["fixmatch"][0], {})
    _, suave = recipe_flags(RECIPES["suave"][0], {})
    assert entry == "main_fixmatch.py"
    for name in SHARED_WITH_SUAVE:
        assert flag_value(flags, name) == flag_value(suave, name), name
    args = main_fixmatch.get_args_parser().parse_args(flags)
    assert (args.threshold, args.lambda_u, args.lr, args.wd) == (0.95, 1.0, 0.03, 5e-4)   # the paper's
    assert args.ema_decay == 0.99          # a budget adaptation of the optimisation (docs/fixmatch.md)
    assert main_fixmatch.get_args_parser().get_default("ema_decay") == 0.999            # the paper's, the default
    assert math.isclose(args.bn_momentum, 1 - args.ema_decay)  # BatchNorm statistics over the EMA's horizon
    assert full_epoch_iters(flags, entry) == 60000 // (args.mu * args.lab_batch_size)
