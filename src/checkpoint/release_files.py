"""Files the Suave-Daino release (pietroastolfi/suave-daino) wrote, recognised by their layout and turned into
this project's networks, so that ``--evaluate``, ``src.predict`` and ``src.export`` read them whole (the weights
alone load through :mod:`src.checkpoint.released` wherever a backbone or projection is read).

What the release's ``save`` calls write:

- Suave (``suave/main_suave.py``): ``EXP/checkpoint.pth.tar``, copied to ``EXP/checkpoints/ckp-{epoch}.pth``
  every ``--checkpoint_freq`` epochs, with the SwAV queue beside in ``EXP/queue{rank}.pth`` (``{"queue"}``).
  Entries: ``epoch`` (epochs done), ``state_dict`` (the DDP-wrapped ResNet: ``module.conv1.*``, ...,
  ``module.projection_head.<stage>.<0: Linear, 1: BatchNorm1d>.*``, ``module.projection_head.<stages>.*`` (the
  last Linear), ``module.cls_heads.<i>.*`` (``--multihead_eval``), ``module.cls_ensemble.*``
  (``--ensemble_eval``), ``module.prototypes.weight``), ``ema_state_dict`` (the DDP-wrapped momentum encoder,
  built without probes, or None without ``--use_momentum``), ``optimizer``, ``scaler`` (or None). No flags and
  no class names.
- Daino (``daino/main_daino.py``): DINO's layout in ``EXP/checkpoint.pth`` (the name of this project's run file)
  and ``EXP/checkpoint{epoch:04}.pth`` every ``--saveckp_freq`` epochs: ``student`` (DDP-wrapped
  MultiCropWrapper: ``module.backbone.*``, ``module.head.mlp.*``, ``module.head.last_layer.weight_g`` /
  ``weight_v``), ``teacher`` (the same without ``module.``), ``optimizer``, ``epoch``, ``args`` (an
  ``argparse.Namespace`` with the release's flags, ``dino_init_ckpt`` among them, which DINO's own full
  checkpoint lacks), ``dino_loss`` (``{"center"}``), ``fp16_scaler`` (with ``--use_fp16``). No class names.

What a file lacks comes from the user (:func:`release_flags`): the classes from ``--data_path``'s class folders
(sorted, as the release's ImageFolder); Suave's network flags from the command line, else from the released
recipes (:data:`SUAVE_RECIPE_NETWORK`), except those its tensors decide (which heads it saved:
``--use_momentum``, ``--multihead_eval``, ``--ensemble_eval``, ``--bn_ensemble``).
"""
from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from src.checkpoint.files import CheckpointError
from src.checkpoint.released import (_check_complete, _is_state_dict, _list_keys, _weight_norm_alias,
                                     flatten_projection_head, strip_wrapper_prefixes)

# the entries each release's save call writes (Daino's fp16_scaler only with --use_fp16)
SUAVE_ENTRIES = frozenset({"epoch", "state_dict", "ema_state_dict", "optimizer", "scaler"})
DAINO_ENTRIES = frozenset({"student", "teacher", "optimizer", "epoch", "args", "dino_loss"})
# SwAVNetwork's modules after the backbone (the release's ResNet has the backbone's modules at its top level)
_SUAVE_HEADS = ("projection_head.", "prototypes.", "cls_heads.", "cls_ensemble.")
_PROBES = ("cls_heads.", "cls_ensemble.")
# The network flags of the released Suave recipes (suave/scripts/train_1perc.sh and train_10perc.sh, the same in
# both; arch, feat_dim and the ensemble flags are the release's parser defaults there).
SUAVE_RECIPE_NETWORK: dict[str, Any] = {"arch": "resnet50", "hidden_mlp": [2048], "feat_dim": 128,
                                        "multihead_eval": True, "ensemble_eval": False, "bn_ensemble": False,
                                        "detach_ensemble": True}
SUAVE_NETWORK_FLAGS = tuple(SUAVE_RECIPE_NETWORK)


def release_method(checkpoint: Mapping) -> str | None:
    """``"suave"`` / ``"daino"`` when ``checkpoint`` (a read file) is what that release's save call writes; None
    for anything else (this project's run files, the SwAV and DINO releases' own files)."""
    keys = set(checkpoint)
    if SUAVE_ENTRIES <= keys and _is_state_dict(checkpoint["state_dict"]) and "student" not in keys:
        return "suave"
    args = checkpoint.get("args")
    if DAINO_ENTRIES <= keys and isinstance(args, argparse.Namespace) and hasattr(args, "dino_init_ckpt"):
        return "daino"
    return None


def _project_names(state_dict: Mapping[str, Tensor], method: str, where: str) -> dict[str, Tensor]:
    """A release network's state_dict under this project's names (SwAVNetwork / DINONetwork)."""
    found = strip_wrapper_prefixes(state_dict, where)
    if method == "suave":
        found = {(key if key.startswith(_SUAVE_HEADS) else f"backbone.{key}"): value
                 for key, value in flatten_projection_head(found, where).items()}
    return {(_weight_norm_alias(key) if key.endswith((".weight_g", ".weight_v")) else key): value
            for key, value in found.items()}


@dataclass
class ReleaseRun:
    """A release file as this project's networks, and what it says about the run."""

    method_name: str                         # "suave" / "daino"
    networks: dict[str, dict[str, Tensor]]   # "student" and, when saved, "teacher" (this project's key names)
    args: dict[str, Any] | None              # Daino's stored flags; None for Suave (it stores none)
    epoch: int
    num_outputs: int                         # K: rows of the prototypes / of DINO's last layer
    saved_heads: dict[str, bool]             # Suave: the flags the saved networks decide (use_momentum, probes)

    @property
    def source(self) -> str:
        return {"suave": "the Suave release", "daino": "the Daino release"}[self.method_name]


def read_release_run(checkpoint: Mapping, where: str) -> ReleaseRun | None:
    """The release file ``checkpoint`` (read from ``where``) as a :class:`ReleaseRun`; None if it is not one.

    Suave's momentum encoder is saved without the online probes that this project's copy of the student has:
    the teacher takes the student's probes (``cls_heads.*``, ``cls_ensemble.*``), which only the student uses.
    """
    method = release_method(checkpoint)
    if method is None:
        return None
    entries = ("state_dict", "ema_state_dict") if method == "suave" else ("student", "teacher")
    networks = {name: _project_names(checkpoint[entry], method, where)
                for name, entry in zip(("student", "teacher"), entries) if _is_state_dict(checkpoint[entry])}
    if "student" not in networks:
        raise CheckpointError(f"{where} is a file of the {method} release without the {entries[0]!r} weights")
    student = networks["student"]
    if "teacher" in networks and method == "suave":
        networks["teacher"].update({key: value for key, value in student.items()
                                    if key.startswith(_PROBES) and key not in networks["teacher"]})
    classes_key = "prototypes.weight" if method == "suave" else "head.last_layer.parametrizations.weight.original1"
    if classes_key not in student:
        raise CheckpointError(f"{where} is a file of the {method} release without its class layer {classes_key}")
    args = vars(checkpoint["args"]) if method == "daino" else None
    heads = {} if method == "daino" else {
        "use_momentum": "teacher" in networks, "multihead_eval": any(key.startswith("cls_heads.") for key in student),
        "ensemble_eval": any(key.startswith("cls_ensemble.") for key in student),
        "bn_ensemble": "cls_ensemble.0.running_mean" in student}  # Sequential(BatchNorm1d, Linear)
    return ReleaseRun(method, networks, args, int(checkpoint["epoch"]), int(student[classes_key].shape[0]), heads)


def release_flags(run: ReleaseRun, command_line: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The flags to rebuild ``run``'s networks with, and a sentence saying where they came from: Daino's stored
    args, Suave's released recipe (:data:`SUAVE_RECIPE_NETWORK`) with the heads the file saved
    (:attr:`ReleaseRun.saved_heads`); flags given on the command line replace them."""
    if run.method_name == "daino":
        flags, source = dict(run.args or {}), "the flags stored in the file (its args)"
    else:
        recipe = {key: value for key, value in SUAVE_RECIPE_NETWORK.items() if key not in run.saved_heads}
        flags = {**recipe, **run.saved_heads}
        source = (f"the released recipe (suave/scripts/train_{{1,10}}perc.sh: {as_flags(recipe)}) and the heads the "
                  f"file saved ({as_flags(run.saved_heads)})")
    flags.update(command_line)
    return flags, source + (f", replaced by the command line ({as_flags(command_line)})" if command_line else "")


def as_flags(flags: Mapping[str, Any]) -> str:
    """``{"hidden_mlp": [2048], "multihead_eval": True}`` as the command line writes it:
    ``--hidden_mlp 2048 --multihead_eval true``."""
    def text(value: Any) -> str:
        if isinstance(value, (list, tuple)):
            return " ".join(map(text, value))
        return str(value).lower() if isinstance(value, bool) else str(value)
    return " ".join(f"--{key} {text(value)}" for key, value in flags.items())


def load_release_network(network: nn.Module, state_dict: Mapping[str, Tensor], where: str, name: str,
                         source: str) -> None:
    """Load ``state_dict`` (this project's names) into ``network`` strictly: every tensor of the network present
    with its shape and nothing left over, else one CheckpointError naming what differs and the flags used."""
    wanted = network.state_dict()
    hint = (f"; the {name} was built with the network flags of {source}: pass the flags the run was trained "
            "with on the command line (--arch, --hidden_mlp, --feat_dim, --multihead_eval, --ensemble_eval, "
            "--bn_ensemble; Daino: --arch, --patch_size, --out_dim, --use_bn_in_head)")
    try:
        _check_complete(wanted, state_dict, where, f"{name} tensor(s)")
    except CheckpointError as error:
        raise CheckpointError(f"{error}{hint}") from error
    extra = [key for key in state_dict if key not in wanted]
    if extra:
        raise CheckpointError(f"checkpoint {where} holds {name} tensors the network lacks, "
                              f"{_list_keys(extra)}{hint}")
    network.load_state_dict(dict(state_dict), strict=True)
