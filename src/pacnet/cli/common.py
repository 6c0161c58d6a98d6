"""What the commands share: the parser whose errors are one line, the flags of a run, the
results database flag, reading lists from flags, and errors that name the flags given."""

from __future__ import annotations

import argparse
import csv
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacnet.benchmarks import BENCHMARKS, get_benchmark
from pacnet.config import add_flags, flag_of, given, name_flags
from pacnet.errors import PacnetError, check
from pacnet.experiments.run.spec import RunSpec
from pacnet.methods import METHODS, get_method
from pacnet.methods.engine import DEFAULT_ENGINE, ENGINES


class Parser(argparse.ArgumentParser):
    r"""An argument parser whose errors are one-line :class:`PacnetError` lines."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise PacnetError(f"{message} (see {self.prog} --help)")


def ints(text: str) -> list[int]:
    """Comma-separated integers, each once, in order."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return list(dict.fromkeys(values))


def seed_list(text: str) -> list[int]:
    """``5`` means seeds 0..4; ``0,3,7`` means those seeds (duplicates dropped)."""
    values = ints(text)
    if len(values) == 1 and "," not in text:
        if values[0] < 1:
            raise argparse.ArgumentTypeError(f"the number of seeds must be >= 1, got {values[0]}")
        return list(range(values[0]))
    if min(values) < 0:
        raise argparse.ArgumentTypeError(f"seeds must be >= 0, got {min(values)}")
    return values


def engine_flag(parser: argparse.ArgumentParser, batched: str) -> None:
    """``--engine batched|sequential``; ``batched`` says what the command stacks."""
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default=DEFAULT_ENGINE,
        help=f"{batched}; sequential: one training after another (the same results up to "
        "float rounding)",
    )


def run_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of every command that runs transfers: budgets, cache, threads, selection,
    source compute, device, precision, and --debug."""
    parser.add_argument("--quick", action="store_true", help="shrink budgets for a smoke run")
    cache_flag(parser)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
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
        "--folds",
        type=int,
        default=3,
        metavar="K",
        help="folds for --select (holdout holds out 1/K)",
    )
    parser.add_argument(
        "--source-compute",
        default=None,
        metavar="standard|equal",
        help="equal: the baselines start from a source model trained as many more steps as "
        "PAC-Net's Allocate (equal source compute); reproduce takes standard,equal for both",
    )
    engine_flag(
        parser,
        "batched: train the MLP benchmarks' runs stacked as one model (cross-validation "
        "candidates x folds, and groups of runs in a sweep)",
    )
    device_flag(parser)
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
    debug_flag(parser)


def cache_flag(
    parser: argparse.ArgumentParser,
    text: str = "cache folder for source models (default: $PACNET_CACHE or ~/.cache/pacnet)",
) -> None:
    """``--cache DIR``: where trained source models are kept for the next run."""
    parser.add_argument("--cache", type=Path, default=None, metavar="DIR", help=text)


def db_flag(parser: Any, text: str = "the results database") -> None:
    """``--db PATH|URL``: a SQLite file or a PostgreSQL URL."""
    parser.add_argument(
        "--db",
        default=None,
        metavar="PATH|URL",
        help=f"{text}: a SQLite file (default runs/pacnet.sqlite), sqlite:///FILE or "
        "postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE (pacnet[postgres])",
    )


def device_flag(parser: argparse.ArgumentParser) -> None:
    """``--device``: where the model runs."""
    parser.add_argument(
        "--device", default="cpu", metavar="DEVICE", help="cpu (default), cuda, cuda:N"
    )


def debug_flag(parser: argparse.ArgumentParser) -> None:
    """``--debug``: tracebacks instead of one-line errors."""
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def column_list(text: str | None, flag: str) -> list[str] | None:
    """A comma-separated list of column names, read as one CSV row (quote a name that
    holds a comma); None when not given."""
    if text is None:
        return None
    try:
        names = next(csv.reader([text], skipinitialspace=True), [])
    except csv.Error as exc:
        raise PacnetError(f"{flag}: cannot read {text!r} as names ({exc})") from None
    names = [n.strip() for n in names if n.strip()]
    check(names, f"{flag} names no column")
    return names


@dataclass(frozen=True)
class Named:
    """The benchmark and method a command line names, read before the full parser exists
    (their settings and hyperparameters become flags of ``run``, ``reproduce`` and
    ``tune``)."""

    benchmark: str | None = None
    method: str | None = None


def setting_flags(parser: argparse.ArgumentParser, named: Named, method: bool = True) -> None:
    """The flags of the named benchmark's settings and (with ``method``) of the named
    method's hyperparameters."""
    if named.benchmark:
        cls = get_benchmark(named.benchmark).Config
        add_flags(parser, cls, f"{named.benchmark} settings")
    if method and named.method:
        add_flags(parser, get_method(named.method).Params, f"{named.method} hyperparameters")


@contextmanager
def flags_named(
    args: argparse.Namespace, classes: Iterable[type], plain: Iterable[str] = ()
) -> Iterator[None]:
    """Errors raised inside name the flags given, not the fields they set: the settings of
    ``classes`` given as flags and the ``plain`` flags (their dest names) given, e.g.
    ``--source-steps must be >= 0, got -5`` for ``source_steps must be >= 0, got -5``."""
    flags = {name: flag_of(cls, name) for cls in classes for name in given(args, cls)}
    flags.update({name: "--" + name.replace("_", "-") for name in plain})
    try:
        yield
    except PacnetError as exc:
        raise PacnetError(name_flags(str(exc), flags)) from exc


def spec_from_args(args: argparse.Namespace) -> RunSpec:
    """The run that ``run`` and ``tune`` flags describe (errors name the flags)."""
    bench_cls, method_cls = get_benchmark(args.benchmark), get_method(args.method)
    plain = [n for n in ("folds", "source_compute") if getattr(args, n) is not None]
    with flags_named(args, (bench_cls.Config, method_cls.Params), plain):
        return _spec(args, bench_cls, method_cls)


def _spec(args: argparse.Namespace, bench_cls: Any, method_cls: Any) -> RunSpec:
    return RunSpec(
        args.benchmark,
        args.method,
        args.seed,
        args.target_size,
        args.quick,
        given(args, bench_cls.Config),
        given(args, method_cls.Params),
        select=args.select or "none",
        folds=args.folds,
        source_compute=args.source_compute or "standard",
        threads=args.threads,
        device=args.device,
        amp=args.amp,
        deterministic=args.deterministic,
        targets=tuple(getattr(args, "targets", ())),
        engine=getattr(args, "engine", DEFAULT_ENGINE),
    )


def run_target_flags(parser: argparse.ArgumentParser) -> None:
    """The benchmark, ``--method``, ``--seed`` and ``--target-size`` of one run (``run``
    and ``tune``)."""
    parser.add_argument("benchmark", metavar="BENCHMARK", help=f"one of: {', '.join(BENCHMARKS)}")
    parser.add_argument(
        "--method", required=True, metavar="NAME", help=f"one of: {', '.join(METHODS)}"
    )
    parser.add_argument(
        "--seed", type=int, default=0, metavar="N", help="fixes the target task and its samples"
    )
    parser.add_argument(
        "--target-size", type=int, default=50, metavar="N", help="labelled target samples"
    )
