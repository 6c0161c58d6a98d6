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
run then trains the winner on all N samples. The test split is never looked at.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from pacnet.benchmarks.base import Benchmark, TaskData
from pacnet.errors import check
from pacnet.methods.base import Method, TransferContext, build, candidates
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
    bench: Benchmark,
    splits: list[tuple[Data, Data]],
) -> list[float]:
    """Validation score of ``method`` on each (train, validation) split of ``splits``, each
    trained alone."""
    scores = []
    for train, val in splits:
        transfer = method.transfer(fold_context(ctx, train, val))
        scores.append(bench.score(transfer.target_model, val))
    return scores


def cv_score(
    method: Method,
    ctx: TransferContext,
    bench: Benchmark,
    splits: list[tuple[Data, Data]],
) -> float:
    """Mean validation score of ``method`` over the (train, validation) ``splits``."""
    return statistics.fmean(fold_scores(method, ctx, bench, splits))


def cross_validate(
    method_cls: type[Method],
    fixed: dict[str, Any],
    ctx: TransferContext,
    bench: Benchmark,
    folds: int,
    mode: str = "cv",
    grid: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Score every candidate (``grid``, default the method's ``Params.search``) on
    validation splits of ``ctx.target.train`` (``mode`` ``cv`` or ``holdout``); return the
    record (per candidate its mean ``val`` and the score of each fold, ``folds_val``)."""
    splits = cv_splits(ctx.target.train, folds, mode)
    tried = []
    for candidate in grid if grid is not None else candidates(method_cls.Params):
        method = build(method_cls, fixed, candidate)
        scores = fold_scores(method, ctx, bench, splits)
        tried.append({"params": candidate, "val": statistics.fmean(scores), "folds_val": scores})
    return selection_record(method_cls, tried, ctx.target.train, folds, mode)


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
