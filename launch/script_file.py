"""Recipes (``suave/scripts/*.sh``: the entry point, then one flag a line, ``\\`` continuations, ``#`` comments; each
line split with shell quoting, where the release dropped backslashes), flag lists and their check by the parser."""
from __future__ import annotations

import argparse
import os
import re
import shlex
from typing import Callable, NamedTuple, NoReturn

from src.errors import UserError

ENTRY_SCRIPTS = ("main_suave.py", "main_daino.py", "main_fixmatch.py", "eval_semisup.py", "eval_linear.py",
                 "eval_knn.py")
PATH_FLAG = re.compile(r"(_path|_dir|_ckpt|_file|_weights|^pretrained)$")


class StrictParser(argparse.ArgumentParser):
    """An argparse parser whose errors are a UserError (no usage dump, no exit)."""

    def error(self, message: str) -> NoReturn:
        raise UserError(message)


class Flag(NamedTuple):
    """One flag and its values as written (``tokens[0]`` is the flag, maybe ``--name=value``), and their source."""

    tokens: tuple[str, ...]
    source: str
    name = property(lambda self: self.tokens[0].split("=", 1)[0])
    values = property(lambda self: tuple(self.tokens[0].split("=", 1)[1:]) + self.tokens[1:])


ScriptFile = NamedTuple("ScriptFile", [("path", str), ("entry", str), ("flags", tuple)])  # entry: main_suave.py...


def group_flags(tokens: list[str], source: str) -> list[Flag]:
    """Split tokens into flags (``--epochs``, ``-x``; not ``-1``, ``-0.5``) with their values, a flag first."""
    starts = [i for i, token in enumerate(tokens) if token.startswith("-") and len(token) > 1
              and not re.fullmatch(r"-(\d+\.?\d*|\.\d+)(e[-+]?\d+)?", token, re.I)]
    if tokens and starts[:1] != [0]:
        raise UserError(f"unexpected value {tokens[0]!r} before any flag in {source} (flags look like --name value)")
    return [Flag(tuple(tokens[a:b]), source) for a, b in zip(starts, starts[1:] + [len(tokens)])]


def read_script_file(path: str) -> ScriptFile:
    """Parse a recipe; errors name the file and what is wrong with it."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise UserError(f"script file not found: {path} (give --script_file, e.g. suave/scripts/train_10perc.sh)")
    tokens: list[str] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                tokens += shlex.split(line.strip().removesuffix("\\"), comments=True)
            except ValueError as exc:  # an unclosed quote
                raise UserError(f"cannot read line {number} of {path}: {exc}") from exc
    tokens = tokens[1:] if tokens and os.path.basename(tokens[0]).startswith("python") else tokens
    if not tokens or os.path.basename(tokens[0]) not in ENTRY_SCRIPTS:
        raise UserError(f"the first word of {path} must be one of {', '.join(ENTRY_SCRIPTS)} "
                        f"(found {tokens[0] if tokens else 'nothing'!r})")
    return ScriptFile(path, os.path.basename(tokens[0]), tuple(group_flags(tokens[1:], path)))


def merge_flags(base: list[Flag], overrides: list[Flag]) -> list[Flag]:
    """Each override replaces the first flag of the same name (later duplicates go) or is appended."""
    merged = list(base)
    for new in overrides:
        first = next((i for i, flag in enumerate(merged) if flag.name == new.name), len(merged))
        merged = merged[:first] + [new] + [flag for flag in merged[first + 1:] if flag.name != new.name]
    return merged


def flatten(flags: list[Flag]) -> list[str]:
    """The flags' tokens, as one command line."""
    return [token for flag in flags for token in flag.tokens]


def absolutize_paths(flags: list[Flag], cwd: str) -> list[Flag]:
    """Make path flags' values absolute (from ``cwd``) when they exist here or start with ./, ../, ~: jobs find them."""
    def absolute(value: str) -> str:
        path = os.path.normpath(os.path.join(cwd, os.path.expanduser(value)))
        local = value and "://" not in value and not os.path.isabs(value)
        return path if local and (value.startswith(("./", "../", "~")) or os.path.exists(path)) else value

    return [Flag((f"{flag.name}={absolute(flag.values[0])}" if "=" in flag.tokens[0] else flag.tokens[0],
                  *map(absolute, flag.tokens[1:])), flag.source) if PATH_FLAG.search(flag.name.lstrip("-")) else flag
            for flag in flags]


def validate_flags(get_parser: Callable[[], argparse.ArgumentParser], flags: list[Flag],
                   entry: str) -> argparse.Namespace:
    """Parse ``flags`` as the entry point will; a bad flag is a one-line UserError naming where it came from."""
    try:
        return StrictParser(prog=entry, parents=[get_parser()], add_help=False, allow_abbrev=False).parse_args(
            flatten(flags))
    except UserError as exc:
        name = re.search(r"(argument |unrecognized arguments: )(-[^\s:/=]+)", str(exc))
        source = next((flag.source for flag in reversed(flags) if name and flag.name == name[2]), None)
        if name and name[1] != "argument ":
            raise UserError(f"unknown flag {name[2]} in {source}: {entry} has no such flag (see python {entry} "
                            "--help)") from None
        raise UserError(f"{entry} rejects the flags{f' (from {source})' if source else ''}: {exc}") from None
