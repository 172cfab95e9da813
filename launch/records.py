"""What an experiment directory records: the recipe, the exact command (command.sh), the resolved arguments
(args.json), the software environment (env.json), each launch (launches.jsonl) and, for Slurm, the code (code/)."""
from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import io
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import uuid
from typing import Any, Iterator

from src.errors import UserError

ARGS_FILE, ENV_FILE, COMMAND_FILE, LAUNCHES_FILE = "args.json", "env.json", "command.sh", "launches.jsonl"


def now() -> datetime.datetime:
    """The local time, with its zone."""
    return datetime.datetime.now().astimezone()


@contextlib.contextmanager
def staged_directory(final: str) -> Iterator[str]:
    """Yield a hidden folder beside ``final``; on success it becomes ``final``, on any error it is removed (a
    failure never leaves a half-made experiment behind)."""
    parent = os.path.dirname(final)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {parent}: {exc.strerror} (check --base_experiment_dir)") from exc
    staging = os.path.join(parent, f".{os.path.basename(final)}.{uuid.uuid4().hex[:8]}.partial")
    os.mkdir(staging)  # the usual permissions (umask), unlike mkdtemp's 0700
    try:
        yield staging
        os.rename(staging, final)  # atomic; replaces an empty directory, fails on a non-empty one
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def git(repo_root: str, *args: str) -> str | None:
    """git's output, or None when git is missing, fails or hangs."""
    try:
        done = subprocess.run(["git", *args], cwd=repo_root, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def snapshot_code(repo_root: str, destination: str) -> None:
    """Unpack the tracked files of ``repo_root`` as they are now (uncommitted edits included) into ``destination``,
    as submitit's ``RsyncSnapshot`` without rsync: ``git stash create`` (a commit of the working tree, nothing when
    clean) and ``git archive``, which touch neither the working tree nor the index."""
    revision = git(repo_root, "stash", "create") or "HEAD"
    archive = subprocess.run(["git", "archive", "--format=tar", revision], cwd=repo_root, capture_output=True,
                             timeout=60, check=False)
    if archive.returncode != 0:
        raise UserError(f"cannot snapshot the code of {repo_root}: git archive failed "
                        f"({archive.stderr.decode().strip()[:300]})")
    os.makedirs(destination)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:  # the "tar" filter refuses links out of the folder
        tar.extractall(destination, **({"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}))


def environment_record(repo_root: str) -> dict[str, Any]:
    """env.json: where and with what the experiment was launched (``pip_freeze`` from the package metadata)."""
    import torch

    status = git(repo_root, "status", "--porcelain", "--untracked-files=no")
    packages = {d.metadata["Name"].lower(): f"{d.metadata['Name']}=={d.version}"  # the first of a name wins
                for d in reversed(list(importlib.metadata.distributions())) if d.metadata["Name"]}
    cuda = torch.cuda.is_available()
    return {"created": now().isoformat(), "hostname": platform.node(), "platform": platform.platform(),
            "python": sys.version, "python_executable": sys.executable, "torch": torch.__version__,
            "torchvision": importlib.metadata.version("torchvision"), "cuda": torch.version.cuda, "cwd": os.getcwd(),
            "cuda_available": cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
            "git": {"commit": git(repo_root, "rev-parse", "HEAD"), "dirty": None if status is None else bool(status),
                    "branch": git(repo_root, "rev-parse", "--abbrev-ref", "HEAD"),
                    "diff": git(repo_root, "diff", "--no-color", "HEAD") if status else ""},
            "slurm": {k: v for k, v in os.environ.items() if k.startswith("SLURM_")},
            "pip_freeze": sorted(packages.values(), key=str.lower)}
