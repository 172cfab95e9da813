"""This project's run file, ``EXP/checkpoint.pth``: one typed description (:class:`RunCheckpoint`) with its save
and load, written by the training engine and by the evaluation scripts, read by resume, ``--evaluate``,
``src.predict``, ``src.export`` and ``--pretrained`` / ``--*_init_ckpt`` (through :mod:`src.checkpoint.released`).

The file (layout version 2) is a plain dict, read with ``torch.load(weights_only=True)``, written atomically:

``layout_version``       2 (:data:`LAYOUT_VERSION`).
``method_name``          what wrote it: the registered name (``src/registry.py``) of a method or an evaluation
                         script.
``student``              the trainable network's ``state_dict()`` (``SwAVNetwork``: ``backbone.*``,
                         ``projection_head.*``, ``prototypes.*``, probes; ``DINONetwork``: ``backbone.*``,
                         ``head.*``; an evaluation: the fine-tuned network or the linear classifier), unwrapped
                         (no ``module.`` prefix).
``teacher``              every other network the method keeps, under the name the loaders read: Daino's EMA
                         teacher, Suave's momentum encoder (``--use_momentum true``), FixMatch's EMA model;
                         absent when the method keeps none.
``args``                 the parsed flags (a dict); ``--evaluate``, predict and export rebuild the networks
                         from them.
``classes``              the class names in index order (output k of every head is ``classes[k]``).
``eval_preprocessing``   ``{"resize", "crop", "mean", "std"}``: Resize(resize) (short side, bilinear; None:
                         none), CenterCrop(crop), ToTensor, Normalize(mean, std), as validation runs (training
                         runs only).
``optimizer``, ``scaler``, ``rng``, ``epoch``, ``iteration``, ``iter_in_epoch``, ``wandb_id``, ``world_size``:
the position and what every run resumes; the rest of the file is the writer's own resumable state
(:attr:`RunCheckpoint.state`): ``method`` (the SwAV queue, DINO's loss center), ``lab_loader``,
``bad_images`` for training; ``scheduler``, ``best_acc`` for an evaluation.

Older files load into the same type:

- training runs before the contract (no ``layout_version``/``method_name``/``classes``/``eval_preprocessing``):
  Daino's teacher in ``method["teacher"]``, Suave's momentum encoder in ``method["ema"]``;
  :attr:`RunCheckpoint.method_name` is None (``src.trained`` tells the method from the flags), the classes
  come from ``DATA/train`` and the preprocessing from the flags.
- evaluation scripts before this type: ``{"layout": "suave-daino evaluation checkpoint v1", "script",
  "model", "class_names", ...}``.

A file the Suave-Daino release wrote (:mod:`src.checkpoint.release_files`, Daino's also named
``checkpoint.pth``) is refused, naming the flags that start a run from it: it is never resumed.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from src import registry
from src.checkpoint.files import CheckpointError, PathLike, read_checkpoint, save_checkpoint_atomic
from src.checkpoint.release_files import release_method
from src.checkpoint.released import checkpoint_networks

LAYOUT_VERSION = 2
EVAL_LAYOUT_1 = "suave-daino evaluation checkpoint v1"  # the evaluation scripts' files before RunCheckpoint
# entries of the file that are fields of RunCheckpoint (everything else is the writer's own state)
_FIELDS = ("layout_version", "method_name", "student", "args", "classes", "eval_preprocessing", "optimizer",
           "scaler", "rng", "epoch", "iteration", "iter_in_epoch", "wandb_id", "world_size")
_NETWORK_NAMES = ("teacher",)


@dataclass
class RunCheckpoint:
    """What one run's ``checkpoint.pth`` holds (the layout of the module docstring)."""

    method_name: str | None                     # None: a training run from before the contract
    student: dict[str, Tensor]
    args: dict[str, Any]
    epoch: int = 0                              # epochs completed (the epoch to run next)
    iteration: int = 0                          # steps completed
    iter_in_epoch: int = 0                      # steps completed of the epoch in progress
    networks: dict[str, dict[str, Tensor]] = field(default_factory=dict)  # other kept networks ("teacher")
    classes: list[str] | None = None
    eval_preprocessing: dict[str, Any] | None = None
    optimizer: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    rng: dict[str, Any] = field(default_factory=dict)  # rank (str) -> src.run_state.rng_state()
    wandb_id: str | None = None
    world_size: int = 1
    state: dict[str, Any] = field(default_factory=dict)  # the writer's own resumable state, by entry name
    layout_version: int = LAYOUT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The file's entries."""
        entries = {name: getattr(self, name) for name in _FIELDS}
        entries.update(self.networks)
        clash = set(self.state) & set(entries)
        if clash:
            raise ValueError(f"RunCheckpoint.state may not hold the contract's entries {sorted(clash)}")
        return {**entries, **self.state}

    @classmethod
    def from_dict(cls, entries: Mapping[str, Any], where: str = "<checkpoint dict>") -> RunCheckpoint:
        """A checkpoint of this layout or of the older ones (module docstring); CheckpointError otherwise."""
        entries = dict(entries)
        release = release_method(entries)
        if release is not None:  # e.g. the Daino release's EXP/checkpoint.pth: the same name, another layout
            init = f"--{registry.entry(release).init_flag}"
            raise CheckpointError(f"{where} was written by the {release} release, not by a run of this project: "
                                  f"start a run from it with {init} (another --output_dir), or evaluate it with "
                                  "--evaluate / src.predict / src.export")
        if entries.get("layout") == EVAL_LAYOUT_1:
            entries = {"method_name": entries.pop("script"), "student": entries.pop("model"),
                       "classes": entries.pop("class_names", None), "layout_version": 1,
                       **{k: v for k, v in entries.items() if k != "layout"}}
        elif "layout_version" not in entries:  # training before the contract: networks inside "method"
            networks = checkpoint_networks(entries)
            if "student" not in entries or "epoch" not in entries or not isinstance(entries.get("args"), dict):
                raise CheckpointError(f"{where} is not a checkpoint of a run of this project (entries "
                                      f"{sorted(map(str, entries))[:8]}): use EXP/checkpoint.pth of a run")
            entries.update({"layout_version": 1, "method_name": None,
                            **{k: v for k, v in networks.items() if k != "student"}})
        missing = [name for name in ("student", "args") if not isinstance(entries.get(name), dict)]
        if missing:
            raise CheckpointError(f"{where} lacks the {', '.join(missing)} entry of a run's checkpoint (it holds "
                                  f"{sorted(map(str, entries))[:8]})")
        fields = {name: entries.pop(name) for name in _FIELDS if name in entries}
        networks = {name: entries.pop(name) for name in _NETWORK_NAMES if isinstance(entries.get(name), dict)}
        for name in _NETWORK_NAMES:
            entries.pop(name, None)
        fields["rng"] = fields.get("rng") or {}
        return cls(networks=networks, state=entries, **fields)

    def save(self, path: PathLike) -> None:
        """Write the file atomically (main process only): a crash leaves the previous one intact."""
        save_checkpoint_atomic(self.to_dict(), path)

    @classmethod
    def load(cls, path: PathLike, flag: str | None = None) -> RunCheckpoint:
        """Read ``path`` (``weights_only=True``) into a RunCheckpoint; ``flag`` names the option that gave it."""
        return cls.from_dict(read_checkpoint(path, flag=flag), os.fspath(path))

    def all_networks(self) -> dict[str, dict[str, Tensor]]:
        """``student`` and every other kept network, by name."""
        return {"student": self.student, **self.networks}


@contextlib.contextmanager
def resuming_into(path: PathLike, checkpoint: RunCheckpoint, method_name: str,
                  run_args: dict[str, Any]) -> Iterator[None]:
    """Load a run's own ``checkpoint`` into this run's networks inside the block; a checkpoint of another method
    or evaluation, or one whose shapes/keys/parameter groups do not fit (other network flags), raises one
    CheckpointError naming the flags that differ and the first mismatch, instead of load_state_dict's list of
    every key."""
    saved_method = checkpoint.method_name or method_name
    if saved_method != method_name:
        raise CheckpointError(f"{os.fspath(path)} is a checkpoint of {saved_method}, not {method_name}: give this "
                              f"run another --output_dir (or resume that one with its own entry point)")
    try:
        yield
    except (RuntimeError, ValueError) as error:
        saved = checkpoint.args
        ignored = {"output_dir", "dump_path", "epochs", "stop_after_epochs", "time_budget_min", "eval_every_min",
                   "rank", "world_size", "local_rank", "dist_url"}
        differ = sorted(k for k in saved if k in run_args and k not in ignored and saved[k] != run_args[k])
        detail = next((line.strip() for line in str(error).splitlines()[1:] if line.strip()), str(error).strip())
        flags = f"flags that differ: {', '.join('--' + k for k in differ[:8])}; " if differ else ""
        raise CheckpointError(f"{os.fspath(path)} was written with other network flags and cannot be resumed by "
                              f"this run ({flags}first mismatch: {detail[:200]}); resume with the flags it was "
                              f"written with, or give this run another --output_dir") from error
