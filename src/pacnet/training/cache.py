"""A content-addressed cache of model states (safetensors), shared by runs and processes.

The key is any JSON-ready mapping; its hash names the file. A process building an entry
holds a file lock, so parallel runs that need the same source model or Allocate result
build it once. A corrupt entry is rebuilt.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from pacnet.config import config_hash
from pacnet.errors import PacnetError
from pacnet.io import read_safetensors, write_safetensors
from pacnet.training import distributed


def default_cache_dir() -> Path:
    """``$PACNET_CACHE``, else ``$XDG_CACHE_HOME/pacnet``, else ``~/.cache/pacnet``."""
    if os.environ.get("PACNET_CACHE"):
        return Path(os.environ["PACNET_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pacnet"


class StateCache:
    """``cache(key, build)`` returns the cached state for ``key``, building it if needed."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def path(self, key: Mapping[str, Any]) -> Path:
        return self.root / f"{config_hash(dict(key))}.safetensors"

    def contains(self, key: Mapping[str, Any]) -> bool:
        """Whether a state for ``key`` is stored (it may still fail to read)."""
        return self.path(key).exists()

    def __call__(
        self, key: Mapping[str, Any], build: Callable[[], Mapping[str, Tensor]]
    ) -> Mapping[str, Tensor]:
        path = self.path(key)
        if distributed.active():  # one decision for all ranks; only rank 0 writes
            return distributed.shared_state(
                lambda: self._read(path) if path.exists() else None,
                lambda: {k: v.detach().clone() for k, v in build().items()},
                lambda state: self._write(path, key, state),
            )
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = open(path.with_suffix(".lock"), "w")  # noqa: SIM115 (held until built)
        except OSError as exc:
            raise PacnetError(f"cannot use the cache folder {self.root}: {exc.strerror}") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if path.exists():
                found = self._read(path)
                if found is not None:
                    return found
            state = {k: v.detach().clone() for k, v in build().items()}
            self._write(path, key, state)
            return state

    @staticmethod
    def _read(path: Path) -> Mapping[str, Tensor] | None:
        """The cached state, or None (a corrupt entry is removed, to be rebuilt)."""
        try:
            return read_safetensors(path)[0]
        except PacnetError:
            path.unlink(missing_ok=True)
            return None

    def _write(self, path: Path, key: Mapping[str, Any], state: Mapping[str, Tensor]) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PacnetError(f"cannot use the cache folder {self.root}: {exc.strerror}") from None
        write_safetensors(path, dict(state), {"key": json.dumps(dict(key), sort_keys=True)})


class MemoryCache:
    """A :class:`StateCache` held in memory for one process (``pacnet transfer``'s
    Allocate per ratio): the same ``contains`` and ``cache(key, build)``, the states cloned
    when stored."""

    def __init__(self) -> None:
        self.states: dict[str, dict[str, Tensor]] = {}

    @staticmethod
    def _name(key: Mapping[str, Any]) -> str:
        return json.dumps(dict(key), sort_keys=True, default=str)

    def contains(self, key: Mapping[str, Any]) -> bool:
        """Whether a state for ``key`` is held."""
        return self._name(key) in self.states

    def __call__(
        self, key: Mapping[str, Any], build: Callable[[], Mapping[str, Tensor]]
    ) -> Mapping[str, Tensor]:
        name = self._name(key)
        if name not in self.states:
            self.states[name] = {k: v.detach().clone() for k, v in build().items()}
        return self.states[name]
