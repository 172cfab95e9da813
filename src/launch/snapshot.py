"""Code snapshots for Slurm jobs: the tracked files of the checkout, as they are at submission (uncommitted edits
included), unpacked into ``<experiment>/code``; the job and its requeues run from there, so editing or switching
the checkout while a job waits in the queue changes nothing in it (as submitit's ``RsyncSnapshot``, without
rsync: ``git stash create`` + ``git archive``, which never touch the working tree or the index)."""
from __future__ import annotations

import io
import os
import subprocess
import tarfile

from src.launch.errors import LaunchError

SNAPSHOT_FOLDER = "code"


def _git(repo_root: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=repo_root, capture_output=True, timeout=60, check=False)


def is_git_checkout(repo_root: str) -> bool:
    try:
        done = _git(repo_root, "rev-parse", "--show-toplevel")
    except OSError:  # no git
        return False
    return done.returncode == 0 and os.path.samefile(done.stdout.decode().strip(), repo_root)


def untracked_sources(repo_root: str) -> list[str]:
    """Python files git does not track (and does not ignore): a snapshot leaves them out."""
    done = _git(repo_root, "ls-files", "--others", "--exclude-standard", "--", "*.py")
    return done.stdout.decode().split() if done.returncode == 0 else []


def snapshot_code(repo_root: str, destination: str) -> None:
    """Unpack the tracked files of ``repo_root`` (working-tree content) into ``destination`` (created)."""
    stash = _git(repo_root, "stash", "create")  # a commit of the working tree; empty output when clean
    revision = stash.stdout.decode().strip() if stash.returncode == 0 and stash.stdout.strip() else "HEAD"
    archive = _git(repo_root, "archive", "--format=tar", revision)
    if archive.returncode != 0:
        raise LaunchError(f"cannot snapshot the code of {repo_root}: git archive failed "
                          f"({archive.stderr.decode().strip()[:300]})")
    os.makedirs(destination)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        if hasattr(tarfile, "tar_filter"):  # Python >= 3.11.4: refuse links out of the folder
            tar.extractall(destination, filter="tar")
        else:  # pragma: no cover - git archive of our own checkout
            tar.extractall(destination)
