"""Parking: Adam's second moment set to +inf at frozen entries, so the update there is
``lr·m/(√inf + eps) = ±0.0`` whatever the gradient (:class:`Parking`); and, for fused
coupled-decay Adam groups of parked parameters that start at zero, the l2 term carried by
the kernel's own weight decay (:class:`Folding`). See :mod:`pacnet.core.freeze`."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pacnet.core.entries import Masked
from pacnet.core.freeze.optimizer_state import ADAM, MOMENTS, fill_moments


class Parking:
    """Which masked parameters are parked, which wait for optimizer state to be parked
    (``to_park``: ids of parameters), and which have their frozen gradient entries zeroed
    every step instead (``pending``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, masked: list[Masked]):
        self.optimizer = optimizer
        self.masked = masked
        self.to_park: set[int] = set()
        self.parked: list[Masked] = []
        self.pending: list[Masked] = list(masked)
        self.names: list[str] = []
        """The names of the parked parameters (kept after exit)."""

    def parks(self, m: Masked, group_of: dict[int, dict]) -> bool:
        """Whether the optimizer holds ``m`` in a group where +inf in Adam's second moment
        holds an entry still (``β2·inf`` is NaN at β2 = 0)."""
        group = group_of.get(id(m.param))
        return group is not None and type(self.optimizer) in ADAM and group["betas"][1] > 0

    @torch.no_grad()
    def park(self) -> bool:
        """Set Adam's second moment to +inf at the frozen entries of every parameter waiting
        that now has state: its update there is then ``lr·m/inf = ±0.0`` whatever the
        gradient. Whether none waits any more."""
        pending = []
        for m in self.pending:
            state = self.optimizer.state.get(m.param)
            if id(m.param) not in self.to_park or not state or "exp_avg_sq" not in state:
                pending.append(m)
                continue
            fill_moments(state, m.keep, math.inf)
            self.parked.append(m)
            self.names.append(m.name)
            self.to_park.discard(id(m.param))
        self.pending = pending
        return not self.to_park

    @torch.no_grad()
    def unpark(self, m: Masked) -> None:
        """Zero the moments and the gradient at ``m``'s frozen entries (what zeroed gradients
        leave) and have its frozen gradient entries zeroed from now on."""
        fill_moments(self.optimizer.state.get(m.param, {}), m.keep, 0.0, MOMENTS)
        if m.param.grad is not None:
            m.param.grad.masked_fill_(m.keep.logical_not(), 0.0)
        m.multiplies()
        self.parked.remove(m)
        self.names.remove(m.name)
        self.pending.append(m)

    @torch.no_grad()
    def unpark_all(self) -> None:
        """Give the optimizer back the state it would have without parking (zero moments at
        frozen entries, whose gradients would have been zeroed)."""
        for m in self.parked:
            fill_moments(self.optimizer.state.get(m.param, {}), m.keep, 0.0, MOMENTS)
            if m.param.grad is not None:
                m.param.grad.masked_fill_(m.keep.logical_not(), 0.0)
        self.parked, self.pending, self.to_park = [], list(self.masked), set()

    def forget(self) -> None:
        """Start over: nothing parked (the optimizer's state was loaded anew)."""
        self.parked, self.pending, self.names = [], list(self.masked), []

    def clean(self, state: dict, m: Masked) -> dict:
        """``m``'s entry of a state dict as it would be without parking."""
        frozen = m.keep.logical_not()
        return {k: v.masked_fill(frozen, 0.0) if k in MOMENTS else v for k, v in state.items()}


WIDE_FLOATS = (torch.float32, torch.float64)
"""Dtypes in which a fully trainable tensor under the l2 term from a nonzero start ``w₀`` may
fold it as ``(g − α·w₀) + α·w`` (in bf16 or fp16 the gradient's rounding near ``α·w₀``
would drown a small ``α·(w − w₀)``)."""


class Folding:
    """The fused, coupled-decay Adam groups whose own weight decay carries the l2 term, so a
    Calibrate step costs about what a plain one does: the kernel adds ``α·w`` (``α`` = 2·l2)
    to the gradients of the parked parameters that start at zero, and of the fully trainable
    ones (a task's own tensors), whose gradients get the constant ``−α·w₀`` first (one
    batched add). ``decays``: id of group -> (group, its own decay)."""

    def __init__(self, optimizer: torch.optim.Optimizer, l2: float):
        self.optimizer = optimizer
        self.l2 = l2
        self.decays: dict[int, tuple[dict, float]] = {}
        self.folded: set[int] = set()
        """Parameters whose l2 term the kernel adds."""
        self.offsets: list[tuple[nn.Parameter, Tensor]] = []
        """Folded parameters with a nonzero start, and ``−α·w₀`` for their gradients."""
        self.on = False
        """Whether the folding groups carry the l2 term right now."""
        self.idle: list[nn.Parameter] = []
        """Parameters in folding groups, outside the term, without a gradient so far."""

    def groups(self) -> list[dict]:
        """The folding groups."""
        return [group for group, _ in self.decays.values()]

    def plan(
        self,
        under: set[int],
        outside: set[int],
        shifted: dict[int, tuple[nn.Parameter, Tensor]],
    ) -> None:
        """Find the groups whose (coupled, fused) weight decay can be the l2 term: every
        parameter in them is ``under`` the term (from a zero start with frozen entries
        parked, or fully trainable from the start ``shifted`` gives), is ``outside`` it
        (frozen whole), or has no gradient (checked before each step)."""
        if not self.l2:
            return
        for group in self.optimizer.param_groups:
            ps = group["params"]
            if (
                group.get("fused")
                and not group.get("decoupled_weight_decay", False)
                and group.get("weight_decay", 0) == 0
                and not group.get("maximize", False)
                and any(id(p) in under for p in ps)
                and all(id(p) in outside or (not p.requires_grad and p.grad is None) for p in ps)
            ):
                self.decays[id(group)] = (group, group.get("weight_decay", 0))
                self.folded |= {id(p) for p in ps if id(p) in under}
                self.idle += [p for p in ps if id(p) not in outside]
                with torch.no_grad():
                    self.offsets += [
                        (p, shifted[id(p)][1] * (-2 * self.l2)) for p in ps if id(p) in shifted
                    ]

    def add_offsets(self, scale: Tensor | None) -> None:
        """``−α·w₀`` (times a GradScaler's ``scale``) onto the gradients of the folded
        parameters with a nonzero start, before the kernel adds ``α·w``."""
        live = [(p.grad, c) for p, c in self.offsets if p.grad is not None]
        if not live:
            return
        grads, offsets = [g for g, _ in live], [c for _, c in live]
        if scale is not None:
            offsets = torch._foreach_mul(offsets, scale)
        torch._foreach_add_(grads, offsets)

    def fold(self, on: bool) -> bool:
        """Put the l2 term into the folding groups' weight decay, or their own decay back;
        whether a setting changed."""
        if on == self.on:
            return False
        for group, own in self.decays.values():
            group["weight_decay"] = 2 * self.l2 if on else own
        self.on = on
        return True

    def own_decay(self, group: dict) -> float | None:
        """A folding group's own weight decay, where the group's decay is still what folding
        set (None for other groups, and where the user has set a decay since)."""
        entry = self.decays.get(id(group))
        if entry is None:
            return None
        own = entry[1]
        return own if group["weight_decay"] == (2 * self.l2 if self.on else own) else None

    def stop(self) -> bool:
        """Give the folding groups their own weight decay back (a decay the user set since
        stays); the l2 term is added explicitly from now on. Whether anything was folding."""
        if not self.decays:
            return False
        for group, _ in self.decays.values():
            own = self.own_decay(group)
            if own is not None:
                group["weight_decay"] = own
        self.forget()
        return True

    def forget(self) -> None:
        """No group folds (without touching any group)."""
        self.decays, self.folded, self.on, self.idle = {}, set(), False, []
        self.offsets = []
