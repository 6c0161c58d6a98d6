"""Fine-tuning with a transfer regulariser: L2-SP, DELTA, BSS.

All three train every weight of a copy of the source model (so the source task is
forgotten to some degree, which ``source_test_after`` measures) and add their term to the
loss. The head is the model's output layer; it starts as a copy of the source head and is
pulled toward it with strength β (L2-SP and DELTA).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from pacnet.core.roles import covered_layers
from pacnet.errors import check
from pacnet.methods.base import (
    Method,
    Transfer,
    TransferContext,
    count,
    source_view,
    with_target_head,
)
from pacnet.methods.baselines import LinearProbe, head_of
from pacnet.regularizers import (
    L2,
    FeatureDistance,
    SpectralShrinkage,
    StartingPoint,
    channel_attention,
)
from pacnet.training.train import Data


def default_layers(model: nn.Module) -> list[str]:
    """DELTA's layers: the four stages of a ResNet (``layer1``..``layer4``), otherwise the
    output of every weight layer the default mask covers."""
    stages = [f"layer{i}" for i in range(1, 5)]
    names = dict(model.named_children())
    if all(s in names for s in stages):
        return stages
    return covered_layers(model)


def head_term(model: nn.Module, head_name: str, ctx: TransferContext) -> nn.Module:
    """β's term: toward the source head when inherited, toward 0 when the head is new."""
    head = [w for n, w in model.named_parameters() if n.startswith(head_name + ".")]
    return L2(head) if ctx.new_head is not None else StartingPoint(head)


STRENGTH_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


def _non_negative(**values: float) -> None:
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
        _non_negative(alpha=self.alpha, beta=self.beta)


class L2SP(Method):
    name = "l2sp"
    summary = "fine-tune with α/2‖w − w_source‖² on the body and β/2 on the head (Li et al. 2018)"
    Params = L2SPParams

    def transfer(self, ctx: TransferContext) -> Transfer:
        p: L2SPParams = self.params
        model = with_target_head(copy.deepcopy(ctx.source_model), ctx)
        head_name, _ = head_of(model)
        body = [w for n, w in model.named_parameters() if not n.startswith(head_name + ".")]
        penalties = [(p.alpha, StartingPoint(body)), (p.beta, head_term(model, head_name, ctx))]
        result = self.fit_target(ctx, model, penalties=penalties)
        n = count(model)
        return Transfer(model, source_view(model, ctx), trainable=n, total=n, stored=n, fit=result)


@dataclass
class DeltaParams:
    """DELTA: α on the attention-weighted feature distance, β on the head.

    ``layers``: comma-separated module names whose outputs are compared (empty: a ResNet's
    four stages, else every prunable Linear/Conv module but the head). ``attention=false``
    gives uniform weights; the attention is measured on the first ``attention_samples``
    target samples (TLlib: 10 batches of 32).
    """

    alpha: float = 0.01
    beta: float = 0.01
    attention: bool = True
    temperature: float = 5.0
    attention_samples: int = 256
    layers: str = ""
    search: ClassVar[dict[str, tuple[Any, ...]]] = {"alpha": STRENGTH_GRID}
    tune: ClassVar[dict[str, tuple[str, float, float]]] = {"alpha": ("log", 1e-5, 100.0)}

    def __post_init__(self) -> None:
        _non_negative(alpha=self.alpha, beta=self.beta)
        check(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        check(self.attention_samples >= 1, "attention_samples must be >= 1")


class Delta(Method):
    name = "delta"
    summary = (
        "fine-tune with an attention-weighted feature-map distance to the source (Li et al. 2019)"
    )
    Params = DeltaParams

    def transfer(self, ctx: TransferContext) -> Transfer:
        p: DeltaParams = self.params
        model = with_target_head(copy.deepcopy(ctx.source_model), ctx)
        head_name, _ = head_of(model)
        layers = [n.strip() for n in p.layers.split(",") if n.strip()] or default_layers(model)
        source = copy.deepcopy(ctx.source_model)
        attention = None
        if p.attention:
            scorer = source
            if ctx.new_head is not None:  # as TLlib: first fit a head on the target data
                scorer = LinearProbe().transfer(ctx).target_model
            data = ctx.target.train
            data = Data(data.x[: p.attention_samples], data.y[: p.attention_samples])
            attention = channel_attention(scorer, layers, data, ctx.loss_fn, p.temperature)
        behaviour = FeatureDistance(model, source, layers, attention)
        penalties = [(p.alpha, behaviour), (p.beta, head_term(model, head_name, ctx))]
        try:
            result = self.fit_target(ctx, model, penalties=penalties)
        finally:
            behaviour.close()
        n = count(model)
        return Transfer(
            model,
            source_view(model, ctx),
            trainable=n,
            total=n,
            stored=n,
            fit=result,
            details={"layers": layers},
        )


@dataclass
class BSSParams:
    """BSS: weight η of the penalty on the k smallest singular values (Chen et al.: 0.001, k 1)."""

    weight: float = 0.001
    k: int = 1
    search: ClassVar[dict[str, tuple[Any, ...]]] = {"weight": STRENGTH_GRID}
    tune: ClassVar[dict[str, tuple[str, float, float]]] = {"weight": ("log", 1e-5, 100.0)}

    def __post_init__(self) -> None:
        _non_negative(weight=self.weight)
        check(self.k >= 1, f"k must be >= 1, got {self.k}")


class BSS(Method):
    name = "bss"
    summary = (
        "fine-tune, penalising the k smallest singular values of the features (Chen et al. 2019)"
    )
    Params = BSSParams

    def transfer(self, ctx: TransferContext) -> Transfer:
        p: BSSParams = self.params
        model = with_target_head(copy.deepcopy(ctx.source_model), ctx)
        head_name, _ = head_of(model)
        term = SpectralShrinkage(model, head_name, p.k)
        try:
            result = self.fit_target(ctx, model, penalties=[(p.weight, term)])
        finally:
            term.close()
        n = count(model)
        return Transfer(model, source_view(model, ctx), trainable=n, total=n, stored=n, fit=result)
