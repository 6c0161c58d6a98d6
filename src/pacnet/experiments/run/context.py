"""What every run does before and after its training, whichever engine trains it: the
context it runs in (:func:`prepare`) and its record (:func:`completed`)."""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from typing import Any

import torch

from pacnet.config import to_dict
from pacnet.core.tasks import Tasks
from pacnet.errors import check
from pacnet.experiments.run.environment import versions
from pacnet.experiments.run.source import extra_source_steps, source_model
from pacnet.experiments.run.spec import RunSpec
from pacnet.methods import Method, Transfer, TransferContext
from pacnet.training.cache import StateCache


@dataclass
class Trained:
    """A finished run: its result record and the network it trained."""

    result: dict[str, Any]
    model: torch.nn.Module
    """The target network (PAC-Net: the one network that holds every task)."""
    tasks: Tasks | None = None
    """PAC-Net: the per-task tensors of ``model``; None for one-network methods."""


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
    result = record(
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


def record(spec: RunSpec, method: Method, start: float, **fields: Any) -> dict[str, Any]:
    """A result.json record: what the run was, ``fields``, and how and when it ran."""
    return {
        "benchmark": spec.benchmark,
        "method": spec.method,
        "seed": spec.seed,
        "target_size": spec.target_size,
        "metric": spec.resolved.benchmark.metric,
        **fields,
        "seconds": round(time.perf_counter() - start, 3),
        "engine": "sequential",  # the batched engine (pacnet.experiments.run.batched) says so
        "run_id": spec.run_id(),
        "identity": spec.identity(),
        "config": spec.config(),
        "params_used": to_dict(method.params),
        "versions": versions(),
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
