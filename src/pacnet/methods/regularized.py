"""Fine-tuning with a transfer regulariser: L2-SP and BSS here, DELTA in
:mod:`pacnet.methods.delta`.

All of them train every weight of a copy of the source model (so the source task is
forgotten to some degree, which ``source_test_after`` measures) and add their term to the
loss. The head is the model's output layer; it starts as a copy of the source head and is
pulled toward it with strength β (L2-SP and DELTA).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from pacnet.errors import check
from pacnet.methods.base import Method, TransferContext, one_network, with_target_head
from pacnet.methods.baselines import everything, head_of
from pacnet.methods.plan import TrainingPlan
from pacnet.methods.regularizers import (
    L2,
    SpectralShrinkage,
    StartingPoint,
)


def head_term(model: nn.Module, head_name: str, ctx: TransferContext) -> nn.Module:
    """β's term: toward the source head when inherited, toward 0 when the head is new."""
    head = [w for n, w in model.named_parameters() if n.startswith(head_name + ".")]
    return L2(head) if ctx.new_head is not None else StartingPoint(head)


STRENGTH_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


def non_negative(**values: float) -> None:
    for name, value in values.items():
        check(value >= 0, f"{name} must be >= 0, got {value}")


@dataclass
class L2SPParams:
    """L2-SP strengths: α on the body toward the source, β on the head (paper: 0.01)."""

    alpha: float = 0.01
    beta: float = 0.01
    search: ClassVar[dict[str, tuple[Any, ...]]] = {"alpha": STRENGTH_GRID}
    tune: ClassVar[dict[str, tuple[str, float, float]]] = {"alpha": ("log", 1e-5, 100.0)}

    def __post_init__(self) -> None:
        non_negative(alpha=self.alpha, beta=self.beta)


class L2SP(Method):
    name = "l2sp"
    summary = "fine-tune with α/2‖w − w_source‖² on the body and β/2 on the head (Li et al. 2018)"
    Params = L2SPParams
    stacks = True

    def plan(self, ctx: TransferContext, final: bool = True) -> TrainingPlan:
        p: L2SPParams = self.params
        model = with_target_head(copy.deepcopy(ctx.source_model), ctx)
        head_name, _ = head_of(model)
        body = [w for n, w in model.named_parameters() if not n.startswith(head_name + ".")]
        penalties = [(p.alpha, StartingPoint(body)), (p.beta, head_term(model, head_name, ctx))]
        finish = functools.partial(one_network, model, ctx)
        return TrainingPlan(model, everything(model), finish, penalties=penalties)


@dataclass
class BSSParams:
    """BSS: weight η of the penalty on the k smallest singular values (Chen et al.: 0.001, k 1)."""

    weight: float = 0.001
    k: int = 1
    search: ClassVar[dict[str, tuple[Any, ...]]] = {"weight": STRENGTH_GRID}
    tune: ClassVar[dict[str, tuple[str, float, float]]] = {"weight": ("log", 1e-5, 100.0)}

    def __post_init__(self) -> None:
        non_negative(weight=self.weight)
        check(self.k >= 1, f"k must be >= 1, got {self.k}")


class BSS(Method):
    name = "bss"
    summary = (
        "fine-tune, penalising the k smallest singular values of the features (Chen et al. 2019)"
    )
    Params = BSSParams
    stacks = True
    revision: ClassVar[int] = 1  # 1: σ² from the Gram matrix's eigenvalues in float64 (was
    # float32 svdvals): the same term, computed more precisely and as the batched engine does

    def plan(self, ctx: TransferContext, final: bool = True) -> TrainingPlan:
        p: BSSParams = self.params
        model = with_target_head(copy.deepcopy(ctx.source_model), ctx)
        head_name, _ = head_of(model)
        penalties = [(p.weight, SpectralShrinkage(model, head_name, p.k))]
        finish = functools.partial(one_network, model, ctx)
        return TrainingPlan(model, everything(model), finish, penalties=penalties)
