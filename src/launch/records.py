"""What an experiment directory records: the recipe, the exact command, the resolved arguments and the
software environment; written in a hidden sibling folder and renamed into place, so a failure never leaves a
half-written experiment behind."""
from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import uuid
from typing import Any, Iterator

from src.launch.errors import LaunchError

ARGS_FILE = "args.json"
ENV_FILE = "env.json"
COMMAND_FILE = "command.sh"
LAUNCHES_FILE = "launches.jsonl"
TIMESTAMP_FORMAT = "%Y_%m_%d_%H_%M_%S"  # the release's experiment-name prefix


def timestamp() -> str:
    return datetime.datetime.now().strftime(TIMESTAMP_FORMAT)


def now_iso() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def check_new_experiment_dir(path: str) -> None:
    """A new experiment needs a fresh (or empty) directory; an existing run is continued with --resume."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise LaunchError(f"experiment directory {path} exists and is not a directory")
    if os.path.isdir(path) and os.listdir(path):
        raise LaunchError(f"experiment directory {path} already exists and is not empty: "
                          f"continue it with --resume {path} or choose another --name/--experiment_dir")


@contextlib.contextmanager
def staged_directory(final: str) -> Iterator[str]:
    """Yield a hidden folder beside ``final``; on success it becomes ``final``, on any error it is removed."""
    parent = os.path.dirname(final)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise LaunchError(f"cannot create {parent}: {exc.strerror} (check --base_experiment_dir)") from exc
    staging = os.path.join(parent, f".{os.path.basename(final)}.{uuid.uuid4().hex[:8]}.partial")
    os.mkdir(staging)  # the usual permissions (umask), unlike mkdtemp's 0700
    try:
        yield staging
        os.rename(staging, final)  # atomic; replaces an empty directory, fails on a non-empty one
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_text(path: str, text: str, executable: bool = False) -> None:
    """Write ``text`` atomically (temporary file + rename)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    if executable:
        os.chmod(tmp, 0o755)
    os.replace(tmp, path)


def write_json(path: str, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def append_launch(experiment_dir: str, entry: dict[str, Any]) -> None:
    """One JSON line per launch (first start, dry run, resume): when, how and what it started."""
    with open(os.path.join(experiment_dir, LAUNCHES_FILE), "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"time": now_iso(), **entry}, default=str) + "\n")


def render_command_sh(program: list[str], flag_lines: list[list[str]], cwd: str, comments: list[str]) -> str:
    """A bash script that runs ``program + flags`` from ``cwd``: one flag per line, every word shell-quoted."""
    lines = [" ".join(shlex.quote(t) for t in program)]
    lines += ["    " + " ".join(shlex.quote(t) for t in words) for words in flag_lines]
    header = ["#!/usr/bin/env bash", *(f"# {c}" for c in comments), "set -euo pipefail", f"cd {shlex.quote(cwd)}"]
    return "\n".join(header) + "\nexec " + " \\\n".join(lines) + "\n"


def _run_quiet(command: list[str], cwd: str) -> str | None:
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_record(repo_root: str, with_diff: bool = False) -> dict[str, Any]:
    """The checkout's commit, branch and whether tracked files differ from it (``diff``: how, when asked)."""
    commit = _run_quiet(["git", "rev-parse", "HEAD"], repo_root)
    status = _run_quiet(["git", "status", "--porcelain", "--untracked-files=no"], repo_root)
    record = {"commit": commit, "dirty": bool(status) if status is not None else None,
              "branch": _run_quiet(["git", "rev-parse", "--abbrev-ref", "HEAD"], repo_root)}
    if with_diff:
        record["diff"] = _run_quiet(["git", "diff", "--no-color", "HEAD"], repo_root) if status else ""
    return record


def installed_packages() -> list[str]:
    """``pip freeze``'s content (name==version), read from the package metadata: no subprocess, milliseconds."""
    seen: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() not in seen:
            seen[name.lower()] = f"{name}=={dist.version}"
    return sorted(seen.values(), key=str.lower)


def torch_record() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"torch": None}
    record: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda,
                              "cuda_available": torch.cuda.is_available()}
    if record["cuda_available"]:
        record["cudnn"] = torch.backends.cudnn.version()
        record["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    try:
        record["torchvision"] = importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        record["torchvision"] = None
    return record


def environment_record(repo_root: str) -> dict[str, Any]:
    """Where and with what the experiment was launched (env.json)."""
    return {
        "created": now_iso(),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version,
        "python_executable": sys.executable,
        **torch_record(),
        "git": git_record(repo_root, with_diff=True),
        "cwd": os.getcwd(),
        "slurm": {k: v for k, v in os.environ.items() if k.startswith("SLURM_")},
        "pip_freeze": installed_packages(),
    }
