"""``pacnet report`` (a Markdown report with plots from stored results) and ``pacnet
status`` (where the grids of a results database stand)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pacnet.cli.common import Named, db_flag, debug_flag
from pacnet.config import unknown_hint
from pacnet.errors import check
from pacnet.experiments.report.report import report
from pacnet.experiments.run.saving import read_results
from pacnet.experiments.store.status import status_text
from pacnet.experiments.store.store import DEFAULT_DB, Store


def add_parser(sub: Any, named: Named) -> None:
    """The ``report`` and ``status`` commands and their flags."""
    rpt = sub.add_parser("report", help="Markdown report with plots from stored results")
    db_flag(rpt)
    rpt.add_argument(
        "--results",
        type=Path,
        metavar="DIR",
        help="instead of --db: a folder searched for result.json files",
    )
    rpt.add_argument("--benchmark", default=None, metavar="NAME", help="only this benchmark")
    rpt.add_argument(
        "--across",
        default=None,
        metavar="A,B,...",
        help="also show the paired difference to fine-tuning against a benchmark setting, "
        "e.g. width (over runs that differ only in it)",
    )
    rpt.add_argument(
        "--out", type=Path, default=Path("runs/report"), metavar="DIR", help="report folder"
    )
    debug_flag(rpt)
    rpt.set_defaults(handler=run)

    sts = sub.add_parser(
        "status", help="the grids in a results database: pending, running, done, failed, ETA"
    )
    db_flag(sts)
    sts.add_argument(
        "--grid", default=None, metavar="ID", help="only the grid whose id starts with this"
    )
    sts.add_argument("--json", action="store_true", help="print JSON")
    debug_flag(sts)
    sts.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """``report`` or ``status``, as ``args.command`` says."""
    (run_report if args.command == "report" else run_status)(args)


def run_report(args: argparse.Namespace) -> None:
    """Write the report of the stored results (a database, or a folder of runs)."""
    if args.results is not None:
        rows = read_results(args.results, args.benchmark)
    else:
        with Store(args.db or DEFAULT_DB, create=False) as store:
            rows = store.results(args.benchmark)
    check(rows, "no stored results to report")
    across = [a.strip() for a in (args.across or "").split(",") if a.strip()]
    settings = sorted({name for r in rows for name in r["config"]["benchmark"]})
    for name in across:
        check(
            name in settings,
            f"--across {name}: no stored run has a benchmark setting of that name"
            f"{unknown_hint({name}, settings)}; their settings: {', '.join(settings)}",
        )
    path = report(rows, args.out, across)
    print(f"report of {len(rows)} runs written to {path}")


def run_status(args: argparse.Namespace) -> None:
    """Print where the database's grids stand (or JSON)."""
    with Store(args.db or DEFAULT_DB, create=False) as store:
        grids = store.status(args.grid)
        stored = len(store.ids())
        where = store.display
    check(grids or not args.grid, f"no grid whose id starts with {args.grid!r} in {where}")
    if args.json:
        print(
            json.dumps(
                {"database": where, "stored_runs": stored, "grids": [g.as_dict() for g in grids]},
                indent=2,
            )
        )
    else:
        print(status_text(where, stored, grids))
