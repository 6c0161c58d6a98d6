"""The package's shape, as docs/architecture.md draws it: layers that import only the layers
below them, no private name imported across modules, and modules, classes and functions a
reader can take in."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "pacnet"

BELOW = {
    "errors": set(),
    "config": {"errors"},
    "io": {"errors"},
    "training": {"errors", "config", "io"},
    "core": {"errors", "config", "io", "training"},
    "benchmarks": {"errors", "config", "io", "training"},
    "methods": {"errors", "config", "io", "training", "core", "benchmarks"},
    "experiments": {"errors", "config", "io", "training", "core", "benchmarks", "methods"},
    "integrations": {"errors", "config", "io", "training", "core"},
    "tabular": {
        "errors", "config", "io", "training", "core", "benchmarks", "methods", "experiments",
    },
    "cli": {
        "errors", "config", "io", "training", "core", "benchmarks", "methods", "experiments",
        "tabular",
    },
}  # fmt: skip
"""What each layer may import (besides itself)."""
REEXPORTS = {"models": "benchmarks", "resnet": "benchmarks", "solvers": "benchmarks"}
REEXPORTS["regularizers"] = "methods"
TOP = {"__init__", "__main__"}  # the public API and `python -m pacnet`: above everything


def modules() -> list[tuple[str, Path]]:
    return sorted(
        (".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts), p)
        for p in PACKAGE.rglob("*.py")
    )


def layer(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every ``from pacnet... import`` and ``import pacnet...`` in the
    file, function-local ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pacnet"):
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("pacnet")]
    return found


def test_layers_import_only_the_layers_below_them():
    wrong = []
    for module, path in modules():
        own = layer(module)
        if own in TOP:
            continue
        allowed = {own} | ({REEXPORTS[own]} if own in REEXPORTS else BELOW[own])
        for target, _ in imports(path):
            if layer(target) not in allowed:
                wrong.append(f"{module} imports {target}")
    assert not wrong, wrong
    assert set(BELOW) | set(REEXPORTS) | TOP >= {layer(m) for m, _ in modules()}


def test_training_imports_nothing_of_core():
    for module, path in modules():
        if layer(module) == "training":
            assert not [t for t, _ in imports(path) if layer(t) == "core"], module


def test_no_module_imports_a_private_name_of_another():
    wrong = []
    scripts = [(p.stem, p) for d in ("examples", "bench") for p in (ROOT / d).glob("*.py")]
    for module, path in modules() + scripts:
        for target, names in imports(path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            hidden = [p for p in target.split(".") if p.startswith("_") and p != "__init__"]
            if private or hidden:
                wrong.append(f"{module}: from {target} import {', '.join(names)}")
    assert not wrong, wrong


@pytest.mark.parametrize(("kind", "limit"), [("file", 600), ("class", 400), ("function", 100)])
def test_sizes_a_reader_can_take_in(kind, limit):
    too_big = []
    for module, path in modules():
        text = path.read_text()
        if kind == "file" and len(text.splitlines()) > limit:
            too_big.append(f"{module}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            wanted = ast.ClassDef if kind == "class" else (ast.FunctionDef, ast.AsyncFunctionDef)
            if kind != "file" and isinstance(node, wanted):
                size = node.end_lineno - node.lineno + 1
                if size > limit:
                    too_big.append(f"{module}.{node.name}: {size} lines")
    assert not too_big, too_big


def test_the_checks_above_can_fail(tmp_path):
    """The import reader sees function-local imports and private names."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from pacnet.core.mask import _hidden\n    import pacnet.cli\n")
    assert imports(source) == [("pacnet.core.mask", ["_hidden"]), ("pacnet.cli", [])]
    assert layer("pacnet.core.mask") == "core" and layer("pacnet") == "__init__"


def test_architecture_md_names_every_module():
    """A reader finds every module in docs/architecture.md (by its file name)."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    unnamed = [
        module for module, path in modules() if path.name != "__init__.py" and path.name not in doc
    ]
    assert not unnamed, unnamed


def test_one_class_per_name():
    """No two classes share a name, but the two trainers' PacNetCallback (each is its
    trainer's public API)."""
    seen: dict[str, list[str]] = {}
    for module, path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                seen.setdefault(node.name, []).append(module)
    twice = {name: where for name, where in seen.items() if len(where) > 1}
    assert twice.keys() <= {"PacNetCallback"}, twice
