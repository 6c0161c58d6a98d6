"""The source model ``pacnet transfer`` trains from a source table, kept in the cache.

:func:`train_table_source` trains it (the steps chosen by cross-validation on a small
table, else by early stopping) or, with a cache folder, finds it there again for the same
source rows, settings, seed and device, with the record of how it was trained: a second
transfer from the same table (other methods to compare, another target) skips the
training.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pacnet.config import config_hash, stored_as, to_dict
from pacnet.experiments.run.source import train_source
from pacnet.io import tensor_digest
from pacnet.tabular.problem import TableBenchmark, TableConfig
from pacnet.training.cache import StateCache


def train_table_source(
    bench: TableBenchmark,
    seed: int,
    device: torch.device,
    cache: Path | None,
    say: Callable[[str], None],
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """The source model trained on ``bench``'s source rows (or found in ``cache``), where it
    came from, and how its steps were set (a cross-validated budget is set on ``bench``
    for Allocate, also when found in the cache); ``say`` reports progress."""
    folds, rows = bench.source_cv_folds, len(bench.source().train)
    model = bench.make_model(seed).to(device)

    def build() -> dict[str, Tensor]:
        chosen = bench.source_steps_record()
        if folds:  # too few rows to stop on: the steps by cross-validation
            say(
                f"choosing the source steps by {folds}-fold cross-validation on {rows} rows",
            )
            chosen = bench.choose_source_steps(model, seed)
        steps = f"{'' if folds else 'up to '}{bench.source_fit().steps} steps"
        say(f"training the source model ({steps} on {rows} rows)")
        fitted = train_source(bench, model, seed=seed)
        record = {"trained": fitted.as_dict(), "chosen": chosen}
        return {**model.state_dict(), _RECORD: _json_tensor(record)}

    if cache is None:
        state = build()
    else:
        key = _source_key(bench, seed, device)
        found = StateCache(cache).contains(key)
        state = dict(StateCache(cache)(key, build))
        if found:
            say(f"source model: trained before, from the cache {cache}")
    record = json.loads(bytes(state.pop(_RECORD).tolist()).decode())
    model.load_state_dict(state)
    chosen = record["chosen"]
    if chosen.get("chosen_by") == "cross-validation":
        bench.source_steps = chosen["steps"]  # Allocate takes as many (also on a cache hit)
    origin = {"trained": record["trained"]}
    if cache is not None:
        origin["cache"] = config_hash(key)
    return model, origin, chosen


SOURCE_SETTINGS = (
    "source_steps", "source_lr", "source_batch", "eval_every", "hidden", "activation",
    "source_test_fraction", "source_patience", "source_val_fraction",
)  # fmt: skip
"""The settings a source model trained here depends on (the target's do not count)."""
_RECORD = "pacnet.source_record"
"""The cached source state's entry that holds how it was trained (UTF-8 JSON bytes)."""


def _stored_settings() -> set[str]:
    """:data:`SOURCE_SETTINGS` as :func:`~pacnet.config.to_dict` names them (the key's names)."""
    stored = stored_as(TableConfig)
    return {stored.get(name, name) for name in SOURCE_SETTINGS}


def _json_tensor(record: Mapping[str, Any]) -> Tensor:
    return torch.tensor(list(json.dumps(record).encode()), dtype=torch.uint8)


def _source_key(bench: TableBenchmark, seed: int, device: torch.device) -> dict[str, Any]:
    """What determines the source model trained here: the source rows (standardised, as
    trained on, split by ``seed``), the settings, the model, the seed and the device."""
    src = bench.source()
    parts = {"train_x": src.train.x, "train_y": src.train.y}
    if src.val is not None:
        parts.update(val_x=src.val.x, val_y=src.val.y)
    return {
        "step": "transfer source",
        "rows": tensor_digest(parts),
        "config": {k: v for k, v in to_dict(bench.config).items() if k in _stored_settings()},
        "model": bench.spec,
        "seed": seed,
        "device": device.type,
    }
