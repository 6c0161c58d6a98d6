"""``pacnet bench``: time and memory of masked against plain training, measured side by side
(:mod:`pacnet.experiments.perf`), or where a step's time goes (``--profile``)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pacnet.cli.common import Named, debug_flag
from pacnet.errors import check
from pacnet.experiments.perf import MODELS, profile_steps, profile_summary, run_all, summary
from pacnet.training.train import OPTIMIZERS


def add_parser(sub: Any, named: Named) -> None:
    """The ``bench`` command and its flags."""
    parser = sub.add_parser("bench", help="time and memory of masked vs plain training, and more")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, skip 100M weights")
    parser.add_argument("--json", action="store_true", help="print the full JSON report")
    parser.add_argument(
        "--profile",
        metavar="MODEL",
        help="instead: where a step's time goes (torch.profiler), plain/allocate/calibrate; "
        "MODEL is friedman_mlp, wide_mlp or resnet18",
    )
    parser.add_argument(
        "--optimizer",
        default="adam",
        help="the optimizer of every mode: adam (pacnet's default), adamw or sgd (momentum 0.9)",
    )
    debug_flag(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """Measure and print (a summary, or JSON)."""
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
