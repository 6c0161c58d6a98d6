"""The ``pacnet`` command line: one module per command, all logic in the package below.

    pacnet run BENCHMARK --method M --seed S --target-size N [--ratio R] [--quick] --out DIR
    pacnet reproduce BENCHMARK [--methods a,b] [--target-sizes 10,50] [--seeds 5] --out DIR
    pacnet status [--db PATH|URL]
    pacnet transfer --source sim.csv --target measured.csv --outputs y --out DIR
    pacnet predict DIR --task target --input new.csv --out pred.csv
    pacnet inspect DIR | FILE
    pacnet selftest [--device cuda] [--quick]
    pacnet methods | pacnet benchmarks
    pacnet --version

Each command module (:mod:`~pacnet.cli.run`, :mod:`~pacnet.cli.reproduce`,
:mod:`~pacnet.cli.tune`, :mod:`~pacnet.cli.report` with ``status``,
:mod:`~pacnet.cli.bench`, :mod:`~pacnet.cli.selftest`, :mod:`~pacnet.cli.inspect`,
:mod:`~pacnet.cli.transfer` with ``predict``, :mod:`~pacnet.cli.listing`) holds
``add_parser(sub, named)``, which adds its parser(s) and sets each one's handler, and
``run(args)``; :mod:`~pacnet.cli.common` holds the flags they share. Benchmark settings
and method hyperparameters are flags derived from their dataclasses: ``pacnet run friedman
--method pacnet --help`` lists them. Bad input ends with one line ``pacnet: error: ...``
and exit status 2; ``--debug`` shows the traceback. A command that fails leaves no empty
output folder it created (:mod:`~pacnet.cli.outputs`). Output into a pipe that closes early
(``pacnet inspect --json DIR | head``) ends quietly with exit status 141, as a process
killed by SIGPIPE does in a shell.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence

from pacnet.benchmarks import get_benchmark
from pacnet.cli import (
    bench,
    inspect,
    listing,
    report,
    reproduce,
    run,
    selftest,
    transfer,
    tune,
)
from pacnet.cli.common import Named, Parser
from pacnet.cli.outputs import created_by
from pacnet.errors import PacnetError, Terminated, check, first_line, pacnet_version
from pacnet.methods import get_method
from pacnet.training.distributed import launched

COMMANDS = (run, reproduce, tune, report, bench, selftest, inspect, transfer, listing)
"""The command modules, in the order ``pacnet --help`` lists their commands."""
NAMING = ("run", "reproduce", "tune")
"""The commands whose benchmark and method add flags of their own."""
BROKEN_PIPE = 141
"""The exit status when standard output is a pipe closed early: 128 + SIGPIPE, what a shell
reports for a process that SIGPIPE ended (``yes | head`` leaves ``yes`` with it)."""


def prescan(argv: Sequence[str]) -> Named:
    """The benchmark and method named on the command line, checked before the full parser
    exists: the parser without benchmark- and method-specific flags reads the known part of
    ``argv`` (the positional benchmark and ``--method``), wherever they stand."""
    wants_help = {"-h", "--help"} & set(argv)
    argv = [a for a in argv if a not in ("-h", "--help")]
    if len(argv) < 2 or argv[0] not in NAMING:
        return Named()
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
    return Named(known.benchmark, method)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The whole parser; ``argv`` (if given) decides which settings flags exist."""
    named = prescan(argv) if argv else Named()
    parser = Parser(prog="pacnet", description="PAC-Net transfer learning")
    parser.add_argument("--version", action="version", version=f"pacnet {pacnet_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub, named)
    return parser


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, ``timeout``, a batch scheduler ending the job) stops a command as
    Ctrl-C does: the runs in flight are given back, not left held until their leases end."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` names; 0 on success, 2 for bad input, 1 for a bug, 130 when
    interrupted, 141 when standard output is a pipe closed early."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = build_parser(argv).parse_args(argv)
        check(
            not launched() or args.command == "run",
            f"under torchrun only 'pacnet run' is distributed; run 'pacnet {args.command}' "
            "as one process",
        )
        if getattr(args, "threads", None) is not None:
            check(args.threads >= 1, f"--threads must be >= 1, got {args.threads}")
        with created_by(getattr(args, "out", None)), _terminate_as_interrupt():
            args.handler(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return 0
    except BrokenPipeError:
        quiet_stdout()
        return BROKEN_PIPE
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


def quiet_stdout() -> None:
    """Point standard output at the null device: its reader is gone, and the flush at exit
    would fail again and print a traceback."""
    with contextlib.suppress(OSError, ValueError):  # not a file descriptor: captured output
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
