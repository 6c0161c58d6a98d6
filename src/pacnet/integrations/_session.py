"""What both trainer callbacks share: one :func:`~pacnet.train_only` context, opened when
the trainer's training starts (its optimizer exists then) and closed when it ends."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager

import torch
from torch import Tensor, nn

from pacnet.core.freeze import MaskedTraining, train_only
from pacnet.core.mask import Mask
from pacnet.errors import check


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
            params = dict(model.named_parameters())
            nonzero = [n for n, m in trainable.items() if bool(params[n].detach()[~m].any())]
            check(
                not nonzero,
                f"the redundant entries of {nonzero[:1]} are not zero: call "
                "pacnet.zero_redundant(model, mask) before training Allocate",
            )
        self._context: AbstractContextManager[MaskedTraining] | None = None
        self.handle: MaskedTraining | None = None
        """The :func:`~pacnet.train_only` handle while the trainer trains (else None)."""

    def open(self, optimizer: torch.optim.Optimizer) -> MaskedTraining:
        """Enter the masked training with the trainer's (unwrapped) optimizer."""
        self.close()
        inner = optimizer
        while hasattr(inner, "optimizer") and isinstance(inner.optimizer, torch.optim.Optimizer):
            inner = inner.optimizer  # accelerate's and Lightning's wrappers
        self._context = train_only(
            self.model, self.trainable, inner, others=self.others, l2=self.l2
        )
        self.handle = self._context.__enter__()
        return self.handle

    def close(self) -> None:
        """Leave the masked training (idempotent): hooks removed, frozen entries checked."""
        context, self._context, self.handle = self._context, None, None
        if context is not None:
            context.__exit__(None, None, None)
