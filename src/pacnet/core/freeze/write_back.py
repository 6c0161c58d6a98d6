"""The write-back: after every step the frozen entries are written back,
``w ← w·keep + frozen`` with two batched ``torch._foreach`` calls (exact for every finite
``w`` and frozen value but -0.0, which, like non-finite frozen values and an ``eps`` of 0,
takes an exact ``torch.where`` path). See :mod:`pacnet.core.freeze`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pacnet.core.entries import Masked, bits, has_negative_zero
from pacnet.core.freeze.optimizer_state import skips_gradless


@dataclass
class Frozen:
    """What the write-back path needs for one parameter."""

    param: nn.Parameter
    keep: Tensor  # the mask as 0/1 in the parameter's dtype (unused where ``exact``)
    values: Tensor | None  # frozen values (0 at trainable entries); None when all zero
    exact: Tensor | None  # bool mask (True = trainable) for the torch.where path, else None


def frozen_copy(m: Masked, exact: bool) -> Frozen:
    """What the write-back puts back into ``m`` (``exact``: always the ``torch.where`` path)."""
    values = m.param.detach()
    trainable = m.keep.bool()
    at_frozen = values[~trainable]
    if exact or bool((~torch.isfinite(at_frozen)).any()) or has_negative_zero(at_frozen):
        return Frozen(m.param, m.keep, values.clone(), trainable)
    frozen = values * (1 - m.keep)
    return Frozen(m.param, m.keep, frozen if bool(frozen.any()) else None, None)


class WriteBack:
    """The frozen entries of every masked parameter as captured, written back after each
    step; and, for an optimizer that may move a parameter without a gradient, the
    parameters frozen whole that it holds."""

    def __init__(self) -> None:
        self.frozen: list[Frozen] = []
        self.kept: list[tuple[nn.Parameter, Tensor]] = []  # whole frozen, written back
        self.skips = True  # whether the write-back may skip parameters without a gradient

    def capture(
        self,
        optimizer: torch.optim.Optimizer,
        masked: list[Masked],
        frozen_whole: list[nn.Parameter],
        exact: bool,
    ) -> None:
        """Take what is put back from now on (``exact``: the ``torch.where`` path for all)."""
        for m in masked:
            m.multiplies()
        self.frozen = [frozen_copy(m, exact) for m in masked]
        self.skips = skips_gradless(optimizer)
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        self.kept = [
            (p, p.detach().clone()) for p in frozen_whole if not self.skips and id(p) in held
        ]

    @torch.no_grad()
    def apply(self) -> None:
        """Write the frozen entries back (after a step)."""
        frozen = [f for f in self.frozen if f.param.grad is not None or not self.skips]
        fast = [f for f in frozen if f.exact is None]
        if fast:
            torch._foreach_mul_([f.param for f in fast], [f.keep for f in fast])
        with_values = [f for f in fast if f.values is not None]
        if with_values:
            torch._foreach_add_([f.param for f in with_values], [f.values for f in with_values])
        zero_frozen = [f.param for f in fast if f.values is None]
        if zero_frozen:  # w·0 may be -0.0; adding +0.0 gives the +0.0 that was there
            torch._foreach_add_(zero_frozen, 0.0)
        for f in frozen:
            if f.exact is not None:
                torch.where(f.exact, f.param, f.values, out=f.param)
        for p, values in self.kept:
            p.copy_(values)

    @torch.no_grad()
    def repair(self, masked: list[Masked]) -> list[str]:
        """On exit: put back frozen entries that ``w·0 + f`` missed (the optimizer made
        ``w`` non-finite); the names of the parameters repaired."""
        repaired = []
        for m, f in zip(masked, self.frozen, strict=True):
            w = m.param.detach()
            values = f.values if f.values is not None else torch.zeros_like(w)
            fixed = torch.where(m.keep.bool(), w, values)
            if not torch.equal(bits(fixed), bits(w)):
                w.copy_(fixed)
                repaired.append(m.name)
        return repaired
