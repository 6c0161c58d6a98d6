"""PAC-Net inside ``lightning.Trainer``.

``Trainer(..., callbacks=[PacNetCallback(module, trainable, l2=λ)])`` makes Lightning's own
training exact masked training (:func:`pacnet.train_only`): its automatic optimisation,
``accumulate_grad_batches``, ``gradient_clip_val`` and precision plugins stay Lightning's.
The λ term and the zeroed frozen gradient entries are applied in
``on_before_optimizer_step``, before Lightning clips, so the clipping norm sees what the
optimizer will. ``module`` is the network the mask was made for (the LightningModule, or
the ``nn.Module`` inside it that was pruned); ``trainable`` is the mask for Allocate,
``tasks.trainable(module)`` for Calibrate. Lightning trains each module in the mode it finds
it in, so a network left in eval mode would train with its BatchNorm statistics fixed and
its dropout off: the callback warns when that is so as training starts.

This module needs ``lightning`` (``pip install pacnet[lightning]``); ``import pacnet``
does not import it.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from pacnet.core.freeze import MaskedTraining
from pacnet.core.mask import Mask
from pacnet.core.roles import unwrap
from pacnet.errors import check
from pacnet.integrations.session import Session

TRUE_PRECISIONS = {"bf16-true": torch.bfloat16, "16-true": torch.float16, "64-true": torch.float64}
"""Lightning precisions that convert the network's weights when ``fit`` starts."""
MODE_DEPENDENT = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
"""Layers that train differently in eval mode (BatchNorm's statistics stay put, no dropout)."""


class PacNetCallback(pl.Callback):
    """Exact masked training inside ``lightning.Trainer`` (one optimizer).

    Args:
        module: the pruned network (the LightningModule or a module inside it).
        trainable: ``True`` = may change: the :class:`~pacnet.Mask` for Allocate,
            ``tasks.trainable(module)`` for Calibrate.
        l2: λ of ``λ‖w − w₀‖²`` on the trainable entries (Calibrate; the paper's 0.01).
        others: parameters ``trainable`` does not name: ``"trainable"`` or ``"frozen"``
            (default: trainable for a Mask, frozen otherwise).
    """

    def __init__(
        self,
        module: nn.Module,
        trainable: Mapping[str, Tensor],
        l2: float = 0.0,
        others: str | None = None,
    ):
        self.session = Session(module, trainable, l2, others)

    @property
    def handle(self) -> MaskedTraining | None:
        """The :func:`~pacnet.train_only` handle while Lightning trains (else None)."""
        return self.session.handle

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Before Lightning converts the weights (true half precision): refuse a conversion
        that would round the source's frozen weights in Calibrate."""
        dtype = TRUE_PRECISIONS.get(str(trainer.precision))
        if stage != "fit" or dtype is None or isinstance(self.session.trainable, Mask):
            return
        changed = [
            name
            for name, p in unwrap(self.session.model).named_parameters()
            if p.is_floating_point() and p.dtype != dtype
        ]
        check(
            not changed,
            f"precision={trainer.precision!r} converts {changed[:1]} and the rest to {dtype} "
            "when fit starts, which rounds the source's frozen weights (it would no longer be "
            "exactly as after Allocate): use the mixed precision, or run Allocate in this "
            "precision too",
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        check(
            len(trainer.optimizers) == 1,
            f"PacNetCallback supports one optimizer; the module configures "
            f"{len(trainer.optimizers)}",
        )
        self.session.open(trainer.optimizers[0])
        fixed = [
            name
            for name, m in unwrap(self.session.model).named_modules()
            if isinstance(m, MODE_DEPENDENT) and not m.training
        ]
        if fixed:  # Lightning trains each module in the mode it finds it in
            warnings.warn(
                f"pacnet: {len(fixed)} BatchNorm or dropout layer(s) of the network ({fixed[0]!r}"
                f"{', …' if len(fixed) > 1 else ''}) are in eval mode as training starts, so "
                "they train in eval mode (BatchNorm's running statistics stay as they are); "
                "call module.train() before trainer.fit unless that is meant",
                UserWarning,
                stacklevel=2,
            )

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        if self.session.handle is not None:
            self.session.handle.finish_grads()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.session.close()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self.session.close()
