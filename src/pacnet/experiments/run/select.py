"""Choosing a method's main strength on target validation data.

Every method gets the same budget: its candidates (``Params.search``, ``SEARCH_BUDGET`` of
them, or a grid the run names) times the trainings of the protocol. The N labelled target
samples are split into K folds by position (sample i goes to fold i mod K; the image
benchmarks interleave their classes, so every fold holds every class):

* ``cv``: each candidate trains on K−1 folds and is scored on the held-out one, for each of
  the K folds; the score is the mean;
* ``holdout``: one split only, fold 0 held out (1/K of the samples); K times cheaper, for
  models where K-fold cross-validation is too slow.

Scores use the benchmark's metric; the lowest wins (ties: the earlier candidate), and the
run then trains the winner on all N samples. The test split is never looked at. Both
engines choose this way (:func:`choose_and_train`): the sequential one trains each fold
alone, the batched one stacks them.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from pacnet.benchmarks.base import TaskData
from pacnet.errors import check
from pacnet.methods.base import Method, Transfer, TransferContext
from pacnet.methods.engine import DEFAULT_ENGINE, run_each, train_source_trainings
from pacnet.training.train import Data


def folds_of(data: Data, k: int) -> list[tuple[Data, Data]]:
    """``k`` (train, validation) splits of ``data``: unit u is held out in fold u mod k, a
    unit being a sample, or a whole group (trajectory) when ``data.groups`` is set."""
    unit = data.groups if data.groups is not None else torch.arange(len(data))
    splits = []
    for fold in range(k):
        held = unit % k == fold
        groups = data.groups
        splits.append(
            (
                Data(data.x[~held], data.y[~held], None if groups is None else groups[~held]),
                Data(data.x[held], data.y[held], None if groups is None else groups[held]),
            )
        )
    return splits


def cv_splits(data: Data, folds: int, mode: str = "cv") -> list[tuple[Data, Data]]:
    """The validation splits of ``data``: ``folds`` of them (fewer for tiny data) for
    ``cv``, the first of them for ``holdout``."""
    units = len(torch.unique(data.groups)) if data.groups is not None else len(data)
    k = min(folds, units)
    check(
        k >= 2,
        f"choosing hyperparameters on validation data needs >= 2 target samples, got {units}",
    )
    splits = folds_of(data, k)
    return splits[:1] if mode == "holdout" else splits


def fold_scores(
    method: Method,
    ctx: TransferContext,
    splits: list[tuple[Data, Data]],
    engine: str = DEFAULT_ENGINE,
) -> list[float]:
    """Validation score of ``method`` on each (train, validation) split of ``splits``, the
    folds trained on ``engine``."""
    transfers = run_each(
        [(method, fold_context(ctx, train, val)) for train, val in splits], False, engine
    )
    return [
        ctx.benchmark.score(t.target_model, val)
        for t, (_, val) in zip(transfers, splits, strict=True)
    ]


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


Chosen = tuple[dict[str, Any] | None, Method, Transfer]
"""A selection record (None where nothing was chosen), the chosen method, its transfer."""


def choose_and_train(choices: Sequence[Choice], engine: str = DEFAULT_ENGINE) -> list[Chosen]:
    """For every choice, the selection record, the chosen method and its run: every
    candidate scored on every validation split, the lowest mean wins
    (:func:`selection_record`), the winner trained on all the target samples. Each stage
    runs on ``engine`` for all choices at once: on ``batched`` first the source trainings
    the candidates need (PAC-Net's Allocate per ratio), then every candidate × fold of
    every choice stacked, then every winner."""
    if engine == "batched":
        train_source_trainings(
            [
                step
                for c in choices
                for candidate in c.grid or [None]
                for step in c.make(candidate).source_trainings(c.ctx)
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
    transfers = run_each([(m, ctx) for *_, m, ctx in jobs], False, engine)
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
    finals = run_each([(m, c.ctx) for m, c in zip(methods, choices, strict=True)], True, engine)
    return list(zip(selections, methods, finals, strict=True))


def fold_context(ctx: TransferContext, train: Data, val: Data) -> TransferContext:
    """``ctx`` with the target's training data replaced by one split's training part (the
    held-out part, scored afterwards, stands in for the test set)."""
    return replace(ctx, target=TaskData(train, ctx.target.val, val))


def selection_record(
    method_cls: type[Method], tried: list[dict[str, Any]], train: Data, folds: int, mode: str
) -> dict[str, Any]:
    """The record of a selection from the candidates ``tried`` (each with its ``params``,
    mean ``val`` and ``folds_val``) on validation splits of ``train``: the lowest mean
    wins, ties to the earlier candidate."""
    check(tried, f"{method_cls.__name__}: no candidates to choose from")
    best = min(range(len(tried)), key=lambda i: tried[i]["val"])
    whole = " (whole trajectories held out)" if train.groups is not None else ""
    k = min(folds, len(torch.unique(train.groups)) if train.groups is not None else len(train))
    if mode == "holdout":
        text = f"one held-out validation fold (1/{k} of the target training samples)"
    else:
        text = f"{k}-fold cross-validation on the target training samples"
    return {
        "protocol": text + whole,
        "mode": mode,
        "folds": k,
        "candidates": tried,
        "chosen": tried[best]["params"],
    }
