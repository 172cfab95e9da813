"""The one table of this project's methods and evaluations: name -> entry script, flag parser, method class.

``job_launcher.py --method``, the recipe reader (``launch.script_file``), ``src.trained`` (``--evaluate``,
predict, export) and ``src.evaluate`` read it. Adding a method is its own package (``<name>/args.py`` with
``get_args_parser``, ``<name>/method.py`` with the method class and ``data_config``), its entry script and one
line in ``ENTRIES``. Everything is named by module path and imported on use, so importing this table imports
no torch-heavy code.
"""
from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from typing import Any, Callable

from src.errors import UserError


@dataclass(frozen=True)
class Entry:
    """One method (``method`` set: it trains a ``src.method.Method``) or evaluation script (``method`` empty)."""

    name: str  # --method of job_launcher.py, ``method_name`` of its checkpoints
    script: str  # the entry script, the first word of its recipes
    parser: str  # "module:function" returning the entry point's argparse parser (add_help=False)
    method: str = ""  # "module:Class" of the method; the module also defines data_config(args)
    main_network: str = "student"  # the network validation reports as ``main`` when the run kept it
    main_head: str = "main"  # what evaluation tables call that ``main`` head
    init_flag: str = ""  # the flag naming released weights to start from (it tells version-1 checkpoints apart)

    @property
    def module(self) -> str:
        """The entry script as a module name (what a Slurm task imports)."""
        return self.script.removesuffix(".py")

    def get_parser(self) -> argparse.ArgumentParser:
        return _load(self.parser)()

    def method_class(self) -> Callable[..., Any]:
        return _load(self.method)

    def data_config(self) -> Callable[[argparse.Namespace], Any]:
        return _load(self.method.split(":")[0] + ":data_config")


ENTRIES = {entry.name: entry for entry in (
    Entry("suave", "main_suave.py", "suave.args:get_args_parser", "suave.method:SuaveMethod",
          main_head="prototypes", init_flag="swav_init_ckpt"),
    Entry("daino", "main_daino.py", "daino.args:get_args_parser", "daino.method:DainoMethod", "teacher", "teacher",
          init_flag="dino_init_ckpt"),
    Entry("fixmatch", "main_fixmatch.py", "fixmatch.args:get_args_parser", "fixmatch.method:FixMatchMethod",
          "teacher", "ema"),  # the yardstick of the Fashion-MNIST table (docs/fixmatch.md)
    Entry("eval_semisup", "eval_semisup.py", "src.downstream.args:semisup_args_parser"),
    Entry("eval_linear", "eval_linear.py", "src.downstream.args:linear_args_parser"),
    Entry("eval_knn", "eval_knn.py", "src.downstream.args:knn_args_parser"),
)}


def _load(target: str) -> Any:
    module, attribute = target.split(":")
    return getattr(importlib.import_module(module), attribute)


def names() -> list[str]:
    """Every registered name (job_launcher.py's --method choices)."""
    return list(ENTRIES)


def methods() -> list[Entry]:
    """The training methods (entries with a method class)."""
    return [entry for entry in ENTRIES.values() if entry.method]


def entry(name: str) -> Entry:
    """The entry of ``name``; a UserError lists the registered ones."""
    if name not in ENTRIES:
        raise UserError(f"unknown method {name!r}: choose one of {', '.join(ENTRIES)} (src/registry.py)")
    return ENTRIES[name]


def by_script(script: str) -> Entry | None:
    """The entry whose entry script is ``script`` (a file name), None if there is none."""
    return next((entry for entry in ENTRIES.values() if entry.script == script), None)
