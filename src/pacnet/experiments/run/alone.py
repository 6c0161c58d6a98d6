"""A run with every training alone: the sequential engine's run (and a chain of several
targets in one network, which only it runs)."""

from __future__ import annotations

import time
from pathlib import Path

from pacnet.errors import PacnetError
from pacnet.experiments.run.context import Trained, completed, prepare, record
from pacnet.experiments.run.select import Choice, choose_and_train
from pacnet.experiments.run.spec import RunSpec
from pacnet.methods import Method, TransferContext
from pacnet.training import distributed
from pacnet.training.cache import StateCache
from pacnet.training.train import device_of, seeded


def run_sequential(spec: RunSpec, cache: StateCache, out: str | Path | None = None) -> Trained:
    """Run ``spec`` with every training alone (the sequential engine), in ``out`` (made
    here; nothing is written yet); return its record and network."""
    method = spec.make_method()
    make_folder(out)
    start = time.perf_counter()
    ctx = prepare(spec, cache)
    source_before = ctx.benchmark.score(ctx.source_model, ctx.source.test)
    if spec.targets:
        return _run_chain(spec, ctx, method, source_before, start)
    choice = Choice(spec.make_method, ctx, spec.grid(), spec.folds, spec.select)
    [(selection, method, transfer)] = choose_and_train([choice], "sequential")
    return completed(spec, method, ctx, transfer, selection, start, source_before)


def make_folder(out: str | Path | None) -> None:
    """Create the output folder ``out`` (rank 0; nothing for None), or fail in one line."""
    if out is not None and distributed.is_main():
        try:
            Path(out).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PacnetError(f"cannot create the output folder {out}: {exc.strerror}") from None


def _run_chain(
    spec: RunSpec, ctx: TransferContext, method: Method, source_before: float, start: float
) -> Trained:
    """Several targets (the targets of seeds ``spec.targets``) in one network."""
    bench = ctx.benchmark
    targets = [(str(seed), bench.target(seed, spec.target_size)) for seed in spec.targets]
    with seeded(ctx.seed, device_of(ctx.source_model)):
        chain = method.chain(ctx, targets, bench.score)
    final = chain["steps"][-1]["scores"]
    model, tasks = chain.pop("model"), chain.pop("tasks")
    result = record(
        spec,
        method,
        start,
        targets=list(spec.targets),
        target_test=final[str(spec.targets[-1])],
        source_test_before=source_before,
        source_test_after=final["source"],
        chain=chain,
    )
    return Trained(result, model, tasks)
