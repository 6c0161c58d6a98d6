"""A grid of runs (methods x target sizes x seeds), resumable and optionally parallel.

Finished runs go to the results :class:`~pacnet.experiments.store.Store` (SQLite), keyed by
run id; a run already there is skipped, so re-running a killed sweep finishes it without
repeating or duplicating work.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from tqdm.auto import tqdm

from pacnet.experiments.runner import (
    RunSpec,
    extra_source_steps,
    run,
    source_model,
    using_threads,
)
from pacnet.experiments.store import Store
from pacnet.training.cache import StateCache


def _worker_init() -> None:
    torch.set_num_threads(1)


def _run_one(spec: RunSpec, cache_root: str) -> dict[str, Any]:
    return run(spec, None, StateCache(cache_root))


def plan(
    base: RunSpec,
    methods: Sequence[str],
    sizes: Sequence[int],
    seeds: Sequence[int] | Mapping[int, Sequence[int]],
    method_params: Mapping[str, Mapping[str, Any]] | None = None,
    search: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    source_compute: Sequence[str] = ("standard",),
) -> list[RunSpec]:
    """Every (method, source compute, size, seed) run of a grid; ``seeds`` is one list or
    size -> seeds; ``search`` gives some methods their own candidate grids. PAC-Net runs
    once whatever ``source_compute`` says (its own source compute is the reference)."""
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


def sweep(
    specs: Sequence[RunSpec],
    store: Store,
    jobs: int = 1,
    cache: StateCache | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every spec whose id is not yet in ``store``; return the results of all of them.

    Each finished run is stored in one transaction as soon as it ends, so a sweep stopped
    at any point (Ctrl-C, SIGKILL) loses at most the runs in flight; running it again does
    only what is missing. The shared source model is built once, before any worker starts.
    """
    cache = cache or StateCache()
    ids = [spec.run_id() for spec in specs]
    done = store.ids()
    todo = [spec for spec, run_id in zip(specs, ids, strict=True) if run_id not in done]
    for base in {
        (s.benchmark, s.source_compute, json.dumps(s.identity()["settings"], sort_keys=True)): s
        for s in todo
    }.values():
        with using_threads(base):  # the source model, once per benchmark setting
            bench = base.make_benchmark(cache)
            extra = extra_source_steps(base, bench)
            source_model(bench, cache, base.device, base.amp, extra)

    def finished(result: dict[str, Any]) -> None:
        store.add(result)
        bar.update(1)
        if on_result:
            on_result(result)

    with tqdm(total=len(specs), initial=len(specs) - len(todo), desc="sweep", disable=None) as bar:
        if jobs <= 1 or len(todo) <= 1:
            for spec in todo:
                finished(run(spec, None, cache))
        else:
            ctx = multiprocessing.get_context("spawn")
            pool = cf.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init)
            try:
                futures = [pool.submit(_run_one, spec, str(cache.root)) for spec in todo]
                for future in cf.as_completed(futures):
                    finished(future.result())
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    position = {run_id: i for i, run_id in enumerate(ids)}
    return sorted(store.results(ids=ids), key=lambda r: position[r["run_id"]])
