"""What :func:`pacnet.train_only` knows of the optimizer: which optimizers leave a
zero-gradient entry exactly still, which groups hold the masked parameters, and whether
the optimizer's groups, settings or per-parameter state changed since the last step
(:class:`OptimizerWatch`), without a pass over any tensor unless one of them did."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from pacnet.core.entries import Masked, nonzero_at_frozen

ADAM = (torch.optim.Adam, torch.optim.AdamW)
STILL_AT_ZERO_GRAD = (torch.optim.SGD, *ADAM)
"""Optimizers whose update leaves an entry exactly unchanged while its gradient and state
are zero (given no weight decay and ``maximize`` off)."""
MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
SETTINGS = ("weight_decay", "maximize", "eps", "betas", "fused")
"""The group settings that decide how frozen entries are held."""


def holding(optimizer: torch.optim.Optimizer, ids: set[int]) -> list[dict]:
    """The optimizer's parameter groups that hold any of the parameters ``ids``."""
    return [g for g in optimizer.param_groups if any(id(p) in ids for p in g["params"])]


def zero_eps(optimizer: torch.optim.Optimizer, ids: set[int]) -> str | None:
    """Why an ``eps`` of 0 gives ``0/0`` at zero-gradient entries of the parameters ``ids``,
    or None (the unfused kernels add eps in the parameter's dtype, the fused ones in
    float32 or wider)."""
    for group in holding(optimizer, ids):
        eps = group.get("eps")
        if not isinstance(eps, float | int):
            continue
        dtypes = {p.dtype for p in group["params"] if id(p) in ids}
        for dtype in dtypes:
            if float(eps if group.get("fused") else torch.tensor(eps, dtype=dtype)) == 0:
                return f"eps {eps} is 0 in {dtype}: 0/0 at zero-gradient entries"
    return None


def why_restore(
    optimizer: torch.optim.Optimizer, params: list[nn.Parameter], fresh: bool = True
) -> str | None:
    """None when ``optimizer`` provably leaves zero-gradient entries of ``params`` unchanged,
    else the reason it may not (``fresh``: also require no earlier state for them)."""
    if type(optimizer) not in STILL_AT_ZERO_GRAD:
        return f"{type(optimizer).__name__} is not one of SGD, Adam, AdamW"
    ids = {id(p) for p in params}
    for group in holding(optimizer, ids):
        if group.get("weight_decay", 0) != 0:
            return "weight decay moves zero-gradient entries"
        if group.get("maximize", False):
            return "maximize can turn a frozen -0.0 into +0.0"
    zeroed = zero_eps(optimizer, ids)
    if zeroed is not None:
        return zeroed
    if fresh and any(optimizer.state.get(p) for p in params):
        return "the optimizer already holds state for masked parameters"
    return None


def skips_gradless(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` leaves a parameter whose gradient is None alone, state included
    (every ``torch.optim`` optimizer but LBFGS)."""
    return type(optimizer).__module__.startswith("torch.optim.") and not isinstance(
        optimizer, torch.optim.LBFGS
    )


def dirty(state: Mapping[str, Any], m: Masked) -> str | None:
    """The first state tensor of ``m`` that is nonzero at frozen entries, by key, or None."""
    for key, value in state.items():
        if (
            torch.is_tensor(value)
            and value.shape == m.param.shape
            and nonzero_at_frozen(value, m.keep)
        ):
            return key
    return None


def fill_moments(
    state: Mapping[str, Any], keep: Tensor, value: float, keys: tuple[str, ...] = MOMENTS[1:]
) -> None:
    """Set the state's ``keys`` (Adam's second moments by default) to ``value`` at the
    frozen entries."""
    frozen = keep.logical_not()
    for key in keys:
        if key in state:
            state[key].masked_fill_(frozen, value)


def seen(state: dict | None) -> tuple[dict, tuple] | None:
    """What :func:`state_moved` compares with: the state dict and its values, by identity."""
    return (state, tuple(state.values())) if state else None


def state_moved(m: Masked, state: dict | None) -> bool:
    """Whether ``state`` (the optimizer's for ``m`` now) is not what the last step left."""
    if m.seen is None:
        return bool(state)
    held, values = m.seen
    return (
        state is not held
        or len(state) != len(values)
        or not all(map(operator.is_, state.values(), values))
    )


class OptimizerWatch:
    """The optimizer as the last check left it: its group list and groups (by identity and
    size), the settings that decide how frozen entries are held, its state dict, and per
    masked parameter its state (:attr:`Masked.seen`)."""

    def __init__(self, optimizer: torch.optim.Optimizer, groups: Callable[[], list[dict]]):
        self.optimizer = optimizer
        self.groups = groups
        """The groups whose settings count (those holding masked parameters, and those
        whose weight decay carries the l2 term)."""
        self.state = optimizer.state
        self.layout: list[int] = []
        self.settings: list[tuple] = []

    def current_layout(self) -> list[int]:
        """The identities of the optimizer's group list and groups, and their sizes."""
        groups = self.optimizer.param_groups
        return [id(groups), *(n for g in groups for n in (id(g), len(g["params"])))]

    def current_settings(self) -> list[tuple]:
        """Each group that counts, with its weight decay, maximize, eps, betas and fused."""
        return [(g, *(g.get(key) for key in SETTINGS)) for g in self.groups()]

    def settle(self) -> None:
        """Remember the layout and the settings as they are now."""
        self.layout, self.settings = self.current_layout(), self.current_settings()

    def settle_settings(self) -> None:
        """Remember the settings as they are now (after changing them on purpose)."""
        self.settings = self.current_settings()

    def groups_changed(self) -> bool:
        """Whether a group was added or removed, or a setting that counts changed (checked
        every step: kept to a few dict reads per group)."""
        groups = self.optimizer.param_groups
        layout = self.layout
        if id(groups) != layout[0] or 2 * len(groups) + 1 != len(layout):
            return True
        at = 1
        for g in groups:
            if id(g) != layout[at] or len(g["params"]) != layout[at + 1]:
                return True
            at += 2
        for g, decay, maximize, eps, betas, fused in self.settings:
            if (
                g.get("weight_decay") != decay
                or g.get("maximize") != maximize
                or g.get("eps") != eps
                or g.get("betas") != betas
                or g.get("fused") != fused
            ):
                return True
        return False

    def state_changed(self, held: list[Masked]) -> bool:
        """Whether the state dict was replaced, or the state of a held parameter moved."""
        state = self.optimizer.state
        if state is not self.state:
            return True
        for m in held:  # noqa: SIM110 (a loop, not a generator: it runs every step)
            if state_moved(m, state.get(m.param)):
                return True
        return False
