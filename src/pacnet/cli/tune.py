"""``pacnet tune BENCHMARK --method M [...]``: an Optuna search of a method's main strength
on validation data of one run's target samples."""

from __future__ import annotations

import argparse
from typing import Any

from pacnet.cli.common import (
    Named,
    db_flag,
    run_flags,
    run_target_flags,
    setting_flags,
    spec_from_args,
)
from pacnet.experiments.store.database import hide_password
from pacnet.experiments.store.store import DEFAULT_DB
from pacnet.experiments.sweep import tune as tuning
from pacnet.training.cache import StateCache


def add_parser(sub: Any, named: Named) -> None:
    """The ``tune`` command and its flags."""
    parser = sub.add_parser(
        "tune", help="Optuna search of a method's main strength (validation only)"
    )
    run_target_flags(parser)
    parser.add_argument(
        "--trials", type=int, default=20, metavar="N", help="trials to add to the study"
    )
    where = parser.add_mutually_exclusive_group()
    db_flag(where, "the database of the study: a path or URL as for reproduce")
    where.add_argument(
        "--storage", default=None, metavar="URL", help="an Optuna RDB URL, instead of --db"
    )
    parser.add_argument(
        "--study", default=None, metavar="NAME", help="study name (default from the run)"
    )
    run_flags(parser)
    setting_flags(parser, named)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    """Add ``--trials`` trials to the study and say what is best so far."""
    spec = spec_from_args(args)
    if args.storage is not None:
        storage = tuning.optuna_storage(args.storage, any_rdb=True)
    else:
        storage = tuning.optuna_storage(args.db or DEFAULT_DB)
    study = tuning.tune(spec, args.trials, storage, args.study, args.folds, StateCache(args.cache))
    best = study.best_trial
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in best.params.items())
    where = hide_password(str(args.storage or args.db or DEFAULT_DB))
    print(f"study {study.study_name!r} in {where}: {len(study.trials)} trials")
    print(f"best validation {spec.resolved.benchmark.metric} {best.value:.4f} with {best.params}")
    print(
        f"run it: pacnet run {args.benchmark} --method {args.method} --seed {args.seed} "
        f"--target-size {args.target_size} {flags}"
    )
