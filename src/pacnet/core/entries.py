"""Stateless helpers on the entries of tensors: chunked passes with bounded memory."""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor

CHUNK = 1 << 18
"""Entries per chunk of a chunked pass (a few MB of temporaries at most)."""


def chunks(t: Tensor) -> Iterator[Tensor]:
    """``t`` flattened, in views of at most :data:`CHUNK` entries."""
    flat = t.detach().reshape(-1)
    for start in range(0, flat.numel(), CHUNK):
        yield flat[start : start + CHUNK]
