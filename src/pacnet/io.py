"""Safe file I/O and digests: safetensors and JSON only, written atomically (temp file +
rename), and the SHA-256 of a set of tensors that checkpoints, caches and ranks compare.

Nothing here unpickles: a pacnet file can hold tensors and text, never code. This module sits
below everything else in the package (it imports only :mod:`pacnet.errors`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from pacnet.errors import PacnetError, first_line


def _atomic_target(path: str | Path) -> tuple[Path, str]:
    """``path`` and a new temporary file beside it; every error names ``path``, never the
    temporary file."""
    path = Path(path)
    if path.is_dir():
        raise PacnetError(f"{path}: is a directory; name a file to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise PacnetError(f"cannot write to {path.parent}: {exc.strerror}") from None
    os.close(fd)
    return path, tmp


def umask() -> int:
    """The process's file-creation mask."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: str | Path, write: Any) -> None:
    """Call ``write(tmp_path)``, then rename the finished file onto ``path`` (with the
    permissions a new file gets, not the temporary file's owner-only ones); a failure
    leaves ``path`` as it was and is one line naming ``path``."""
    path, tmp = _atomic_target(path)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise PacnetError(f"cannot write {path}: {exc.strerror or first_line(exc)}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented JSON, atomically."""
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    write_bytes_atomic(path, lambda tmp: Path(tmp).write_text(text))


def read_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON object, failing with one line if it is missing or malformed."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PacnetError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PacnetError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise PacnetError(f"{path}: expected a JSON object")
    return data


def write_safetensors(
    path: str | Path, tensors: Mapping[str, Tensor], metadata: Mapping[str, str]
) -> None:
    """Write tensors and string metadata to a safetensors file, atomically."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}

    def write(tmp: str) -> None:
        try:
            save_file(tensors, tmp, metadata=dict(metadata))
        except (SafetensorError, RuntimeError, ValueError) as exc:
            first = first_line(exc)
            raise PacnetError(f"cannot write {path}: {first}") from None

    write_bytes_atomic(path, write)


def read_safetensors(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a safetensors file: (tensors on CPU, metadata). One-line error if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise PacnetError(f"{path}: file not found")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = first_line(exc)
        raise PacnetError(f"{path}: not a readable safetensors file ({first})") from None
    return tensors, metadata


def tensor_digest(tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of ``tensors`` in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
