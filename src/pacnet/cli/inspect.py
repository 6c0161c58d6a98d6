"""``pacnet inspect PATH``: what a pacnet checkpoint holds (checksum verified), with the
card of a ``pacnet transfer`` folder or the run of a ``pacnet run --save`` folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pacnet.benchmarks.mlp import describe_spec
from pacnet.cli.common import Named, debug_flag
from pacnet.core.checkpoint import inspect
from pacnet.errors import check
from pacnet.experiments.run.saving import NETWORK_FILE, RESULT_FILE
from pacnet.io import read_json
from pacnet.tabular import find_card, open_artifact
from pacnet.tabular.report import card_lines

INSPECT_HELP = (
    "what a pacnet checkpoint holds (checksum verified), with the card of a pacnet transfer folder"
)


def add_parser(sub: Any, named: Named) -> None:
    """The ``inspect`` command and its flags."""
    parser = sub.add_parser("inspect", help=INSPECT_HELP)
    parser.add_argument(
        "checkpoint",
        type=Path,
        metavar="PATH",
        help="a checkpoint, or a folder holding net.safetensors (pacnet transfer, run --save)",
    )
    parser.add_argument("--json", action="store_true", help="print everything as JSON")
    debug_flag(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """Print what the checkpoint holds (or everything as JSON)."""
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
    saved_by = None
    if card is None and run_file.is_file():
        found = read_json(run_file)
        if (found.get("network") or {}).get("sha256") == info["sha256"]:
            saved_by = found
    if args.json:
        print(
            json.dumps({"checkpoint": info, "card": card, "run": saved_by}, indent=2, default=str)
        )
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
    if saved_by is not None:
        r = saved_by
        print(
            f"saved by pacnet run: {r['method']} on {r['benchmark']} (seed {r['seed']}, "
            f"N={r['target_size']}), target {r['metric']} {r['target_test']:.4f} ({run_file})"
        )
    if card is not None:
        print("\n".join(card_lines(card)))
