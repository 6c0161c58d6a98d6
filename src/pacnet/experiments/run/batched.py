"""Runs of the MLP benchmarks trained together: the batched engine's runs.

:func:`run_group` does for several runs what
:func:`~pacnet.experiments.run.alone.run_sequential` does for one, with every training of
one stage stacked into one model (:func:`~pacnet.experiments.run.select.choose_and_train`
on the batched engine): first every Allocate the runs' candidates need, then every
cross-validation training of every run (candidates × folds × runs), then every run's final
training on all its target samples.
Each run's record is the one the sequential engine writes, with the same run id; the
numbers agree within :data:`pacnet.training.stacked.TOLERANCE`.

A run stacks when its spec asks for the batched engine, its method lays its plans out for
it (:attr:`Method.stacks`: every method here), it serves one target without mixed
precision, and its benchmark's model is pacnet's MLP trained with MSE and Adam on data in
memory (:func:`pacnet.methods.engine.why_not`). Other runs (the image benchmarks, several
targets in one network, mixed precision, torchrun) run alone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from pacnet.errors import check
from pacnet.experiments.run.alone import run_sequential
from pacnet.experiments.run.context import Trained, completed, prepare
from pacnet.experiments.run.environment import using_threads
from pacnet.experiments.run.select import Choice, choose_and_train
from pacnet.experiments.run.spec import RunSpec
from pacnet.methods.base import TransferContext
from pacnet.methods.engine import why_not
from pacnet.training import distributed
from pacnet.training.cache import StateCache


def stacks(spec: RunSpec) -> bool:
    """Whether ``spec`` runs on the batched engine: it asks for it, its method stacks, and
    it serves one target without mixed precision outside torchrun (its benchmark's model
    is checked once the run is prepared)."""
    return (
        spec.engine == "batched"
        and spec.resolved.method.stacks
        and not spec.targets
        and spec.amp == "none"
        and not distributed.active()
    )


def engine_for(spec: RunSpec, ctx: TransferContext) -> str:
    """The engine ``spec``'s trainings take once its context is prepared: ``batched``
    where the spec stacks and its benchmark allows (:func:`pacnet.methods.engine.why_not`),
    else ``sequential``."""
    return "batched" if stacks(spec) and why_not(ctx) is None else "sequential"


def group_key(spec: RunSpec) -> str:
    """Runs with the same key differ only in seed and target size (and so in data): they
    train together."""
    identity = dict(spec.identity())
    for name in ("seed", "target_size"):
        identity.pop(name, None)
    return json.dumps([identity, spec.device, spec.threads], sort_keys=True, default=str)


def run_group(specs: Sequence[RunSpec], cache: StateCache | None = None) -> list[Trained]:
    """Run ``specs`` (all :func:`stacks`, with one :func:`group_key`) together; return
    each run's :class:`~pacnet.experiments.run.context.Trained`, in order. Where the
    benchmark turns out not to stack (its model is not pacnet's MLP, its data are
    streamed), each run runs alone."""
    check(specs, "no runs to run")
    cache = cache or StateCache()
    first = specs[0]
    with using_threads(first.thread_count, first.deterministic):
        start = time.perf_counter()
        trained = _run_group(list(specs), cache)
        share = (time.perf_counter() - start) / len(specs)
    for t in trained:
        if t.result.get("engine") == "batched":
            t.result["seconds"] = round(share, 3)  # each run's share of the group's time
    return trained


def _run_group(specs: list[RunSpec], cache: StateCache) -> list[Trained]:
    starts = [time.perf_counter() for _ in specs]
    contexts = [prepare(spec, cache) for spec in specs]
    if engine_for(specs[0], contexts[0]) == "sequential":
        return [run_sequential(spec, cache) for spec in specs]
    befores = [c.benchmark.score(c.source_model, c.source.test) for c in contexts]
    choices = [
        Choice(spec.make_method, ctx, spec.grid(), spec.folds, spec.select)
        for spec, ctx in zip(specs, contexts, strict=True)
    ]
    done = []
    for spec, ctx, (selection, method, transfer), start, before in zip(
        specs, contexts, choose_and_train(choices, "batched"), starts, befores, strict=True
    ):
        trained = completed(spec, method, ctx, transfer, selection, start, before)
        trained.result["engine"] = "batched"
        done.append(trained)
    return done
