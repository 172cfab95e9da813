"""The launcher behind ``job_launcher.py``: recipes and flags (``script_file``), experiment records (``records``),
Slurm through submitit (``slurm``) and the launch itself (``launcher``). It sits above the methods: it imports
their parsers (``suave.args``, ``daino.args``, ``src.downstream.args``); nothing in ``src/`` imports it."""
from __future__ import annotations

import argparse
from typing import NoReturn

from src.errors import UserError


class LaunchError(UserError):
    """A problem the user can fix (a flag, a path, a missing program); the message says how, in one line."""


class StrictParser(argparse.ArgumentParser):
    """An argparse parser whose errors are a LaunchError (no usage dump, no exit)."""

    def error(self, message: str) -> NoReturn:
        raise LaunchError(message)
