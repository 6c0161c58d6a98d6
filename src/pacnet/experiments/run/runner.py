"""One run: (benchmark, method, hyperparameters, seed, target size, budget) -> result.json.

The source model is trained once per benchmark configuration and cached
(:mod:`pacnet.experiments.run.source`); every method then starts from the same source model and
sees the same target data for a given seed. What identifies a run is its
:class:`~pacnet.experiments.run.spec.RunSpec`; what it leaves in its folder,
:mod:`pacnet.experiments.run.saving`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pacnet.errors import check
from pacnet.experiments.run.alone import make_folder, run_sequential
from pacnet.experiments.run.batched import run_group, stacks
from pacnet.experiments.run.context import Trained, prepare
from pacnet.experiments.run.environment import using_threads
from pacnet.experiments.run.saving import NETWORK_FILE, RESULT_FILE, save_trained
from pacnet.experiments.run.spec import RunSpec
from pacnet.io import write_json
from pacnet.training import distributed
from pacnet.training.cache import StateCache

__all__ = ["RunSpec", "Trained", "prepare", "run", "run_trained"]


def run(
    spec: RunSpec,
    out: str | Path | None = None,
    cache: StateCache | None = None,
    save: bool = False,
) -> dict[str, Any]:
    """Execute one run; write ``out/result.json`` (atomically) if ``out`` is given, and with
    ``save`` the trained network as ``out/net.safetensors`` (see :func:`run_trained`).

    Torch uses ``spec.threads`` CPU threads during the run (default: the benchmark's choice).
    """
    return run_trained(spec, out, cache, save).result


def run_trained(
    spec: RunSpec,
    out: str | Path | None = None,
    cache: StateCache | None = None,
    save: bool = False,
) -> Trained:
    """:func:`run`, also returning the network it trained.

    With ``save`` (which needs ``out``) the network is written to ``out/net.safetensors``
    before ``result.json``, which records it under ``network`` (see
    :func:`~pacnet.experiments.run.saving.save_trained`).

    The engine is the spec's (``spec.engine``): on ``batched`` a run that stacks
    (:func:`~pacnet.experiments.run.batched.stacks`) trains its Allocate, its
    cross-validation folds and its final training stacked; otherwise every training runs
    alone.
    """
    check(not save or out is not None, "saving the network needs an output folder (--out)")
    cache = cache or StateCache()
    if stacks(spec):
        make_folder(out)
        return finish(spec, run_group([spec], cache)[0], out, save)
    with using_threads(spec.thread_count, spec.deterministic):
        return finish(spec, run_sequential(spec, cache, out), out, save)


def finish(spec: RunSpec, trained: Trained, out: str | Path | None, save: bool) -> Trained:
    """Record the process layout (and, under torchrun, that every rank holds the same
    weights); only rank 0 writes ``result.json`` (and, with ``save``, the network first)."""
    result, model = trained.result, trained.model
    if distributed.active():
        result["distributed"] = {
            "world_size": distributed.world_size(),
            "backend": distributed.backend(),
            "ranks_agree": distributed.ranks_agree(distributed.model_checksum(model)),
        }
        check(
            result["distributed"]["ranks_agree"],
            "the ranks ended with different weights (checksum mismatch); nothing written",
        )
    if out is not None and distributed.is_main():
        if save:
            extra = {
                "benchmark": spec.benchmark,
                "method": spec.method,
                "seed": spec.seed,
                "target_size": spec.target_size,
                "run_id": spec.run_id(),
            }
            result["network"] = save_trained(Path(out) / NETWORK_FILE, extra, model, trained.tasks)
        write_json(Path(out) / RESULT_FILE, result)
    return trained
