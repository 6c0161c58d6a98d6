"""Zeroed gradients: before a step the gradient of ``l2·‖w − w₀‖²`` over the trainable
entries is added in one batched pass, and the frozen gradient entries are zeroed (+0.0)
with one batched multiply (``masked_fill_`` where a frozen value is -0.0). A frozen entry
then has zero gradient and zero state, and its update is ``w ± 0.0 = w``. See
:mod:`pacnet.core.freeze`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pacnet.core.entries import Masked, masked_sparse


class no_grad:  # lower case, as torch.no_grad
    """``torch.no_grad()`` at a fraction of its cost, for the step hooks (they run every
    step, and a short step on the CPU lasts a few hundred µs)."""

    __slots__ = ("previous",)

    def __enter__(self) -> None:
        self.previous = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)

    def __exit__(self, *_: object) -> None:
        torch._C._set_grad_enabled(self.previous)


def add_l2(
    pairs: list[tuple[nn.Parameter, Tensor | None]], alpha: float, scale: Tensor | None = None
) -> None:
    """Add ``α·w`` (where ``w₀`` is None: a zero start) or ``α·(w − w₀)`` to each
    parameter's gradient, in batched passes; times ``scale`` (a GradScaler's, as a fused
    optimizer receives it: a tensor, read without a device sync) if given."""
    shifted = [(p, s) for p, s in pairs if s is not None]
    diffs = (  # w − w₀ first, so a small difference is not lost in α·w
        torch._foreach_sub([p for p, _ in shifted], [s for _, s in shifted]) if shifted else []
    )
    terms = [p for p, s in pairs if s is None] + list(diffs)
    if not terms:
        return
    grads = [p.grad for p, s in pairs if s is None] + [p.grad for p, _ in shifted]
    if scale is None:
        torch._foreach_add_(grads, terms, alpha=alpha)
    else:
        torch._foreach_add_(grads, torch._foreach_mul(terms, scale * alpha))


def zero_at_frozen(masked: list[Masked]) -> None:
    """+0.0 at the frozen entries of each (dense) gradient: a batched multiply where
    ``keep`` is the parameter's dtype, ``masked_fill_`` where it is bool."""
    fast = [m for m in masked if m.keep.dtype != torch.bool]
    if fast:
        torch._foreach_mul_([m.param.grad for m in fast], [m.keep for m in fast])
    for m in masked:  # bool keeps (before parking, or a frozen -0.0): +0.0 where frozen
        if m.keep.dtype == torch.bool:
            m.param.grad.masked_fill_(m.keep.logical_not(), 0.0)


def densify_or_mask(
    live: list[Masked], whole: list[tuple[nn.Parameter, Tensor | None]], l2: float
) -> list[Masked]:
    """Sparse gradients: made dense where the (dense) l2 term joins them, else masked
    here. Returns the masked parameters whose gradients are dense."""
    if l2:
        for p in [m.param for m in live] + [p for p, _ in whole]:
            if p.grad.is_sparse:
                p.grad = p.grad.to_dense()
        return live
    for m in live:
        if m.param.grad.is_sparse:
            m.param.grad = masked_sparse(m.param.grad, m.keep)
    return [m for m in live if not m.param.grad.is_sparse]
