"""The rules a flag's value must follow, for the checks each method and evaluation declares beside its parser.

``require(args, rule, names...)`` raises a ``FlagError`` naming the first flag whose value (or any of its values,
for ``nargs`` flags) breaks ``rule``: ``--temperature 0: use a value > 0 (why)``. ``refuse`` is the same for a
combination of flags. Nothing here imports torch, so a bad flag is refused in a fraction of a second, before
any data is read (``src.cli.run_main`` and ``launch.script_file.validate_flags`` run the checks).
"""
from __future__ import annotations

import argparse
from typing import Any, Callable, NamedTuple, NoReturn

from src.errors import FlagError


class Rule(NamedTuple):
    """A test of one value and the phrase that says what a valid value is (``> 0``, ``in [0, 1]``)."""

    test: Callable[[Any], bool]
    text: str


def at_least(minimum: float) -> Rule:
    return Rule(lambda value: value >= minimum, f">= {minimum:g}")


POSITIVE = Rule(lambda value: value > 0, "> 0")
NON_NEGATIVE = at_least(0)
PROBABILITY = Rule(lambda value: 0 <= value <= 1, "in [0, 1]")
FRACTION_BELOW_1 = Rule(lambda value: 0 <= value < 1, "in [0, 1)")
SCALE = Rule(lambda value: 0 < value <= 1, "in (0, 1]")


def shown(value: Any) -> str:
    """A flag's value as it is written on the command line (``2 8`` for a list, ``true`` for a boolean)."""
    if isinstance(value, (list, tuple)):
        return " ".join(map(shown, value))
    return str(value).lower() if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) else str(value)


def refuse(message: str) -> NoReturn:
    raise FlagError(message)


def require(args: argparse.Namespace, rule: Rule, *names: str, why: str = "") -> None:
    """Every value of each flag in ``names`` (``None``: not given, skipped) passes ``rule``."""
    for name in names:
        value = getattr(args, name)
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(v is not None and not rule.test(v) for v in values):
            refuse(f"--{name} {shown(value)}: use a value {rule.text}" + (f" ({why})" if why else ""))


def require_count(args: argparse.Namespace, name: str, count: int, why: str) -> None:
    """``--name`` takes exactly ``count`` values."""
    value = getattr(args, name)
    if len(value) != count:
        refuse(f"--{name} {shown(value)}: give {count} values ({why})")


def require_scale_range(args: argparse.Namespace, name: str) -> None:
    """``--name LO HI``: a crop's area scale range, 0 < LO <= HI <= 1."""
    require_count(args, name, 2, "the lower and upper area scale of the crop")
    low, high = getattr(args, name)
    if not 0 < low <= high <= 1:
        refuse(f"--{name} {shown(getattr(args, name))}: use 0 < LO <= HI <= 1 (fractions of the image's area)")


def within_epochs(args: argparse.Namespace, name: str) -> None:
    """``--name`` counts epochs of the run: between 0 and ``--epochs``."""
    if not 0 <= getattr(args, name) <= args.epochs:
        refuse(f"--{name} {getattr(args, name)}: use a number of epochs between 0 and --epochs ({args.epochs})")


def ignored_unless_default(args: argparse.Namespace, name: str, default: Any, why: str) -> None:
    """A flag kept for the release's scripts that changes nothing here: only its default is accepted."""
    value, default = (list(v) if isinstance(v, tuple) else v for v in (getattr(args, name), default))
    if value != default:
        refuse(f"--{name} {shown(value)}: not supported ({why}); drop the flag")
