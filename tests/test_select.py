"""Choosing a method's strength (pacnet.experiments.run.select): a held-out fold trains each
named candidate once and the winner on all the target samples; a bad candidate fails before
anything runs."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_methods import TINY

from pacnet import PacnetError
from pacnet.experiments.run import select
from pacnet.experiments.run.runner import run
from pacnet.experiments.run.spec import RunSpec

GRID = ({"ratio": 0.5, "lam": 0.01}, {"ratio": 0.9, "lam": 0.1})


def test_holdout_trains_each_candidate_once_then_the_winner_on_all(monkeypatch):
    seen = []
    original = select.run_each

    def counting(pairs, final, engine):
        if not final:  # the folds: each fold's training rows and held-out rows
            seen.extend((len(ctx.target.train), len(ctx.target.test)) for _, ctx in pairs)
        return original(pairs, final, engine)

    monkeypatch.setattr(select, "run_each", counting)
    spec = RunSpec(
        "friedman",
        "pacnet",
        seed=2,
        target_size=20,
        quick=True,
        bench_settings=TINY,
        select="holdout",
        folds=4,
        candidates=GRID,
        engine="sequential",  # the batched engine's own selection: tests/test_batched.py
    )
    result = run(spec)
    assert seen == [(15, 5), (15, 5)]  # one split, a quarter held out, per candidate
    selection = result["selection"]
    assert [c["params"] for c in selection["candidates"]] == list(GRID)
    best = min(selection["candidates"], key=lambda c: c["val"])
    assert selection["chosen"] == best["params"]
    assert all(len(c["folds_val"]) == 1 for c in selection["candidates"])
    assert result["params_used"]["ratio"] == best["params"]["ratio"]
    assert selection["mode"] == "holdout" and "held-out" in selection["protocol"]
    assert result["config"]["select"] == {"mode": "holdout", "folds": 4, "candidates": list(GRID)}
    # the grid is part of the run's identity: another grid is another run
    other = replace(spec, candidates=GRID[:1])
    assert other.run_id() != spec.run_id()


def test_a_bad_candidate_fails_before_anything_runs():
    with pytest.raises(PacnetError, match="ratio"):
        RunSpec("friedman", "pacnet", select="cv", candidates=({"ratio": 1.5},))
    with pytest.raises(PacnetError, match="unknown setting"):
        RunSpec("friedman", "finetune", select="cv", candidates=({"alpha": 1.0},))
    with pytest.raises(PacnetError, match="needs --select"):
        RunSpec("friedman", "finetune", candidates=({"lr": 1e-3},))
