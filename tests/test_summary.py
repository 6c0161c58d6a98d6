"""The summary across benchmarks, on hand-made rows."""

from __future__ import annotations

from pacnet.experiments.report.summary import _ranks, summary


def row(bench, size, seed, method, test, cv=None):
    out = {"benchmark": bench, "target_size": size, "seed": seed, "method": method,
           "target_test": test}  # fmt: skip
    if cv is not None:
        out["selection"] = {"chosen": {"lr": 1}, "candidates": [
            {"params": {"lr": 2}, "val": -1.0}, {"params": {"lr": 1}, "val": cv}]}  # fmt: skip
    return out


def test_ranks_share_ties():
    assert _ranks({"a": 1.0, "b": 1.0, "c": 0.5}) == {"a": 2.5, "b": 2.5, "c": 1.0}


def test_summary_counts_ranks_wins_and_cv_winners():
    rows = [
        row("t1", 10, 0, "pacnet", 1.0, cv=0.5), row("t1", 10, 0, "finetune", 2.0, cv=0.4),
        row("t1", 10, 1, "pacnet", 3.0, cv=0.2), row("t1", 10, 1, "finetune", 2.0, cv=0.3),
        row("t2", 10, 0, "pacnet", 1.0, cv=0.1), row("t2", 10, 0, "finetune", 4.0, cv=0.3),
        row("t2", 10, 1, "pacnet", 5.0),  # incomplete cell: left out
    ]  # fmt: skip
    text = "\n".join(summary(rows))
    assert "3 paired cells" in text
    assert "| t1 | 2 | 1.50 | 1.50 |" in text  # pacnet first: one win, one loss
    assert "| t2 | 1 | 1.00 | 2.00 |" in text
    assert "| finetune | 2/3 (-50.0%) | 2/3 (-50.0%) |" in text
    # CV winners: t1 seed 0 finetune (0.4 < 0.5), t1 seed 1 pacnet, t2 pacnet; the picks'
    # test ranks: 2 (finetune's 2.0 against 1.0), 2 (pacnet's 3.0 against 2.0), 1
    assert "| all | 3 | 2 | 1 | 1.67 |" in text


def test_no_summary_for_one_method():
    assert summary([row("t1", 10, 0, "pacnet", 1.0)]) == []


def test_report_names_the_engine_of_each_method():
    from pacnet.experiments.report.report import _engines

    rows = [{"method": "pacnet", "engine": "batched"}, {"method": "delta", "engine": "sequential"},
            {"method": "bss"}]  # fmt: skip
    assert _engines(rows) == (
        " Batched engine (runs stacked as one model): pacnet; one run at a time (no stacked "
        "layout): delta."
    )
    assert _engines([{"method": "delta", "engine": "sequential"}]) == ""
