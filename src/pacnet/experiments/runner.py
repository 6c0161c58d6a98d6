"""One run: (benchmark, method, hyperparameters, seed, target size, budget) -> result.json.

The source model is trained once per benchmark configuration and cached
(:mod:`pacnet.experiments.source`); every method then starts from the same source model and
sees the same target data for a given seed. What identifies a run is its
:class:`~pacnet.experiments.spec.RunSpec`; what it leaves in its folder,
:mod:`pacnet.experiments.saving`.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pacnet.config import to_dict
from pacnet.core.tasks import Tasks
from pacnet.errors import PacnetError, check
from pacnet.experiments.environment import using_threads, versions
from pacnet.experiments.saving import NETWORK_FILE, RESULT_FILE, save_trained
from pacnet.experiments.select import cross_validate
from pacnet.experiments.source import extra_source_steps, source_model
from pacnet.experiments.spec import RunSpec
from pacnet.io import write_json
from pacnet.methods import Method, Transfer, TransferContext
from pacnet.training import distributed
from pacnet.training.cache import StateCache

__all__ = ["RunSpec", "Trained", "prepare", "run", "run_trained", "seeded_transfer"]


@dataclass
class Trained:
    """A finished run: its result record and the network it trained."""

    result: dict[str, Any]
    model: torch.nn.Module
    """The target network (PAC-Net: the one network that holds every task)."""
    tasks: Tasks | None = None
    """PAC-Net: the per-task tensors of ``model``; None for one-network methods."""


def run(
    spec: RunSpec,
    out: str | Path | None = None,
    cache: StateCache | None = None,
    save: bool = False,
) -> dict[str, Any]:
    """Execute one run; write ``out/result.json`` (atomically) if ``out`` is given, and with
    ``save`` the trained network as ``out/net.safetensors`` (see :func:`run_trained`).

    Torch uses ``spec.threads`` CPU threads during the run (default: the benchmark's choice).
    """
    return run_trained(spec, out, cache, save).result


def run_trained(
    spec: RunSpec,
    out: str | Path | None = None,
    cache: StateCache | None = None,
    save: bool = False,
) -> Trained:
    """:func:`run`, also returning the network it trained.

    With ``save`` (which needs ``out``) the network is written to ``out/net.safetensors``
    before ``result.json``, which records it under ``network`` (see
    :func:`~pacnet.experiments.saving.save_trained`).
    """
    check(not save or out is not None, "saving the network needs an output folder (--out)")
    with using_threads(spec.thread_count, spec.deterministic):
        return _run(spec, out, cache or StateCache(), save)


def prepare(spec: RunSpec, cache: StateCache) -> TransferContext:
    """The benchmark, the (cached) source model and the target task of ``spec``."""
    bench = spec.make_benchmark(cache)
    check(spec.target_size >= 1, f"target size must be >= 1, got {spec.target_size}")
    check(0 <= spec.seed < 2**31, f"seed must lie in [0, 2**31), got {spec.seed}")
    check(
        spec.target_size <= bench.max_target_size,
        f"target size {spec.target_size} exceeds the pool of "
        f"{bench.max_target_size} target samples",
    )
    extra = extra_source_steps(spec.source_compute, bench)
    model, source_key = source_model(bench, cache, spec.device, spec.amp, extra)
    target = bench.target(spec.seed, spec.target_size)
    return TransferContext(
        bench, model, bench.source(), target, spec.seed, source_key, cache, spec.amp
    )


def seeded_transfer(method: Method, ctx: TransferContext) -> Transfer:
    """``method.transfer(ctx)`` with torch's global generator seeded by ``ctx.seed`` (and
    put back afterwards), so a transfer depends on nothing but its context."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)
        return method.transfer(ctx)


def _run(spec: RunSpec, out: str | Path | None, cache: StateCache, save: bool) -> Trained:
    method = spec.make_method()
    make_folder(out)
    start = time.perf_counter()
    ctx = prepare(spec, cache)
    source_before = ctx.benchmark.score(ctx.source_model, ctx.source.test)
    if spec.targets:
        return _run_chain(spec, out, ctx, method, source_before, start, save)
    selection = None
    if spec.select != "none":
        selection = cross_validate(
            type(method),
            spec.method_params,
            ctx,
            ctx.benchmark,
            spec.folds,
            seeded_transfer,
            mode=spec.select,
            grid=spec.grid(),
        )
        method = spec.make_method(selection["chosen"])
    transfer = seeded_transfer(method, ctx)
    trained = completed(spec, method, ctx, transfer, selection, start, source_before)
    return finish(spec, trained, out, save)


def completed(
    spec: RunSpec,
    method: Method,
    ctx: TransferContext,
    transfer: Transfer,
    selection: dict[str, Any] | None,
    start: float,
    source_before: float,
) -> Trained:
    """The finished run of ``spec``: its record (scores of ``transfer`` on the test sets)
    and its network; ``method`` is the one that ran (the chosen candidate)."""
    bench, source, target = ctx.benchmark, ctx.source, ctx.target
    result = _record(
        spec,
        method,
        start,
        target_test=bench.score(transfer.target_model, target.test),
        source_test_before=source_before,
        source_test_after=bench.score(transfer.source_model, source.test),
        trainable_params=transfer.trainable,
        total_params=transfer.total,
        stored_params=transfer.stored,
        fit=transfer.fit.as_dict(),
        target_metrics=bench.metrics(transfer.target_model, target.test),
        details=transfer.details,
        benchmark_details=bench.details(),
        selection=selection,
    )
    return Trained(result, transfer.target_model, transfer.tasks)


def make_folder(out: str | Path | None) -> None:
    """Create the output folder ``out`` (rank 0; nothing for None), or fail in one line."""
    if out is not None and distributed.is_main():
        try:
            Path(out).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PacnetError(f"cannot create the output folder {out}: {exc.strerror}") from None


def _record(spec: RunSpec, method: Method, start: float, **fields: Any) -> dict[str, Any]:
    """A result.json record: what the run was, ``fields``, and how and when it ran."""
    return {
        "benchmark": spec.benchmark,
        "method": spec.method,
        "seed": spec.seed,
        "target_size": spec.target_size,
        "metric": spec.resolved.benchmark.metric,
        **fields,
        "seconds": round(time.perf_counter() - start, 3),
        "engine": "sequential",  # the batched engine (pacnet.experiments.batched) says so
        "run_id": spec.run_id(),
        "identity": spec.identity(),
        "config": spec.config(),
        "params_used": to_dict(method.params),
        "versions": versions(),
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def finish(spec: RunSpec, trained: Trained, out: str | Path | None, save: bool) -> Trained:
    """Record the process layout (and, under torchrun, that every rank holds the same
    weights); only rank 0 writes ``result.json`` (and, with ``save``, the network first)."""
    result, model = trained.result, trained.model
    if distributed.active():
        result["distributed"] = {
            "world_size": distributed.world_size(),
            "backend": distributed.backend(),
            "ranks_agree": distributed.ranks_agree(distributed.model_checksum(model)),
        }
        check(
            result["distributed"]["ranks_agree"],
            "the ranks ended with different weights (checksum mismatch); nothing written",
        )
    if out is not None and distributed.is_main():
        if save:
            extra = {
                "benchmark": spec.benchmark,
                "method": spec.method,
                "seed": spec.seed,
                "target_size": spec.target_size,
                "run_id": spec.run_id(),
            }
            result["network"] = save_trained(Path(out) / NETWORK_FILE, extra, model, trained.tasks)
        write_json(Path(out) / RESULT_FILE, result)
    return trained


def _run_chain(
    spec: RunSpec,
    out: str | Path | None,
    ctx: TransferContext,
    method: Method,
    source_before: float,
    start: float,
    save: bool,
) -> Trained:
    """Several targets (the targets of seeds ``spec.targets``) in one network."""
    bench = ctx.benchmark
    targets = [(str(seed), bench.target(seed, spec.target_size)) for seed in spec.targets]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)
        chain = method.chain(ctx, targets, bench.score)
    final = chain["steps"][-1]["scores"]
    model, tasks = chain.pop("model"), chain.pop("tasks")
    result = _record(
        spec,
        method,
        start,
        targets=list(spec.targets),
        target_test=final[str(spec.targets[-1])],
        source_test_before=source_before,
        source_test_after=final["source"],
        chain=chain,
    )
    return finish(spec, Trained(result, model, tasks), out, save)
