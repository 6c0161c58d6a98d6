"""Where and how a run runs: software versions and the machine, torch CPU threads, and
deterministic kernels."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from pacnet.errors import check, pacnet_version

DETERMINISM_NOTE = (
    "Determinism: on the CPU the same configuration and seed give bit-identical results "
    "(tested). On CUDA, run with --deterministic (torch.use_deterministic_algorithms, cuDNN "
    "autotuning off, CUBLAS_WORKSPACE_CONFIG=:4096:8) and the same GPU model, driver and "
    "library versions; without it atomics-based kernels make runs differ in the last bits."
)


def versions() -> dict[str, str]:
    """Software versions and the machine a run ran on."""
    return {
        "pacnet": pacnet_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": machine(),
    }


def machine() -> str:
    """The CPU model and the cores this process may use, e.g. ``2 × AMD EPYC 7B13``."""
    model = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):  # noqa: SIM115 (short read)
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores} × {model}"


@contextmanager
def using_threads(threads: int | None, deterministic: bool = False) -> Iterator[None]:
    """Torch uses ``threads`` CPU threads (None: as it is) and, with ``deterministic``,
    deterministic kernels; both are put back afterwards."""
    check(threads is None or threads >= 1, f"threads must be >= 1, got {threads}")
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    if deterministic:
        deterministic_kernels()
    try:
        yield
    finally:
        torch.set_num_threads(previous)
        torch.use_deterministic_algorithms(was_deterministic)


def deterministic_kernels() -> None:
    """Ask torch for deterministic kernels everywhere (needed for repeatable CUDA runs)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
