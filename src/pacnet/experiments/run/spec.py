"""A run, named and resolved once: :class:`RunSpec`.

A spec names a run the way a user does (benchmark and method by name, the settings and
hyperparameters given, seed, target size, how hyperparameters are chosen, where it runs).
Constructing it checks all of that once and resolves it into typed objects
(:class:`Resolved`: the benchmark and method classes, the benchmark's settings dataclass
with the quick budgets applied, the method's hyperparameter dataclass, every candidate of a
selection grid checked), from which its identity and run id are computed, also once. A bad
setting therefore fails when the spec is built, before anything runs.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

import torch

from pacnet.benchmarks import Benchmark, get_benchmark
from pacnet.config import config_hash, make, to_dict
from pacnet.errors import check
from pacnet.methods import Method, get_method
from pacnet.methods.base import build, candidates
from pacnet.methods.engine import DEFAULT_ENGINE, check_engine
from pacnet.training.device import check_device
from pacnet.training.train import AMP_DTYPES

SELECT_MODES = ("none", "cv", "holdout")
SOURCE_COMPUTE = ("standard", "equal")


@dataclass(frozen=True)
class Resolved:
    """What a :class:`RunSpec` names, as checked typed objects."""

    benchmark: type[Benchmark]
    method: type[Method]
    settings: Any
    """The benchmark's ``Config``: its defaults, the quick budgets if asked, then the
    settings given."""
    params: Any
    """The method's ``Params``: its defaults, then the hyperparameters given."""
    grid: tuple[dict[str, Any], ...]
    """The candidates a selection tries (empty without selection), each checked."""


@dataclass(frozen=True)
class RunSpec:
    """What identifies a run; settings not given take their defaults.

    Built once and not changed afterwards (``dataclasses.replace`` makes a new, checked
    one): :attr:`resolved` holds the typed objects, :meth:`identity` and :meth:`run_id`
    what stores and caches key on.
    """

    benchmark: str
    method: str
    seed: int = 0
    target_size: int = 50
    quick: bool = False
    bench_settings: dict[str, Any] = field(default_factory=dict)
    method_params: dict[str, Any] = field(default_factory=dict)
    select: str = "none"
    folds: int = 3
    candidates: tuple[dict[str, Any], ...] | None = None  # selection grid (None: Params.search)
    source_compute: str = "standard"  # "equal": baselines' source trained as long as PAC-Net's
    device: str = "cpu"
    amp: str = "none"
    targets: tuple[int, ...] = ()  # several targets in one network: their seeds, in order
    threads: int | None = None  # how to run, not what: not part of the run's identity
    engine: str = DEFAULT_ENGINE  # how to run too: which engine trains it (same results)
    deterministic: bool = False  # deterministic kernels (for CUDA; the CPU path already is)
    resolved: Resolved = field(init=False, repr=False, compare=False)
    """The benchmark, method, settings and candidates as checked typed objects."""
    _identity: dict[str, Any] = field(init=False, repr=False, compare=False)
    _run_id: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check(
            self.select in SELECT_MODES,
            f"select must be one of {', '.join(SELECT_MODES)}, got {self.select!r}",
        )
        check(self.folds >= 2, f"folds must be >= 2, got {self.folds}")
        check(
            self.source_compute in SOURCE_COMPUTE,
            f"source_compute must be one of {', '.join(SOURCE_COMPUTE)}, "
            f"got {self.source_compute!r}",
        )
        bench_cls, method_cls = get_benchmark(self.benchmark), get_method(self.method)
        if not method_cls.starts_from_source:  # PAC-Net is the reference; scratch has no source
            self._set("source_compute", "standard")
        if self.candidates is not None:
            self._set("candidates", tuple(dict(c) for c in self.candidates))
            check(self.candidates, "the candidate grid is empty")
            check(self.select != "none", "a candidate grid needs --select cv or holdout")
        self._set("targets", tuple(self.targets))
        if self.targets:
            self._check_targets(method_cls)
        check(self.amp in AMP_DTYPES, f"amp must be one of {', '.join(AMP_DTYPES)}")
        check_engine(self.engine)
        check_device(self.device, self.amp)
        self._set("resolved", self._resolve(bench_cls, method_cls))
        self._set("_identity", self._make_identity())
        self._set("_run_id", config_hash(self._identity))

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _check_targets(self, method_cls: type[Method]) -> None:
        check(
            method_cls.serves_several_targets,
            f"--targets serves several targets from one PAC-Net network; method "
            f"{self.method!r} cannot (use --method pacnet)",
        )
        check(self.select == "none", f"--targets cannot be combined with --select {self.select}")
        check(len(set(self.targets)) == len(self.targets), "--targets repeats a target")
        check(all(0 <= t < 2**31 for t in self.targets), "--targets must lie in [0, 2**31)")

    def _resolve(self, bench_cls: type[Benchmark], method_cls: type[Method]) -> Resolved:
        quick = bench_cls.quick if self.quick else {}
        settings = make(bench_cls.Config, {**quick, **self.bench_settings})
        params = make(method_cls.Params, self.method_params)
        if self.select == "none":
            grid: list[dict[str, Any]] = []
        elif self.candidates is not None:
            grid = [dict(c) for c in self.candidates]
        else:
            grid = candidates(method_cls.Params)
        for candidate in grid:
            make(method_cls.Params, {**self.method_params, **candidate})  # fails early if bad
        return Resolved(bench_cls, method_cls, settings, params, tuple(grid))

    # -- what the spec resolves to ------------------------------------------------------

    @property
    def thread_count(self) -> int | None:
        """Torch CPU threads the run uses: as given, else the benchmark's choice (None:
        torch's default)."""
        return self.threads or self.resolved.benchmark.threads

    def grid(self) -> list[dict[str, Any]]:
        """The candidates a selection tries (empty without selection)."""
        return [dict(c) for c in self.resolved.grid]

    def make_benchmark(self, cache: Any = None) -> Benchmark:
        """The benchmark with the spec's settings (``cache``: a :class:`StateCache`)."""
        return self.resolved.benchmark(self.resolved.settings, cache)

    def make_method(self, chosen: dict[str, Any] | None = None) -> Method:
        """The method with the spec's hyperparameters (and a selection's ``chosen`` ones)."""
        if not chosen:
            return self.resolved.method(self.resolved.params)
        return build(self.resolved.method, self.method_params, chosen)

    def fields(self) -> dict[str, Any]:
        """The values given to the constructor: ``RunSpec(**spec.fields())`` is ``spec``."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}

    # -- what identifies the run ---------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The resolved configuration, defaults included: everything behind the result."""
        settings, params = self.resolved.settings, self.resolved.params
        config = {
            "benchmark": to_dict(settings),
            "method": to_dict(params),
            "quick": self.quick,
            "source_fit": to_dict(settings.source_fit()),
            "target_fit": to_dict(settings.target_fit()),
        }
        if self.select != "none":
            config["select"] = self.selection()
        if (self.device, self.amp) != ("cpu", "none"):
            config["device"], config["amp"] = self.device, self.amp
        if self.source_compute != "standard":
            config["source_compute"] = self.source_compute
        return config

    def selection(self) -> dict[str, Any]:
        """How hyperparameters are chosen: mode, folds and the candidates tried."""
        return {"mode": self.select, "folds": self.folds, "candidates": self.grid()}

    def run_id(self) -> str:
        """The run's identity: the hash of :meth:`identity`."""
        return self._run_id

    def identity(self) -> dict[str, Any]:
        """What identifies the run: benchmark, method, seed, size and the settings that differ
        from their defaults (so a new option with a default keeps old ids)."""
        return json.loads(json.dumps(self._identity))

    def _make_identity(self) -> dict[str, Any]:
        key: dict[str, Any] = {
            "benchmark": self.benchmark,
            "method": self.method,
            "seed": self.seed,
            "target_size": self.target_size,
            "settings": non_default(self.resolved.settings),
            "params": non_default(self.resolved.params),
        }
        revision = self.resolved.method.revision
        if revision:
            key["revision"] = revision
        if self.select != "none":
            key["select"] = self.selection()
        if (self.device, self.amp) != ("cpu", "none"):
            key["device"], key["amp"] = torch.device(self.device).type, self.amp
        if self.source_compute != "standard":
            key["source_compute"] = self.source_compute
        if self.targets:
            key["targets"] = list(self.targets)
        return key


def non_default(obj: Any) -> dict[str, Any]:
    """The fields of a settings dataclass whose values differ from a default instance's."""
    values = to_dict(obj)
    defaults = {
        f.name: f.default if f.default is not MISSING else f.default_factory() for f in fields(obj)
    }
    defaults = json.loads(json.dumps(defaults))  # tuples as lists, as in ``values``
    return {k: v for k, v in values.items() if defaults.get(k) != v}
