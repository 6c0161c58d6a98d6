"""The ``pacnet`` command line: thin; all logic lives in the package.

    pacnet run BENCHMARK --method M --seed S --target-size N [--ratio R] [--quick] --out DIR
    pacnet reproduce BENCHMARK [--methods a,b] [--target-sizes 10,50] [--seeds 5] --out DIR
    pacnet status [--db PATH|URL]
    pacnet transfer --source sim.csv --target measured.csv --outputs y --out DIR
    pacnet predict DIR --task target --input new.csv --out pred.csv
    pacnet inspect DIR | FILE
    pacnet methods | pacnet benchmarks

Benchmark settings and method hyperparameters are flags derived from their dataclasses:
``pacnet run friedman --method pacnet --help`` lists them. Bad input ends with one line
``pacnet: error: ...`` and exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pacnet.errors import PacnetError, check, first_line

DEFAULT_SIZES = "10,20,50,100,200,500"


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return list(dict.fromkeys(values))


def _seeds(text: str) -> list[int]:
    """``5`` means seeds 0..4; ``0,3,7`` means those seeds (duplicates dropped)."""
    values = _ints(text)
    if len(values) == 1 and "," not in text:
        if values[0] < 1:
            raise argparse.ArgumentTypeError(f"the number of seeds must be >= 1, got {values[0]}")
        return list(range(values[0]))
    if min(values) < 0:
        raise argparse.ArgumentTypeError(f"seeds must be >= 0, got {min(values)}")
    return values


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="shrink budgets for a smoke run")
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="cache folder for source models (default: $PACNET_CACHE or ~/.cache/pacnet)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads per process (default: the benchmark's choice, 1 for small MLPs)",
    )
    parser.add_argument(
        "--select",
        choices=("none", "cv", "holdout"),
        default=None,
        help="choose each method's main strength on the target training samples: K-fold "
        "cross-validation (cv) or one held-out fold (holdout, K times cheaper)",
    )
    parser.add_argument(
        "--folds", type=int, default=3, help="folds for --select (holdout holds out 1/K)"
    )
    parser.add_argument(
        "--source-compute",
        default=None,
        metavar="standard|equal",
        help="equal: the baselines start from a source model trained as many more steps as "
        "PAC-Net's Allocate (equal source compute); reproduce takes standard,equal for both",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    parser.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic kernels (repeatable CUDA runs; the CPU path already is)",
    )
    parser.add_argument(
        "--amp",
        choices=("none", "bf16", "fp16"),
        default="none",
        help="mixed precision (autocast; fp16 adds a gradient scaler)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def _db_flag(parser: Any, text: str = "the results database") -> None:
    parser.add_argument(
        "--db",
        default=None,
        metavar="PATH|URL",
        help=f"{text}: a SQLite file (default runs/pacnet.sqlite), sqlite:///FILE or "
        "postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE (pacnet[postgres])",
    )


class _Parser(argparse.ArgumentParser):
    r"""An argument parser whose errors are one-line :class:`PacnetError` lines."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise PacnetError(f"{message} (see {self.prog} --help)")


def _prescan(argv: Sequence[str]) -> tuple[str | None, str | None]:
    """(benchmark, method) named on the command line, checked before the full parser exists.

    The parser without benchmark- and method-specific flags reads the known part of
    ``argv`` (the positional benchmark and ``--method``), wherever they stand.
    """
    from pacnet.benchmarks import get_benchmark
    from pacnet.methods import get_method

    wants_help = {"-h", "--help"} & set(argv)
    argv = [a for a in argv if a not in ("-h", "--help")]
    if len(argv) < 2 or argv[0] not in ("run", "reproduce", "tune"):
        return None, None
    if wants_help:  # help for what is named so far, without insisting on the rest
        lenient = argparse.ArgumentParser(add_help=False)
        lenient.add_argument("command")
        lenient.add_argument("benchmark")
        lenient.add_argument("--method")
        known, _ = lenient.parse_known_args(argv)
    else:
        known, _ = build_parser(()).parse_known_args(argv)
    get_benchmark(known.benchmark)
    method = getattr(known, "method", None)
    if method:
        get_method(method)
    return known.benchmark, method


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    from pacnet.benchmarks import BENCHMARKS
    from pacnet.config import add_flags
    from pacnet.methods import METHODS

    bench_name, method_name = _prescan(argv) if argv else (None, None)
    parser = _Parser(prog="pacnet", description="PAC-Net transfer learning")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="one transfer run; writes OUT/result.json")
    run.add_argument("benchmark", help=f"one of: {', '.join(BENCHMARKS)}")
    run.add_argument("--method", required=True, help=f"one of: {', '.join(METHODS)}")
    run.add_argument("--seed", type=int, default=0, help="fixes the target task and its samples")
    run.add_argument("--target-size", type=int, default=50, help="labelled target samples")
    run.add_argument("--out", type=Path, default=Path("runs/latest"), help="output folder")
    run.add_argument(
        "--targets",
        type=_ints,
        default=(),
        help="pacnet only: serve the targets of these seeds (e.g. 1,2,3) in sequence from one "
        "network, each earlier task kept bit-exact; --seed still seeds training",
    )
    run.add_argument(
        "--save",
        action="store_true",
        help="also write the trained network to OUT/net.safetensors (PAC-Net: every task in "
        "one file; other methods: their target network), recorded in result.json",
    )
    _common(run)

    rep = sub.add_parser(
        "reproduce",
        help="a methods x target sizes x seeds grid (resumable, shareable by many machines, "
        "stored in the results database), then a table",
    )
    rep.add_argument("benchmark", help=f"one of: {', '.join(BENCHMARKS)}")
    rep.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML file with the grid (see configs/); flags given override it",
    )
    rep.add_argument("--methods", default=None, help="comma-separated (default: all methods)")
    rep.add_argument("--target-sizes", type=_ints, default=None, help="default: 10,50,200")
    rep.add_argument("--seeds", type=_seeds, default=None, help="K (seeds 0..K-1) or a list; 3")
    rep.add_argument(
        "--seeds-at",
        default=None,
        metavar="N=K,...",
        help="more or fewer seeds for some target sizes, e.g. 10=10,20=10",
    )
    _db_flag(rep)
    rep.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="METHOD.NAME=VALUE",
        help="a method hyperparameter, e.g. pacnet.lam=0.1 (repeatable)",
    )
    rep.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="worker processes on this machine (1); workers on other machines running the "
        "same grid against the same --db share it",
    )
    rep.add_argument(
        "--lease",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how long a claimed run stays claimed unless its worker renews it (renewed every "
        "third of that while it runs); a dead worker's run is claimed again after it (60)",
    )
    rep.add_argument(
        "--max-attempts",
        type=int,
        default=None,
        metavar="N",
        help="starts of a run whose worker then vanished before the run counts as failed (3)",
    )
    rep.add_argument(
        "--retry-failed",
        action="store_true",
        help="run the grid's failed runs again (otherwise they stay failed)",
    )
    rep.add_argument(
        "--nproc-per-run",
        type=int,
        default=None,
        metavar="N",
        help="run each run as a torchrun job of N processes (DDP; with --device cuda, N GPUs "
        "per worker)",
    )
    rep.add_argument("--out", type=Path, default=None, help="table folder (runs/BENCHMARK)")
    _common(rep)

    tun = sub.add_parser("tune", help="Optuna search of a method's main strength (validation only)")
    tun.add_argument("benchmark", help=f"one of: {', '.join(BENCHMARKS)}")
    tun.add_argument("--method", required=True, help=f"one of: {', '.join(METHODS)}")
    tun.add_argument("--seed", type=int, default=0, help="fixes the target task and its samples")
    tun.add_argument("--target-size", type=int, default=50, help="labelled target samples")
    tun.add_argument("--trials", type=int, default=20, help="trials to add to the study")
    where = tun.add_mutually_exclusive_group()
    _db_flag(where, "the database of the study: a path or URL as for reproduce")
    where.add_argument("--storage", default=None, help="an Optuna RDB URL, instead of --db")
    tun.add_argument("--study", default=None, help="study name (default from the run)")
    _common(tun)

    rpt = sub.add_parser("report", help="Markdown report with plots from stored results")
    _db_flag(rpt)
    rpt.add_argument(
        "--results",
        type=Path,
        default=None,
        help="instead of --db: a folder searched for result.json files",
    )
    rpt.add_argument("--benchmark", default=None, help="only this benchmark")
    rpt.add_argument(
        "--across",
        default=None,
        metavar="SETTING[,SETTING]",
        help="also show the paired difference to fine-tuning against a benchmark setting, "
        "e.g. width (over runs that differ only in it)",
    )
    rpt.add_argument("--out", type=Path, default=Path("runs/report"), help="report folder")
    rpt.add_argument("--debug", action="store_true", help="show tracebacks")

    sts = sub.add_parser(
        "status", help="the grids in a results database: pending, running, done, failed, ETA"
    )
    _db_flag(sts)
    sts.add_argument("--grid", default=None, help="only the grid whose id starts with this")
    sts.add_argument("--json", action="store_true", help="print JSON")
    sts.add_argument("--debug", action="store_true", help="show tracebacks")

    bch = sub.add_parser("bench", help="time and memory of masked vs plain training, and more")
    bch.add_argument("--quick", action="store_true", help="fewer repeats, skip 100M weights")
    bch.add_argument("--json", action="store_true", help="print the full JSON report")
    bch.add_argument(
        "--profile",
        metavar="MODEL",
        help="instead: where a step's time goes (torch.profiler), plain/allocate/calibrate; "
        "MODEL is friedman_mlp, wide_mlp or resnet18",
    )
    bch.add_argument(
        "--optimizer",
        default="adam",
        help="the optimizer of every mode: adam (pacnet's default), adamw or sgd (momentum 0.9)",
    )
    bch.add_argument("--debug", action="store_true", help="show tracebacks")

    ins = sub.add_parser(
        "inspect",
        help="what a pacnet checkpoint holds (checksum verified), with the card of a "
        "pacnet transfer folder",
    )
    ins.add_argument(
        "checkpoint",
        type=Path,
        metavar="PATH",
        help="a checkpoint, or a folder holding net.safetensors (pacnet transfer, run --save)",
    )
    ins.add_argument("--json", action="store_true", help="print everything as JSON")
    ins.add_argument("--debug", action="store_true", help="show tracebacks")

    _transfer_parser(sub)
    _predict_parser(sub)

    sub.add_parser("methods", help="list the transfer methods")
    sub.add_parser("benchmarks", help="list the benchmarks")

    if bench_name:
        for p in (run, rep, tun):
            add_flags(p, BENCHMARKS[bench_name].Config, f"{bench_name} settings")
    if method_name:
        for p in (run, tun):
            add_flags(p, METHODS[method_name].Params, f"{method_name} hyperparameters")
    return parser


def _transfer_parser(sub: Any) -> None:
    from pacnet.config import add_flags
    from pacnet.methods import METHODS
    from pacnet.tabular.problem import TableConfig

    tr = sub.add_parser(
        "transfer",
        help="PAC-Net on your own tables (CSV, Parquet): train on the source rows, transfer to "
        "the target rows; writes OUT/net.safetensors, card.json and report.md",
    )
    tr.add_argument(
        "--source", type=Path, required=True, metavar="FILE", help="the source table (many rows)"
    )
    tr.add_argument(
        "--target", type=Path, required=True, metavar="FILE", help="the target table (few rows)"
    )
    tr.add_argument(
        "--outputs",
        default=None,
        metavar="COLUMNS",
        help="the column(s) to predict, comma-separated (a name with a comma in quotes); "
        "required unless --source-checkpoint names them",
    )
    tr.add_argument(
        "--inputs",
        default=None,
        metavar="COLUMNS",
        help="the input columns, comma-separated (default: every column both tables share, "
        "except the outputs and --ignore)",
    )
    tr.add_argument(
        "--ignore",
        default="",
        metavar="COLUMNS",
        help="columns that are not inputs, e.g. an id (comma-separated)",
    )
    tr.add_argument("--out", type=Path, required=True, metavar="DIR", help="the folder to write")
    tr.add_argument(
        "--source-checkpoint",
        type=Path,
        default=None,
        metavar="PATH",
        help="start from this source model instead of training one: a pacnet checkpoint with "
        "a model spec (a pacnet transfer folder, a pacnet run --save network of an MLP)",
    )
    tr.add_argument("--lam", type=float, default=None, help="fix λ (default: chosen by CV)")
    tr.add_argument(
        "--ratio", type=float, default=None, help="fix the pruning ratio (default: chosen by CV)"
    )
    tr.add_argument(
        "--compare",
        default="",
        metavar="METHODS",
        help=f"also cross-validate these methods on the same folds (comma-separated, or all): "
        f"{', '.join(m for m in METHODS if m != 'pacnet')}",
    )
    tr.add_argument(
        "--folds", type=int, default=3, help="cross-validation folds on the target rows (3)"
    )
    tr.add_argument("--seed", type=int, default=0, help="seeds training and the source split")
    tr.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1)")
    tr.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    tr.add_argument("--debug", action="store_true", help="show tracebacks")
    add_flags(tr, TableConfig, "model and training budgets")


def _predict_parser(sub: Any) -> None:
    pr = sub.add_parser(
        "predict", help="predictions of a pacnet transfer folder for the rows of a table"
    )
    pr.add_argument("artifact", type=Path, metavar="DIR", help="the folder pacnet transfer wrote")
    pr.add_argument(
        "--input", type=Path, required=True, metavar="FILE", help="a CSV or Parquet table"
    )
    pr.add_argument(
        "--task", default="target", help="target (default) or source: which model answers"
    )
    pr.add_argument(
        "--out",
        default="-",
        metavar="FILE",
        help="CSV file (Parquet for .parquet) to write; - for standard output (default)",
    )
    pr.add_argument(
        "--keep",
        default="",
        metavar="COLUMNS",
        help="columns of the input copied in front of the predictions, e.g. an id",
    )
    pr.add_argument("--debug", action="store_true", help="show tracebacks")


def _column_list(text: str | None, flag: str) -> list[str] | None:
    """A comma-separated list of column names, read as one CSV row (quote a name that
    holds a comma); None when not given."""
    import csv

    if text is None:
        return None
    try:
        names = next(csv.reader([text], skipinitialspace=True), [])
    except csv.Error as exc:
        raise PacnetError(f"{flag}: cannot read {text!r} as names ({exc})") from None
    names = [n.strip() for n in names if n.strip()]
    check(names, f"{flag} names no column")
    return names


def _settings(args: argparse.Namespace, cls: type) -> dict:
    prefix = f"{cls.__name__}."
    return {k[len(prefix) :]: v for k, v in vars(args).items() if k.startswith(prefix)}


def _method_params(items: Sequence[str], methods: Sequence[str]) -> dict[str, dict]:
    import typing

    from pacnet.config import _parser_for
    from pacnet.methods import get_method

    params: dict[str, dict] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, name = key.partition(".")
        check(sep and dot, f"--param needs METHOD.NAME=VALUE, got {item!r}")
        check(method in methods, f"--param {item!r}: method {method!r} is not in this sweep")
        hints = typing.get_type_hints(get_method(method).Params)
        check(name in hints, f"--param {item!r}: {method} has no hyperparameter {name!r}")
        convert, _ = _parser_for(hints[name], name)
        try:
            params.setdefault(method, {})[name] = convert(value)
        except (ValueError, argparse.ArgumentTypeError):
            raise PacnetError(f"--param {item!r}: cannot read {value!r} as {hints[name]}") from None
    return params


def _run_spec(args: argparse.Namespace) -> Any:
    """The RunSpec that ``run`` and ``tune`` flags describe."""
    from pacnet.benchmarks import get_benchmark
    from pacnet.experiments.spec import RunSpec
    from pacnet.methods import get_method

    bench_cls, method_cls = get_benchmark(args.benchmark), get_method(args.method)
    return RunSpec(
        args.benchmark,
        args.method,
        args.seed,
        args.target_size,
        args.quick,
        _settings(args, bench_cls.Config),
        _settings(args, method_cls.Params),
        select=args.select or "none",
        folds=args.folds,
        source_compute=args.source_compute or "standard",
        threads=args.threads,
        device=args.device,
        amp=args.amp,
        deterministic=args.deterministic,
        targets=tuple(getattr(args, "targets", ())),
    )


def _cmd_run(args: argparse.Namespace) -> None:
    from pacnet.experiments.runner import run
    from pacnet.experiments.saving import RESULT_FILE
    from pacnet.training import distributed
    from pacnet.training.cache import StateCache

    with distributed.session(args.device) as device:
        args.device = device
        spec = _run_spec(args)
        result = run(spec, args.out, StateCache(args.cache), save=args.save)
        main_rank = distributed.is_main()
    if not main_rank:
        return
    if spec.targets:
        for step in result["chain"]["steps"]:
            scores = ", ".join(f"{t} {v:.4f}" for t, v in step["scores"].items())
            print(f"after target {step['added']}: {result['metric']} {scores}")
        exact = result["chain"]["earlier_tasks_bit_identical"]
        print(f"earlier tasks bit-identical: {exact} -> {args.out / RESULT_FILE}")
    else:
        print(
            f"{result['method']} on {result['benchmark']} (seed {result['seed']}, "
            f"N={result['target_size']}): target {result['metric']} "
            f"{result['target_test']:.4f}, source {result['source_test_before']:.4f} -> "
            f"{result['source_test_after']:.4f}, {result['seconds']:.1f}s -> "
            f"{args.out / RESULT_FILE}"
        )
    if "network" in result:
        network = result["network"]
        print(f"network ({', '.join(network['tasks'])}) saved to {args.out / network['file']}")


def _grid_config(args: argparse.Namespace) -> dict:
    """The sweep's grid: built-in defaults, then the TOML file, then the flags given."""
    import tomllib

    from pacnet.methods import METHODS

    grid: dict = {
        "methods": list(METHODS),
        "target_sizes": [10, 50, 200],
        "seeds": 3,
        "seeds_at": {},
        "select": "none",
        "folds": 3,
        "jobs": 1,
        "settings": {},
        "params": {},
        "search": {},
        "source_compute": ["standard"],
    }
    path = args.config
    if path is not None:
        try:
            loaded = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise PacnetError(f"{path}: config file not found") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise PacnetError(f"{path}: not valid TOML ({exc})") from None
        unknown = set(loaded) - set(grid)
        check(not unknown, f"{path}: unknown keys {sorted(unknown)}; known: {sorted(grid)}")
        grid.update(loaded)
        grid["config_file"] = str(path)
    if args.methods is not None:
        grid["methods"] = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.target_sizes is not None:
        grid["target_sizes"] = args.target_sizes
    if args.seeds is not None:
        grid["seeds"] = args.seeds
    if args.seeds_at is not None:
        grid["seeds_at"] = {}
        for item in filter(None, args.seeds_at.split(",")):
            size, sep, count = item.partition("=")
            check(
                sep and size.strip().isdigit() and count.strip().isdigit(),
                f"--seeds-at needs SIZE=COUNT pairs, got {item!r}",
            )
            grid["seeds_at"][size.strip()] = int(count)
    for key in ("select", "jobs", "source_compute"):
        if getattr(args, key) is not None:
            grid[key] = getattr(args, key)
    if isinstance(grid["source_compute"], str):
        grid["source_compute"] = [v.strip() for v in grid["source_compute"].split(",")]
    if args.folds != 3:
        grid["folds"] = args.folds
    return grid


def _search_grids(search: dict, methods: Sequence[str]) -> dict[str, list[dict]]:
    """Per method, the candidates a TOML ``[search.METHOD]`` table names: a table of lists
    (their product) or ``candidates = [{...}, ...]`` (an explicit list)."""
    import itertools

    grids: dict[str, list[dict]] = {}
    for method, spec in search.items():
        check(method in methods, f"[search.{method}]: method {method!r} is not in this sweep")
        check(isinstance(spec, dict), f"[search.{method}] must be a table")
        if "candidates" in spec:
            check(len(spec) == 1, f"[search.{method}]: candidates stands alone")
            listed = spec["candidates"]
            check(
                isinstance(listed, list) and listed and all(isinstance(c, dict) for c in listed),
                f"[search.{method}].candidates must be a list of tables",
            )
            grids[method] = [dict(c) for c in listed]
        else:
            values = {k: v if isinstance(v, list) else [v] for k, v in spec.items()}
            check(values and all(values.values()), f"[search.{method}] names no values")
            combos = itertools.product(*values.values())
            grids[method] = [dict(zip(values, c, strict=True)) for c in combos]
    return grids


def _cmd_reproduce(args: argparse.Namespace) -> None:
    from pacnet.benchmarks import get_benchmark
    from pacnet.experiments.spec import RunSpec
    from pacnet.experiments.store import DEFAULT_DB, Store, grid_id
    from pacnet.experiments.sweep import WorkerOptions, default_label, plan, sweep
    from pacnet.methods import get_method
    from pacnet.training.cache import StateCache

    bench_cls = get_benchmark(args.benchmark)
    grid = _grid_config(args)
    methods = list(dict.fromkeys(grid["methods"]))
    check(methods, "--methods names no method; see pacnet methods")
    for m in methods:
        get_method(m)
    check(int(grid["jobs"]) >= 1, f"--jobs must be >= 1, got {grid['jobs']}")
    sizes = list(dict.fromkeys(int(n) for n in grid["target_sizes"]))
    check(sizes, "the grid names no target size")
    count = grid["seeds"]
    seed_list = list(range(count)) if isinstance(count, int) else list(count)
    check(seed_list and min(seed_list) >= 0, "seeds must be a positive count or seeds >= 0")
    seeds = {n: seed_list for n in sizes}
    for size, n_seeds in grid["seeds_at"].items():
        check(int(size) in seeds, f"seeds_at {size}: not one of the target sizes {sizes}")
        check(int(n_seeds) >= 1, f"seeds_at {size}: the number of seeds must be >= 1")
        seeds[int(size)] = list(range(int(n_seeds)))
    params = {m: dict(v) for m, v in grid["params"].items()}
    for m, values in _method_params(args.param, methods).items():
        params.setdefault(m, {}).update(values)
    base = RunSpec(
        args.benchmark,
        methods[0],
        quick=args.quick,
        bench_settings={**grid["settings"], **_settings(args, bench_cls.Config)},
        select=grid["select"],
        folds=int(grid["folds"]),
        threads=args.threads,
        device=args.device,
        amp=args.amp,
        deterministic=args.deterministic,
    )
    search = _search_grids(grid["search"], methods)
    specs = plan(base, methods, sizes, seeds, params, search, grid["source_compute"])
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
            jobs=int(grid["jobs"]),
            cache=StateCache(args.cache),
            label=label,
            retry_failed=args.retry_failed,
            options=options,
        )
        where = store.display
        failed = [st for g in store.status(grid_id(s.run_id() for s in specs)) for st in g.failed]
    if results:
        _write_table(args, bench_cls, methods, seeds, results, out)
    written = f"; table written to {out / 'table.md'}" if results else ""
    print(f"\n{len(results)} of {len(specs)} runs in {where}{written}")
    if failed:
        first = failed[0]
        last = (first.error or "").strip().splitlines()[-1:] or ["no error text"]
        raise PacnetError(
            f"{len(failed)} of {len(specs)} runs failed (the first, {first.describe()}: "
            f"{last[0]}); pacnet status --db {where} lists them, --retry-failed runs them again"
        )


def _write_table(
    args: argparse.Namespace,
    bench_cls: Any,
    methods: Sequence[str],
    seeds: dict[int, list[int]],
    results: list[dict],
    out: Path,
) -> None:
    from pacnet.experiments.table import markdown, protocol
    from pacnet.io import write_bytes_atomic

    table = markdown(results, bench_cls.metric)
    seeds_text = ", ".join(f"N={n}: {len(s)}" for n, s in seeds.items())
    header = (
        f"# {args.benchmark}: {', '.join(methods)}\n\nSeeds per target size: {seeds_text}"
        f"{' (quick)' if args.quick else ''}.\n\n{protocol(results)}\n\n"
    )
    write_bytes_atomic(out / "table.md", lambda tmp: Path(tmp).write_text(header + table + "\n"))
    print(header + table)


def _cmd_tune(args: argparse.Namespace) -> None:
    from pacnet.benchmarks import get_benchmark
    from pacnet.experiments.store import DEFAULT_DB, hide_password
    from pacnet.experiments.tune import optuna_storage, tune
    from pacnet.training.cache import StateCache

    bench_cls = get_benchmark(args.benchmark)
    spec = _run_spec(args)
    if args.storage is not None:
        storage = optuna_storage(args.storage, any_rdb=True)
    else:
        storage = optuna_storage(args.db or DEFAULT_DB)
    study = tune(spec, args.trials, storage, args.study, args.folds, StateCache(args.cache))
    best = study.best_trial
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in best.params.items())
    where = hide_password(str(args.storage or args.db or DEFAULT_DB))
    print(f"study {study.study_name!r} in {where}: {len(study.trials)} trials")
    print(f"best validation {bench_cls.metric} {best.value:.4f} with {best.params}")
    print(
        f"run it: pacnet run {args.benchmark} --method {args.method} --seed {args.seed} "
        f"--target-size {args.target_size} {flags}"
    )


def _cmd_bench(args: argparse.Namespace) -> None:
    import json

    from pacnet.experiments.perf import MODELS, profile_steps, profile_summary, run_all, summary
    from pacnet.training.train import OPTIMIZERS

    check(
        args.optimizer in OPTIMIZERS,
        f"unknown optimizer {args.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}",
    )
    if args.profile is not None:
        check(
            args.profile in MODELS,
            f"unknown model {args.profile!r}; choose one of {', '.join(MODELS)}",
        )
        report = profile_steps(
            args.profile, steps=3 if args.quick else 10, optimizer=args.optimizer
        )
        print(json.dumps(report, indent=2) if args.json else profile_summary(report))
        return
    report = run_all(quick=args.quick, optimizer=args.optimizer)
    print(json.dumps(report, indent=2) if args.json else summary(report))


def _cmd_inspect(args: argparse.Namespace) -> None:
    import json

    from pacnet.benchmarks.mlp import describe_spec
    from pacnet.core.checkpoint import inspect
    from pacnet.experiments.saving import NETWORK_FILE, RESULT_FILE
    from pacnet.tabular import find_card, open_artifact

    path = args.checkpoint
    check(path.exists(), f"{path}: file not found")
    card = None
    if find_card(path) is not None:
        artifact = open_artifact(path)  # checks that the card describes the network
        path, card = artifact.network, artifact.card
    elif path.is_dir():
        check(
            (path / NETWORK_FILE).is_file(),
            f"{path}: no {NETWORK_FILE} (a folder from pacnet transfer, or from pacnet run --save)",
        )
        path = path / NETWORK_FILE
    info = inspect(path)
    run_file = path.parent / RESULT_FILE
    run = None
    if card is None and run_file.is_file():
        from pacnet.io import read_json

        found = read_json(run_file)
        if (found.get("network") or {}).get("sha256") == info["sha256"]:
            run = found
    if args.json:
        print(json.dumps({"checkpoint": info, "card": card, "run": run}, indent=2, default=str))
        return
    if info["kind"] == "network":
        print(
            f"{path}: checksum ok; one network, for task {', '.join(info['tasks'])}; "
            f"{info['values']:,} values"
        )
    else:
        print(f"{path}: checksum ok; tasks {', '.join(info['tasks'])}")
        print(
            f"essential {info['essential']:,} / redundant {info['redundant']:,} "
            f"(density {info['density']:.3f}); shared values {info['shared_values']:,}"
        )
        if info["coverage"]:
            print(info["coverage"])
        for task, n in info["per_task_values"].items():
            owned = info["owned"].get(task, 0)
            print(f"  {task}: {n:,} values of its own; owns {owned:,} masked weights")
    spec = (info.get("extra") or {}).get("model")
    if isinstance(spec, dict):
        print(f"model: {describe_spec(spec)}")
    if run is not None:
        print(
            f"saved by pacnet run: {run['method']} on {run['benchmark']} (seed {run['seed']}, "
            f"N={run['target_size']}), target {run['metric']} {run['target_test']:.4f} "
            f"({run_file})"
        )
    if card is not None:
        from pacnet.tabular.report import card_lines

        print("\n".join(card_lines(card)))


def _cmd_transfer(args: argparse.Namespace) -> None:
    from pacnet.config import make
    from pacnet.tabular.artifact import check_out, write_artifact
    from pacnet.tabular.pipeline import TransferOptions, progress_to_stderr, transfer
    from pacnet.tabular.problem import TableConfig
    from pacnet.tabular.report import REPORT_FILE

    check_out(args.out)
    given = _settings(args, TableConfig)
    options = TransferOptions(
        source=args.source,
        target=args.target,
        outputs=_column_list(args.outputs, "--outputs"),
        inputs=_column_list(args.inputs, "--inputs"),
        ignore=_column_list(args.ignore, "--ignore") if args.ignore.strip() else [],
        config=make(TableConfig, given),
        given=given,
        folds=args.folds,
        seed=args.seed,
        lam=args.lam,
        ratio=args.ratio,
        compare=[m.strip() for m in args.compare.split(",") if m.strip()],
        source_checkpoint=args.source_checkpoint,
        device=args.device,
        threads=args.threads,
        progress=progress_to_stderr,
    )
    outcome = transfer(options)
    card_path = write_artifact(outcome, args.out)
    card = outcome.card
    metric, hp = card["metric"], card["hyperparameters"]
    src, tgt = card["metrics"]["source"], card["metrics"]["target"]
    print(
        f"pacnet ratio {hp['ratio']}, lam {hp['lam']}: target CV {metric} {tgt['cv']:.4g} "
        f"± {tgt['cv_std']:.4g}; source {metric} {src['before'][metric]:.4g} -> "
        f"{src['after'][metric]:.4g}; {card['seconds']:.1f}s"
    )
    for row in card["methods"][1:]:
        print(f"  {row['method']}: target CV {metric} {row['cv']:.4g} ± {row['cv_std']:.4g}")
    print(f"wrote {args.out / card['network']['file']}, {card_path}, {args.out / REPORT_FILE}")


def _cmd_predict(args: argparse.Namespace) -> None:
    import numpy as np

    from pacnet.tabular import open_artifact, read_table, write_table

    artifact = open_artifact(args.artifact)
    check(
        args.task in artifact.tasks,
        f"--task {args.task}: {args.artifact} has the tasks {', '.join(artifact.tasks)}",
    )
    keep = _column_list(args.keep, "--keep") if args.keep.strip() else []
    clash = [n for n in keep if n in artifact.outputs]
    if clash:
        raise PacnetError(f"--keep {clash[0]!r}: the predictions take that name")
    table = read_table(args.input)
    table.require(keep, "--keep")
    predictions = artifact.predict_table(table, args.task)
    columns: dict = {name: table.values(name) for name in keep}
    columns.update(predictions)
    write_table(args.out, columns)
    where = "standard output" if args.out == "-" else args.out
    print(
        f"pacnet: {table.rows} rows predicted by the {args.task} model -> {where}",
        file=sys.stderr,
    )
    if all(name in table.columns for name in artifact.outputs):
        try:
            actual = table.numbers(artifact.outputs, "an output")
        except PacnetError:
            return
        for j, name in enumerate(artifact.outputs):
            error = predictions[name] - actual[:, j]
            rmse = float(np.sqrt(np.mean(error**2)))
            print(f"pacnet: {name} is in the input too: rmse {rmse:.4g}", file=sys.stderr)


def _cmd_report(args: argparse.Namespace) -> None:
    from pacnet.experiments.report import report
    from pacnet.experiments.store import DEFAULT_DB, Store
    from pacnet.io import read_json

    if args.results is not None:
        check(args.results.is_dir(), f"{args.results}: no such folder")
        rows = []
        for found in sorted(args.results.rglob("result.json")):
            row = read_json(found)
            if isinstance(row.get("network"), dict):  # where the saved network is now
                row["network"]["path"] = str(found.parent / row["network"]["file"])
            rows.append(row)
        if args.benchmark:
            rows = [r for r in rows if r["benchmark"] == args.benchmark]
    else:
        with Store(args.db or DEFAULT_DB, create=False) as store:
            rows = store.results(args.benchmark)
    check(rows, "no stored results to report")
    across = [a.strip() for a in (args.across or "").split(",") if a.strip()]
    for name in across:
        check(
            any(name in r["config"]["benchmark"] for r in rows),
            f"--across {name}: no stored run has a benchmark setting of that name",
        )
    path = report(rows, args.out, across)
    print(f"report of {len(rows)} runs written to {path}")


def _cmd_status(args: argparse.Namespace) -> None:
    import json

    from pacnet.experiments.status import status_text
    from pacnet.experiments.store import DEFAULT_DB, Store

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


def _cmd_list(args: argparse.Namespace) -> None:
    from pacnet.benchmarks import BENCHMARKS
    from pacnet.methods import METHODS

    table = METHODS if args.command == "methods" else BENCHMARKS
    width = max(len(n) for n in table)
    for name, cls in table.items():
        print(f"{name:<{width}}  {cls.summary}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = build_parser(argv).parse_args(argv)
        from pacnet.training.distributed import launched

        check(
            not launched() or args.command == "run",
            f"under torchrun only 'pacnet run' is distributed; run 'pacnet {args.command}' "
            "as one process",
        )
        if getattr(args, "threads", None) is not None:
            check(args.threads >= 1, f"--threads must be >= 1, got {args.threads}")
        {
            "run": _cmd_run,
            "reproduce": _cmd_reproduce,
            "report": _cmd_report,
            "tune": _cmd_tune,
            "status": _cmd_status,
            "inspect": _cmd_inspect,
            "transfer": _cmd_transfer,
            "predict": _cmd_predict,
            "bench": _cmd_bench,
            "methods": _cmd_list,
            "benchmarks": _cmd_list,
        }[args.command](args)
        return 0
    except PacnetError as exc:
        if debug:
            raise
        print(f"pacnet: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pacnet: interrupted; finished runs are saved", file=sys.stderr)
        return 130
    except OSError as exc:
        if debug:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"pacnet: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug or an unforeseen input: one line, the rest on --debug
        if debug:
            raise
        first = first_line(exc)
        print(
            f"pacnet: error: {type(exc).__name__}: {first} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
