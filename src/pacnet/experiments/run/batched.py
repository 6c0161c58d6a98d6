"""Runs of the MLP benchmarks trained together: the batched engine's runs.

:func:`run_group` does for several runs what
:func:`~pacnet.experiments.run.alone.run_alone` does for one, with every training of one
stage stacked into one model (:func:`pacnet.methods.engine.run_together`): first every
Allocate the runs' candidates need, then every cross-validation training of every run
(candidates × folds × runs), then every run's final training on all its target samples.
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
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pacnet.errors import check
from pacnet.experiments.run.alone import run_alone
from pacnet.experiments.run.context import Trained, completed, prepare
from pacnet.experiments.run.environment import using_threads
from pacnet.experiments.run.select import cv_splits, fold_context, selection_record
from pacnet.experiments.run.spec import RunSpec
from pacnet.methods.base import Method, Transfer, TransferContext
from pacnet.methods.engine import run_together, train_source_steps, why_not
from pacnet.training import distributed
from pacnet.training.cache import StateCache
from pacnet.training.train import Data


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
    if why_not(contexts[0]) is not None:
        return [run_alone(spec, cache) for spec in specs]
    befores = [c.benchmark.score(c.source_model, c.source.test) for c in contexts]
    choices = [
        Choice(spec.make_method, ctx, spec.grid(), spec.folds, spec.select)
        for spec, ctx in zip(specs, contexts, strict=True)
    ]
    done = []
    for spec, ctx, (selection, method, transfer), start, before in zip(
        specs, contexts, choose_and_train(choices), starts, befores, strict=True
    ):
        trained = completed(spec, method, ctx, transfer, selection, start, before)
        trained.result["engine"] = "batched"
        done.append(trained)
    return done


@dataclass
class Choice:
    """One method to choose a candidate for and train: ``make(chosen)`` builds the method
    with a candidate's values (``make(None)``: as given); ``grid`` the candidates tried on
    ``folds`` validation splits of ``ctx``'s target (``select`` ``cv`` or ``holdout``, as
    :attr:`RunSpec.select`; with ``none`` nothing is chosen)."""

    make: Callable[[dict[str, Any] | None], Method]
    ctx: TransferContext
    grid: list[dict[str, Any]]
    folds: int = 3
    select: str = "cv"


def choose_and_train(
    choices: Sequence[Choice],
) -> list[tuple[dict[str, Any] | None, Method, Transfer]]:
    """For every choice, what :func:`~pacnet.experiments.select.cross_validate` and then
    :meth:`Method.transfer` of the winner give (the selection record, the chosen method,
    its transfer), every training of a stage stacked: first all candidates × folds of all
    choices, then all the winners."""
    train_source_steps(
        [
            step
            for c in choices
            if c.make(None).stacks
            for candidate in c.grid or [None]
            for step in c.make(candidate).source_steps(c.ctx)
        ]
    )
    jobs: list[tuple[dict[str, Any], Data, Method, TransferContext]] = []
    tried: list[list[dict[str, Any]]] = []
    for c in choices:
        tried.append([])
        if c.select == "none":
            continue
        splits = cv_splits(c.ctx.target.train, c.folds, c.select)
        for candidate in c.grid:
            method = c.make(candidate)
            tried[-1].append({"params": candidate, "val": 0.0, "folds_val": []})
            for train, val in splits:
                jobs.append((tried[-1][-1], val, method, fold_context(c.ctx, train, val)))
    transfers = run_together([(m, ctx) for *_, m, ctx in jobs], final=False)
    for (entry, val, _, ctx), transfer in zip(jobs, transfers, strict=True):
        entry["folds_val"].append(ctx.benchmark.score(transfer.target_model, val))
    selections: list[dict[str, Any] | None] = []
    methods = []
    for c, listed in zip(choices, tried, strict=True):
        if c.select == "none":
            selections.append(None)
            methods.append(c.make(None))
            continue
        for entry in listed:
            entry["val"] = statistics.fmean(entry["folds_val"])
        method_cls = type(c.make(None))
        train = c.ctx.target.train
        selections.append(selection_record(method_cls, listed, train, c.folds, c.select))
        methods.append(c.make(selections[-1]["chosen"]))
    finals = run_together([(m, c.ctx) for m, c in zip(methods, choices, strict=True)])
    return list(zip(selections, methods, finals, strict=True))
