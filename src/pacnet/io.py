"""Safe file I/O and digests: safetensors and JSON only, written atomically (temp file +
rename), and the SHA-256 of a set of tensors that checkpoints, caches and ranks compare.

Nothing here unpickles: a pacnet file can hold tensors and text, never code. This module sits
below everything else in the package (it imports only :mod:`pacnet.errors`).
"""

from __future__ import annotations

import gzip
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
    if path.is_dir():
        raise PacnetError(f"{path}: is a directory; name a .safetensors file")
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


_BINARY = {
    b"PAR1": "a Parquet file; name it .parquet",
    b"\x1f\x8b": "gzip-compressed; name it .csv.gz",
    b"PK\x03\x04": "a zip archive (an Excel workbook?); save the sheet as CSV",
}
"""What a binary file that starts with these bytes is, and what to do."""


def check_text_file(path: str | Path, parquet: bool = True) -> None:
    """Fail in one line unless the file at ``path`` (gzip-compressed for ``.gz``) starts as
    text: a binary file named as a CSV is not read as one. ``parquet``: whether the reader
    would read the file as Parquet under a ``.parquet`` name."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix.lower() == ".gz" else open
        with opener(path, "rb") as fh:
            start = fh.read(1024)
    except (OSError, EOFError) as exc:
        raise PacnetError(f"{path}: cannot read it ({first_line(exc)})") from None
    if not start.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 text holds NUL bytes
        check_text(path, start, parquet)


def _safetensors(raw: bytes) -> bool:
    """Whether ``raw`` starts as a safetensors file: an 8-byte little-endian header length,
    then the JSON header."""
    return len(raw) > 9 and raw[8:9] == b"{" and int.from_bytes(raw[:8], "little") > 1


def check_text(path: Path, raw: bytes, parquet: bool = True) -> None:
    """Fail in one line if ``raw`` (a file's bytes, decompressed) is not text: a NUL byte in
    its first KiB, as in Parquet, Excel, gzip, images and other binary files."""
    for magic, what in _BINARY.items():
        if raw.startswith(magic):
            if magic == b"PAR1" and not parquet:
                what = "a Parquet file; save it as CSV"
            raise PacnetError(f"{path}: not a text table: {what}")
    if _safetensors(raw):
        raise PacnetError(
            f"{path}: not a text table: a safetensors file (a saved network; pacnet "
            "transfer starts from one given as --source-checkpoint)"
        )
    if b"\0" in raw[:1024]:
        also = ", or a Parquet file named .parquet" if parquet else ""
        raise PacnetError(
            f"{path}: not a text table (binary data); give a CSV or TSV text file{also}"
        )
