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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pacnet.benchmarks.mlp import MLP
from pacnet.errors import PacnetError, check
from pacnet.experiments import runner
from pacnet.experiments.environment import using_threads
from pacnet.experiments.runner import Trained, prepare
from pacnet.experiments.select import cv_splits, fold_context, selection_record
from pacnet.experiments.spec import RunSpec
from pacnet.methods.base import Method, Plan, Transfer, TransferContext
from pacnet.training import distributed
from pacnet.training.cache import StateCache
from pacnet.training.stacked import Member, fit_stacked, supports
from pacnet.training.train import Data, FitConfig

ENGINES = ("batched", "sequential")
"""``--engine``: stack what can be stacked (default), or every run alone."""
MAX_MEMBERS = 512
"""Members trained in one stacked model at most."""
MAX_WEIGHTS = 2**25
"""Weights (members × weights per member) in one stacked model at most: with gradients,
Adam's state, masks and anchors about 1 GiB."""


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
    choices = [
        Choice(spec.make_method, ctx, spec.grid(), spec.folds, spec.select)
        for spec, ctx in zip(specs, contexts, strict=True)
    ]
    done = []
    for spec, ctx, (selection, method, transfer), start, before in zip(
        specs, contexts, choose_and_train(choices), starts, befores, strict=True
    ):
        trained = runner.completed(spec, method, ctx, transfer, selection, start, before)
        trained.result["engine"] = "batched"
        done.append(trained)
    return done


@dataclass
class Choice:
    """One method to choose a candidate for and train: ``make(chosen)`` builds the method
    with a candidate's values (``make(None)``: as given); ``grid`` the candidates tried on
    ``folds`` validation splits of ``ctx``'s target (``mode`` ``cv`` or ``holdout``; with
    ``none`` nothing is chosen)."""

    make: Callable[[dict[str, Any] | None], Method]
    ctx: TransferContext
    grid: list[dict[str, Any]]
    folds: int = 3
    mode: str = "cv"


def choose_and_train(
    choices: Sequence[Choice],
) -> list[tuple[dict[str, Any] | None, Method, Transfer]]:
    """For every choice, what :func:`~pacnet.experiments.select.cross_validate` and then
    :meth:`Method.transfer` of the winner give (the selection record, the chosen method,
    its transfer), every training of a stage stacked: first all candidates × folds of all
    choices, then all the winners."""
    _allocate_together(choices)
    jobs: list[tuple[dict[str, Any], Data, Method, TransferContext]] = []
    tried: list[list[dict[str, Any]]] = []
    for c in choices:
        tried.append([])
        if c.mode == "none":
            continue
        splits = cv_splits(c.ctx.target.train, c.folds, c.mode)
        for candidate in c.grid:
            method = c.make(candidate)
            tried[-1].append({"params": candidate, "val": 0.0, "folds_val": []})
            for train, val in splits:
                jobs.append((tried[-1][-1], val, method, fold_context(c.ctx, train, val)))
    transfers = stacked_transfers([(m, ctx) for *_, m, ctx in jobs], final=False)
    for (entry, val, _, ctx), transfer in zip(jobs, transfers, strict=True):
        entry["folds_val"].append(ctx.benchmark.score(transfer.target_model, val))
    selections: list[dict[str, Any] | None] = []
    methods = []
    for c, listed in zip(choices, tried, strict=True):
        if c.mode == "none":
            selections.append(None)
            methods.append(c.make(None))
            continue
        for entry in listed:
            entry["val"] = statistics.fmean(entry["folds_val"])
        method_cls = type(c.make(None))
        selections.append(selection_record(method_cls, listed, c.ctx.target.train, c.folds, c.mode))
        methods.append(c.make(selections[-1]["chosen"]))
    finals = stacked_transfers([(m, c.ctx) for m, c in zip(methods, choices, strict=True)])
    return list(zip(selections, methods, finals, strict=True))


def _allocate_together(choices: Sequence[Choice]) -> None:
    """PAC-Net's Allocate for every setting the choices try (one per ratio, say), stacked,
    where more than one is missing from a cache that can tell (``ctx.memo.contains``);
    the states go into that cache, where the plans find them. Allocate trains the essential
    entries and every other parameter on the labelled source task, redundant entries at 0."""
    from pacnet.core.pac import zero_redundant
    from pacnet.methods.pacnet_method import PacNet

    missing: dict[str, tuple[TransferContext, nn.Module, Any, dict, FitConfig]] = {}
    for c in choices:
        contains = getattr(c.ctx.memo, "contains", None)
        for candidate in c.grid or [None]:
            method = c.make(candidate)
            if not isinstance(method, PacNet) or method.params.allocate_on != "labelled":
                continue
            model, mask, key, cfg = method.allocation(c.ctx)
            name = json.dumps(key, sort_keys=True, default=str)
            if contains is not None and name not in missing and not contains(key):
                missing[name] = (c.ctx, model, mask, key, cfg)
    if len(missing) < 2:
        return
    members = []
    for ctx, model, mask, _, cfg in missing.values():
        zero_redundant(model, mask)
        start = {n: p.detach() for n, p in model.named_parameters()}
        trainable = {n: True for n, p in model.named_parameters() if p.requires_grad}
        trainable.update({n: mask[n] for n in mask if n in trainable})
        val = ctx.source.val if cfg.patience is not None else None
        members.append(Member(start, ctx.source.train, cfg, 0, trainable, val=val))
    first = next(iter(missing.values()))[1]
    trained = fit_stacked(members, first.spec(), next(first.parameters()).device)
    for (ctx, model, _, key, _), (state, _) in zip(missing.values(), trained, strict=True):
        model.load_state_dict(state)
        ctx.memo(key, lambda m=model: m.state_dict())


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
            torch.default_generator.manual_seed(ctx.seed)  # (torch.manual_seed costs 1 ms)
            if torch.cuda.is_initialized():
                torch.cuda.manual_seed_all(ctx.seed)
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
    """Member indices by batch size rounded up to a multiple of 8 (so little padding) and
    steps, in chunks of at most MAX_MEMBERS members and MAX_WEIGHTS weights."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, m in enumerate(members):
        key = (-(-min(m.cfg.batch_size, len(m.train)) // 8), m.cfg.steps)
        by_size.setdefault(key, []).append(i)
    weights = sum(t.numel() for t in members[0].start.values()) if members else 1
    most = max(1, min(MAX_MEMBERS, MAX_WEIGHTS // max(weights, 1)))
    return [group[k : k + most] for group in by_size.values() for k in range(0, len(group), most)]
