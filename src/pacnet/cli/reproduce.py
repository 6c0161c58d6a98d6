"""``pacnet reproduce BENCHMARK [--config FILE] [...]``: a grid of runs (methods x target
sizes x seeds), resumable and shareable by many machines through the results database,
then a table. The grid itself is :class:`pacnet.experiments.sweep.grid.Grid`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pacnet.benchmarks import BENCHMARKS
from pacnet.cli.common import (
    Named,
    db_flag,
    flags_named,
    ints,
    run_flags,
    seed_list,
    setting_flags,
)
from pacnet.config import given
from pacnet.errors import PacnetError, check
from pacnet.experiments.report.report import variant
from pacnet.experiments.report.table import markdown, protocol
from pacnet.experiments.store.claims import grid_id
from pacnet.experiments.store.store import DEFAULT_DB, Store
from pacnet.experiments.sweep.grid import Grid, default_label, parse_params
from pacnet.experiments.sweep.sweep import WorkerOptions, sweep
from pacnet.io import write_bytes_atomic
from pacnet.training.cache import StateCache


def add_parser(sub: Any, named: Named) -> None:
    """The ``reproduce`` command and its flags."""
    parser = sub.add_parser(
        "reproduce",
        help="a methods x target sizes x seeds grid (resumable, shareable by many machines, "
        "stored in the results database), then a table",
    )
    parser.add_argument("benchmark", metavar="BENCHMARK", help=f"one of: {', '.join(BENCHMARKS)}")
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML file with the grid (see configs/); flags given override it",
    )
    parser.add_argument(
        "--methods",
        default=None,
        metavar="A,B,...",
        help="comma-separated (default: all methods)",
    )
    parser.add_argument(
        "--target-sizes", type=ints, default=None, metavar="A,B,...", help="default: 10,50,200"
    )
    parser.add_argument(
        "--seeds",
        type=seed_list,
        default=None,
        metavar="K|A,B,...",
        help="K (seeds 0..K-1) or a list; 3",
    )
    parser.add_argument(
        "--seeds-at",
        default=None,
        metavar="N=K,...",
        help="more or fewer seeds for some target sizes, e.g. 10=10,20=10",
    )
    db_flag(parser)
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="METHOD.NAME=VALUE",
        help="a method hyperparameter, e.g. pacnet.lam=0.1 (repeatable)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="worker processes on this machine (1); workers on other machines running the "
        "same grid against the same --db share it",
    )
    parser.add_argument(
        "--lease",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how long a claimed run stays claimed unless its worker renews it (renewed every "
        "third of that while it runs); a dead worker's run is claimed again after it (60)",
    )
    parser.add_argument(
        "--max-attempts",
        type=int,
        default=None,
        metavar="N",
        help="starts of a run whose worker then vanished before the run counts as failed (3)",
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="run the grid's failed runs again (otherwise they stay failed)",
    )
    parser.add_argument(
        "--nproc-per-run",
        type=int,
        metavar="N",
        help="run each run as a torchrun job of N processes (DDP; with --device cuda, N GPUs "
        "per worker)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, metavar="DIR", help="table folder (runs/BENCHMARK)"
    )
    run_flags(parser)
    setting_flags(parser, named, method=False)
    parser.set_defaults(handler=run)


def grid_of(args: argparse.Namespace) -> Grid:
    """The sweep's grid: built-in defaults, then the TOML file, then the flags given."""
    grid = Grid.load(args.config)
    seeds_at = None
    if args.seeds_at is not None:
        seeds_at = {}
        for item in filter(None, args.seeds_at.split(",")):
            size, sep, count = item.partition("=")
            check(
                sep and size.strip().isdigit() and count.strip().isdigit(),
                f"--seeds-at needs SIZE=COUNT pairs, got {item!r}",
            )
            seeds_at[size.strip()] = int(count)
    methods = None
    if args.methods is not None:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    return grid.updated(
        methods=methods,
        target_sizes=args.target_sizes,
        seeds=args.seeds,
        seeds_at=seeds_at,
        select=args.select,
        jobs=args.jobs,
        source_compute=args.source_compute,
        folds=args.folds if args.folds != 3 else None,
    )


def run(args: argparse.Namespace) -> None:
    """Run (or join) the grid, then write and print its table."""
    grid = grid_of(args)
    grid.check()
    params = parse_params(args.param, grid.method_names())
    config_cls = BENCHMARKS[args.benchmark].Config
    plain = [
        n for n, v in (("folds", args.folds != 3), ("source_compute", args.source_compute)) if v
    ]
    with flags_named(args, [config_cls], plain):
        specs = grid.specs(
            args.benchmark,
            quick=args.quick,
            settings=given(args, config_cls),
            params=params,
            threads=args.threads,
            device=args.device,
            amp=args.amp,
            deterministic=args.deterministic,
            engine=args.engine,
        )
    options = WorkerOptions(
        **{
            name: value
            for name, value in (
                ("lease", args.lease),
                ("max_attempts", args.max_attempts),
                ("nproc_per_run", args.nproc_per_run),
            )
            if value is not None
        }
    )
    label = default_label(specs) + (f" from {args.config}" if args.config else "")
    out = args.out or Path("runs", args.benchmark)
    with Store(args.db or DEFAULT_DB) as store:
        results = sweep(
            specs,
            store,
            jobs=int(grid.jobs),
            cache=StateCache(args.cache),
            label=label,
            retry_failed=args.retry_failed,
            options=options,
        )
        where = store.display
        failed = [st for g in store.status(grid_id(s.run_id() for s in specs)) for st in g.failed]
    if results:
        write_table(args, grid, results, out)
    written = f"; table written to {out / 'table.md'}" if results else ""
    print(f"\n{len(results)} of {len(specs)} runs in {where}{written}")
    if failed:
        first = failed[0]
        last = (first.error or "").strip().splitlines()[-1:] or ["no error text"]
        raise PacnetError(
            f"{len(failed)} of {len(specs)} runs failed (the first, {first.describe()}: "
            f"{last[0]}); pacnet status --db {where} lists them, --retry-failed runs them again"
        )


def write_table(args: argparse.Namespace, grid: Grid, results: list[dict], out: Path) -> None:
    """``out/table.md``: the grid's results per method and target size (printed too)."""
    labelled = [{**r, "method": variant(r)} for r in results]  # as pacnet report labels them
    table = markdown(labelled, BENCHMARKS[args.benchmark].metric)
    seeds = grid.seeds_by_size()
    seeds_text = ", ".join(f"N={n}: {len(s)}" for n, s in seeds.items())
    header = (
        f"# {args.benchmark}: {', '.join(grid.method_names())}\n\nSeeds per target size: "
        f"{seeds_text}{' (quick)' if args.quick else ''}.\n\n{protocol(results)}\n\n"
    )
    write_bytes_atomic(out / "table.md", lambda tmp: Path(tmp).write_text(header + table + "\n"))
    print(header + table)
