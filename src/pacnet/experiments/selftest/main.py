"""The self-test's plan (what it runs and how long that took on 2 CPU cores), its bench
group, and :func:`selftest`, which runs every group and says each case's line."""

from __future__ import annotations

import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from pacnet.errors import first_line, pacnet_version
from pacnet.experiments.bench.costs import step_times
from pacnet.experiments.selftest import exact, models, runs
from pacnet.experiments.selftest.cases import FAIL, INFO, PASS, SKIP, Case


def bench(device: torch.device, quick: bool) -> Iterator[Case]:
    """Allocate and Calibrate over a plain step (median of paired ratios), for the record."""
    for model in ["friedman_mlp"] if quick else ["friedman_mlp", "wide_mlp"]:
        start = time.perf_counter()
        try:
            r = step_times(model, repeats=5 if quick else 15, steps=20, device=str(device))
            detail = (
                f"allocate/plain {r['allocate_over_plain']:.3f}, "
                f"calibrate/plain {r['calibrate_over_plain']:.3f}"
            )
            yield Case("bench", model, INFO, detail, time.perf_counter() - start)
        except Exception as exc:
            detail = f"{type(exc).__name__}: {first_line(exc)}"
            yield Case("bench", model, FAIL, detail, time.perf_counter() - start)


def header(device: torch.device) -> str:
    """Versions and the device, the first line of the report."""
    where = "CPU" if device.type == "cpu" else torch.cuda.get_device_name(device)
    cuda = f", CUDA {torch.version.cuda}" if device.type == "cuda" else ""
    return (
        f"pacnet {pacnet_version()}, torch {torch.__version__}{cuda}, Python "
        f"{platform.python_version()}; device {device} ({where})"
    )


SECONDS_ON_2_CORES = {
    "exact": 0.08,  # per case
    "runs": {"friedman": 2.5, "ode": 0.5, "pde": 0.5, "celeba": 2.6, "fashion": 21.0,
             "digits": 34.0},  # per benchmark, every method
    "engines": 4.2,
    "bench": {"quick": 0.2, "full": 85.0},
    "start": 4.0,  # imports and the first use of each kernel
}  # fmt: skip
"""Seconds each part took on 2 CPU cores (AMD EPYC, torch's 2 threads, a load of about 1):
what :func:`plan` adds up."""


def _seconds(quick: bool) -> float:
    """What :data:`SECONDS_ON_2_CORES` adds up to for the benchmarks installed here."""
    t = SECONDS_ON_2_CORES
    benchmarks = [b for b in runs.RUN_SETTINGS if not (quick and b in runs.FULL_ONLY)]
    return (
        t["start"]
        + len(models.CASE_MODELS)
        * len(models.CASE_OPTIMIZERS)
        * len(models.PRECISIONS)
        * t["exact"]
        + sum(t["runs"].get(b, 10.0) for b in benchmarks if runs.missing_data(b) is None)
        + (t["engines"] if "friedman" in runs.RUN_SETTINGS else 0.0)
        + t["bench"]["quick" if quick else "full"]
    )


def plan(device: torch.device, quick: bool) -> str:
    """What the self-test runs, and how long that took on 2 CPU cores."""
    cases = len(models.CASE_MODELS) * len(models.CASE_OPTIMIZERS) * len(models.PRECISIONS)
    running = [b for b in runs.RUN_SETTINGS if not (quick and b in runs.FULL_ONLY)]
    installed = [b for b in running if runs.missing_data(b) is None]
    aside = []
    if quick and any(b in runs.FULL_ONLY for b in runs.RUN_SETTINGS):
        full_only = " and ".join(b for b in runs.RUN_SETTINGS if b in runs.FULL_ONLY)
        aside.append(f"{full_only}: full selftest only")
    if len(installed) < len(running):
        aside.append(f"{', '.join(b for b in running if b not in installed)} not installed")
    ran = f"runs of {', '.join(installed) or 'no benchmark'}"
    ran += f" ({'; '.join(aside)})" if aside else ""
    took = f"about {_minutes(_seconds(quick))} on 2 CPU cores"
    other = f"{'the full selftest' if quick else '--quick'}: {_minutes(_seconds(not quick))}"
    gpu = "" if device.type == "cpu" else f"; not yet timed on {device.type}"
    return f"plan: {cases} exact cases, {ran}, engines, bench; {took} ({other}){gpu}"


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def selftest(
    device: torch.device, quick: bool = False, say: Callable[[str], None] = print
) -> list[Case]:
    """Run every group on ``device``, saying each case's line as it ends; the cases."""
    say(header(device))
    say(plan(device, quick))
    cases: list[Case] = []
    with (
        tempfile.TemporaryDirectory(prefix="pacnet-selftest-") as tmp,
        torch.random.fork_rng(devices=[] if device.type == "cpu" else None),
    ):
        groups = (
            exact.exactness(device, quick),
            runs.runs(device, Path(tmp), quick),
            runs.engines(device, Path(tmp)),
            bench(device, quick),
        )
        for group in groups:
            for case in group:
                cases.append(case)
                say(case.line())
    counts = {mark: sum(c.mark == mark for c in cases) for mark in (PASS, FAIL, SKIP)}
    say(
        f"{counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped "
        f"in {sum(c.seconds for c in cases):.0f} s"
    )
    return cases
