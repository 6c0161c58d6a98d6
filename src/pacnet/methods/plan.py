"""A method's training, described once: what trains, from where, under which terms.

Every method lays its target training out as a :class:`TrainingPlan`; an engine
(:mod:`pacnet.methods.engine`) trains it, alone (``sequential``: :func:`pacnet.fit` inside
:func:`pacnet.train_only`) or stacked with many others (``batched``:
:func:`pacnet.training.stacked.fit_stacked`), and ``plan.finish`` turns the trained model
into the method's :class:`~pacnet.methods.base.Transfer`. A :class:`Training` is one such
training with its data and budget; a :class:`SourceTraining` is a training on the source task
a method's plans start from (PAC-Net's Allocate), cached.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from pacnet.training.train import Data, FitConfig, FitResult, LossFn

Where = dict[str, Tensor | bool]
"""Per parameter name, which entries train: a bool tensor, True for all of them or False for
none (a parameter not named trains nothing either)."""


@dataclass
class TrainingPlan:
    """A method's target training, laid out before it runs.

    ``model`` is set up as the method sets it up (a copy of the source, a new head,
    PAC-Net's pruned and allocated network with the target task active); ``trainable``
    names every parameter that trains and which of its entries (the rest stay bit for
    bit); ``penalties`` are ``(weight, term)`` pairs added to the loss (the regularisers of
    :mod:`pacnet.methods.regularizers`); ``decay`` adds ``decay·‖w − w_start‖²`` over the
    trainable entries as a gradient, not to the reported loss (PAC-Net's λ); ``lr``
    overrides the target learning rate. ``finish(fit)`` hands back the method's
    :class:`~pacnet.methods.base.Transfer` once the trained values are in ``model``.
    """

    model: nn.Module
    trainable: Where
    finish: Callable[[FitResult], Any]
    lr: float | None = None
    penalties: list[tuple[float, nn.Module]] = field(default_factory=list)
    decay: float = 0.0

    def close(self) -> None:
        """Remove what the penalties hooked into the model (their forward hooks)."""
        for _, term in self.penalties:
            close = getattr(term, "close", None)
            if close is not None:
                close()


@dataclass
class Training:
    """One training an engine runs: ``model`` with what trains (as in
    :class:`TrainingPlan`), on ``train`` (``val`` for the evaluations and early stopping)
    with budget ``cfg``, seeded by ``seed``."""

    model: nn.Module
    trainable: Where
    train: Data | object
    cfg: FitConfig
    loss_fn: LossFn | None
    seed: int = 0
    val: Data | object | None = None
    penalties: Sequence[tuple[float, nn.Module]] = ()
    decay: float = 0.0
    desc: str = "train"


@dataclass
class SourceTraining:
    """A training on the source task that a method's plans start from, whose trained state
    goes into the run's cache of states (``memo``) under ``key``, where the plans read it;
    ``make()`` builds the :class:`Training` (a copy of the source model, set up), called
    only where the state is missing."""

    key: Mapping[str, Any]
    make: Callable[[], Training]
    memo: Callable[[Mapping[str, Any], Callable[[], Mapping[str, Tensor]]], Mapping[str, Tensor]]

    def cached(self) -> bool:
        """Whether the cache can tell that the state is there already (a cache that cannot
        tell counts as holding it: the plan then builds it alone)."""
        contains = getattr(self.memo, "contains", None)
        return contains is None or bool(contains(self.key))
