"""Switches for every place where this project may compute something other than the released code.

By default a training step, with the released recipes' flags, computes what the released ``main_suave.py`` /
``main_daino.py`` compute, quirks included: the paper's numbers came from that arithmetic. Each quirk whose
intended behaviour changes a number is one flag here, off by default; ``--all_fixes true`` turns every one on
(an explicit ``--<fix> false`` still wins). The README's table of differences lists them with their effect.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from src.args import bool_flag


@dataclass(frozen=True)
class Fix:
    name: str
    release: str  # what the release computes (the default)
    fix: str  # what the flag computes instead


FIXES: tuple[Fix, ...] = (
    Fix("mix_weight_rows",
        "the mixed unlabelled term weighs M/total, M = the number of mixed views (mixed_unlab_bs = "
        "mixed_unlab_output.size(0) on a [views, B, K] tensor)",
        "it weighs B*M/total, its share of the rows like every other term"),
    Fix("mix_own_bn_batch",
        "mixed views go through the backbone right after the views they mix, so BatchNorm normalises "
        "[labelled, v0, v1, mixed] as one batch",
        "mixed views go through the backbone last, in a batch of their own"),
    Fix("student_train_mode",
        "the student stays in eval mode (the debug validation before training sets it; training never "
        "calls train()), so drop path never acts; the teacher trains in train mode until the first validation",
        "student and teacher in train mode during training (DINO)"),
    Fix("seed_per_rank",
        "every rank seeds torch and numpy with --seed, as the release's fix_random_seeds, and Python's random "
        "(the release left it unseeded) (identical dropout/drop-path draws on every rank)",
        "rank r seeds --seed + r"),
    Fix("dino_std_everywhere",
        "labelled and validation images are normalised with std (0.228, 0.224, 0.225), unlabelled views "
        "with (0.229, 0.224, 0.225)",
        "(0.229, 0.224, 0.225) everywhere (DINO's)"),
    Fix("amp_eval",
        "validation runs in fp32", "validation runs under the training autocast (faster, bf16/fp16 logits)"),
    Fix("ensemble_scaled",
        "the validation ensemble sums the probes' softmaxes and softmax(raw scores)",
        "it sums softmax(scores / --temperature), the training-time calibration of the prototypes"),
    Fix("probes_clean_rows",
        "with --mixup_lab_type replace the online probes train on every labelled row, mixed or not, "
        "against the (soft) mixed targets (lab_bs_no_mixed = lab_bs)",
        "the probes train on unmixed rows only"),
)

FIX_BY_NAME = {fix.name: fix for fix in FIXES}


def add_fix_args(parser: argparse.ArgumentParser, *names: str) -> None:
    """``--all_fixes`` and one ``--<fix>`` per deviation ``names`` that applies to the method (its parser says
    which; a name not in FIXES is a KeyError)."""
    g = parser.add_argument_group("differences from the release (default: the release's arithmetic)")
    g.add_argument("--all_fixes", type=bool_flag, default=False,
                   help="(new) turn on every fix below (an explicit --<fix> false still wins)")
    for fix in (FIX_BY_NAME[name] for name in names):
        g.add_argument(f"--{fix.name}", type=bool_flag, default=None,
                       help=f"(new) release: {fix.release}. true: {fix.fix}")


def fix_on(args: argparse.Namespace, name: str) -> bool:
    """Whether fix ``name`` is on: its own flag when given, else ``--all_fixes`` (False where neither exists)."""
    value = getattr(args, name, None)
    return bool(getattr(args, "all_fixes", False)) if value is None else bool(value)


def active_fixes(args: argparse.Namespace) -> list[str]:
    """Names of the fixes that the method's parser offers (its flags are in ``args``) and that are on (for the
    log)."""
    return [fix.name for fix in FIXES if hasattr(args, fix.name) and fix_on(args, fix.name)]
