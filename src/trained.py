"""A trained model rebuilt from one of this project's checkpoints (the contract in ``src/checkpoint/run_file.py``).

``load_trained(path)`` reads the file, rebuilds the method's networks from the flags stored in it (no
training flags needed), loads the student and every kept network (Daino's teacher, Suave's momentum encoder)
and returns them in eval mode with the class names and the evaluation preprocessing. ``--evaluate``,
``src.predict`` and ``src.export`` start here.

A file the Suave-Daino release wrote (``checkpoint.pth.tar``, ``checkpoints/ckp-N.pth``; Daino's
``checkpoint.pth``, ``checkpointNNNN.pth``; recognised by its layout, :mod:`src.checkpoint.release_files`) is
read too: its networks load strictly under this project's names, its classes are the sorted class folders of
``DATA/train`` (``--data_path``), and its flags are Daino's stored args or Suave's released recipe with the heads
the file saved, either replaced by the flags given on the command line; ``TrainedModel.flags_source`` (logged)
says which.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from src import registry
from src.checkpoint import (LAYOUT_VERSION, CheckpointError, ReleaseRun, RunCheckpoint, load_release_network,
                            read_checkpoint, read_release_run, release_flags)
from src.data import class_index
from src.errors import UserError
from src.logging_utils import get_logger
from src.train_step import Precision, validation_precision

FLAGS_HELP = ("only for a file the Suave/Daino release wrote: its method's flags, as one string, replacing the "
              "released recipe's (Suave's file stores none) or the file's args (Daino), e.g. "
              "--flags '--arch resnet18 --hidden_mlp 512 --feat_dim 128'")


@dataclass
class MethodParts:
    method_class: Callable[..., Any]
    data_config: Callable[[argparse.Namespace], Any]
    get_args_parser: Callable[[], argparse.ArgumentParser]


def method_parts(name: str) -> MethodParts:
    """The method class, its ``data_config`` and its flag parser of registered method ``name``."""
    entry = registry.entry(name)
    return MethodParts(entry.method_class(), entry.data_config(), entry.get_parser)


def _init_flags() -> str:
    """The flags that start a run from released weights, as a user reads them (``--swav_init_ckpt / ...``)."""
    return " / ".join(f"--{entry.init_flag}" for entry in registry.methods() if entry.init_flag)


def checkpoint_method(checkpoint: RunCheckpoint, where: str) -> str:
    """``method_name`` of a checkpoint (version 1, which lacks it: the registered method whose ``init_flag`` its
    flags hold), or UserError if it is not a training run of one of ours."""
    name = checkpoint.method_name
    if name is None:
        name = next((entry.name for entry in registry.methods()
                     if entry.init_flag and entry.init_flag in checkpoint.args), None)
    if name not in [entry.name for entry in registry.methods()]:
        scripts = " / ".join(entry.script for entry in registry.methods())
        raise UserError(f"{where} is not a checkpoint written by {scripts} (it was written by "
                        f"{name or 'an unknown script'}); use EXP/checkpoint.pth of a training run of this project "
                        f"(released SwAV/DINO files start a run: {_init_flags()})")
    return name


def method_args(checkpoint: RunCheckpoint | Mapping[str, Any], parts: MethodParts,
                overrides: dict[str, Any] | None = None) -> argparse.Namespace:
    """The run's flags: the parser's defaults (flags added since the run), then the stored ones (a checkpoint's
    or a dict of flags), then ``overrides``; init-checkpoint flags off (the weights come from the checkpoint)."""
    stored = checkpoint.args if isinstance(checkpoint, RunCheckpoint) else checkpoint
    args = parts.get_args_parser().parse_args([])
    for key, value in stored.items():
        setattr(args, key, value)
    init_flags = {entry.init_flag: None for entry in registry.methods() if entry.init_flag}
    for key, value in {**init_flags, "require_init_ckpt": False, **(overrides or {})}.items():
        setattr(args, key, value)
    return args


@dataclass
class TrainedModel:
    """A method with its trained weights, in eval mode, and what evaluating it needs."""

    path: str
    method_name: str
    method: Any  # src.method.Method
    args: argparse.Namespace
    classes: list[str]
    preprocessing: dict  # {"resize", "crop", "mean", "std"}: src.data_setup.eval_transform
    epoch: int
    networks: dict[str, nn.Module]  # "student", "teacher" (when kept)
    flags_source: str | None = None  # a release's file: where its flags came from (None: stored in the file)

    @property
    def main_network(self) -> str:
        """The network the method validates with (its registry entry's ``main_network`` when kept, else the
        student): Daino's teacher, FixMatch's EMA model, Suave's student."""
        wanted = registry.entry(self.method_name).main_network
        return wanted if wanted in self.networks else "student"

    def eval_precision(self) -> Precision:
        """The precision validation runs in for this run's flags (fp32 unless --amp_eval), so that predictions
        equal ``--evaluate``'s."""
        return validation_precision(self.args, next(self.method.student.parameters()).device)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """A batch on the model's device and in its memory format (``--channels_last``), as validation does."""
        images = images.to(next(self.method.student.parameters()).device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last) if self.args.channels_last else images

    @property
    def temperature(self) -> float:
        """The softmax temperature of the training cross-entropy: probabilities are softmax(scores / T)."""
        return float(self.args.temperature)


def given_flags(cli_args: argparse.Namespace, parser: argparse.ArgumentParser, names: Sequence[str]) -> dict:
    """The flags among ``names`` that the command line set to something other than the default."""
    defaults = vars(parser.parse_args([]))
    return {name: getattr(cli_args, name) for name in names
            if hasattr(cli_args, name) and getattr(cli_args, name) != defaults.get(name)}


def _classes(stored: Sequence[str] | None, stored_data_path: str | None, data_path: str | None, where: str,
             why: str) -> list[str]:
    """The stored class names; for a file without them (``why``: which file it is), the sorted folders of
    DATA/train (``data_path``, else the run's own ``--data_path`` when it still exists)."""
    if stored:
        return list(stored)
    if data_path is None and stored_data_path and os.path.isdir(os.path.join(stored_data_path, "train")):
        data_path = stored_data_path
    if data_path is None:
        raise UserError(f"{where} {why} and does not name its classes: pass --data_path DATA (the data it was "
                        "trained on) to take them from DATA/train")
    train_dir = os.path.join(data_path, "train")
    if not os.path.isdir(train_dir):
        raise UserError(f"{where} does not name its classes and {train_dir} does not exist: pass the --data_path "
                        "the run was trained on (its train/<class>/ folders name the classes)")
    return sorted(class_index(train_dir), key=class_index(train_dir).__getitem__)


def load_trained(path: str, device: torch.device | str = "cpu", expect_method: str | None = None,
                 data_path: str | None = None, overrides: dict[str, Any] | None = None,
                 command_line: Mapping[str, Any] | Sequence[str] | None = None) -> TrainedModel:
    """Rebuild the method of checkpoint ``path`` with its weights on ``device``, in eval mode.

    ``expect_method`` (a registered method name): refuse another method's checkpoint, naming the right entry point.
    ``data_path`` names the classes of a version-1 checkpoint or a release's file (from ``DATA/train``; default:
    the run's own). ``overrides`` replace stored flags (e.g. ``val_batch_size``). ``command_line``: the flags
    given on a command line (a dict, or the tokens ``["--arch", "resnet18", ...]``), which replace the flags of
    a release's file (Suave's file stores none); this project's files keep their own.
    """
    where = os.fspath(path)
    entries = read_checkpoint(path, flag="--checkpoint")
    release = read_release_run(entries, where)
    if release is not None:
        return _load_release(release, where, device, expect_method, data_path, overrides, command_line)
    try:
        checkpoint = RunCheckpoint.from_dict(entries, where)
    except CheckpointError as error:  # a readable file that is not a run's checkpoint
        raise UserError(f"{error}; released SwAV/DINO files start a run: {_init_flags()}") \
            from error
    name = checkpoint_method(checkpoint, where)
    _check_method(name, expect_method, where)
    parts = method_parts(name)
    args = method_args(checkpoint, parts, overrides)
    classes = _classes(checkpoint.classes, checkpoint.args.get("data_path"), data_path, where,
                       f"was written before checkpoint layout {LAYOUT_VERSION}")
    preprocessing = checkpoint.eval_preprocessing or parts.data_config(args).eval_preprocessing()
    return _rebuild(where, name, parts, args, classes, preprocessing, checkpoint.epoch, checkpoint.all_networks(),
                    device, lambda network, state, _: network.load_state_dict(state))


def _check_method(name: str, expect_method: str | None, where: str) -> None:
    if expect_method is not None and name != expect_method:
        raise UserError(f"{where} is a {name} checkpoint: evaluate it with python {registry.entry(name).script}")


def _load_release(run: ReleaseRun, where: str, device: torch.device | str, expect_method: str | None,
                  data_path: str | None, overrides: dict[str, Any] | None,
                  command_line: Mapping[str, Any] | Sequence[str] | None) -> TrainedModel:
    """A file the Suave or Daino release wrote, rebuilt with the flags :func:`release_flags` gives."""
    _check_method(run.method_name, expect_method, where)
    parts = method_parts(run.method_name)
    if command_line is not None and not isinstance(command_line, Mapping):
        parser = parts.get_args_parser()
        try:
            parsed = parser.parse_args(list(command_line))
        except SystemExit as error:
            raise UserError(f"cannot read the flags {' '.join(command_line)!r} for {where} with "
                            f"{registry.entry(run.method_name).script}'s parser") from error
        command_line = given_flags(parsed, parser, list(vars(parsed)))
    flags, source = release_flags(run, dict(command_line or {}))
    args = method_args(flags, parts, {**(overrides or {}), **({"data_path": data_path} if data_path else {})})
    classes = _classes(None, (run.args or {}).get("data_path"), data_path, where, f"was written by {run.source}")
    if len(classes) != run.num_outputs:
        raise UserError(f"{where} (written by {run.source}) has {run.num_outputs} outputs but "
                        f"{os.path.join(args.data_path, 'train')} has {len(classes)} class folders: pass the "
                        "--data_path it was trained on")
    get_logger().info("%s was written by %s: network flags from %s; classes: the %d sorted class folders of "
                      "%s", where, run.source, source, len(classes), os.path.join(args.data_path, "train"))
    preprocessing = parts.data_config(args).eval_preprocessing()
    trained = _rebuild(where, run.method_name, parts, args, classes, preprocessing, run.epoch, run.networks, device,
                       lambda network, state, name: load_release_network(network, state, where, name, source))
    trained.flags_source = source
    return trained


def _rebuild(where: str, name: str, parts: MethodParts, args: argparse.Namespace, classes: list[str],
             preprocessing: dict, epoch: int, stored: Mapping[str, Mapping], device: torch.device | str,
             load: Callable[[nn.Module, Mapping, str], Any]) -> TrainedModel:
    """The method built from ``args`` with the ``stored`` networks loaded by ``load``, placed and in eval mode."""
    device = torch.device(device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    method = parts.method_class(args, len(classes), device)
    networks = {"student": method.student, **method.kept_networks()}
    for network_name, network in networks.items():
        if network_name not in stored:
            raise UserError(f"{where} lacks the {network_name!r} network its flags describe (it holds "
                            f"{', '.join(sorted(stored)) or 'none'}): it is not a complete checkpoint of this project")
        load(network, stored[network_name], network_name)
        network.to(device, memory_format=memory_format).eval()  # as the engine places them
    return TrainedModel(where, name, method, args, classes, preprocessing, epoch, networks)


class ClassScores(nn.Module):
    """One network of a trained model as a classifier: normalised images (B, 3, H, W) -> scores / temperature.

    The scores are what validation ranks (Suave: the prototypes' cosine scores; Daino: the head's outputs);
    dividing by the training temperature makes ``softmax`` the class probabilities of the training loss.
    """

    def __init__(self, network: nn.Module, temperature: float) -> None:
        super().__init__()
        self.network = network
        self.temperature = temperature

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # fp32 before the division: under bf16 autocast, scores / 0.1 rounded to bf16 can tie two classes that
        # validation's arg-max (on the raw scores) tells apart, and predictions would then differ from --evaluate
        return self.network([images]).scores.float() / self.temperature


def classifier(trained: TrainedModel, network_name: str | None = None) -> ClassScores:
    """``ClassScores`` of network ``network_name`` (default: the one validation reports first, main_network)."""
    name = network_name or trained.main_network
    if name not in trained.networks:
        raise UserError(f"{trained.path} has no {name!r} network; it holds: {', '.join(sorted(trained.networks))}. "
                        f"Pass --checkpoint_key {trained.main_network}")
    return ClassScores(trained.networks[name], trained.temperature).eval()
