"""Stateless helpers on the entries of tensors: chunked passes with bounded memory, bit
patterns, and the frozen entries of a masked parameter (what :func:`pacnet.train_only`
holds still)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

CHUNK = 1 << 18
"""Entries per chunk of a chunked pass (a few MB of temporaries at most)."""


def chunks(t: Tensor) -> Iterator[Tensor]:
    """``t`` flattened, in views of at most :data:`CHUNK` entries."""
    flat = t.detach().reshape(-1)
    for start in range(0, flat.numel(), CHUNK):
        yield flat[start : start + CHUNK]


def bits(t: Tensor) -> Tensor:
    """The tensor's bit patterns as integers (so -0.0 != +0.0 and NaN == NaN)."""
    return t.view(
        {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}[t.element_size()]
    )


def has_negative_zero(t: Tensor) -> bool:
    """Whether ``t`` holds a -0.0."""
    return bool(((t == 0) & t.signbit()).any())


@dataclass
class Masked:
    """A parameter the mask covers in part, as :func:`pacnet.train_only` holds it."""

    name: str
    param: nn.Parameter
    keep: Tensor  # 1 where trainable, 0 where frozen, on the parameter's device: bool
    # (1 byte per weight) where parking holds the frozen entries or a frozen value is -0.0;
    # the parameter's dtype where a multiply runs every step (a bool multiply is ~4x slower
    # on CPU)
    start: Tensor | None  # w₀ for the l2 term, or None where the trainable entries start at 0
    plain: bool = True  # frozen values finite and not -0.0: ``w ± 0.0 = w`` holds them
    seen: tuple[dict, tuple] | None = None  # the optimizer's state for it and that state's
    # values as the last step left them (None: no state yet)

    def multiplies(self) -> None:
        """Make ``keep`` the parameter's dtype, for a fast multiply every step (not where a
        frozen value is -0.0: ``g·0`` can be -0.0, which turns it into +0.0)."""
        if self.plain:
            self.keep = self.keep.to(self.param.dtype)


def frozen_pieces(param: nn.Parameter, keep: Tensor) -> Iterator[Tensor]:
    """The values at frozen entries, chunk by chunk (memory bounded by a chunk)."""
    for values, keeps in zip(chunks(param), chunks(keep), strict=True):
        yield values[keeps.logical_not()]


def scan_frozen(param: nn.Parameter, keep: Tensor) -> tuple[Tensor | None, bool]:
    """The values at frozen entries, 1-D (None when they are all +0.0: nothing to keep), and
    whether an update of ``±0.0`` leaves each of them exactly as it is (finite, not -0.0)."""
    count, nonzero, plain = 0, False, True
    for piece in frozen_pieces(param, keep):
        count += piece.numel()
        nonzero = nonzero or bool(bits(piece).any())
        plain = plain and bool(torch.isfinite(piece).all()) and not has_negative_zero(piece)
    if not nonzero:
        return None, plain
    copy = torch.empty(count, dtype=param.dtype, device=param.device)
    start = 0
    for piece in frozen_pieces(param, keep):
        copy[start : start + piece.numel()] = piece
        start += piece.numel()
    return copy, plain


def unchanged(param: nn.Parameter, keep: Tensor, copy: Tensor | None) -> bool:
    """Whether the frozen entries hold ``copy`` (or +0.0 everywhere), bit for bit."""
    start = 0
    for piece in frozen_pieces(param, keep):
        if copy is None:
            if bool(bits(piece).any()):
                return False
        elif not torch.equal(bits(piece), bits(copy[start : start + piece.numel()])):
            return False
        start += piece.numel()
    return True


def put_back(m: Masked, copy: Tensor | None) -> bool:
    """Write ``copy`` (from :func:`scan_frozen`; None: +0.0) into ``m``'s frozen entries if
    they no longer hold it; whether they had moved."""
    if unchanged(m.param, m.keep, copy):
        return False
    frozen = m.keep.logical_not()
    if copy is None:
        copy = torch.zeros(int(frozen.sum()), dtype=m.param.dtype, device=frozen.device)
    m.param.detach().masked_scatter_(frozen, copy)
    return True


def nonzero_at_frozen(values: Tensor, keep: Tensor) -> bool:
    """Whether ``values`` (dense or sparse, ``keep``'s shape) is nonzero at a frozen entry."""
    if values.is_sparse:
        values = values.to_dense()
    for chunk, keeps in zip(chunks(values), chunks(keep), strict=True):
        if bool(chunk[keeps.logical_not()].any()):
            return True
    return False


def masked_sparse(grad: Tensor, keep: Tensor) -> Tensor:
    """A sparse gradient with +0.0 at its frozen entries (coalesced)."""
    grad = grad.coalesce()
    rows = keep[tuple(grad.indices())]  # the mask at each stored value
    values = grad.values().masked_fill(rows.logical_not(), 0.0)
    return torch.sparse_coo_tensor(
        grad.indices(), values, grad.shape, is_coalesced=True, check_invariants=False
    )


@torch.no_grad()
def zero_frozen(param: nn.Parameter, frozen: Tensor) -> None:
    """+0.0 at the frozen entries of ``param``'s gradient (dense or sparse)."""
    if param.grad is None:
        return
    if param.grad.is_sparse:
        param.grad = masked_sparse(param.grad, frozen.logical_not())
    else:
        param.grad.masked_fill_(frozen, 0.0)
