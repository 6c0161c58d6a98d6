"""A grid of runs (methods x target sizes x seeds), resumable and optionally parallel.

Each run writes ``OUT/runs/<run_id>/result.json``; a run whose file already exists is
skipped, so re-running a killed sweep finishes it without repeating work. The source model
is built once, before any worker starts.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from pacnet.cache import StateCache
from pacnet.errors import PacnetError
from pacnet.experiments.runner import RESULT_FILE, RunSpec, run, source_model, using_threads
from pacnet.io import read_json


def _worker_init() -> None:
    torch.set_num_threads(1)


def _run_one(spec: RunSpec, out: str, cache_root: str) -> dict[str, Any]:
    return run(spec, out, StateCache(cache_root))


def sweep(
    base: RunSpec,
    methods: Sequence[str],
    sizes: Sequence[int],
    seeds: Sequence[int] | Mapping[int, Sequence[int]],
    out: str | Path,
    jobs: int = 1,
    cache: StateCache | None = None,
    method_params: dict[str, dict[str, Any]] | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every (method, size, seed) not yet finished under ``out``; return all results.

    ``seeds`` is one list for every size, or a mapping size -> seeds.
    """
    cache = cache or StateCache()
    method_params = method_params or {}
    seeds_for = seeds if isinstance(seeds, Mapping) else dict.fromkeys(sizes, seeds)
    specs = [
        replace(base, method=m, target_size=n, seed=s, method_params=method_params.get(m, {}))
        for m in methods
        for n in sizes
        for s in seeds_for[n]
    ]
    runs_dir = Path(out) / "runs"
    todo, results = [], []
    for spec in specs:
        path = runs_dir / spec.run_id() / RESULT_FILE
        if path.exists():
            try:
                results.append(read_json(path))
                continue
            except PacnetError:
                path.unlink()
        todo.append((spec, path.parent))
    if todo:
        with using_threads(base):
            source_model(
                base.make_benchmark(cache), cache, base.device, base.amp
            )  # build the shared source model once
    with tqdm(total=len(specs), initial=len(results), desc="sweep", disable=None) as bar:
        if jobs <= 1:
            for spec, folder in todo:
                results.append(run(spec, folder, cache))
                bar.update(1)
                if on_result:
                    on_result(results[-1])
        else:
            ctx = multiprocessing.get_context("spawn")
            with cf.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init) as pool:
                futures = [pool.submit(_run_one, s, str(f), str(cache.root)) for s, f in todo]
                for fut in cf.as_completed(futures):
                    results.append(fut.result())
                    bar.update(1)
                    if on_result:
                        on_result(results[-1])
    return results
