"""A small source table: the source steps are chosen by K-fold cross-validation on the
source rows instead of early stopping on a few tens of held-out rows; a large one keeps the
early-stopping split. The card and the report say which."""

from __future__ import annotations

import copy
import dataclasses
import json
import statistics

import numpy as np
import pytest
import torch
from test_tabular import write_csv

from pacnet.errors import PacnetError
from pacnet.tabular import pipeline, write_artifact
from pacnet.tabular.problem import SOURCE_CV_BELOW, Problem, TableBenchmark, TableConfig
from pacnet.tabular.report import card_lines, report_lines
from pacnet.training.train import Data, fit

CONFIG = {"source_steps": 400, "target_steps": 20, "hidden": (32, 32)}


def noisy_tables(root, source_rows: int):
    """A weak signal under much noise: a model trained long fits the noise."""
    rng = np.random.default_rng(0)
    xs, xt = rng.uniform(-1, 1, (source_rows, 3)), rng.uniform(-1, 1, (10, 3))
    ys = 0.3 * xs[:, 0] + rng.normal(0, 1.0, source_rows)
    names = ["x1", "x2", "x3"]
    source = write_csv(root / "s.csv", {**dict(zip(names, xs.T, strict=True)), "y": ys})
    target = write_csv(
        root / "t.csv", {**dict(zip(names, xt.T, strict=True)), "y": 0.3 * xt[:, 0] + 0.5}
    )
    return source, target


def transfer(source, target, **extra):
    options = pipeline.TransferOptions(
        source, target, outputs=["y"], lam=0.01, ratio=0.8,
        config=TableConfig(**CONFIG), **extra,
    )  # fmt: skip
    return pipeline.transfer(options)


def test_a_small_source_table_chooses_the_source_steps_by_cross_validation(tmp_path):
    source, target = noisy_tables(tmp_path, 245)
    outcome = transfer(source, target)
    card = outcome.card
    chosen = card["training"]["source_steps"]
    assert chosen["chosen_by"] == "cross-validation" and chosen["folds"] == 5
    data = card["data"]["source"]
    # 24 rows measure the source error; the 22 that would stop the training early train too
    assert (data["rows_held_out"], data["rows_early_stopping"], data["rows_train"]) == (24, 0, 221)
    assert chosen["rows"] == 221 and "22 rows, fewer than 100" in chosen["why"]
    # the step count is the cross-validation's choice: the lowest mean over the folds ...
    curve = chosen["curve"]
    assert chosen["steps"] == min(curve, key=lambda point: point[1])[0]
    assert chosen["budget"] == 400 and chosen["steps"] < 400  # the noise: it stops early
    # ... and the source model trained for exactly that many steps on all its rows
    assert card["training"]["source"]["trained"]["steps"] == chosen["steps"]

    # the curve is what each fold's model, trained alone (pacnet.fit), scores on its fold
    bench = TableBenchmark(TableConfig(**CONFIG), outcome.problem, card["model"], 0)
    train, cfg = bench.source().train, bench.config.source_fit()
    cfg = dataclasses.replace(cfg, patience=None)
    fold = torch.arange(len(train)) % 5
    start = bench.make_model(0)
    curves = []
    for i in range(5):
        result = fit(
            copy.deepcopy(start), bench.loss_fn(), Data(train.x[fold != i], train.y[fold != i]),
            cfg, val=Data(train.x[fold == i], train.y[fold == i]), seed=0,
        )  # fmt: skip
        curves.append(dict(result.val_curve))
    alone = [statistics.fmean(c[step] for c in curves) for step, _ in curve]
    np.testing.assert_allclose([score for _, score in curve], alone, rtol=5e-3)

    # Allocate takes as many steps, with nothing held out to stop on
    bench.choose_source_steps(start, 0)
    assert bench.source_steps == chosen["steps"]
    assert bench.source_fit().steps == chosen["steps"] and bench.source_fit().patience is None
    assert bench.source().val is None

    write_artifact(outcome, tmp_path / "m")
    report = (tmp_path / "m" / "report.md").read_text()
    assert f"({chosen['steps']} steps on all 221 training rows: 5-fold cross-validation" in report
    assert "stop its training early" not in report
    assert "chosen by 5-fold cross-validation on 221 rows" in "\n".join(card_lines(card))


def test_a_large_source_table_keeps_the_early_stopping_rows(tmp_path):
    source, target = noisy_tables(tmp_path, 1200)
    card = transfer(source, target).card
    chosen = card["training"]["source_steps"]
    assert chosen == {"chosen_by": "early stopping", "budget": 400, "rows": 108, "patience": 10}
    assert card["data"]["source"]["rows_early_stopping"] == 108 >= SOURCE_CV_BELOW
    assert card["training"]["source"]["trained"]["best_step"] is not None
    report = "\n".join(report_lines(card))
    assert "108 stop its training early" in report and "cross-validation on those" not in report


def test_a_source_checkpoint_keeps_the_split_and_says_it_is_small(tmp_path):
    """Allocate from a checkpoint: no source training to cross-validate; the note says the
    stopping rows are few."""
    source, target = noisy_tables(tmp_path, 245)
    write_artifact(transfer(source, target), tmp_path / "m")
    card = transfer(source, target, source_checkpoint=tmp_path / "m").card
    chosen = card["training"]["source_steps"]
    assert chosen["chosen_by"] == "early stopping" and chosen["rows"] == 22
    assert "only 22 held-out source rows" in chosen["note"]
    assert chosen["note"] in "\n".join(report_lines(card))


def test_no_patience_trains_the_whole_budget_without_cross_validation():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(245, 2)), rng.normal(size=(245, 1))
    problem = Problem.build(["a", "b"], ["y"], (x, y), (x[:5], y[:5]))
    spec = {"kind": "mlp", "in_features": 2, "hidden": [8], "out_features": 1}
    bench = TableBenchmark(TableConfig(source_patience=0), problem, spec, 0)
    assert bench.source_cv_folds == 0 and bench.source().val is None
    assert bench.source_steps_record() == {"chosen_by": "fixed", "steps": 2000}
    with pytest.raises(PacnetError, match="not cross-validated"):
        bench.choose_source_steps(bench.make_model(0), 0)


def test_an_older_card_without_the_record_still_reads(tmp_path):
    source, target = noisy_tables(tmp_path, 245)
    card = json.loads(json.dumps(transfer(source, target).card))
    del card["training"]["source_steps"]
    assert "the source model was trained here" in "\n".join(report_lines(card))
    assert card_lines(card)
