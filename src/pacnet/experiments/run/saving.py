"""What a run leaves in its folder: ``result.json`` and, when asked, the trained network;
and reading such folders back."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from torch import nn

from pacnet.benchmarks.mlp import spec_of
from pacnet.core.checkpoint import FORMAT as CHECKPOINT_FORMAT
from pacnet.core.checkpoint import NETWORK_FORMAT, save, save_network
from pacnet.core.roles import unwrap
from pacnet.core.tasks import Tasks
from pacnet.errors import check
from pacnet.io import read_json

RESULT_FILE = "result.json"
NETWORK_FILE = "net.safetensors"


def save_trained(
    path: str | Path, extra: dict[str, Any], model: nn.Module, tasks: Tasks | None
) -> dict[str, Any]:
    """Write a run's network to ``path`` with ``extra`` (what the run was) in its metadata;
    returns what ``result.json`` records of it: PAC-Net's network with all its tasks (the
    source and each target) as :func:`pacnet.save` writes it, every other method's target
    network as a one-network file (:func:`pacnet.save_network`; LoRA's with its adapters
    merged into the weights)."""
    extra = dict(extra)
    if tasks is not None:
        if (model_spec := spec_of(unwrap(model))) is not None:
            extra["model"] = model_spec
        digest = save(path, model, tasks, extra)
        names, fmt = list(tasks.order), CHECKPOINT_FORMAT
    else:
        plain = merged(model)
        if (model_spec := spec_of(plain)) is not None:
            extra["model"] = model_spec
        digest = save_network(path, plain, "target", extra)
        names, fmt = ["target"], NETWORK_FORMAT
    return {"file": Path(path).name, "format": fmt, "tasks": names, "sha256": digest}


def merged(model: nn.Module) -> nn.Module:
    """``model`` as one plain network: a peft model (LoRA) as a copy with its adapters
    merged into the weights (equal up to rounding); any other model as it is."""
    if hasattr(model, "merge_and_unload"):
        return copy.deepcopy(model).merge_and_unload()
    return model


def read_results(folder: Path, benchmark: str | None = None) -> list[dict[str, Any]]:
    """The ``result.json`` records under ``folder`` (searched recursively, in path order),
    optionally of one benchmark; a saved network's ``path`` says where it is now."""
    check(folder.is_dir(), f"{folder}: no such folder")
    rows = []
    for found in sorted(folder.rglob(RESULT_FILE)):
        row = read_json(found)
        if isinstance(row.get("network"), dict):  # where the saved network is now
            row["network"]["path"] = str(found.parent / row["network"]["file"])
        rows.append(row)
    if benchmark:
        rows = [r for r in rows if r["benchmark"] == benchmark]
    return rows
