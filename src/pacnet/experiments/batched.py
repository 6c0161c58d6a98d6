"""Runs of the MLP benchmarks trained together: the batched engine.

:func:`run_group` does for several runs what :func:`pacnet.experiments.runner.run` does for
one, with every training of one stage stacked into one model
(:func:`pacnet.training.stacked.fit_stacked`): first every cross-validation training of
every run (candidates × folds × runs), then every run's final training on all its target
samples. Each run's record is the one the sequential engine writes, with the same run id;
the numbers agree within :data:`pacnet.training.stacked.TOLERANCE`.

A run stacks when its benchmark's model is pacnet's MLP trained with MSE and Adam, and its
method lays its training out for the stacked trainer (:meth:`Method.plan`: PAC-Net,
fine-tuning, linear probe, L2-SP and scratch). Other runs (DELTA, BSS, LoRA, several
targets in one network, mixed precision, the image benchmarks) run one at a time.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pacnet.benchmarks.mlp import MLP
from pacnet.config import make
from pacnet.errors import PacnetError, check
from pacnet.experiments import runner
from pacnet.experiments.environment import using_threads
from pacnet.experiments.runner import Trained, prepare
from pacnet.experiments.select import cv_splits, fold_context, selection_record
from pacnet.experiments.spec import RunSpec
from pacnet.methods.base import Method, Plan, Transfer, TransferContext, candidates
from pacnet.training import distributed
from pacnet.training.cache import StateCache
from pacnet.training.stacked import Member, fit_stacked, supports
from pacnet.training.train import Data

ENGINES = ("batched", "sequential")
"""``--engine``: stack what can be stacked (default), or every run alone."""
MAX_MEMBERS = 512
"""Members trained in one stacked model at most (bounds memory: ~0.5 KB per weight)."""


def stackable(spec: RunSpec) -> bool:
    """Whether ``spec``'s method can run on the batched engine at all (its benchmark's
    model is checked once the run is prepared)."""
    method_cls = spec.resolved.method
    return method_cls.plan is not Method.plan and not spec.targets and spec.amp == "none"


def group_key(spec: RunSpec) -> str:
    """Runs with the same key differ only in seed and target size (and so in data): they
    train together."""
    identity = dict(spec.identity())
    for name in ("seed", "target_size"):
        identity.pop(name, None)
    return json.dumps([identity, spec.device, spec.threads], sort_keys=True, default=str)


def run_trained(
    spec: RunSpec,
    out: str | Path | None = None,
    cache: StateCache | None = None,
    save: bool = False,
    engine: str = "batched",
) -> Trained:
    """:func:`pacnet.experiments.runner.run_trained` on ``engine``: ``batched`` stacks the
    run's cross-validation trainings where the run allows (:func:`stackable`; under
    torchrun it runs as before), ``sequential`` trains them one after another."""
    check(engine in ENGINES, f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "sequential" or not stackable(spec) or distributed.active():
        return runner.run_trained(spec, out, cache, save)
    check(not save or out is not None, "saving the network needs an output folder (--out)")
    runner.make_folder(out)
    return runner.finish(spec, run_group([spec], cache)[0], out, save)


def run_group(specs: Sequence[RunSpec], cache: StateCache | None = None) -> list[Trained]:
    """Run ``specs`` (all :func:`stackable`, with one :func:`group_key`) together; return
    each run's :class:`~pacnet.experiments.runner.Trained`, in order. Where the benchmark
    turns out not to stack (its model is not pacnet's MLP, its data are streamed), each
    run runs alone, as :func:`~pacnet.experiments.runner.run` would run it."""
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
        return [runner.run_trained(spec, None, cache) for spec in specs]
    befores = [c.benchmark.score(c.source_model, c.source.test) for c in contexts]
    selections: list[dict[str, Any] | None] = [None] * len(specs)
    methods = [spec.make_method() for spec in specs]
    choosing = [i for i, spec in enumerate(specs) if spec.select != "none"]
    if choosing:
        jobs: list[tuple[int, dict[str, Any], Any, Method, TransferContext]] = []
        tried: dict[int, list[dict[str, Any]]] = {}
        for i in choosing:
            spec, ctx = specs[i], contexts[i]
            method_cls = type(methods[i])
            grid = spec.grid()
            tried[i] = []
            for candidate in grid if grid is not None else candidates(method_cls.Params):
                method = method_cls(make(method_cls.Params, {**spec.method_params, **candidate}))
                tried[i].append({"params": candidate, "scores": []})
                for train, val in cv_splits(ctx.target.train, spec.folds, spec.select):
                    jobs.append((i, tried[i][-1], val, method, fold_context(ctx, train, val)))
        transfers = stacked_transfers([(m, c) for *_, m, c in jobs], final=False)
        for (_, entry, val, _, ctx), transfer in zip(jobs, transfers, strict=True):
            entry["scores"].append(ctx.benchmark.score(transfer.target_model, val))
        for i in choosing:
            method_cls = type(methods[i])
            listed = [
                {"params": e["params"], "val": statistics.fmean(e["scores"]),
                 "folds_val": e["scores"]}
                for e in tried[i]
            ]  # fmt: skip
            spec = specs[i]
            selections[i] = selection_record(
                method_cls, listed, contexts[i].target.train, spec.folds, spec.select
            )
            methods[i] = spec.make_method(selections[i]["chosen"])
    finals = stacked_transfers(list(zip(methods, contexts, strict=True)), final=True)
    done = []
    for spec, method, ctx, transfer, selection, start, before in zip(
        specs, methods, contexts, finals, selections, starts, befores, strict=True
    ):
        trained = runner.completed(spec, method, ctx, transfer, selection, start, before)
        trained.result["engine"] = "batched"
        done.append(trained)
    return done


def why_not(ctx: TransferContext) -> str | None:
    """Why the runs of ``ctx``'s benchmark cannot be stacked (None: they can)."""
    if ctx.benchmark.loss_fn() is not nn.functional.mse_loss:
        return "the benchmark's loss is not the mean squared error"
    if type(ctx.source_model) is not MLP:
        return "the model is not pacnet's MLP"
    if not isinstance(ctx.target.train, Data):
        return "the target data are not held in memory"
    return supports(ctx.target_fit)


def stacked_transfers(
    pairs: Sequence[tuple[Method, TransferContext]], final: bool = True
) -> list[Transfer]:
    """``method.transfer(ctx)`` for every pair, the trainings stacked: what each returns
    agrees with its transfer run alone within the stated tolerance. Members are stacked in
    chunks of at most :data:`MAX_MEMBERS`, those of one batch size together."""
    plans: list[Plan] = []
    members: list[Member] = []
    for method, ctx in pairs:
        with torch.random.fork_rng(devices=[]):  # as seeded_transfer seeds a run alone
            torch.manual_seed(ctx.seed)
            plan = method.plan(ctx, final)
        if plan is None:
            raise PacnetError(f"method {method.name!r} has no stacked layout")
        cfg = ctx.target_fit if plan.lr is None else replace(ctx.target_fit, lr=plan.lr)
        start = {n: p.detach() for n, p in plan.model.named_parameters()}
        members.append(
            Member(
                start, ctx.target.train, cfg, ctx.seed, plan.trainable, plan.pulls,
                plan.pulls_in_loss, ctx.target.val,
            )
        )  # fmt: skip
        plans.append(plan)
    out: list[Transfer | None] = [None] * len(plans)
    for chunk in _chunks(members):
        spec = plans[chunk[0]].model.spec()
        device = next(plans[chunk[0]].model.parameters()).device
        trained = fit_stacked([members[i] for i in chunk], spec, device)
        for i, (state, fit) in zip(chunk, trained, strict=True):
            model = plans[i].model
            with torch.no_grad():
                for name, p in model.named_parameters():
                    p.copy_(state[name])
            out[i] = plans[i].finish(fit)
    return [t for t in out if t is not None]


def _chunks(members: Sequence[Member]) -> list[list[int]]:
    """Member indices by batch size (so little padding), in chunks of ≤ MAX_MEMBERS."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, m in enumerate(members):
        key = (min(m.cfg.batch_size, len(m.train)), m.cfg.steps)
        by_size.setdefault(key, []).append(i)
    return [
        group[k : k + MAX_MEMBERS]
        for group in by_size.values()
        for k in range(0, len(group), MAX_MEMBERS)
    ]
