"""What an experiment directory records: the recipe, the exact command (command.sh), the resolved arguments
(args.json), the software environment (env.json), each launch (launches.jsonl) and, for Slurm, the code (code/)."""
from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import uuid
from typing import Any, Iterator

from src.errors import UserError


@contextlib.contextmanager
def staged_directory(final: str) -> Iterator[str]:
    """Yield a hidden folder beside ``final`` that becomes ``final`` on success and is removed on any error."""
    staging = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.{uuid.uuid4().hex[:8]}.partial")
    try:
        os.makedirs(staging)  # the usual permissions (umask), unlike mkdtemp's 0700
    except OSError as exc:
        raise UserError(f"cannot create {staging}: {exc.strerror} (check --base_experiment_dir)") from exc
    try:
        yield staging
        os.rename(staging, final)  # atomic; replaces an empty directory, fails on a non-empty one
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def run_tool(*argv: str, cwd: str | None = None) -> subprocess.CompletedProcess | None:
    """Run a command-line tool (git, sbatch, sinfo) quietly; None when it is missing or hangs."""
    try:
        return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


def git(repo_root: str, *args: str) -> str | None:
    """git's output, or None when git is missing, fails or hangs."""
    done = run_tool("git", *args, cwd=repo_root)
    return done.stdout.strip() if done and done.returncode == 0 else None


def snapshot_code(repo_root: str, destination: str) -> None:
    """The tracked files of ``repo_root`` as they are now, edits included (submitit's ``RsyncSnapshot`` without rsync):
    ``git stash create`` (nothing when clean) and ``git archive`` touch neither the working tree nor the index."""
    os.makedirs(destination)
    archive = os.path.join(destination, ".code.tar")
    done = run_tool("git", "archive", "--output", archive, git(repo_root, "stash", "create") or "HEAD", cwd=repo_root)
    if not done or done.returncode != 0:
        shutil.rmtree(destination)
        raise UserError(f"cannot snapshot the code of {repo_root}: git archive failed "
                        f"({done.stderr.strip()[:300] if done else 'no git'})")
    with tarfile.open(archive) as tar:  # the "tar" filter refuses links out of the folder
        tar.extractall(destination, **({"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}))
    os.remove(archive)


def environment_record(repo_root: str) -> dict[str, Any]:
    """env.json: where and with what the experiment was launched (``pip_freeze`` from the package metadata)."""
    import torch

    status = git(repo_root, "status", "--porcelain", "--untracked-files=no")
    return {"hostname": platform.node(), "python": sys.version, "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "git": {"commit": git(repo_root, "rev-parse", "HEAD"), "dirty": None if status is None else bool(status),
                    "branch": git(repo_root, "rev-parse", "--abbrev-ref", "HEAD"),
                    "diff": git(repo_root, "diff", "--no-color", "HEAD") if status else ""},
            "pip_freeze": sorted({f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()},
                                 key=str.lower)}
