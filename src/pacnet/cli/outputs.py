"""A failed command leaves no empty output folder behind: :func:`created_by`.

A command that fails before it writes anything (a bad setting found only when the run
starts, an interrupt) would otherwise leave the folder ``--out`` named, and any folders
above it that it created, empty. Folders that existed before the command stay, and so does
a new folder that holds any file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def created_by(out: str | Path | None) -> Iterator[None]:
    """Run the block; if it fails, remove the folders on the way to ``out`` (a folder or
    a file to write) that did not exist before and hold no file now."""
    top = None if out is None or str(out) == "-" else _first_missing(Path(out))
    try:
        yield
    except BaseException:
        if top is not None:
            _remove_if_empty(top)
        raise


def _first_missing(path: Path) -> Path | None:
    """The outermost of ``path`` and its parents that does not exist (None: ``path``
    exists)."""
    missing = None
    for candidate in (path.absolute(), *path.absolute().parents):
        if os.path.lexists(candidate):
            break
        missing = candidate
    return missing


def _remove_if_empty(top: Path) -> None:
    """Remove the folder ``top`` and the folders in it, unless any of them holds a file
    (or ``top`` is not a folder)."""
    if top.is_symlink() or not top.is_dir():
        return
    walk = list(os.walk(top, topdown=False))
    if any(files for _, _, files in walk):
        return
    for root, _, _ in walk:
        try:
            os.rmdir(root)
        except OSError:
            return
