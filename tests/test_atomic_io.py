"""src.atomic_io: the one atomic-write recipe (checkpoints, data lists, stats tables, launch records)."""
import json
import os
import subprocess
import sys

import pytest

from src.atomic_io import (atomic_open, atomic_path, remove_orphaned_temporaries, write_json_atomic,
                           write_text_atomic)
from src.checkpoint import read_checkpoint, save_checkpoint_atomic


def test_write_replaces_the_file_with_usual_permissions(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    assert write_text_atomic(path, "new\n") == path
    assert path.read_text() == "new\n" and os.listdir(tmp_path) == ["a.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
    write_text_atomic(path, "#!/bin/sh\n", mode=0o755)
    assert os.stat(path).st_mode & 0o777 == 0o755


def test_json_has_indent_default_and_one_trailing_newline(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"a": 1, "p": tmp_path}, default=str)
    assert path.read_text() == json.dumps({"a": 1, "p": str(tmp_path)}, indent=2) + "\n"


def test_failing_writer_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "stats.csv"
    path.write_text("previous")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(path) as tmp:
            assert tmp.parent == tmp_path and tmp.name != path.name
            tmp.write_text("half")
            raise KeyboardInterrupt
    with pytest.raises(OSError, match="disk full"):
        with atomic_open(path) as handle:
            handle.write(b"half")
            raise OSError("disk full")
    assert path.read_text() == "previous" and os.listdir(tmp_path) == ["stats.csv"]


def test_missing_directory_is_named_or_created(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"directory {tmp_path / 'new'} does not exist"):
        write_text_atomic(tmp_path / "new" / "x.txt", "x")
    write_text_atomic(tmp_path / "new" / "deeper" / "x.txt", "x", parents=True)
    assert (tmp_path / "new" / "deeper" / "x.txt").read_text() == "x"


def test_a_writer_that_creates_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="created no file"):
        with atomic_path(tmp_path / "x"):
            pass
    assert os.listdir(tmp_path) == []


def test_stats_table_rewrites_its_csv_atomically(tmp_path, monkeypatch):
    import pandas as pd

    from src.logging_utils import StatsTable

    table = StatsTable(str(tmp_path))
    table.append({"epoch": 0, "loss": 2.0})
    table.append({"epoch": 1, "loss": 1.5})
    before = (tmp_path / "stats.csv").read_text()
    assert before == "epoch,loss\n0,2.0\n1,1.5\n"
    monkeypatch.setattr(pd.DataFrame, "to_csv", lambda self, path, **kw: open(path, "w").write("ep") and 1 / 0)
    with pytest.raises(ZeroDivisionError):
        table.append({"epoch": 2, "loss": 1.0})
    assert (tmp_path / "stats.csv").read_text() == before
    assert sorted(os.listdir(tmp_path)) == ["stats.csv", "stats.jsonl"]
    assert StatsTable(str(tmp_path)).frame["loss"].tolist() == [2.0, 1.5]


def test_orphaned_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    target = tmp_path / "checkpoint.pth"
    target.write_bytes(b"good")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp_path / f".checkpoint.pth.{dead.pid}.0123abcd.tmp"
    live = tmp_path / f".checkpoint.pth.{os.getpid()}.4567ef01.tmp"
    other = tmp_path / f".stats.csv.{dead.pid}.89abcdef.tmp"
    for path in (orphan, live, other):
        path.write_bytes(b"half")
    assert remove_orphaned_temporaries(target) == [orphan]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, live.name, other.name])
    assert target.read_bytes() == b"good"


def test_a_checkpoint_save_removes_the_orphan_of_a_killed_save(tmp_path):
    target = tmp_path / "checkpoint.pth"
    killed = subprocess.Popen([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    killed.wait()
    orphan = tmp_path / f".checkpoint.pth.{killed.pid}.0123abcd.tmp"
    orphan.write_bytes(b"half a checkpoint")
    save_checkpoint_atomic({"epoch": 3}, target)
    assert not orphan.exists() and read_checkpoint(target)["epoch"] == 3
