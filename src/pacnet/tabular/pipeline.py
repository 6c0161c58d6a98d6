"""``pacnet transfer``: PAC-Net from a source table to a target table, with evidence.

:func:`transfer` reads both tables, standardises them with the source statistics, trains the
source MLP (or takes it from ``--source-checkpoint``), chooses PAC-Net's λ and pruning ratio
by K-fold cross-validation on the target rows (the machinery of ``pacnet run --select cv``:
sample i is held out in fold i mod K), trains the winner on every target row and scores
everything. Every method named in ``compare`` runs under the same cross-validation on the
same rows with its own candidate grid. Every check on the input runs before any training.

:func:`pacnet.tabular.artifact.write_artifact` then writes the folder.
"""

from __future__ import annotations

import datetime
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pacnet.benchmarks.mlp import MLP
from pacnet.config import make, to_dict
from pacnet.core.tasks import Tasks
from pacnet.errors import PacnetError, check
from pacnet.experiments.run.environment import using_threads, versions
from pacnet.experiments.run.select import Choice, choose_and_train
from pacnet.io import tensor_digest
from pacnet.methods import METHODS, Method, Transfer, TransferContext, get_method
from pacnet.methods.base import build, candidates
from pacnet.methods.engine import DEFAULT_ENGINE, check_engine, why_not
from pacnet.tabular.files import ArrayTable, Table, read_table
from pacnet.tabular.problem import Problem, TableBenchmark, TableConfig
from pacnet.tabular.source import (
    NETWORK_FILE,
    SOURCE_NETWORK_FILE,
    SourceCheckpoint,
    read_source_checkpoint,
)
from pacnet.tabular.trained import train_table_source
from pacnet.training.cache import MemoryCache
from pacnet.training.device import check_device
from pacnet.training.train import device_of, infer

CARD_FORMAT = "pacnet.tabular"
CARD_VERSION = 2
TEXT_INPUT = (
    "a text column: name it in --ignore, or encode it as numbers; pacnet run tables-custom "
    "one-hot encodes text columns"
)
"""What to do about an input column of words, added to its error."""
"""The newest card format this pacnet writes and reads: 2 for a folder that keeps two
networks (a baseline's, ``network.source_file``); a PAC-Net folder still writes 1."""


@dataclass
class TransferOptions:
    """What ``pacnet transfer`` is asked to do (see ``pacnet transfer --help``)."""

    source: Path | None
    """None: only the source model is given (``source_checkpoint`` with its statistics)."""
    target: Path
    outputs: list[str] | None = None
    inputs: list[str] | None = None
    ignore: list[str] = field(default_factory=list)
    config: TableConfig = field(default_factory=TableConfig)
    given: dict[str, Any] = field(default_factory=dict)
    """The model and budget settings set explicitly (a checkpoint's architecture wins over
    the defaults, but a different explicit one is refused)."""
    folds: int = 3
    seed: int = 0
    lam: float | None = None
    ratio: float | None = None
    compare: list[str] = field(default_factory=list)
    method: str = "pacnet"
    """The method whose network the folder keeps: ``pacnet``, a baseline (cross-validated
    too), or ``best`` (the lowest cross-validated error among all that ran)."""
    source_checkpoint: Path | None = None
    device: str = "cpu"
    threads: int | None = None
    cache: Path | None = None
    """Where a source model trained here is kept and found again for the same source rows,
    settings and seed (None: train it every time)."""
    engine: str = DEFAULT_ENGINE
    """``batched``: the methods that stack cross-validate and train together
    (:mod:`pacnet.experiments.run.batched`); ``sequential``: one training after another."""
    progress: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        self.target = Path(self.target)
        self.source = Path(self.source) if self.source is not None else None
        if self.source_checkpoint is not None:
            self.source_checkpoint = Path(self.source_checkpoint)


@dataclass
class Outcome:
    """A finished transfer: the card's contents and the PAC-Net network with both tasks."""

    card: dict[str, Any]
    model: nn.Module
    """The network, active as the target task; for PAC-Net ``tasks`` holds both tasks' own
    tensors (None for a method that keeps two networks)."""
    tasks: Tasks | None
    source_model: nn.Module
    """The source model after Allocate, as a standalone copy (what ``--task source``
    answers)."""
    problem: Problem


def parse_methods(text: str | Sequence[str]) -> list[str]:
    """``--compare``'s methods: comma-separated names, or ``all`` (every baseline whose
    dependencies are installed); PAC-Net itself always runs."""
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else list(text)
    names = [n for n in names if n]
    if names == ["all"]:
        return [m for m in METHODS if m != "pacnet" and (m != "lora" or _has_peft())]
    for name in names:
        get_method(name)
    check(
        "lora" not in names or _has_peft(),
        "--compare lora needs Hugging Face peft: pip install 'pacnet[hf]'",
    )
    return [n for n in dict.fromkeys(names) if n != "pacnet"]


def _has_peft() -> bool:
    try:
        import peft  # noqa: F401
    except ImportError:
        return False
    return True


def _names(values: Sequence[str], flag: str) -> list[str]:
    out = [v.strip() for v in values if v.strip()]
    seen = set()
    for name in out:
        check(name not in seen, f"{flag} names {name!r} twice")
        seen.add(name)
    return out


def _columns(
    options: TransferOptions, source: Table, target: Table, ckpt: SourceCheckpoint | None
) -> tuple[list[str], list[str]]:
    """The input and output columns: given, else the checkpoint's, else (inputs) every
    column both tables share that is neither an output nor ignored."""
    outputs = options.outputs or (ckpt.outputs if ckpt else None)
    check(outputs, "--outputs is required: the column(s) to predict, e.g. --outputs y")
    outputs = _names(outputs, "--outputs")
    inputs = options.inputs
    if ckpt is not None and ckpt.inputs is not None:
        if inputs is None:
            inputs = ckpt.inputs
        elif set(inputs) != set(ckpt.inputs):
            raise PacnetError(
                f"--source-checkpoint {ckpt.path} was trained on the inputs "
                f"{', '.join(ckpt.inputs)}; --inputs names {', '.join(inputs)}"
            )
        else:
            inputs = ckpt.inputs  # the model's order
        if options.outputs and ckpt.outputs and set(outputs) != set(ckpt.outputs):
            raise PacnetError(
                f"--source-checkpoint {ckpt.path} predicts {', '.join(ckpt.outputs)}; "
                f"--outputs names {', '.join(outputs)}"
            )
        if ckpt.outputs and set(outputs) == set(ckpt.outputs):
            outputs = ckpt.outputs
    source.require(outputs, "--outputs")
    target.require(outputs, "--outputs")
    for name in options.ignore:
        check(
            name in source.columns or name in target.columns,
            f"--ignore {name!r}: neither table has that column",
        )
    if inputs is None:
        shared = set(target.columns)
        skip = set(outputs) | set(options.ignore)
        inputs = [c for c in source.columns if c and c in shared and c not in skip]
        check(
            inputs,
            f"{source.path} and {target.path} share no column besides the outputs; name the "
            "inputs with --inputs",
        )
    inputs = _names(inputs, "--inputs")
    both = [n for n in inputs if n in outputs]
    if both:
        raise PacnetError(f"{both[0]!r} is named both as an input and as an output")
    ignored = [n for n in inputs if n in options.ignore]
    if ignored:
        raise PacnetError(f"{ignored[0]!r} is named both in --inputs and in --ignore")
    return inputs, outputs


def _say(options: TransferOptions, text: str) -> None:
    if options.progress is not None:
        options.progress(text)


def transfer(options: TransferOptions) -> Outcome:
    """Run the whole transfer of ``options`` (nothing is written; see
    :func:`pacnet.tabular.artifact.write_artifact`)."""
    check(options.folds >= 2, f"--folds must be >= 2, got {options.folds}")
    check_engine(options.engine)
    check(0 <= options.seed < 2**31, f"--seed must lie in [0, 2**31), got {options.seed}")
    check(
        options.threads is None or options.threads >= 1,
        f"--threads must be >= 1, got {options.threads}",
    )
    from pacnet.methods.pacnet_method import PacNetParams

    fixed = {k: getattr(options, k) for k in ("lam", "ratio") if getattr(options, k) is not None}
    make(PacNetParams, fixed)  # a bad λ or ratio fails before anything is read
    compare = parse_methods(options.compare)
    if options.method not in ("pacnet", "best"):
        get_method(options.method)  # an unknown name fails in one line
        compare = [*compare, *([options.method] if options.method not in compare else [])]
        parse_methods(compare)
    ckpt = None
    check(
        options.source is not None or options.source_checkpoint is not None,
        "--source is required unless --source-checkpoint gives the source model",
    )
    if options.source_checkpoint is not None:
        ckpt = read_source_checkpoint(options.source_checkpoint)
        ckpt.check_flags(options.given)
    target = read_table(options.target)
    if options.source is not None:
        source = read_table(options.source)
    else:
        source = generated_source(ckpt, target, options.seed)
    inputs, outputs = _columns(options, source, target, ckpt)
    source_rows = (
        source.numbers(inputs, "--inputs", TEXT_INPUT),
        source.numbers(outputs, "--outputs"),
    )
    target_rows = (
        target.numbers(inputs, "--inputs", TEXT_INPUT),
        target.numbers(outputs, "--outputs"),
    )
    check(
        target.rows >= options.folds,
        f"{target.path}: {target.rows} target row{'s' if target.rows != 1 else ''}, fewer than "
        f"the {options.folds} cross-validation folds; add rows"
        + (f" or pass --folds {target.rows}" if target.rows >= 2 else ""),
    )
    if ckpt is not None:
        ckpt.check_fits(inputs, outputs)
        spec = ckpt.spec
    else:
        cfg = options.config
        spec = MLP(len(inputs), cfg.hidden, len(outputs), cfg.activation).spec()
    problem = Problem.build(
        inputs, outputs, source_rows, target_rows, ckpt.scaling if ckpt else None
    )
    config = options.config
    if ckpt is not None:
        config = make(
            TableConfig,
            {**to_dict(config), "hidden": spec["hidden"], "activation": spec["activation"]},
        )
    bench = TableBenchmark(config, problem, spec, options.seed, trains_source=ckpt is None)
    device = check_device(options.device)
    with using_threads(options.threads or TableBenchmark.threads):
        return _run(options, bench, ckpt, compare, device, (source, target))


def _run(
    options: TransferOptions,
    bench: TableBenchmark,
    ckpt: SourceCheckpoint | None,
    compare: list[str],
    device: torch.device,
    tables: tuple[Table, Table],
) -> Outcome:
    start = time.perf_counter()
    problem, seed = bench.problem, options.seed
    src = bench.source()
    model, origin, source_steps = _source_model(options, bench, ckpt, device)
    state_key = tensor_digest(model.state_dict())[:16]
    target = bench.target(seed, len(problem.target_x))
    ctx = TransferContext(bench, model, src, target, seed, f"table-{state_key}", MemoryCache())
    rows: list[dict[str, Any]] = []
    done: dict[str, tuple[Method, Transfer, dict[str, Any]]] = {}
    chosen = _chosen(options, ["pacnet", *compare], ctx)
    for name in ["pacnet", *compare]:
        row, method, result, selection = _row(name, ctx, chosen[name])
        rows.append(row)
        done[name] = (method, result, selection)
    kept, why = _kept(options.method, rows)
    method, result, selection = done[kept]
    done_row = next(r for r in rows if r["method"] == kept)
    # what the folder's source task answers with: PAC-Net's source view, or, for a method
    # that changed a copy of the source (or left it alone), the source model as it was
    kept_source = result.source_model if result.tasks is not None else model
    network: dict[str, Any] = {"file": NETWORK_FILE, "tasks": ["source", "target"]}
    if result.tasks is not None:
        network["tasks"] = list(result.tasks.order)
    else:  # the method overwrote a copy of the source: both networks are kept
        network["source_file"] = SOURCE_NETWORK_FILE
    card = {
        "format": CARD_FORMAT,
        "format_version": 1 if result.tasks is not None else CARD_VERSION,
        "network": network,
        "inputs": problem.inputs,
        "outputs": problem.outputs,
        "scaling": {"inputs": problem.x_scale.to_dict(), "outputs": problem.y_scale.to_dict()},
        "model": dict(bench.spec),
        "method": kept,
        "method_chosen": why,
        "hyperparameters": to_dict(method.params),
        "chosen_by": (
            {
                k: ("fixed" if getattr(options, k) is not None else "cross-validation")
                for k in ("lam", "ratio")
            }
            if kept == "pacnet"
            else dict.fromkeys(selection["chosen"], "cross-validation")
        ),
        "metric": bench.metric,
        "selection": {
            "protocol": selection["protocol"],
            "folds": selection["folds"],
            "fold_of_row": "target row i (0-based, in file order) is held out in fold i mod K",
        },
        "methods": rows,
        "metrics": {
            "source": {
                "rows_held_out": len(bench.source_test_rows),
                "before": bench.metrics(model, src.test),
                "after": bench.metrics(kept_source, src.test),
            },
            "target": {
                "cv": done_row["cv"],
                "cv_std": done_row["cv_std"],
                "cv_folds": done_row["cv_folds"],
                "in_sample": bench.metrics(result.target_model, target.test),
                "source_model_as_is": bench.metrics(model, target.test),
            },
        },
        "parameters": result.details | {"trainable": result.trainable, "stored": result.stored},
        "data": _data_record(options, bench, tables),
        "training": {
            "settings": to_dict(bench.config),
            "seed": seed,
            "folds": options.folds,
            "device": str(device),
            "source": origin,
            "source_steps": source_steps,
        },
        "seconds": round(time.perf_counter() - start, 3),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": versions(),
    }
    return Outcome(card, result.target_model, result.tasks, kept_source, problem)


def _kept(asked: str, rows: list[dict[str, Any]]) -> tuple[str, str]:
    """The method whose network is kept, and why (for the card)."""
    if asked != "best":
        return asked, f"asked for (--method {asked})"
    best = min(rows, key=lambda r: r["cv"])
    others = ", ".join(f"{r['method']} {r['cv']:.4g}" for r in rows if r is not best)
    return best["method"], (
        f"lowest cross-validated error ({best['cv']:.4g}"
        + (f"; {others}" if others else "")
        + ") under --method best"
    )


GENERATED_ROWS = 2000
"""Rows drawn from a checkpoint's input statistics when no source table is given."""


def generated_source(ckpt: SourceCheckpoint | None, target: Table, seed: int) -> ArrayTable:
    """A stand-in source table for a source model without its data: ``GENERATED_ROWS``
    inputs drawn from the checkpoint's stored input statistics (independent normals with
    each column's mean and spread; constant columns at their value) and the target's
    inputs, each labelled with the source model's own prediction. Training on it is
    Allocate by distillation (MSE to the unpruned model's outputs), on those inputs."""
    assert ckpt is not None
    check(
        ckpt.scaling is not None and ckpt.inputs is not None and ckpt.outputs is not None,
        f"--source-checkpoint {ckpt.path} holds no input statistics and column names (a "
        "pacnet transfer folder does): pass --source TABLE",
    )
    x_scale, y_scale = ckpt.scaling
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(GENERATED_ROWS, len(ckpt.inputs), generator=gen, dtype=torch.float64)
    spread = torch.tensor([0.0 if n in x_scale.constant else 1.0 for n in ckpt.inputs])
    drawn = x_scale.invert(z * spread.double())  # the scaling is in the model's input order
    ours = target.numbers(ckpt.inputs, "--inputs", TEXT_INPUT)
    x = np.concatenate([drawn, ours])
    model = ckpt.model
    with torch.no_grad():
        y = y_scale.invert(infer(model, x_scale.apply(x).to(device_of(model))))
    origin = {
        "allocate_on": "generated+target-inputs",
        "generated_rows": GENERATED_ROWS,
        "target_input_rows": len(ours),
        "labels": "the source checkpoint's predictions (distillation, MSE)",
    }
    return ArrayTable(GENERATED, [*ckpt.inputs, *ckpt.outputs], np.concatenate([x, y], 1), origin)


GENERATED = "(generated from the source checkpoint)"


def _source_model(
    options: TransferOptions,
    bench: TableBenchmark,
    ckpt: SourceCheckpoint | None,
    device: torch.device,
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """The source model (trained here, or the checkpoint's), its origin, how its steps were set."""
    if ckpt is not None:
        _say(options, f"source model: {ckpt.describe()}")
        origin = {"checkpoint": str(ckpt.path), "sha256": ckpt.sha256}
        return ckpt.model.to(device), origin, bench.source_steps_record()
    return train_table_source(
        bench, options.seed, device, options.cache, lambda text: _say(options, text)
    )


def _candidates(
    options: TransferOptions, name: str
) -> tuple[type[Method], dict[str, Any], list[dict[str, Any]]]:
    """Method ``name``'s class, its fixed values (PAC-Net's λ and ratio where given) and the
    candidates cross-validation tries (its search grid over what is not fixed)."""
    method_cls = get_method(name)
    fixed = {}
    if name == "pacnet":
        fixed = {
            k: getattr(options, k) for k in ("lam", "ratio") if getattr(options, k) is not None
        }
    return method_cls, fixed, candidates(method_cls.Params, fixed)


Chosen = tuple[dict[str, Any], Method, Transfer, float]
"""A selection record, the chosen method, its transfer and the seconds it took."""


def _chosen(options: TransferOptions, names: list[str], ctx: TransferContext) -> dict[str, Chosen]:
    """Every method of ``names`` cross-validated on the target rows and its best candidate
    trained on all of them (:func:`~pacnet.experiments.run.select.choose_and_train`): on
    the batched engine all together, stacked (each its share of the time), on the
    sequential one method by method."""
    engine = options.engine if why_not(ctx) is None else "sequential"
    choices = []
    for name in names:
        method_cls, fixed, grid = _candidates(options, name)

        def make(chosen: dict[str, Any] | None, cls=method_cls, fixed=fixed) -> Method:
            return build(cls, fixed, chosen)

        choices.append(Choice(make, ctx, grid, options.folds, "cv"))
    groups = [list(range(len(names)))] if engine == "batched" else [[i] for i in range(len(names))]
    out: dict[str, Chosen] = {}
    for group in groups:
        picked = [names[i] for i in group]
        grids = {len(choices[i].grid) for i in group}
        each = f"{'/'.join(map(str, sorted(grids)))} candidate{'s' if grids != {1} else ''}"
        _say(
            options,
            f"cross-validating {', '.join(picked)}: {each} x {options.folds} folds on "
            f"{len(ctx.target.train)} target rows ({engine} engine)",
        )
        began = time.perf_counter()
        trained = choose_and_train([choices[i] for i in group], engine)
        share = (time.perf_counter() - began) / len(group)
        for name, (selection, method, result) in zip(picked, trained, strict=True):
            out[name] = (selection, method, result, share)
    return out


def _row(
    name: str, ctx: TransferContext, chosen: Chosen
) -> tuple[dict[str, Any], Method, Transfer, dict[str, Any]]:
    """The report's row of method ``name`` (its cross-validation and its run), with the
    method, its transfer and the selection record."""
    bench = ctx.benchmark
    selection, method, result, seconds = chosen
    best = next(c for c in selection["candidates"] if c["params"] == selection["chosen"])
    row = {
        "method": name,
        "summary": type(method).summary,
        "cv": best["val"],
        "cv_folds": best["folds_val"],
        "cv_std": statistics.pstdev(best["folds_val"]),
        "chosen": selection["chosen"],
        "params": to_dict(method.params),
        "candidates": selection["candidates"],
        "source_after": bench.score(result.source_model, ctx.source.test),
        "target_in_sample": bench.score(result.target_model, ctx.target.test),
        "trainable": result.trainable,
        "stored": result.stored,
        "seconds": round(seconds, 3),
    }
    return row, method, result, selection


def _data_record(
    options: TransferOptions, bench: TableBenchmark, tables: tuple[Table, Table]
) -> dict[str, Any]:
    """What the card says about the data: files, rows and how they were used."""
    problem = bench.problem
    used = set(problem.inputs) | set(problem.outputs)
    return {
        "source": {
            "file": str(options.source) if options.source is not None else None,
            **_allocate_inputs(tables[0]),
            "rows": len(problem.source_x),
            "rows_train": len(bench.source_train_rows),
            "rows_early_stopping": len(bench.source_val_rows),
            "rows_held_out": len(bench.source_test_rows),
        },
        "target": {"file": str(options.target), "rows": len(problem.target_x)},
        "columns_ignored": {
            "source": [c for c in tables[0].columns if c and c not in used],
            "target": [c for c in tables[1].columns if c and c not in used],
        },
    }


def _allocate_inputs(source: Table) -> dict[str, Any]:
    """What Allocate saw: the source table's labelled rows, or (no source table) inputs
    drawn from the checkpoint's statistics and the target's inputs, labelled by the source
    model (distillation)."""
    return source.origin if isinstance(source, ArrayTable) else {"allocate_on": "labelled"}


def progress_to_stderr(text: str) -> None:
    """Progress lines for the command line."""
    print(f"pacnet: {text}", file=sys.stderr, flush=True)
