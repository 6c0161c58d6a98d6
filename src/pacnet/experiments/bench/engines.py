"""``pacnet bench --engines``: the batched engine against the sequential one on the same grid
of runs, in one process, one after the other; the ratio of their wall times.

Both engines start from the same source model, trained (and cached) before the clock
starts. The sequential engine runs the runs one by one (:func:`runner.run`); the batched
one groups them as a sweep's worker does (:data:`GROUP` runs of one method at a time,
:func:`pacnet.experiments.run.batched.run_group`). The report also gives the largest relative
difference in the target metric between the two engines' records of each run.
"""

from __future__ import annotations

import platform
import tempfile
import time
from dataclasses import replace
from typing import Any

import torch

from pacnet.experiments.run import batched, runner
from pacnet.experiments.run.environment import using_threads
from pacnet.experiments.run.source import source_model
from pacnet.experiments.run.spec import RunSpec
from pacnet.methods import METHODS
from pacnet.training.cache import StateCache

STACKED_METHODS = tuple(name for name, cls in METHODS.items() if cls.stacks)
"""Every method that stacks (all of them)."""
GROUP = 16
"""Runs a sweep worker claims at a time on the batched engine (WorkerOptions.group)."""


def grid(
    benchmark: str = "friedman",
    methods: tuple[str, ...] = STACKED_METHODS,
    sizes: tuple[int, ...] = (10, 50, 200),
    seeds: int = 2,
    quick: bool = False,
    device: str = "cpu",
) -> list[RunSpec]:
    """The runs timed: every method × size × seed, each with 3-fold cross-validation."""
    return [
        RunSpec(benchmark, m, seed=s, target_size=n, quick=quick, select="cv", device=device)
        for m in methods
        for n in sizes
        for s in range(seeds)
    ]


def compare(specs: list[RunSpec], cache: StateCache | None = None) -> dict[str, Any]:
    """Time ``specs`` on both engines, method by method, side by side; return the report."""
    cache = cache or StateCache(tempfile.mkdtemp(prefix="pacnet-engines-"))
    first = specs[0]
    alone: list[dict[str, Any]] = []
    together: list[dict[str, Any]] = []
    per_method: dict[str, dict[str, float]] = {}
    with using_threads(first.thread_count, first.deterministic):
        bench = first.make_benchmark(cache)
        source_model(bench, cache, first.device)  # trained before the clock starts
        for method in dict.fromkeys(s.method for s in specs):
            mine = [s for s in specs if s.method == method]
            start = time.perf_counter()
            alone += [runner.run(replace(s, engine="sequential"), cache=cache) for s in mine]
            sequential = time.perf_counter() - start
            start = time.perf_counter()
            for group in _groups(mine):
                together += [t.result for t in batched.run_group(group, cache)]
            stacked = time.perf_counter() - start
            per_method[method] = {
                "runs": len(mine),
                "sequential_seconds": round(sequential, 2),
                "batched_seconds": round(stacked, 2),
                "speedup": round(sequential / stacked, 2),
            }
        threads = torch.get_num_threads()
    by_id = {r["run_id"]: r for r in together}
    differences = {
        f"{a['method']} N={a['target_size']} seed {a['seed']}": abs(
            by_id[a["run_id"]]["target_test"] - a["target_test"]
        )
        / abs(a["target_test"])
        for a in alone
    }
    for method, row in per_method.items():
        row["max_relative_metric_difference"] = max(
            d for label, d in differences.items() if label.split()[0] == method
        )
    flips = [
        f"{a['method']} N={a['target_size']} seed {a['seed']}"
        for a in alone
        if a["selection"]["chosen"] != by_id[a["run_id"]]["selection"]["chosen"]
    ]
    sequential = sum(m["sequential_seconds"] for m in per_method.values())
    stacked = sum(m["batched_seconds"] for m in per_method.values())
    return {
        "benchmark": first.benchmark,
        "methods": list(per_method),
        "target_sizes": sorted({s.target_size for s in specs}),
        "seeds": len({s.seed for s in specs}),
        "runs": len(specs),
        "select": "3-fold cross-validation (each run: candidates x folds, then the winner)",
        "quick": first.quick,
        "device": first.device,
        "threads": threads,
        "machine": platform.processor() or platform.machine(),
        "sequential_seconds": round(sequential, 2),
        "batched_seconds": round(stacked, 2),
        "speedup": round(sequential / stacked, 2),
        "per_method": per_method,
        "max_relative_metric_difference": max(differences.values()),
        "largest_differences": dict(sorted(differences.items(), key=lambda kv: -kv[1])[:3]),
        "cv_choices_differing": flips,
        "engines_in_records": sorted({r.get("engine", "?") for r in together}),
    }


def _groups(specs: list[RunSpec]) -> list[list[RunSpec]]:
    """Runs with one group key, in chunks of GROUP (in the grid's order, as claimed)."""
    keyed: dict[str, list[RunSpec]] = {}
    for spec in specs:
        keyed.setdefault(batched.group_key(spec), []).append(spec)
    return [g[i : i + GROUP] for g in keyed.values() for i in range(0, len(g), GROUP)]


def summary(report: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    r = report
    head = (
        f"{r['runs']} runs of {r['benchmark']} ({', '.join(r['methods'])}; N = "
        f"{', '.join(map(str, r['target_sizes']))}; {r['seeds']} seeds; cross-validated"
        f"{'; quick' if r['quick'] else ''}) on {r['device']}, {r['threads']} thread(s):\n"
        f"  sequential {r['sequential_seconds']:.1f} s, batched {r['batched_seconds']:.1f} s: "
        f"{r['speedup']:.2f}x\n"
    )
    rows = "".join(
        f"    {name:<13} sequential {m['sequential_seconds']:6.1f} s, batched "
        f"{m['batched_seconds']:5.1f} s: {m['speedup']:.2f}x (largest relative difference "
        f"{m['max_relative_metric_difference']:.1e})\n"
        for name, m in r["per_method"].items()
    )
    return (
        head + rows + "  largest relative difference of a run's target metric: "
        f"{r['max_relative_metric_difference']:.2e}"
    )
