"""Choosing a method's main strength on target validation data, with K-fold cross-validation.

Every method gets the same budget: its ``Params.search`` grid (``SEARCH_BUDGET``
candidates) times ``folds`` trainings. The N labelled target samples are split into
``folds`` folds by position (sample i goes to fold i mod K); each candidate trains on K−1
folds and is scored on the held-out one with the benchmark's metric; the candidate with the
lowest mean validation score wins (ties: the earlier candidate). The test split is never
looked at.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from pacnet.benchmarks.base import Benchmark, Task
from pacnet.config import make
from pacnet.errors import check
from pacnet.methods.base import Method, TransferContext, candidates
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


def cv_splits(data: Data, folds: int) -> list[tuple[Data, Data]]:
    """The cross-validation splits of ``data``: ``folds`` of them, fewer for tiny data."""
    units = len(torch.unique(data.groups)) if data.groups is not None else len(data)
    k = min(folds, units)
    check(
        k >= 2,
        f"choosing hyperparameters by cross-validation needs >= 2 target samples, got {units}",
    )
    return folds_of(data, k)


def cv_score(
    method: Method,
    ctx: TransferContext,
    bench: Benchmark,
    splits: list[tuple[Data, Data]],
    run_one: Callable[[Method, TransferContext], Any],
) -> float:
    """Mean validation score of ``method`` over the (train, validation) ``splits``."""
    scores = []
    for train, val in splits:
        fold_ctx = replace(ctx, target=Task(train, ctx.target.val, val))
        transfer = run_one(method, fold_ctx)
        scores.append(bench.score(transfer.target_model, val))
    return statistics.fmean(scores)


def cross_validate(
    method_cls: type[Method],
    fixed: dict[str, Any],
    ctx: TransferContext,
    bench: Benchmark,
    folds: int,
    run_one: Callable[[Method, TransferContext], Any],
) -> dict[str, Any]:
    """Score every candidate by K-fold CV on ``ctx.target.train``; return the record."""
    splits = cv_splits(ctx.target.train, folds)
    k = len(splits)
    tried = []
    for candidate in candidates(method_cls.Params):
        method = method_cls(make(method_cls.Params, {**fixed, **candidate}))
        tried.append({"params": candidate, "val": cv_score(method, ctx, bench, splits, run_one)})
    best = min(range(len(tried)), key=lambda i: tried[i]["val"])
    return {
        "protocol": f"{k}-fold cross-validation on the target training samples"
        + (" (whole trajectories held out)" if ctx.target.train.groups is not None else ""),
        "folds": k,
        "candidates": tried,
        "chosen": tried[best]["params"],
    }
