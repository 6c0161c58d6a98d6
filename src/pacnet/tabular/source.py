"""A source model given as a checkpoint (``pacnet transfer --source-checkpoint``).

Any network pacnet saved for an :class:`~pacnet.benchmarks.mlp.MLP` carries its model spec in the
checkpoint's ``extra``, so nothing else is needed to rebuild it: the ``net.safetensors`` of
a ``pacnet transfer`` folder (its source task: the source model after Allocate), a
``pacnet run --save`` network of an MLP benchmark, or a file written with
``pacnet.save_network(path, mlp, extra={"model": mlp.spec()})``. A transfer folder's
checkpoint also names its inputs and outputs and holds its standardisation statistics;
those are then used as they are (the model was trained on that scale).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pacnet.benchmarks.mlp import MLP, describe_spec
from pacnet.core.checkpoint import inspect, load
from pacnet.errors import PacnetError, check
from pacnet.experiments.run.saving import NETWORK_FILE
from pacnet.tabular.problem import Scaling

SOURCE_NETWORK_FILE = "source.safetensors"
"""The source network beside the target's, for a method that overwrote a copy of it."""


@dataclass
class SourceCheckpoint:
    """A source model read from a checkpoint, with what the checkpoint says about it."""

    path: Path
    model: MLP
    spec: dict[str, Any]
    inputs: list[str] | None
    outputs: list[str] | None
    scaling: tuple[Scaling, Scaling] | None
    sha256: str

    def describe(self) -> str:
        """The file and its architecture, for messages."""
        return f"{self.path} ({describe_spec(self.spec)})"

    def check_fits(self, inputs: Sequence[str], outputs: Sequence[str]) -> None:
        """Refuse, in one line, a model whose inputs or outputs differ from the transfer's."""
        spec = self.spec
        if (spec["in_features"], spec["out_features"]) != (len(inputs), len(outputs)):
            raise PacnetError(
                f"--source-checkpoint {self.path} is another architecture: "
                f"{describe_spec(spec)}, {spec['in_features']} inputs and "
                f"{spec['out_features']} outputs; this transfer has {len(inputs)} inputs and "
                f"{len(outputs)} outputs"
            )

    def check_flags(self, given: dict[str, Any]) -> None:
        """Refuse ``--hidden``/``--activation`` values that differ from the checkpoint's."""
        mine = {"hidden": tuple(self.spec["hidden"]), "activation": self.spec["activation"]}
        for name, value in given.items():
            if name in mine and _tuple_or(value) != mine[name]:
                shown = ",".join(map(str, mine[name])) if name == "hidden" else mine[name]
                raise PacnetError(
                    f"--source-checkpoint {self.path} is another architecture: "
                    f"{describe_spec(self.spec)}, but --{name} asks for "
                    f"{_shown(value)}; leave --{name} out (the checkpoint's is {shown})"
                )


def _tuple_or(value: Any) -> Any:
    return tuple(value) if isinstance(value, list | tuple) else value


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def read_source_checkpoint(path: str | Path) -> SourceCheckpoint:
    """The source model in ``path`` (a checkpoint file, or a folder with ``net.safetensors``).

    From a PAC-Net network the source task is used; from a one-network file its network;
    from a folder that keeps two networks (a baseline's) its ``source.safetensors``.
    """
    path = Path(path)
    if path.is_dir():
        check(
            (path / NETWORK_FILE).is_file(),
            f"--source-checkpoint {path}: a folder without {NETWORK_FILE}",
        )  # a folder of a method that kept two networks: its source network
        beside = path / SOURCE_NETWORK_FILE
        path = beside if beside.is_file() else path / NETWORK_FILE
    check(path.exists(), f"--source-checkpoint {path}: file not found")
    info = inspect(path)
    extra = info.get("extra") or {}
    spec = extra.get("model")
    check(
        isinstance(spec, dict),
        f"--source-checkpoint {path}: the checkpoint names no model spec, so pacnet cannot "
        "rebuild its network (pacnet stores one for the MLPs it trains: a pacnet transfer "
        "folder, or pacnet run --save on an MLP benchmark)",
    )
    try:
        model = MLP.from_spec(spec)
    except PacnetError as exc:
        raise PacnetError(f"--source-checkpoint {path}: {exc}") from None
    task = "source" if "source" in info["tasks"] else info["tasks"][0]
    load(path, model, task=task)
    inputs, outputs = extra.get("inputs"), extra.get("outputs")
    scaling = None
    if isinstance(extra.get("scaling"), dict):
        try:
            scaling = (
                Scaling.from_dict(extra["scaling"]["inputs"]),
                Scaling.from_dict(extra["scaling"]["outputs"]),
            )
        except (KeyError, PacnetError):
            raise PacnetError(
                f"--source-checkpoint {path}: malformed standardisation statistics"
            ) from None
    return SourceCheckpoint(
        path,
        model,
        MLP.spec(model),
        list(inputs) if isinstance(inputs, list) else None,
        list(outputs) if isinstance(outputs, list) else None,
        scaling,
        info["sha256"],
    )
