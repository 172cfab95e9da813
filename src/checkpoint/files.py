"""Reading and writing checkpoint files safely, whatever they hold.

Reading is always ``torch.load(..., weights_only=True, map_location="cpu")``; ``argparse.Namespace`` (the
``args`` entry of the DINO full checkpoint) is allow-listed for the duration of one call only, so nothing
global changes. Writing is atomic (:mod:`src.atomic_io`): a temporary file beside the target, fsync'ed, then
``os.replace``; a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pickle
import shutil
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Union

import torch
from torch import Tensor, nn

from src.atomic_io import atomic_open, remove_orphaned_temporaries
from src.errors import MissingPathError, UserError

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file cannot be used: corrupt, unsafe to unpickle, lacking the asked network, or not
    matching the model. A ``UserError``: the entry points print its message as one line."""


# --------------------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _allow_globals(classes: Sequence[type]) -> Iterator[None]:
    """Allow-list ``classes`` for ``weights_only`` unpickling during the block, leaving no global change.

    torch >= 2.5 has the ``safe_globals`` context manager; torch 2.4 only ``add_safe_globals``, so there the
    previous list is restored afterwards. Older torch has neither: nothing is allow-listed.
    """
    serialization = torch.serialization
    if hasattr(serialization, "safe_globals"):
        with serialization.safe_globals(list(classes)):
            yield
    elif hasattr(serialization, "add_safe_globals") and hasattr(serialization, "get_safe_globals"):
        previous = list(serialization.get_safe_globals())
        serialization.add_safe_globals(list(classes))
        try:
            yield
        finally:
            serialization.clear_safe_globals()
            serialization.add_safe_globals(previous)
    else:
        yield


def _describe(path: PathLike, flag: str | None) -> str:
    return str(os.fspath(path)) + (f" (given by {flag})" if flag else "")


def read_checkpoint(path: PathLike, flag: str | None = None) -> dict:
    """Read a checkpoint on the CPU with ``torch.load(weights_only=True)``, ``argparse.Namespace`` allowed.

    ``flag`` names the command-line option that points to ``path`` (e.g. ``"--swav_init_ckpt"``) so the
    error messages can say which setting to fix. Raises MissingPathError (a FileNotFoundError) for a missing
    file and :class:`CheckpointError` for a directory, a truncated/corrupt file or one that needs other pickled
    objects (it is never retried with ``weights_only=False``).
    """
    where = _describe(path, flag)
    if not os.path.exists(path):
        hint = f"; set {flag} to an existing checkpoint file" if flag else ""
        raise MissingPathError(f"checkpoint file not found: {where}{hint}")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint path is a directory, not a file: {where}")
    try:
        with _allow_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        message = str(error)
        if "Weights only load failed" in message or "Unsupported global" in message:
            detail = message.split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
            raise CheckpointError(
                f"checkpoint {where} contains pickled Python objects other than tensors, numbers, strings, "
                f"lists, dicts and argparse.Namespace, which are refused for safety (weights_only=True): "
                f"{detail}. Re-save it with only plain data (e.g. its state_dict) to use it here."
            ) from error
        raise CheckpointError(f"cannot read checkpoint {where}: the file is truncated or corrupt ({error})") from error
    except (RuntimeError, EOFError, ValueError, KeyError, IndexError, OSError, AttributeError) as error:
        if isinstance(error, (FileNotFoundError, PermissionError)):
            raise
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        raise CheckpointError(
            f"cannot read checkpoint {where}: the file is truncated or corrupt ({reason}). "
            "Re-download or re-copy it."
        ) from error
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"checkpoint {where} holds a {type(checkpoint).__name__}, expected a dict (a state_dict or a "
            "dict of entries such as 'student'/'teacher'/'state_dict')"
        )
    return checkpoint


# --------------------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------------------

_PLAIN_SCALARS = (type(None), bool, int, float, str, bytes, torch.dtype, torch.device, torch.Size)


def _to_plain(value: Any, where: str) -> Any:
    """``value`` made of plain data only (what ``weights_only=True`` reloads); Namespace -> dict.

    Types are checked exactly: subclasses such as numpy.float64 (a float), IntEnum or namedtuple would be
    pickled as their own class and refused on reload. Raises TypeError naming the entry (e.g.
    ``state['args']['output_dir']``) that is not plain data.
    """
    if isinstance(value, Tensor) or type(value) in _PLAIN_SCALARS:
        return value
    if type(value) is argparse.Namespace:
        value = vars(value)
    if type(value) in (dict, OrderedDict):
        plain = type(value)()
        for key, item in value.items():
            if type(key) not in (str, int):
                raise TypeError(f"checkpoint entry {where} has a key of type {type(key).__name__}; use str or int")
            plain[key] = _to_plain(item, f"{where}[{key!r}]")
        return plain
    if type(value) in (list, tuple):
        return type(value)(_to_plain(item, f"{where}[{index}]") for index, item in enumerate(value))
    raise TypeError(
        f"checkpoint entry {where} is a {type(value).__module__}.{type(value).__qualname__}, which "
        "torch.load(weights_only=True) refuses; store plain data instead (tensors, numbers, strings, lists, "
        "dicts: e.g. float(x), x.tolist(), str(path), vars(namespace), dict(mapping), module.state_dict())"
    )


def save_checkpoint_atomic(state: dict, path: PathLike) -> None:
    """Write ``state`` to ``path`` atomically (temp file in the same directory, fsync, ``os.replace``).

    ``state`` must be plain data that reloads with ``weights_only=True``: tensors, numbers, strings, lists,
    tuples, dicts (an ``argparse.Namespace`` is stored as its ``vars()`` dict). Anything else raises
    TypeError naming the entry, before anything is written. A crash mid-write leaves any previous ``path``
    intact and no temporary file behind; a kill (SIGKILL) may leave one, which the next save removes. Call it
    on the main process only.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"checkpoint state must be a dict, got {type(state).__name__}")
    plain = _to_plain(state, "state")
    with atomic_open(path) as handle:
        torch.save(plain, handle)
    for orphan in remove_orphaned_temporaries(path):
        logger.warning("removed %s, the temporary file of a checkpoint write that was killed", orphan)


def copy_snapshot(path: PathLike, snapshot_path: PathLike) -> None:
    """Copy checkpoint ``path`` to ``snapshot_path`` atomically (the --checkpoint_freq / --saveckp_freq copies)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"cannot snapshot checkpoint: {os.fspath(path)} does not exist")
    with open(path, "rb") as source, atomic_open(snapshot_path) as target:
        shutil.copyfileobj(source, target, length=16 * 1024 * 1024)


def unwrap_module(module: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel / DataParallel (``.module``) and torch.compile (``._orig_mod``)."""
    while True:
        inner = getattr(module, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            wrapped = isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel))
            inner = module.module if wrapped else None
        if inner is None:
            return module
        module = inner
