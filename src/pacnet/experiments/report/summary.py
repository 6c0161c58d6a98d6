"""A summary across benchmarks: how the methods rank on paired cells, in Markdown.

A *cell* is one benchmark, target size and seed: every method saw the same data there.
Within a complete cell (every method of the summary ran) the methods are ranked by their
target test error (1 = best, ties share the mean rank). The summary gives

* per benchmark, each method's mean rank over that benchmark's cells, and the cell count;
* per target size and overall, each method's mean rank over all benchmarks;
* PAC-Net against each other method: the cells where PAC-Net's error is lower (paired
  wins), and the median of the paired relative difference (PAC-Net − other) / other;
* where the runs chose their strength by cross-validation: in how many cells each method
  had the lowest cross-validated error among the methods (the one ``pacnet transfer
  --method best`` would keep), and the mean rank on the test set of that CV pick.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

OURS = "pacnet"

Cell = tuple[str, int, int]


def _cells(rows: Sequence[dict[str, Any]]) -> tuple[list[str], dict[Cell, dict[str, dict]]]:
    """The methods (by ``row['method']``) and the complete cells: cell -> method -> row."""
    cells: dict[Cell, dict[str, dict]] = defaultdict(dict)
    for row in rows:
        if "chain" in row:
            continue
        cells[(row["benchmark"], row["target_size"], row["seed"])][row["method"]] = row
    methods = sorted({m for c in cells.values() for m in c}, key=lambda m: (m != OURS, m))
    complete = {k: v for k, v in cells.items() if len(v) == len(methods)}
    return methods, complete


def _ranks(values: dict[str, float]) -> dict[str, float]:
    """Rank 1 = lowest; ties share their mean rank."""
    ordered = sorted(values.values())
    return {
        k: statistics.fmean(i + 1 for i, x in enumerate(ordered) if x == v)
        for k, v in values.items()
    }


def _cv_error(row: dict[str, Any]) -> float | None:
    """The cross-validated error of the candidate a run chose (None without selection)."""
    selection = row.get("selection")
    if not selection:
        return None
    chosen = selection["chosen"]
    return next(c["val"] for c in selection["candidates"] if c["params"] == chosen)


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in body),
    ]


def summary(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The summary's Markdown lines (empty with fewer than two methods or no complete cell)."""
    methods, cells = _cells(rows)
    if len(methods) < 2 or not cells:
        return []
    ranks = {c: _ranks({m: r["target_test"] for m, r in by.items()}) for c, by in cells.items()}
    benchmarks = sorted({c[0] for c in cells})
    sizes = sorted({c[1] for c in cells})
    lines = [
        "## Across benchmarks",
        "",
        f"{len(cells)} paired cells (benchmark × target size × seed, every one of "
        f"{len(methods)} methods run on the same data); rank 1 = lowest target test error.",
        "",
        "**Mean rank per benchmark** (over its target sizes and seeds):",
        "",
    ]
    body = []
    for bench in benchmarks:
        mine = [c for c in cells if c[0] == bench]
        body.append(
            [bench, str(len(mine))]
            + [f"{statistics.fmean(ranks[c][m] for c in mine):.2f}" for m in methods]
        )
    lines += _table(["benchmark", "cells", *methods], body)
    lines += ["", "**Mean rank per target size, all benchmarks:**", ""]
    body = []
    for size in [*sizes, None]:
        mine = [c for c in cells if size is None or c[1] == size]
        label = "all" if size is None else f"N={size}"
        body.append(
            [label, str(len(mine))]
            + [f"{statistics.fmean(ranks[c][m] for c in mine):.2f}" for m in methods]
        )
    lines += _table(["target size", "cells", *methods], body)
    if OURS in methods:
        lines += ["", *_paired(methods, cells, sizes)]
    lines += _cv_winners(methods, cells, ranks, benchmarks)
    return lines


def _paired(methods: list[str], cells: dict[Cell, dict[str, dict]], sizes: list[int]) -> list[str]:
    lines = [
        "**PAC-Net against each method, paired** (cells where PAC-Net's error is lower / "
        "cells; in brackets the median of (PAC-Net − method) / method):",
        "",
    ]
    body = []
    for other in (m for m in methods if m != OURS):
        row = [other]
        for size in [*sizes, None]:
            mine = [c for c in cells if size is None or c[1] == size]
            ours = [cells[c][OURS]["target_test"] for c in mine]
            theirs = [cells[c][other]["target_test"] for c in mine]
            wins = sum(a < b for a, b in zip(ours, theirs, strict=True))
            rel = statistics.median((a - b) / b for a, b in zip(ours, theirs, strict=True))
            row.append(f"{wins}/{len(mine)} ({rel:+.1%})")
        body.append(row)
    header = ["PAC-Net vs", *(f"N={s}" for s in sizes), "all"]
    return lines + _table(header, body)


def _cv_winners(
    methods: list[str],
    cells: dict[Cell, dict[str, dict]],
    ranks: dict[Cell, dict[str, float]],
    benchmarks: list[str],
) -> list[str]:
    chosen = {}
    for cell, by in cells.items():
        errors = {m: _cv_error(r) for m, r in by.items()}
        if all(e is not None for e in errors.values()):
            chosen[cell] = min(methods, key=lambda m: errors[m])
    if not chosen:
        return []
    lines = [
        "",
        f"**The cross-validation winner** ({len(chosen)} cells whose runs all chose by "
        "cross-validation): how often each method had the lowest cross-validated error, per "
        "benchmark, and the mean test rank of the method CV picks (what `pacnet transfer "
        "--method best` keeps):",
        "",
    ]
    body = []
    for bench in [*benchmarks, None]:
        mine = [c for c in chosen if bench is None or c[0] == bench]
        if not mine:
            continue
        counts = [str(sum(chosen[c] == m for c in mine)) for m in methods]
        pick = statistics.fmean(ranks[c][chosen[c]] for c in mine)
        body.append([bench or "all", str(len(mine)), *counts, f"{pick:.2f}"])
    return lines + _table(["benchmark", "cells", *methods, "rank of CV pick"], body)
