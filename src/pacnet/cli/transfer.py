"""``pacnet transfer`` (PAC-Net on your own tables, with baselines under the same
cross-validation) and ``pacnet predict`` (a transfer folder's predictions for a table)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from pacnet.cli.common import (
    Named,
    cache_flag,
    column_list,
    debug_flag,
    device_flag,
    engine_flag,
    flags_named,
)
from pacnet.config import add_flags, given, make
from pacnet.errors import PacnetError, check
from pacnet.methods import METHODS
from pacnet.methods.pacnet_method import PacNetParams
from pacnet.tabular import open_artifact, pipeline, read_table, write_table
from pacnet.tabular.artifact import check_out, write_artifact
from pacnet.tabular.files import WRITES, check_table_out
from pacnet.tabular.problem import TableConfig
from pacnet.tabular.report import REPORT_FILE
from pacnet.training.cache import default_cache_dir
from pacnet.training.device import check_device

TRANSFER_HELP = (
    "PAC-Net on your own tables (CSV, Parquet): train on the source rows, transfer to the "
    "target rows; writes OUT/net.safetensors, card.json and report.md"
)


TRANSFER_USAGE = (
    "%(prog)s (--source FILE --outputs COLUMNS | --source-checkpoint PATH) --target FILE "
    "--out DIR [options]"
)
"""What the command needs, shown as it is: a source table and its outputs, or a checkpoint
that names them (argparse alone would show --outputs as optional)."""


def add_parser(sub: Any, named: Named) -> None:
    """The ``transfer`` and ``predict`` commands and their flags."""
    tr = sub.add_parser("transfer", help=TRANSFER_HELP, usage=TRANSFER_USAGE)
    tr.add_argument(
        "--source",
        type=Path,
        default=None,
        metavar="FILE",
        help="the source table (many rows); optional with a --source-checkpoint that holds its "
        "input statistics: Allocate then distils the checkpoint on generated inputs and the "
        "target's inputs",
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
        metavar="PATH",
        help="start from this source model instead of training one: a pacnet checkpoint with "
        "a model spec (a pacnet transfer folder, a pacnet run --save network of an MLP)",
    )
    tr.add_argument(
        "--lam", type=float, default=None, metavar="FLOAT", help="fix λ (default: chosen by CV)"
    )
    tr.add_argument(
        "--ratio",
        type=float,
        default=None,
        metavar="FLOAT",
        help="fix the pruning ratio (default: chosen by CV)",
    )
    tr.add_argument(
        "--compare",
        default="",
        metavar="METHODS",
        help=f"also cross-validate these methods on the same folds (comma-separated, or all): "
        f"{', '.join(m for m in METHODS if m != 'pacnet')}",
    )
    tr.add_argument(
        "--method",
        default="pacnet",
        metavar="NAME",
        help="the method whose network the folder keeps: pacnet (default), a baseline (it "
        "is cross-validated too), or best (the lowest cross-validated error of all that ran); "
        "a baseline's folder keeps the source network beside its own",
    )
    tr.add_argument(
        "--folds",
        type=int,
        default=3,
        metavar="K",
        help="cross-validation folds on the target rows (3)",
    )
    tr.add_argument(
        "--seed", type=int, default=0, metavar="N", help="seeds training and the source split"
    )
    tr.add_argument(
        "--threads", type=int, default=None, metavar="N", help="torch CPU threads (default 1)"
    )
    cache_flag(
        tr,
        "cache folder for the source model trained here, found again for the same source "
        "rows, settings and seed (default: $PACNET_CACHE or ~/.cache/pacnet; none: train it "
        "every time)",
    )
    engine_flag(tr, "batched: cross-validate and train the methods that stack as one stacked model")
    device_flag(tr)
    debug_flag(tr)
    add_flags(tr, TableConfig, "model and training budgets")
    tr.set_defaults(handler=run)
    _predict_parser(sub)


def _predict_parser(sub: Any) -> None:
    pr = sub.add_parser(
        "predict", help="predictions of a pacnet transfer folder for the rows of a table"
    )
    pr.add_argument("artifact", type=Path, metavar="DIR", help="the folder pacnet transfer wrote")
    pr.add_argument(
        "--input", type=Path, required=True, metavar="FILE", help="a CSV or Parquet table"
    )
    pr.add_argument(
        "--task",
        default="target",
        metavar="NAME",
        help="target (default) or source: which model answers",
    )
    pr.add_argument(
        "--out",
        default="-",
        metavar="FILE",
        help=f"the table to write, as its name says: {', '.join(WRITES)}; - for standard "
        "output as CSV (default)",
    )
    pr.add_argument(
        "--keep",
        default="",
        metavar="COLUMNS",
        help="columns of the input copied in front of the predictions, e.g. an id",
    )
    device_flag(pr)
    debug_flag(pr)
    pr.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """``transfer`` or ``predict``, as ``args.command`` says."""
    (run_transfer if args.command == "transfer" else run_predict)(args)


def run_transfer(args: argparse.Namespace) -> None:
    """Transfer from the source table to the target table and write the folder."""
    check_out(args.out)
    settings = given(args, TableConfig)
    fixed = {k: getattr(args, k) for k in ("lam", "ratio") if getattr(args, k) is not None}
    with flags_named(args, [TableConfig], fixed):
        config = make(TableConfig, settings)
        make(PacNetParams, fixed)
    options = pipeline.TransferOptions(
        source=args.source,
        target=args.target,
        outputs=column_list(args.outputs, "--outputs"),
        inputs=column_list(args.inputs, "--inputs"),
        ignore=column_list(args.ignore, "--ignore") if args.ignore.strip() else [],
        config=config,
        given=settings,
        folds=args.folds,
        seed=args.seed,
        lam=args.lam,
        ratio=args.ratio,
        compare=[m.strip() for m in args.compare.split(",") if m.strip()],
        method=args.method,
        source_checkpoint=args.source_checkpoint,
        device=args.device,
        threads=args.threads,
        cache=None if str(args.cache) == "none" else args.cache or default_cache_dir(),
        engine=args.engine,
        progress=pipeline.progress_to_stderr,
    )
    outcome = pipeline.transfer(options)
    card_path = write_artifact(outcome, args.out)
    card = outcome.card
    metric, hp = card["metric"], card["hyperparameters"]
    src, tgt = card["metrics"]["source"], card["metrics"]["target"]
    settings = ", ".join(f"{k} {v}" for k, v in hp.items() if k in ("ratio", "lam")) or ", ".join(
        f"{k} {v}" for k, v in hp.items()
    )
    print(
        f"{card['method']}{' ' + settings if settings else ''}: target CV {metric} "
        f"{tgt['cv']:.4g} ± {tgt['cv_std']:.4g}; source {metric} "
        f"{src['before'][metric]:.4g} -> {src['after'][metric]:.4g}; {card['seconds']:.1f}s"
    )
    for row in card["methods"]:
        if row["method"] != card["method"]:
            print(f"  {row['method']}: target CV {metric} {row['cv']:.4g} ± {row['cv_std']:.4g}")
    if card["method"] != "pacnet" or args.method == "best":
        print(f"  kept: {card['method']}, {card['method_chosen']}")
    print(f"wrote {args.out / card['network']['file']}, {card_path}, {args.out / REPORT_FILE}")


def run_predict(args: argparse.Namespace) -> None:
    """Write a transfer folder's predictions for the rows of a table."""
    check_table_out(args.out)
    artifact = open_artifact(args.artifact, check_device(args.device))
    check(
        args.task in artifact.tasks,
        f"--task {args.task}: {args.artifact} has the tasks {', '.join(artifact.tasks)}",
    )
    keep = column_list(args.keep, "--keep") if args.keep.strip() else []
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
