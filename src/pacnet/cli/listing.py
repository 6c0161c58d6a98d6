"""``pacnet methods`` and ``pacnet benchmarks``: what there is, one line each."""

from __future__ import annotations

import argparse
from typing import Any

from pacnet.benchmarks import BENCHMARKS, FAMILIES
from pacnet.cli.common import Named
from pacnet.methods import METHODS


def add_parser(sub: Any, named: Named) -> None:
    """The ``methods`` and ``benchmarks`` commands."""
    sub.add_parser("methods", help="list the transfer methods").set_defaults(handler=run)
    sub.add_parser("benchmarks", help="list the benchmarks").set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """Print the methods or the benchmarks with their one-line summaries; benchmarks of a
    family (e.g. ``tables``) come after the others, under the family's heading."""
    if args.command == "methods":
        _print({name: cls.summary for name, cls in METHODS.items()})
        return
    alone = {n: c.summary for n, c in BENCHMARKS.items() if c.family is None}
    _print(alone)
    for family, about in FAMILIES.items():
        members = {n: c.summary for n, c in BENCHMARKS.items() if c.family == family}
        if members:
            print(f"\n{family}: {about}")
            _print(members, indent="  ")


def _print(table: dict[str, str], indent: str = "") -> None:
    width = max(len(n) for n in table)
    for name, summary in table.items():
        print(f"{indent}{name:<{width}}  {summary}")
