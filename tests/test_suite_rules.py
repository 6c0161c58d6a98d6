"""Rules the test suite keeps so that it passes on a machine several times slower than the
one it was written on: no hard time limit below the hang guard, no assertion on elapsed
time (speed is measured by ``pacnet bench``, not asserted)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import HANG_GUARD

TESTS = Path(__file__).resolve().parent


def _literal(node: ast.AST) -> float | None:
    """The number an expression spells out (``120``, ``2 * 60``), or None."""
    try:
        value = eval(compile(ast.Expression(node), "<timeout>", "eval"), {"__builtins__": {}})
    except Exception:
        return None
    return float(value) if isinstance(value, int | float) else None


def short_time_limits(source: str) -> list[str]:
    """Every ``timeout=`` keyword given a number below :data:`HANG_GUARD`, and every
    ``assert`` that compares a measured duration (``perf_counter``, ``time.time``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.keyword) and node.arg == "timeout":
            value = _literal(node.value)
            if value is not None and value < HANG_GUARD:
                found.append(f"line {node.value.lineno}: timeout={value:g}")
        if isinstance(node, ast.Assert) and _reads_a_clock(node.test):
            found.append(f"line {node.lineno}: assert {ast.unparse(node.test)}")
    return sorted(found, key=lambda line: int(line.split()[1].rstrip(":")))


def _reads_a_clock(node: ast.AST) -> bool:
    """Whether the expression calls ``perf_counter``, ``time.time`` or ``monotonic``."""
    for call in ast.walk(node):
        if isinstance(call, ast.Call):
            name = ast.unparse(call.func)
            if name.endswith(("perf_counter", "monotonic")) or name == "time.time":
                return True
    return False


def test_no_test_has_a_time_limit_below_the_hang_guard():
    offenders = {
        path.name: found
        for path in sorted(TESTS.glob("*.py"))
        if (found := short_time_limits(path.read_text()))
    }
    assert not offenders, offenders


def test_the_rule_sees_the_limits_it_forbids():
    bad = (
        "import subprocess, time\n"
        "subprocess.run(['x'], timeout=120)\n"
        "start = time.perf_counter()\n"
        "assert time.perf_counter() - start < 5\n"
    )
    assert short_time_limits(bad) == [
        "line 2: timeout=120",
        "line 4: assert time.perf_counter() - start < 5",
    ]
    assert short_time_limits("proc.wait(timeout=HANG_GUARD)\n") == []
