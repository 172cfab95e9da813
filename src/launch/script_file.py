"""Recipe files in the released format and the flag lists built from them.

A recipe (``suave/scripts/*.sh``, ``daino/scripts/*.sh``) is one command: its first word names the entry
point (``main_suave.py`` or ``main_daino.py``), then one flag per line with ``\\`` continuations. Blank lines
and ``#`` comments are allowed. The release joined the lines and removed every backslash; here each line is
split with shell quoting rules, so quoted values and values with spaces survive.
"""
from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass

from src.launch.errors import LaunchError

ENTRY_SCRIPTS = ("main_suave.py", "main_daino.py", "main_fixmatch.py", "eval_semisup.py", "eval_linear.py")

# Flags whose values are file or folder paths: made absolute when they name something that exists here
# (or are written ./x, ../x, ~/x), so a run started from another folder or on a compute node finds them.
PATH_FLAG = re.compile(r"(_path|_dir|_ckpt|_file|_weights|^pretrained)$")


@dataclass(frozen=True)
class Flag:
    """One flag and its values as written (``tokens[0]`` is the flag), with where it came from."""

    tokens: tuple[str, ...]
    source: str

    @property
    def name(self) -> str:
        return self.tokens[0].split("=", 1)[0]

    @property
    def values(self) -> tuple[str, ...]:
        head = self.tokens[0]
        inline = (head.split("=", 1)[1],) if "=" in head else ()
        return inline + self.tokens[1:]


@dataclass(frozen=True)
class ScriptFile:
    """A parsed recipe: its absolute path, the entry script it names and its flags in order."""

    path: str
    entry: str
    flags: tuple[Flag, ...]


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def is_flag(token: str) -> bool:
    """``--epochs`` or ``-x`` is a flag; ``-1`` and ``-0.5`` are values."""
    return token.startswith("-") and len(token) > 1 and not _is_number(token)


def group_flags(tokens: list[str], source: str) -> list[Flag]:
    """Split a token list into flags with their values; a value before any flag is an error."""
    groups: list[list[str]] = []
    for token in tokens:
        if is_flag(token):
            groups.append([token])
        elif not groups:
            raise LaunchError(f"unexpected value {token!r} before any flag in {source} (flags look like --name value)")
        else:
            groups[-1].append(token)
    return [Flag(tuple(group), source) for group in groups]


def _recipe_tokens(path: str) -> list[str]:
    tokens: list[str] = []
    with open(path, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.strip()
            if line.endswith("\\"):
                line = line[:-1]
            try:
                tokens.extend(shlex.split(line, comments=True))
            except ValueError as exc:  # an unclosed quote
                raise LaunchError(f"cannot read line {number} of {path}: {exc}") from exc
    return tokens


def read_script_file(path: str) -> ScriptFile:
    """Parse a recipe; errors name the file and what is wrong with it."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise LaunchError(f"script file not found: {path} (give --script_file, e.g. suave/scripts/train_10perc.sh)")
    tokens = _recipe_tokens(path)
    if tokens and os.path.basename(tokens[0]).startswith("python"):
        tokens = tokens[1:]  # tolerate "python main_suave.py \"
    if not tokens or os.path.basename(tokens[0]) not in ENTRY_SCRIPTS:
        found = tokens[0] if tokens else "nothing"
        raise LaunchError(f"the first word of {path} must be main_suave.py or main_daino.py (found {found!r})")
    return ScriptFile(path, os.path.basename(tokens[0]), tuple(group_flags(tokens[1:], path)))


def merge_flags(base: list[Flag], overrides: list[Flag]) -> list[Flag]:
    """Each override replaces the first flag of the same name (later duplicates go) or is appended."""
    merged = list(base)
    for override in overrides:
        where = [i for i, flag in enumerate(merged) if flag.name == override.name]
        if not where:
            merged.append(override)
            continue
        merged[where[0]] = override
        for index in reversed(where[1:]):
            del merged[index]
    return merged


def without(flags: list[Flag], names: set[str]) -> list[Flag]:
    return [flag for flag in flags if flag.name not in names]


def flatten(flags: list[Flag]) -> list[str]:
    return [token for flag in flags for token in flag.tokens]


def _absolute_if_local(value: str, cwd: str) -> str:
    if not value or "://" in value or os.path.isabs(value):
        return value
    explicit = value.startswith(("./", "../", "~"))
    candidate = os.path.join(cwd, os.path.expanduser(value))
    if explicit or os.path.exists(candidate):
        return os.path.normpath(candidate)
    return value


def absolutize_paths(flags: list[Flag], cwd: str) -> list[Flag]:
    """Make the values of path flags (``--swav_init_ckpt ./x.pth``) absolute, relative to ``cwd``."""
    result = []
    for flag in flags:
        if not PATH_FLAG.search(flag.name.lstrip("-")):
            result.append(flag)
            continue
        head = flag.tokens[0]
        if "=" in head:
            head = f"{flag.name}={_absolute_if_local(head.split('=', 1)[1], cwd)}"
        values = tuple(_absolute_if_local(value, cwd) for value in flag.tokens[1:])
        result.append(Flag((head,) + values, flag.source))
    return result


def missing_paths(flags: list[Flag]) -> list[str]:
    """``--flag value`` strings of path flags whose absolute value names nothing on this machine."""
    missing = []
    for flag in flags:
        if PATH_FLAG.search(flag.name.lstrip("-")):
            missing += [f"{flag.name} {v}" for v in flag.values if os.path.isabs(v) and not os.path.exists(v)]
    return missing
