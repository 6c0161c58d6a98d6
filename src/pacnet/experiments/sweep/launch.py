"""One run of a sweep as a ``torchrun`` job, for runs that want several processes (GPUs).

A sweep worker whose runs take ``nproc_per_run > 1`` processes launches each run it claims
as ``torchrun --standalone --nproc_per_node N -m pacnet.experiments.sweep.launch SPEC OUT CACHE``:
every rank joins the process group and trains its share (see
:mod:`pacnet.training.distributed`), rank 0 writes ``OUT/result.json``, and the worker
stores that result under its claim. The launcher dies with its worker (and each rank with
the launcher), so a killed worker leaves no orphaned training behind.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pacnet.experiments.run.runner import run
from pacnet.experiments.run.saving import RESULT_FILE
from pacnet.experiments.run.spec import RunSpec
from pacnet.io import read_json
from pacnet.training.cache import StateCache

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (elsewhere: nothing)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent was already gone
        os.kill(os.getpid(), signal.SIGKILL)


def spec_to_json(spec: RunSpec) -> str:
    """A run spec as JSON (:func:`spec_from_json` reads it back with the same run id)."""
    return json.dumps(spec.fields())


def spec_from_json(text: str) -> RunSpec:
    """The run spec that :func:`spec_to_json` wrote."""
    return RunSpec(**json.loads(text))


def run_under_torchrun(spec: RunSpec, cache: StateCache, nproc: int) -> dict[str, Any]:
    """Run ``spec`` as ``nproc`` torchrun processes on this machine; return its result."""
    with tempfile.TemporaryDirectory(prefix="pacnet-run-") as tmp:
        spec_file, out = Path(tmp, "spec.json"), Path(tmp, "out")
        spec_file.write_text(spec_to_json(spec))
        launcher = (
            "import sys; from pacnet.experiments.sweep.launch import die_with_parent; "
            "die_with_parent(); from torch.distributed.run import main; main(sys.argv[1:])"
        )
        command = [
            sys.executable,
            "-c",
            launcher,
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "pacnet.experiments.sweep.launch",
            str(spec_file),
            str(out),
            str(cache.root),
        ]
        proc = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            tail = proc.stderr.decode(errors="replace").strip().splitlines()[-20:]
            raise RuntimeError(
                f"torchrun ({nproc} processes) exited with status {proc.returncode}: "
                + "\n".join(tail)
            )
        result = read_json(out / RESULT_FILE)
    if result["run_id"] != spec.run_id():
        raise RuntimeError(f"torchrun ran {result['run_id']}, not {spec.run_id()}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """A rank of a torchrun job: ``SPEC OUT CACHE``."""
    from pacnet.training import distributed

    die_with_parent()
    spec_file, out, cache = list(sys.argv[1:] if argv is None else argv)
    spec = spec_from_json(Path(spec_file).read_text())
    with distributed.session(spec.device) as device:
        run(dataclasses.replace(spec, device=device), out, StateCache(cache))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
