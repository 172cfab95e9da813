"""Atomic file writes: readers (and a resumed run after a crash) see the old file or the new one, never half.

The one recipe, used for checkpoints, data lists, stats tables and launch records: write a temporary file in
the target's own directory (a rename is atomic only within one file system), flush it to disk (fsync), then
``os.replace`` it over the target and fsync the directory so the rename itself survives a power cut. If the
writer fails, the temporary file is removed and any previous target is left as it was.
"""
from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from glob import escape as glob_escape
from pathlib import Path
from typing import IO, Any, Union

PathLike = Union[str, "os.PathLike[str]"]


def _fsync_path(path: str, directory: bool = False) -> None:
    """fsync a file or a directory by name; directories that cannot be opened (some platforms) are skipped."""
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: PathLike, *, parents: bool = False, mode: int | None = None) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``path``; when the block ends without error, that file replaces
    ``path`` atomically (fsync, ``os.replace``, fsync of the directory). On error it is removed.

    The block must create the file (``open(tmp, "w")``, ``frame.to_csv(tmp)``, ...): created by the writer, it
    gets the usual umask-based permissions (``tempfile`` would give 0o600). ``mode`` (e.g. 0o755) sets them
    explicitly. ``parents`` creates missing parent directories; without it a missing directory raises
    FileNotFoundError naming it.
    """
    target = Path(os.path.abspath(os.fspath(path)))
    directory = target.parent
    if parents:
        directory.mkdir(parents=True, exist_ok=True)
    elif not directory.is_dir():
        raise FileNotFoundError(f"cannot write {os.fspath(path)}: directory {directory} does not exist")
    temporary = directory / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        yield temporary
        if not temporary.exists():
            raise FileNotFoundError(f"the writer of {os.fspath(path)} created no file at {temporary}")
        if mode is not None:
            os.chmod(temporary, mode)
        _fsync_path(str(temporary))
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
    _fsync_path(str(directory), directory=True)


def remove_orphaned_temporaries(path: PathLike) -> list[Path]:
    """Delete the temporary files of :func:`atomic_path` writes of ``path`` whose writer process is gone (a job
    killed mid-write, e.g. Slurm's SIGKILL after ``scancel``); returns them. Writers still alive are left alone."""
    target = Path(os.path.abspath(os.fspath(path)))
    removed = []
    for candidate in target.parent.glob(f".{glob_escape(target.name)}.*.tmp"):
        pid = candidate.name[len(target.name) + 2:].split(".")[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            with contextlib.suppress(OSError):
                candidate.unlink()
                removed.append(candidate)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_open(path: PathLike, binary: bool = True, *, parents: bool = False) -> Iterator[IO[Any]]:
    """``with atomic_open(path) as handle: torch.save(state, handle)``: :func:`atomic_path` with an open
    file (binary, or UTF-8 text with ``binary=False``)."""
    with atomic_path(path, parents=parents) as temporary:
        with open(temporary, "xb" if binary else "x", **({} if binary else {"encoding": "utf-8"})) as handle:
            yield handle


def write_bytes_atomic(path: PathLike, data: bytes, *, parents: bool = False, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path`` as a Path."""
    with atomic_path(path, parents=parents, mode=mode) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def write_text_atomic(path: PathLike, text: str, *, parents: bool = False, mode: int | None = None) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; ``mode=0o755`` for a script. Returns ``path`` as a Path."""
    return write_bytes_atomic(path, text.encode("utf-8"), parents=parents, mode=mode)


def write_json_atomic(path: PathLike, obj: Any, *, indent: int | None = 2, default: Callable[[Any], Any] | None = None,
                      parents: bool = False) -> Path:
    """Write ``obj`` as JSON (``indent``, one trailing newline; ``default`` as in ``json.dumps``) atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, default=default) + "\n", parents=parents)
