"""A trained model rebuilt from one of this project's checkpoints (the contract in ``src/checkpoint/run_file.py``).

``load_trained(path)`` reads the file, rebuilds the method's networks from the flags stored in it (no
training flags needed), loads the student and every kept network (Daino's teacher, Suave's momentum encoder)
and returns them in eval mode with the class names and the evaluation preprocessing. ``--evaluate``,
``src.predict`` and ``src.export`` start here.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from src import registry
from src.checkpoint import LAYOUT_VERSION, CheckpointError, RunCheckpoint
from src.data import class_index
from src.errors import UserError
from src.train_step import Precision, validation_precision


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


def method_args(checkpoint: RunCheckpoint, parts: MethodParts,
                overrides: dict[str, Any] | None = None) -> argparse.Namespace:
    """The run's flags: the parser's defaults (flags added since the run), then the stored ones, then
    ``overrides``; init-checkpoint flags off (the weights come from the checkpoint)."""
    args = parts.get_args_parser().parse_args([])
    for key, value in checkpoint.args.items():
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


def _classes(checkpoint: RunCheckpoint, data_path: str | None, where: str) -> list[str]:
    """The stored class names; for a version-1 checkpoint (no ``classes``), the sorted folders of DATA/train
    (``data_path``, else the run's own ``--data_path`` when it still exists)."""
    if checkpoint.classes:
        return list(checkpoint.classes)
    stored = checkpoint.args.get("data_path")
    if data_path is None and stored and os.path.isdir(os.path.join(stored, "train")):
        data_path = stored
    if data_path is None:
        raise UserError(f"{where} was written before checkpoint layout {LAYOUT_VERSION} and does not name its "
                        "classes: pass --data_path DATA (the data it was trained on) to take them from DATA/train")
    train_dir = os.path.join(data_path, "train")
    if not os.path.isdir(train_dir):
        raise UserError(f"{where} does not name its classes and {train_dir} does not exist: pass the --data_path "
                        "the run was trained on (its train/<class>/ folders name the classes)")
    return sorted(class_index(train_dir), key=class_index(train_dir).__getitem__)


def load_trained(path: str, device: torch.device | str = "cpu", expect_method: str | None = None,
                 data_path: str | None = None, overrides: dict[str, Any] | None = None) -> TrainedModel:
    """Rebuild the method of checkpoint ``path`` with its weights on ``device``, in eval mode.

    ``expect_method`` (a registered method name): refuse another method's checkpoint, naming the right entry point.
    ``data_path`` names the classes of a version-1 checkpoint (from ``DATA/train``; default: the run's own).
    ``overrides`` replace stored flags (e.g. ``val_batch_size``).
    """
    where = os.fspath(path)
    try:
        checkpoint = RunCheckpoint.load(path, flag="--checkpoint")
    except CheckpointError as error:  # a readable file that is not a run's checkpoint
        raise UserError(f"{error}; released SwAV/DINO files start a run: {_init_flags()}") \
            from error
    name = checkpoint_method(checkpoint, where)
    if expect_method is not None and name != expect_method:
        raise UserError(f"{where} is a {name} checkpoint: evaluate it with python {registry.entry(name).script}")
    parts = method_parts(name)
    args = method_args(checkpoint, parts, overrides)
    classes = _classes(checkpoint, data_path, where)
    preprocessing = checkpoint.eval_preprocessing or parts.data_config(args).eval_preprocessing()
    device = torch.device(device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    method = parts.method_class(args, len(classes), device)
    stored = checkpoint.all_networks()
    networks = {"student": method.student, **method.kept_networks()}
    for network_name, network in networks.items():
        if network_name not in stored:
            raise UserError(f"{where} lacks the {network_name!r} network its flags describe (it holds "
                            f"{', '.join(sorted(stored)) or 'none'}): it is not a complete checkpoint of this project")
        network.load_state_dict(stored[network_name])
        network.to(device, memory_format=memory_format).eval()  # as the engine places them
    return TrainedModel(where, name, method, args, classes, preprocessing, checkpoint.epoch, networks)


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
