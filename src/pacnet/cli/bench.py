"""``pacnet bench``: time and memory of masked against plain training, measured side by side
(:mod:`pacnet.experiments.bench.costs`), or where a step's time goes (``--profile``)."""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from pacnet.cli.common import Named, column_list, debug_flag, device_flag
from pacnet.errors import check
from pacnet.experiments.bench.costs import (
    CPU_MODELS,
    GPU_MODELS,
    MODELS,
    MODES,
    QUICK_CPU_MODELS,
    default_models,
    profile_steps,
    profile_summary,
    run_all,
    summary,
)
from pacnet.training.device import check_device
from pacnet.training.train import OPTIMIZERS


def add_parser(sub: Any, named: Named) -> None:
    """The ``bench`` command and its flags."""
    parser = sub.add_parser("bench", help="time and memory of masked vs plain training, and more")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: fewer repeats and steps; on the CPU the Friedman and wide MLPs only "
        "(not ResNet-18), no 100M-weight mask, fewer trajectories (40 s on 2 CPU cores at a "
        "load of 2; longer when they are busy)",
    )
    parser.add_argument("--json", action="store_true", help="print the full JSON report")
    parser.add_argument(
        "--profile",
        metavar="MODEL",
        help="instead: where a step's time goes (torch.profiler), plain/allocate/calibrate; "
        f"MODEL is one of {', '.join(MODELS)} (on the CPU)",
    )
    parser.add_argument(
        "--optimizer",
        default="adam",
        metavar="NAME",
        help="the optimizer of every mode: adam (pacnet's default), adamw or sgd (momentum 0.9)",
    )
    parser.add_argument(
        "--engines",
        action="store_true",
        help="instead: the batched engine against the sequential one on the same grid of "
        "cross-validated runs (Friedman, 5 methods, N=10,50,200, 2 seeds; --quick: N=10,50 "
        "on quick settings), side by side, and the ratio",
    )
    device_flag(parser)
    parser.add_argument(
        "--models",
        metavar="A,B,...",
        help=f"the models to time (default: {', '.join(CPU_MODELS)} on the CPU, "
        f"{', '.join(QUICK_CPU_MODELS)} with --quick; {', '.join(GPU_MODELS)} on a GPU); "
        f"any of {', '.join(MODELS)}",
    )
    parser.add_argument(
        "--modes",
        metavar="A,B,...",
        help=f"the modes side by side (default: all; plain is always timed): {', '.join(MODES)}",
    )
    debug_flag(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """Measure and print (a summary, or JSON)."""
    check(
        args.optimizer in OPTIMIZERS,
        f"unknown optimizer {args.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}",
    )
    models = column_list(args.models, "--models")
    for name in models or []:
        check(name in MODELS, f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    models = models or default_models(
        "cuda" if args.device.startswith("cuda") else "cpu", args.quick
    )
    bf16 = any(MODELS[m].amp is torch.bfloat16 for m in models)
    device = check_device(args.device, "bf16" if bf16 else "none")
    modes = column_list(args.modes, "--modes")
    for mode in modes or []:
        check(mode in MODES, f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    modes = ["plain", *(m for m in modes or MODES if m != "plain")]
    if args.engines:
        from pacnet.experiments.bench import engines as bench_engines

        specs = bench_engines.grid(
            sizes=(10, 50) if args.quick else (10, 50, 200), quick=args.quick,
            device=str(device),
        )  # fmt: skip
        report = bench_engines.compare(specs)
        print(json.dumps(report, indent=2) if args.json else bench_engines.summary(report))
        return
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
    report = run_all(args.quick, args.optimizer, str(device), models, modes)
    print(json.dumps(report, indent=2) if args.json else summary(report))
