"""``--use_bf16 true|false|auto``: auto trains in bf16 only where the device computes it natively (a CPU with
only AVX2 emulates bf16 over 10x slower than fp32), and an explicit ``true`` there warns with the fix."""
from __future__ import annotations

import argparse
import logging

import pytest
import torch

from src import train_step
from src.args import bf16_flag
from src.train_step import Precision, native_bf16, validation_precision
from suave.args import get_args_parser

CPU = torch.device("cpu")


def test_the_flag_takes_true_false_and_auto_and_names_the_choices_otherwise():
    args = get_args_parser().parse_args(["--use_bf16", "auto"])
    assert args.use_bf16 == "auto"
    assert get_args_parser().parse_args(["--use_bf16", "true"]).use_bf16 is True
    assert get_args_parser().parse_args([]).use_bf16 is False
    with pytest.raises(argparse.ArgumentTypeError, match=r"invalid --use_bf16 value 'maybe': use true, false or auto"):
        bf16_flag("maybe")


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_exactly_where_the_device_has_native_bf16(monkeypatch, native):
    monkeypatch.setattr(train_step, "native_bf16", lambda device: native)
    precision = Precision(False, "auto", CPU)
    assert precision.dtype == (torch.bfloat16 if native else None)
    assert precision.describe() == ("bf16 autocast, --use_bf16 auto" if native
                                    else "fp32, --use_bf16 auto: no native bf16 on this device")
    with precision.autocast():
        out = torch.nn.Linear(4, 4)(torch.ones(2, 4))
    assert out.dtype == (torch.bfloat16 if native else torch.float32)


def test_explicit_bf16_on_an_emulating_cpu_warns_with_the_fix_once_per_run(monkeypatch, caplog):
    monkeypatch.setattr(train_step, "native_bf16", lambda device: False)
    with caplog.at_level(logging.WARNING):
        precision = Precision(False, True, CPU)
        args = argparse.Namespace(use_fp16=False, use_bf16=True, amp_eval=True, all_fixes=True)
        validation_precision(args, CPU)  # built at every validation: must not repeat the warning
    assert precision.dtype == torch.bfloat16  # an explicit request is obeyed
    warnings = [r.getMessage() for r in caplog.records if "native bf16" in r.getMessage()]
    assert len(warnings) == 1 and "--use_bf16 auto trains in fp32" in warnings[0]


def test_native_bf16_answers_what_onednn_reports_on_this_cpu():
    assert native_bf16(CPU) is bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def test_emulated_bf16_on_a_gpu_does_not_count_as_native(monkeypatch):
    """torch.cuda.is_bf16_supported() says True on GPUs before Ampere, where bf16 is emulated."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert native_bf16(torch.device("cuda")) is False
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)  # a torch without the argument
    assert native_bf16(torch.device("cuda")) is True
