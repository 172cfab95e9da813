"""Checks of a Slurm job's inputs at submission, so that a mistake costs seconds on the login node rather than
hours in the queue and a job that dies at start: the data folders, the init checkpoint (it must load), the
labelled list (resolved, and fetched into the cache the job reads when it is a standard ImageNet list) and wandb
credentials for an online run. Each failure is one LaunchError naming the fix. Flags an entry point does not
have are not checked."""
from __future__ import annotations

import netrc
import os
from typing import Any
from urllib.parse import urlparse

from src.launch.errors import LaunchError

INIT_CHECKPOINT_FLAGS = ("swav_init_ckpt", "dino_init_ckpt")


def _check_data(data_path: str) -> None:
    for split in ("train", "val"):
        if not os.path.isdir(os.path.join(data_path, split)):
            raise LaunchError(f"{data_path} has no {split}/ folder: --data_dir must hold train/<class>/ and "
                              f"val/<class>/ (the job would fail at start)")


def _check_init_checkpoint(flag: str, path: str) -> None:
    from src.checkpoint import read_checkpoint

    try:
        read_checkpoint(path, f"--{flag}")
    except Exception as exc:  # missing, a directory, truncated, unsafe pickle: the message says which
        raise LaunchError(f"{' '.join(str(exc).split())} (checked at submission)") from None


def _check_labelled_list(args: dict[str, Any]) -> None:
    from src.data.subsets import resolve_subset_file

    try:
        resolve_subset_file(args["data_path"], args.get("labels_perc"), args.get("subset_file"))
    except Exception as exc:  # DataError with the fix, or an unexpected network error
        raise LaunchError(" ".join(str(exc).split())) from None


def wandb_has_credentials() -> bool:
    """True when wandb can log in without asking: WANDB_API_KEY, or a netrc entry for its host (wandb login)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def check_job_inputs(train_args: dict[str, Any]) -> None:
    """All the checks above, for the entry point's parsed flags (``train_args``)."""
    if "data_path" in train_args:
        _check_data(train_args["data_path"])
    for flag in INIT_CHECKPOINT_FLAGS:
        if train_args.get(flag):
            _check_init_checkpoint(flag, train_args[flag])
    if "labels_perc" in train_args or "subset_file" in train_args:
        _check_labelled_list(train_args)
    if train_args.get("wandb") is True and train_args.get("wandb_mode", "online") == "online" \
            and not wandb_has_credentials():
        raise LaunchError("--wandb true in online mode, but no wandb credentials here (no WANDB_API_KEY, no "
                          "netrc entry): run `wandb login` first, or add -- --wandb_mode offline (sync later "
                          "with `wandb sync`)")
