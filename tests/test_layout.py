"""Invariants of the code base that reviews rely on."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# top-level folders that are not the product (a nested name such as src/data/ is product code)
NOT_PRODUCT = {".venv", "tests", "data", "experiments"}
PRODUCT = [p for p in REPO.rglob("*.py") if p.relative_to(REPO).parts[0] not in NOT_PRODUCT]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # ``from src import registry``
    return names


def test_src_never_imports_the_methods():
    offenders = {str(p.relative_to(REPO)): sorted(m for m in imported_modules(p) if m.split(".")[0] in {"suave", "daino", "fixmatch"})
                 for p in (REPO / "src").rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_every_torch_load_is_weights_only_and_no_hard_coded_cuda():
    assert REPO / "src" / "data" / "sources.py" in PRODUCT and not any("tests" in p.parts for p in PRODUCT)
    for path in PRODUCT:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr == "load" and getattr(node.func.value, "id", None) == "torch":
                    kwargs = {k.arg: k.value for k in node.keywords}
                    assert "weights_only" in kwargs and getattr(kwargs["weights_only"], "value", None) is True, \
                        f"{path}:{node.lineno} torch.load without weights_only=True"
                assert node.func.attr != "cuda" or node.args or node.keywords, f"{path}:{node.lineno} bare .cuda()"


def test_suave_daino_and_fixmatch_do_not_import_each_other():
    methods = {"suave", "daino", "fixmatch"}
    for method in methods:
        for path in (REPO / method).rglob("*.py"):
            assert not any(m.split(".")[0] in methods - {method} for m in imported_modules(path)), path


def test_the_launcher_sits_above_the_methods():
    """launch/ reads the methods' parsers through src/registry.py (an arrow down), loads no file as a module, and
    nothing below imports it."""
    below = [p for folder in ("src", "suave", "daino", "fixmatch") for p in (REPO / folder).rglob("*.py")]
    assert [str(p) for p in below if any(m.split(".")[0] == "launch" for m in imported_modules(p))] == []
    modules = set().union(*(imported_modules(p) for p in (REPO / "launch").rglob("*.py")))
    assert "src.registry" in modules and "importlib.util" not in modules
    assert not any(m.split(".")[0] in {"suave", "daino", "fixmatch"} for m in modules)
