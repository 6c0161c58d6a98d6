"""A sweep's grid: which runs a ``pacnet reproduce`` makes, from a TOML file and flags.

A :class:`Grid` holds the schema of the TOML files under ``configs/`` (every key, its
default and its meaning) and turns into the grid's :class:`~pacnet.experiments.run.spec.RunSpec`
list (:meth:`Grid.specs`), so Python code builds the same grid as the command line:

>>> grid = Grid.load("configs/friedman-quick.toml").updated(seeds=[0, 1])
>>> specs = grid.specs("friedman", quick=True)

Keys (all optional): ``methods``, ``target_sizes``, ``seeds`` (a count K for seeds 0..K-1,
or a list), ``seeds_at`` (target size -> seed count), ``select`` (``none``, ``cv`` or
``holdout``), ``folds``, ``jobs``, ``settings`` (benchmark settings), ``params`` (per
method, hyperparameters), ``search`` (per method, a candidate grid: a table of lists whose
product is tried, or ``candidates = [{...}, ...]``) and ``source_compute`` (``standard``,
``equal`` or both).
"""

from __future__ import annotations

import itertools
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from pacnet.config import read_value, unknown_hint
from pacnet.errors import PacnetError, check
from pacnet.experiments.run.spec import RunSpec
from pacnet.methods import METHODS, get_method
from pacnet.methods.engine import DEFAULT_ENGINE


@dataclass(frozen=True)
class Grid:
    """The grid of a sweep: built-in defaults, then a TOML file, then flags."""

    methods: list[str] = field(default_factory=lambda: list(METHODS))
    target_sizes: list[int] = field(default_factory=lambda: [10, 50, 200])
    seeds: int | list[int] = 3
    seeds_at: dict[str, int] = field(default_factory=dict)
    select: str = "none"
    folds: int = 3
    jobs: int = 1
    settings: dict[str, Any] = field(default_factory=dict)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    search: dict[str, Any] = field(default_factory=dict)
    source_compute: list[str] = field(default_factory=lambda: ["standard"])
    config_file: str | None = field(default=None, metadata={"toml": False})

    @classmethod
    def keys(cls) -> list[str]:
        """The keys a TOML grid file may hold."""
        return [f.name for f in fields(cls) if f.metadata.get("toml", True)]

    @classmethod
    def load(cls, path: str | Path | None = None) -> Grid:
        """The defaults, updated by the TOML file at ``path`` (if any)."""
        if path is None:
            return cls()
        try:
            loaded = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise PacnetError(f"{path}: config file not found") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise PacnetError(f"{path}: not valid TOML ({exc})") from None
        known = sorted(cls.keys())
        unknown = set(loaded) - set(known)
        check(
            not unknown,
            f"{path}: unknown keys {sorted(unknown)}{unknown_hint(unknown, known)}; known: {known}",
        )
        for key, value in loaded.items():
            what, fits = _SCHEMA[key]
            check(fits(value), f"{path}: {key} must be {what}, got {value!r}")
        return cls(**loaded, config_file=str(path)).updated()

    def updated(self, **given: Any) -> Grid:
        """This grid with the values ``given`` that are not None (flags that were set);
        ``source_compute`` may be comma-separated text. New ``target_sizes`` without new
        ``seeds_at`` keep the seed counts of the sizes still chosen and drop the others."""
        given = {k: v for k, v in given.items() if v is not None}
        if "target_sizes" in given and "seeds_at" not in given:
            chosen = {int(n) for n in given["target_sizes"]}
            given["seeds_at"] = {k: v for k, v in self.seeds_at.items() if int(k) in chosen}
        grid = replace(self, **given)
        if isinstance(grid.source_compute, str):
            grid = replace(grid, source_compute=[v.strip() for v in grid.source_compute.split(",")])
        return grid

    # -- checks and expansion --------------------------------------------------------------

    def check(self) -> tuple[list[str], dict[int, list[int]]]:
        """Fail with one line unless the grid names known methods, at least one job, target
        sizes and seeds; returns the methods and the seeds of each target size."""
        methods = self.method_names()
        check(int(self.jobs) >= 1, f"--jobs must be >= 1, got {self.jobs}")
        return methods, self.seeds_by_size()

    def method_names(self) -> list[str]:
        """The grid's methods, each once, each known."""
        methods = list(dict.fromkeys(self.methods))
        check(methods, "--methods names no method; see pacnet methods")
        for m in methods:
            get_method(m)
        return methods

    def seeds_by_size(self) -> dict[int, list[int]]:
        """Target size -> its seeds (``seeds``, or ``seeds_at``'s count for that size)."""
        sizes = list(dict.fromkeys(int(n) for n in self.target_sizes))
        check(sizes, "the grid names no target size")
        count = self.seeds
        seed_list = list(range(count)) if isinstance(count, int) else list(count)
        check(seed_list and min(seed_list) >= 0, "seeds must be a positive count or seeds >= 0")
        seeds = {n: seed_list for n in sizes}
        for size, n_seeds in self.seeds_at.items():
            check(int(size) in seeds, f"seeds_at {size}: not one of the target sizes {sizes}")
            check(int(n_seeds) >= 1, f"seeds_at {size}: the number of seeds must be >= 1")
            seeds[int(size)] = list(range(int(n_seeds)))
        return seeds

    def candidates(self, methods: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        """Per method, the candidates its ``[search.METHOD]`` table names: a table of lists
        (their product) or ``candidates = [{...}, ...]`` (an explicit list)."""
        grids: dict[str, list[dict[str, Any]]] = {}
        for method, spec in self.search.items():
            check(method in methods, f"[search.{method}]: method {method!r} is not in this sweep")
            check(isinstance(spec, dict), f"[search.{method}] must be a table")
            if "candidates" in spec:
                check(len(spec) == 1, f"[search.{method}]: candidates stands alone")
                listed = spec["candidates"]
                check(
                    isinstance(listed, list)
                    and listed
                    and all(isinstance(c, dict) for c in listed),
                    f"[search.{method}].candidates must be a list of tables",
                )
                grids[method] = [dict(c) for c in listed]
            else:
                values = {k: v if isinstance(v, list) else [v] for k, v in spec.items()}
                check(values and all(values.values()), f"[search.{method}] names no values")
                combos = itertools.product(*values.values())
                grids[method] = [dict(zip(values, c, strict=True)) for c in combos]
        return grids

    def specs(
        self,
        benchmark: str,
        *,
        quick: bool = False,
        settings: Mapping[str, Any] | None = None,
        params: Mapping[str, Mapping[str, Any]] | None = None,
        threads: int | None = None,
        device: str = "cpu",
        amp: str = "none",
        deterministic: bool = False,
        engine: str = DEFAULT_ENGINE,
    ) -> list[RunSpec]:
        """Every run of the grid on ``benchmark``, each checked; ``settings`` and ``params``
        (per method) add to the grid's own, and the rest says how the runs run (``engine``:
        which engine trains them, :data:`pacnet.methods.engine.ENGINES`)."""
        methods, seeds = self.check()
        for table, named in (("params", self.params), ("search", self.search)):
            unknown = set(named) - set(METHODS)
            check(
                not unknown,
                f"[{table}.{sorted(unknown)[0] if unknown else ''}]: unknown method"
                f"{unknown_hint(unknown, list(METHODS))}; the methods: {', '.join(METHODS)}",
            )
        merged = {m: dict(v) for m, v in self.params.items()}
        for m, values in (params or {}).items():
            merged.setdefault(m, {}).update(values)
        base = RunSpec(
            benchmark,
            methods[0],
            quick=quick,
            bench_settings={**self.settings, **(settings or {})},
            select=self.select,
            folds=int(self.folds),
            threads=threads,
            device=device,
            amp=amp,
            deterministic=deterministic,
            engine=engine,
        )
        search = self.candidates(methods)
        return expand(base, methods, list(seeds), seeds, merged, search, self.source_compute)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _integers(v: Any) -> bool:
    return isinstance(v, list) and all(map(_integer, v))


def _names(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(n, str) for n in v)


def _tables(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(x, dict) for x in v.values())


def _counts(v: Any) -> bool:
    return isinstance(v, dict) and all(k.isdigit() and _integer(n) for k, n in v.items())


_SCHEMA: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "methods": ("a list of method names", _names),
    "target_sizes": ("a list of integers", _integers),
    "seeds": ("an integer or a list of integers", lambda v: _integer(v) or _integers(v)),
    "seeds_at": ("a table of target size = seed count", _counts),
    "select": ("one of none, cv, holdout", lambda v: isinstance(v, str)),
    "folds": ("an integer", _integer),
    "jobs": ("an integer", _integer),
    "settings": ("a table of benchmark settings", lambda v: isinstance(v, dict)),
    "params": ("a table of tables (method -> hyperparameters)", _tables),
    "search": ("a table of tables (method -> candidate grid)", _tables),
    "source_compute": (
        "standard, equal, or a list of them",
        lambda v: isinstance(v, str) or _names(v),
    ),
}
"""What each key of a TOML grid holds, in words and as a check of its shape."""


def expand(
    base: RunSpec,
    methods: Sequence[str],
    sizes: Sequence[int],
    seeds: Sequence[int] | Mapping[int, Sequence[int]],
    method_params: Mapping[str, Mapping[str, Any]] | None = None,
    search: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    source_compute: Sequence[str] = ("standard",),
) -> list[RunSpec]:
    """Every (method, source compute, size, seed) run of a grid, each once, in that order;
    ``seeds`` is one list or size -> seeds; ``search`` gives some methods their own
    candidate grids. PAC-Net runs once whatever ``source_compute`` says (its own source
    compute is the reference)."""
    method_params, search = method_params or {}, search or {}
    seeds_for = seeds if isinstance(seeds, Mapping) else dict.fromkeys(sizes, seeds)
    specs: dict[str, RunSpec] = {}
    for m in methods:
        grid = search.get(m)
        for compute in source_compute:
            for n in sizes:
                for s in seeds_for[n]:
                    spec = replace(
                        base,
                        method=m,
                        target_size=n,
                        seed=s,
                        method_params=dict(method_params.get(m, {})),
                        candidates=None if grid is None else tuple(dict(c) for c in grid),
                        source_compute=compute,
                    )
                    specs.setdefault(spec.run_id(), spec)
    return list(specs.values())


def parse_params(items: Sequence[str], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``METHOD.NAME=VALUE`` items (``--param``) as method -> {name: typed value}."""
    params: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, name = key.partition(".")
        check(sep and dot, f"--param needs METHOD.NAME=VALUE, got {item!r}")
        check(method in methods, f"--param {item!r}: method {method!r} is not in this sweep")
        params_cls = get_method(method).Params
        names = [f.name for f in fields(params_cls)]
        check(
            name in names,
            f"--param {item!r}: {method} has no hyperparameter {name!r}"
            f"{unknown_hint({name}, names)}; its hyperparameters: {', '.join(names)}",
        )
        params.setdefault(method, {})[name] = read_value(
            params_cls, name, value, f"--param {item!r}"
        )
    return params


def default_label(specs: Sequence[RunSpec]) -> str:
    """A short description of a grid: benchmark, methods, target sizes, seeds, run count."""
    methods = ", ".join(dict.fromkeys(s.method for s in specs))
    sizes = ",".join(str(n) for n in sorted({s.target_size for s in specs}))
    seeds = len({s.seed for s in specs})
    return (
        f"{specs[0].benchmark}: {methods} x N={sizes} x {seeds} seed{'s' * (seeds != 1)} "
        f"({len(specs)} runs)"
    )
