"""Benchmarks by name: ``get_benchmark("friedman")``; ``BENCHMARKS`` lists them all."""

from __future__ import annotations

from pacnet.benchmarks.base import Benchmark, TaskData
from pacnet.benchmarks.celeba import CelebA
from pacnet.benchmarks.digits import Digits
from pacnet.benchmarks.fashion import Fashion
from pacnet.benchmarks.friedman import Friedman
from pacnet.benchmarks.ode import ODE
from pacnet.benchmarks.pde import PDE
from pacnet.benchmarks.tables import MEMBERS as TABLES
from pacnet.errors import PacnetError

BENCHMARKS: dict[str, type[Benchmark]] = {
    b.name: b for b in (Friedman, ODE, PDE, Fashion, Digits, CelebA, *TABLES)
}

FAMILIES: dict[str, str] = {
    "tables": "real regression tables split by a column into source and target groups "
    "(pip install 'pacnet[tables]')",
}
"""What each benchmark family is, in one line (see :attr:`Benchmark.family`)."""


def get_benchmark(name: str) -> type[Benchmark]:
    """The benchmark class registered as ``name``; a one-line error lists the known ones."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise PacnetError(
            f"unknown benchmark {name!r}; choose one of: {', '.join(BENCHMARKS)}"
        ) from None


__all__ = ["BENCHMARKS", "FAMILIES", "Benchmark", "TaskData", "get_benchmark"]
