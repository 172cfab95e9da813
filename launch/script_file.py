"""Recipes (``suave/scripts/*.sh``...: the entry point, then one flag per line with ``\\`` continuations, ``#``
comments allowed), the flag lists built from them, and their check against the entry point's parser. The release
joined the lines and removed every backslash; here each line is split with shell quoting rules."""
from __future__ import annotations

import argparse
import os
import re
import shlex
from typing import Callable, NamedTuple, NoReturn

from src.errors import UserError

ENTRY_SCRIPTS = ("main_suave.py", "main_daino.py", "main_fixmatch.py", "eval_semisup.py", "eval_linear.py")
PATH_FLAG = re.compile(r"(_path|_dir|_ckpt|_file|_weights|^pretrained)$")


class StrictParser(argparse.ArgumentParser):
    """An argparse parser whose errors are a UserError (no usage dump, no exit)."""

    def error(self, message: str) -> NoReturn:
        raise UserError(message)


class Flag(NamedTuple):
    """One flag and its values as written (``tokens[0]`` is the flag), with where it came from."""

    tokens: tuple[str, ...]
    source: str

    @property
    def name(self) -> str:
        return self.tokens[0].split("=", 1)[0]

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(self.tokens[0].split("=", 1)[1:]) + self.tokens[1:]


class ScriptFile(NamedTuple):
    """A recipe: its absolute path, its entry script (``main_suave.py``...) and its flags."""

    path: str
    entry: str
    flags: tuple[Flag, ...]


def is_flag(token: str) -> bool:
    """``--epochs`` or ``-x`` is a flag; ``-1`` and ``-0.5`` are values."""
    return token.startswith("-") and len(token) > 1 and not re.fullmatch(r"-(\d+\.?\d*|\.\d+)(e[-+]?\d+)?", token, re.I)


def group_flags(tokens: list[str], source: str) -> list[Flag]:
    """Split a token list into flags with their values; a value before any flag is an error."""
    if tokens and not is_flag(tokens[0]):
        raise UserError(f"unexpected value {tokens[0]!r} before any flag in {source} (flags look like --name value)")
    starts = [i for i, token in enumerate(tokens) if is_flag(token)] + [len(tokens)]
    return [Flag(tuple(tokens[a:b]), source) for a, b in zip(starts, starts[1:])]


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
    """Make the values of path flags (``--swav_init_ckpt ./x.pth``) absolute, relative to ``cwd``, when they name
    something here or are written ./x, ../x, ~/x: a run started elsewhere, or on a compute node, finds them."""
    def absolute(value: str) -> str:
        path = os.path.normpath(os.path.join(cwd, os.path.expanduser(value)))
        local = value and "://" not in value and not os.path.isabs(value)
        return path if local and (value.startswith(("./", "../", "~")) or os.path.exists(path)) else value

    return [Flag((f"{flag.name}={absolute(flag.values[0])}" if "=" in flag.tokens[0] else flag.tokens[0],
                  *map(absolute, flag.tokens[1:])), flag.source) if PATH_FLAG.search(flag.name.lstrip("-")) else flag
            for flag in flags]


def validate_flags(get_parser: Callable[[], argparse.ArgumentParser], flags: list[Flag],
                   entry: str) -> argparse.Namespace:
    """Parse ``flags`` exactly as the entry point will; unknown or invalid flags -> one-line UserError."""
    def source_of(name: str) -> str:
        return next((flag.source for flag in reversed(flags) if flag.name == name), "the flags")  # the last wins

    try:
        parser = StrictParser(prog=entry, parents=[get_parser()], add_help=False, allow_abbrev=False)
        namespace, unknown = parser.parse_known_args(flatten(flags))
    except UserError as exc:
        match = re.search(r"argument (-[^\s:/]+)", str(exc))
        raise UserError(f"{entry} rejects the flags{f' (from {source_of(match[1])})' if match else ''}: {exc}") \
            from None
    named = [token.split("=", 1)[0] for token in unknown if is_flag(token)]
    if named:
        raise UserError(f"unknown flag {named[0]} in {source_of(named[0])}: {entry} has no such flag "
                        f"(see python {entry} --help)")
    if unknown:
        owner = next((flag for flag in flags if unknown[0] in flag.tokens[1:]), None)
        detail = f" after {owner.name} in {owner.source}" if owner else ""
        raise UserError(f"unexpected value {unknown[0]!r}{detail}: {entry} takes fewer values there")
    return namespace
