"""``pacnet run BENCHMARK --method M --seed S --target-size N [...] --out DIR``: one
transfer run; writes ``DIR/result.json`` (and with ``--save`` the trained network)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pacnet.cli.common import (
    Named,
    ints,
    run_flags,
    run_target_flags,
    setting_flags,
    spec_from_args,
)
from pacnet.experiments.run.runner import run_trained
from pacnet.experiments.run.saving import RESULT_FILE
from pacnet.training import distributed
from pacnet.training.cache import StateCache


def add_parser(sub: Any, named: Named) -> None:
    """The ``run`` command and its flags."""
    parser = sub.add_parser("run", help="one transfer run; writes OUT/result.json")
    run_target_flags(parser)
    parser.add_argument(
        "--out", type=Path, default=Path("runs/latest"), metavar="DIR", help="output folder"
    )
    parser.add_argument(
        "--targets",
        type=ints,
        default=(),
        metavar="A,B,...",
        help="pacnet only: serve the targets of these seeds (e.g. 1,2,3) in sequence from one "
        "network, each earlier task kept bit-exact; --seed still seeds training",
    )
    parser.add_argument(
        "--save",
        action="store_true",
        help="also write the trained network to OUT/net.safetensors (PAC-Net: every task in "
        "one file; other methods: their target network), recorded in result.json",
    )
    run_flags(parser)
    setting_flags(parser, named)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """Run one transfer (under torchrun: one rank of it) and say what it gave."""
    with distributed.session(args.device) as device:
        args.device = device
        spec = spec_from_args(args)
        result = run_trained(spec, args.out, StateCache(args.cache), save=args.save).result
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
