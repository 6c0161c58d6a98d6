"""What both trainer callbacks share: one :func:`~pacnet.train_only` context, opened when
the trainer's training starts (its optimizer exists then) and closed when it ends."""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Mapping
from contextlib import AbstractContextManager

import torch
from torch import Tensor, nn

from pacnet.core.freeze import MaskedTraining, train_only
from pacnet.core.mask import Mask
from pacnet.core.roles import unwrap
from pacnet.errors import PacnetError, check

_OPEN: weakref.WeakKeyDictionary[nn.Module, Session] = weakref.WeakKeyDictionary()
"""The session holding each model's masking now (one at a time)."""


class Session:
    """``train_only(model, trainable, optimizer, others, l2=l2)`` around a trainer's run.

    ``others`` (parameters ``trainable`` does not name) defaults to ``"trainable"`` when
    ``trainable`` is the :class:`~pacnet.Mask` from :func:`pacnet.prune` (Allocate: the
    source's own tensors train with its essential weights) and to ``"frozen"`` otherwise
    (Calibrate with ``tasks.trainable(model)``: everything else stays as the source has it).
    """

    def __init__(
        self,
        model: nn.Module,
        trainable: Mapping[str, Tensor],
        l2: float = 0.0,
        others: str | None = None,
    ):
        self.model, self.trainable, self.l2 = model, trainable, l2
        self.others = others or ("trainable" if isinstance(trainable, Mask) else "frozen")
        if isinstance(trainable, Mask):  # Allocate: the redundant weights must start at 0
            trainable.check(model)
            params = dict(unwrap(model).named_parameters())
            nonzero = [n for n, m in trainable.items() if bool(params[n].detach()[~m].any())]
            check(
                not nonzero,
                f"the entries a Mask freezes must be zero (Allocate), but those of "
                f"{nonzero[:1]} are not: for Allocate with the mask from pacnet.prune call "
                "pacnet.zero_redundant(model, mask) first; to train other entries (e.g. "
                "~mask) pass them as a plain dict, dict(~mask)",
            )
        self._context: AbstractContextManager[MaskedTraining] | None = None
        self.handle: MaskedTraining | None = None
        """The :func:`~pacnet.train_only` handle while the trainer trains (else None)."""

    def open(self, optimizer: torch.optim.Optimizer) -> MaskedTraining:
        """Enter the masked training with the trainer's (unwrapped) optimizer."""
        self.close()
        stale = _OPEN.get(unwrap(self.model))
        if stale is not None and stale is not self:  # a run that stopped on an exception
            warnings.warn(  # left its hooks in: they would mask this run's gradients
                "pacnet: an earlier PacNetCallback was still masking this model (its "
                "training stopped on an exception?); it is closed now",
                RuntimeWarning,
                stacklevel=3,
            )
            stale.close()
        inner = optimizer
        while hasattr(inner, "optimizer") and isinstance(inner.optimizer, torch.optim.Optimizer):
            inner = inner.optimizer  # accelerate's and Lightning's wrappers
        if not isinstance(self.trainable, Mask):  # Calibrate: the target's own tensors
            self._check_held(inner)
        self._context = train_only(
            self.model, self.trainable, inner, others=self.others, l2=self.l2
        )
        self.handle = self._context.__enter__()
        _OPEN[unwrap(self.model)] = self
        return self.handle

    def _check_held(self, optimizer: torch.optim.Optimizer) -> None:
        """Every parameter with entries to train must be in the trainer's optimizer (one
        built before ``tasks.activate`` holds the source's own tensors, not the target's)."""
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        params = dict(unwrap(self.model).named_parameters())
        missing = [
            name
            for name, entries in self.trainable.items()
            if name in params
            and params[name].requires_grad
            and id(params[name]) not in held
            and bool(entries.any())
        ]
        if missing:
            raise PacnetError(
                f"the trainer's optimizer does not hold {missing[0]!r} ({len(missing)} "
                "trainable parameters missing): build the Trainer (or its optimizer) after "
                "tasks.activate(model, task)"
            )

    def close(self) -> None:
        """Leave the masked training (idempotent): hooks removed, frozen entries checked."""
        context, self._context, self.handle = self._context, None, None
        if context is not None:
            if _OPEN.get(unwrap(self.model)) is self:
                del _OPEN[unwrap(self.model)]
            context.__exit__(None, None, None)
