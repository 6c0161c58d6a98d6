"""``pacnet methods`` and ``pacnet benchmarks``: what there is, one line each."""

from __future__ import annotations

import argparse
from typing import Any

from pacnet.benchmarks import BENCHMARKS
from pacnet.cli.common import Named
from pacnet.methods import METHODS


def add_parser(sub: Any, named: Named) -> None:
    """The ``methods`` and ``benchmarks`` commands."""
    sub.add_parser("methods", help="list the transfer methods").set_defaults(handler=run)
    sub.add_parser("benchmarks", help="list the benchmarks").set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """Print the methods or the benchmarks with their one-line summaries."""
    table = METHODS if args.command == "methods" else BENCHMARKS
    width = max(len(n) for n in table)
    for name, cls in table.items():
        print(f"{name:<{width}}  {cls.summary}")
