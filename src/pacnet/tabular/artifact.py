"""The folder ``pacnet transfer`` writes, and reading it back for predictions.

:func:`write_artifact` writes ``net.safetensors`` (both tasks, as :func:`pacnet.save`
writes them), ``report.md`` with ``report.png``, and ``card.json``, all at once or not at all.

:func:`open_artifact` checks that the card is one pacnet understands and that it describes
the ``net.safetensors`` beside it (the card records the network's checksum), then
:meth:`Artifact.predict` answers in the original units. Inputs are matched by name, so a
table's columns may come in any order and extra columns are ignored.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pacnet.benchmarks.mlp import MLP
from pacnet.core.checkpoint import inspect, load, save, save_network
from pacnet.errors import PacnetError, check
from pacnet.experiments.run.saving import NETWORK_FILE
from pacnet.io import read_json, umask, write_json
from pacnet.tabular.files import Table
from pacnet.tabular.pipeline import CARD_FORMAT, CARD_VERSION, Outcome
from pacnet.tabular.problem import Scaling, predict
from pacnet.tabular.source import SOURCE_NETWORK_FILE

CARD_FILE = "card.json"
PREDICT_CHUNK = 1 << 16
"""Rows per forward pass in :meth:`Artifact.predict` (more rows go in chunks of this)."""


def check_out(out: str | Path) -> Path:
    """Fail early (before any training) if ``out`` cannot become the artifact folder."""
    out = Path(out)
    check(not out.exists() or out.is_dir(), f"--out {out}: exists and is not a folder")
    parent = out
    while not parent.exists():
        parent = parent.parent
    check(
        parent.is_dir() and os.access(parent, os.W_OK | os.X_OK),
        f"--out {out}: cannot write in {parent}",
    )
    return out


def write_artifact(outcome: Outcome, out: str | Path) -> Path:
    """Write the artifact folder ``out``: ``net.safetensors`` (both tasks), the report
    (``report.md``, ``report.png``) and ``card.json``; returns the card's path.

    Every file is first written to a staging folder beside ``out``; only when all of them
    exist does a new ``out`` appear (one rename), or do they replace the files of an
    existing ``out`` (``card.json`` last). A failure leaves ``out`` as it was. The card
    records the network's checksum, so a folder whose files come from different runs is
    refused on reading."""
    from pacnet.tabular.report import PLOT_FILE, REPORT_FILE, write_report

    out = check_out(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise PacnetError(f"cannot create the output folder {out}: {exc.strerror}") from None
    try:
        card = outcome.card
        extra = {
            "model": card["model"],
            "inputs": card["inputs"],
            "outputs": card["outputs"],
            "scaling": card["scaling"],
            "method": card["method"],
        }
        files = [NETWORK_FILE]
        if outcome.tasks is not None:  # PAC-Net: both tasks in one network
            digest = save(staging / NETWORK_FILE, outcome.model, outcome.tasks, extra)
        else:  # two networks: the target's, and the source's beside it
            digest = save_network(staging / NETWORK_FILE, outcome.model, "target", extra)
            card["network"]["source_sha256"] = save_network(
                staging / SOURCE_NETWORK_FILE, outcome.source_model, "source", extra
            )
            files.append(SOURCE_NETWORK_FILE)
        card["network"]["sha256"] = digest
        write_report(card, staging)
        write_json(staging / CARD_FILE, card)
        os.chmod(staging, 0o777 & ~umask())
        if not out.exists():
            os.rename(staging, out)
        else:
            for name in (*files, PLOT_FILE, REPORT_FILE, CARD_FILE):
                os.replace(staging / name, out / name)
            if SOURCE_NETWORK_FILE not in files:  # from an earlier transfer into this folder
                (out / SOURCE_NETWORK_FILE).unlink(missing_ok=True)
    except OSError as exc:
        raise PacnetError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out / CARD_FILE


class Artifact:
    """A ``pacnet transfer`` folder: its card and, on demand, each task's model."""

    def __init__(self, folder: Path, card: dict[str, Any], device: torch.device | None = None):
        self.folder = folder
        self.card = card
        self.device = device or torch.device("cpu")
        """Where the models run (the predictions come back on the CPU)."""
        try:
            self.inputs: list[str] = list(card["inputs"])
            self.outputs: list[str] = list(card["outputs"])
            self.x_scale = Scaling.from_dict(card["scaling"]["inputs"])
            self.y_scale = Scaling.from_dict(card["scaling"]["outputs"])
            self.spec: dict[str, Any] = dict(card["model"])
            self.tasks: list[str] = list(card["network"]["tasks"])
        except (KeyError, TypeError, PacnetError):
            raise PacnetError(f"{folder / CARD_FILE}: malformed card") from None
        self._models: dict[str, nn.Module] = {}

    @property
    def network(self) -> Path:
        """The network file the card describes."""
        return self.folder / self.card["network"]["file"]

    def model(self, task: str = "target") -> nn.Module:
        """The model of ``task`` (``source`` or ``target``), loaded once, in eval mode."""
        check(
            task in self.tasks,
            f"{self.folder}: no task {task!r} (it has {', '.join(self.tasks)})",
        )
        if task not in self._models:
            source_file = self.card["network"].get("source_file")
            if task == "source" and source_file:  # a method that kept two networks
                model = load(self.folder / source_file, MLP.from_spec(self.spec), task="source")
            else:
                model = load(self.network, MLP.from_spec(self.spec), task=task)
            self._models[task] = model.to(self.device).eval()
        return self._models[task]

    def predict(self, x: np.ndarray, task: str = "target") -> np.ndarray:
        """Outputs (rows × outputs, original units, float64) for raw inputs ``x`` (rows ×
        inputs, in the card's input order)."""
        x = np.asarray(x, dtype=np.float64)
        check(
            x.ndim == 2 and x.shape[1] == len(self.inputs),
            f"expected inputs of shape (rows, {len(self.inputs)}), got {tuple(x.shape)}",
        )
        check(bool(np.isfinite(x).all()), "the inputs hold NaN or infinite values")
        model, z = self.model(task), self.x_scale.apply(x)
        if len(z) <= PREDICT_CHUNK:  # one forward pass, as the model answers the same rows
            return self.y_scale.invert(predict(model, z))
        parts = [predict(model, z[i : i + PREDICT_CHUNK]) for i in range(0, len(z), PREDICT_CHUNK)]
        return self.y_scale.invert(torch.cat(parts))

    def predict_columns(
        self, columns: Mapping[str, Any], task: str = "target"
    ) -> dict[str, np.ndarray]:
        """Predictions by output name for inputs given by name (extra names are ignored)."""
        missing = [n for n in self.inputs if n not in columns]
        if missing:
            raise PacnetError(f"no input {missing[0]!r} given (needs {', '.join(self.inputs)})")
        x = np.column_stack([np.asarray(columns[n], dtype=np.float64) for n in self.inputs])
        y = self.predict(x, task)
        return {name: y[:, j] for j, name in enumerate(self.outputs)}

    def predict_table(self, table: Table, task: str = "target") -> dict[str, np.ndarray]:
        """Predictions by output name for a table's rows, inputs matched by name."""
        x = table.numbers(self.inputs, "an input of the network")
        y = self.predict(x, task)
        return {name: y[:, j] for j, name in enumerate(self.outputs)}


def find_card(path: str | Path) -> Path | None:
    """The card of ``path``: a transfer folder, its ``card.json`` or its network file."""
    path = Path(path)
    if path.is_dir():
        return path / CARD_FILE if (path / CARD_FILE).is_file() else None
    if path.name == CARD_FILE:
        return path if path.is_file() else None
    beside = path.parent / CARD_FILE
    return beside if path.is_file() and beside.is_file() else None


def open_artifact(path: str | Path, device: str | torch.device = "cpu") -> Artifact:
    """The transfer folder ``path`` (or its ``card.json`` or ``net.safetensors``), after
    checking that its card describes its network; its models answer on ``device``."""
    path = Path(path)
    check(path.exists(), f"{path}: no such folder or file")
    card_path = find_card(path)
    check(
        card_path is not None,
        f"{path}: no {CARD_FILE} (not a folder written by pacnet transfer)",
    )
    assert card_path is not None
    card = read_json(card_path)
    check(
        card.get("format") == CARD_FORMAT,
        f"{card_path}: not a pacnet transfer card (format {card.get('format')!r})",
    )
    version = card.get("format_version")
    check(
        isinstance(version, int) and version <= CARD_VERSION,
        f"{card_path}: card format version {version} is newer than this pacnet reads "
        f"({CARD_VERSION}); upgrade pacnet",
    )
    artifact = Artifact(card_path.parent, card, torch.device(device))
    network = artifact.network
    check(network.is_file(), f"{card_path.parent}: {NETWORK_FILE} is missing")
    pairs = [(network, card["network"].get("sha256"))]
    source_file = card["network"].get("source_file")
    if source_file:
        pairs.append((card_path.parent / source_file, card["network"].get("source_sha256")))
    for path, digest in pairs:
        check(path.is_file(), f"{card_path.parent}: {path.name} is missing")
        info = inspect(path)  # verifies the checksum
        check(
            info["sha256"] == digest,
            f"{card_path.parent}: {CARD_FILE} does not describe {path.name} (their checksums "
            "differ: the files come from different runs); run pacnet transfer again",
        )
    return artifact
