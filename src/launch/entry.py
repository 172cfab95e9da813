"""The entry points (``main_suave.py``, ``main_daino.py``, and the evaluation scripts ``eval_semisup.py``,
``eval_linear.py``): where they are, loading them on demand, and checking
a flag list against their own ``get_args_parser()`` before anything is written or started."""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import importlib.util
import os
import re
import sys
from types import ModuleType
from typing import Iterator, NoReturn

from src.launch.errors import LaunchError
from src.launch.script_file import Flag, flatten, is_flag

ENTRY_MODULES = {"suave": "main_suave", "daino": "main_daino", "eval_semisup": "eval_semisup",
                 "eval_linear": "eval_linear", "fixmatch": "main_fixmatch"}


def entry_script_path(entry_root: str, method: str) -> str:
    """Absolute path of the method's entry script (``<entry_root>/main_<method>.py``)."""
    return os.path.join(os.path.abspath(entry_root), ENTRY_MODULES[method] + ".py")


@contextlib.contextmanager
def _on_sys_path(folder: str) -> Iterator[None]:
    """Put ``folder`` first on sys.path for the duration (the entry's own imports resolve from there)."""
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


def load_entry_module(entry_root: str, method: str) -> ModuleType:
    """Execute ``<entry_root>/main_<method>.py`` under a private module name (never shadows ``main_suave``)."""
    path = entry_script_path(entry_root, method)
    if not os.path.isfile(path):
        raise LaunchError(f"entry point not found: {path} (run job_launcher.py from a complete suave-daino checkout)")
    digest = hashlib.sha1(path.encode()).hexdigest()[:10]
    name = f"_launch_entry_{ENTRY_MODULES[method]}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    with _on_sys_path(os.path.dirname(path)):
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[name]
            raise LaunchError(f"cannot import {path}: {type(exc).__name__}: {exc}") from exc
    return module


def import_entry_for_job(entry_root: str, module_name: str) -> ModuleType:
    """Inside a submitted job (a fresh interpreter): import the entry module by its real name."""
    if entry_root not in sys.path:
        sys.path.insert(0, entry_root)
    return importlib.import_module(module_name)


class _ParseFailure(Exception):
    pass


class _StrictParser(argparse.ArgumentParser):
    """An argparse parser that raises instead of printing usage and exiting; no abbreviations."""

    def error(self, message: str) -> NoReturn:
        raise _ParseFailure(message)


def _source_of(name: str, flags: list[Flag]) -> str:
    for flag in reversed(flags):  # argparse keeps the last occurrence
        if flag.name == name:
            return flag.source
    return "the flags"


def validate_flags(module: ModuleType, flags: list[Flag], entry: str) -> argparse.Namespace:
    """Parse ``flags`` exactly as the entry point will; unknown or invalid flags -> one-line LaunchError."""
    get_parser = getattr(module, "get_args_parser", None)
    if get_parser is None:
        raise LaunchError(f"{entry} has no get_args_parser(); the launcher needs it to check the flags")
    with _on_sys_path(os.path.dirname(os.path.abspath(module.__file__ or "."))):
        parser = _StrictParser(prog=entry, parents=[get_parser()], add_help=False, allow_abbrev=False)
    try:
        namespace, unknown = parser.parse_known_args(flatten(flags))
    except _ParseFailure as exc:
        match = re.search(r"argument (-[^\s:/]+)", str(exc))
        where = f" (from {_source_of(match.group(1), flags)})" if match else ""
        raise LaunchError(f"{entry} rejects the flags{where}: {exc}") from None
    if unknown:
        named = [token for token in unknown if is_flag(token)]
        if named:
            name = named[0].split("=", 1)[0]
            raise LaunchError(f"unknown flag {name} in {_source_of(name, flags)}: {entry} has no such flag "
                              f"(see python {entry} --help)")
        owner = next((flag for flag in flags if unknown[0] in flag.tokens[1:]), None)
        detail = f" after {owner.name} in {owner.source}" if owner else ""
        raise LaunchError(f"unexpected value {unknown[0]!r}{detail}: {entry} takes fewer values there")
    return namespace
