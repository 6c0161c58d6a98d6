"""Fine-tuning with a transfer regulariser: L2-SP, DELTA, BSS.

All three train every weight of a copy of the source model (so the source task is
forgotten to some degree, which ``source_test_after`` measures) and add their term to the
loss. The head is the model's output layer; it starts as a copy of the source head and is
pulled toward it with strength β (L2-SP and DELTA).

DELTA follows TLlib (``tllib/regularization/delta.py`` and its example
``examples/task_adaptation/image_classification/delta.py``). TLlib sums the feature term
over the batch, ours averages it (see :mod:`pacnet.regularizers`), so the same loss needs
``α_ours = trade_off_TLlib × B`` with ``B`` the training batch size: DELTA's default α
(``alpha=None``) is TLlib's default trade-off 0.01 × the target batch the training loop
draws (``min(batch_size, training samples)``), which is exactly TLlib's published setting
for any benchmark; an explicit α is used as given. ``layers="tllib"`` compares the layers
TLlib hooks, each ResNet stage's last convolution, instead of the stage outputs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn
from torch.utils.data import DataLoader

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
from pacnet.training import distributed
from pacnet.training.batches import IterableSource, as_source
from pacnet.training.train import Data

_STAGES = tuple(f"layer{i}" for i in range(1, 5))


def default_layers(model: nn.Module) -> list[str]:
    """DELTA's layers: the four stages of a ResNet (``layer1``..``layer4``), otherwise the
    output of every weight layer the default mask covers."""
    names = dict(model.named_children())
    if all(s in names for s in _STAGES):
        return list(_STAGES)
    return covered_layers(model)


def tllib_layers(model: nn.Module) -> list[str]:
    """The layers TLlib's DELTA hooks: the last convolution of each ResNet stage's last
    block (torchvision's ResNet-50: ``layer1.2.conv3`` …; our ResNet-18: ``layer1.1.conv2``
    …). A model without the stages ``layer1``..``layer4`` gets a one-line error."""
    children = dict(model.named_children())
    check(
        all(isinstance(children.get(s), nn.Sequential) for s in _STAGES),
        "layers='tllib' needs a ResNet with stages layer1..layer4 (TLlib hooks each stage's "
        "last convolution); leave --layers empty or name the layers",
    )
    names = []
    for stage in _STAGES:
        blocks = list(children[stage].named_children())
        check(blocks, f"layers='tllib': ResNet stage {stage} is empty")
        block_name, block = blocks[-1]
        convs = [
            n
            for n, m in block.named_modules()
            if isinstance(m, nn.Conv2d) and not n.startswith("downsample")
        ]
        check(convs, f"layers='tllib': {stage}.{block_name} has no convolution")
        names.append(f"{stage}.{block_name}.{convs[-1]}")
    return names


def delta_layers(spec: str, model: nn.Module) -> list[str]:
    """DELTA's ``layers`` setting: empty (:func:`default_layers`), ``tllib``
    (:func:`tllib_layers`) or comma-separated module names."""
    if spec.strip().lower() == "tllib":
        return tllib_layers(model)
    return [n.strip() for n in spec.split(",") if n.strip()] or default_layers(model)


def head_term(model: nn.Module, head_name: str, ctx: TransferContext) -> nn.Module:
    """β's term: toward the source head when inherited, toward 0 when the head is new."""
    head = [w for n, w in model.named_parameters() if n.startswith(head_name + ".")]
    return L2(head) if ctx.new_head is not None else StartingPoint(head)


STRENGTH_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)

TLLIB_TRADE_OFF = 0.01
"""TLlib's default DELTA trade-off (``--trade-off-backbone``), for its batch-summed term."""


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

    ``alpha``: None (the default) is TLlib's default trade-off after our batch-mean scaling,
    ``α = 0.01 × B`` with ``B = min(target batch size, target training samples)`` (the
    batch the loop draws), so the term equals TLlib's batch sum × 0.01; the α used is stored
    in the run's details (``alpha_used``). An explicit α is used as given.
    ``layers``: comma-separated module names whose outputs are compared (empty: a ResNet's
    four stages, else every prunable Linear/Conv module but the head), or ``tllib``: the
    layers TLlib hooks, each ResNet stage's last convolution (ResNets only).
    ``attention=false`` gives uniform weights; the attention is measured on the first
    ``attention_samples`` target samples (TLlib: 10 batches of 32).
    """

    alpha: float | None = field(
        default=None, metadata={"shown": f"{TLLIB_TRADE_OFF} × target batch size (TLlib's)"}
    )
    beta: float = 0.01
    attention: bool = True
    temperature: float = 5.0
    attention_samples: int = 256
    layers: str = field(
        default="",
        metadata={"shown": "'' (ResNet stages, else the covered layers); tllib: TLlib's"},
    )
    search: ClassVar[dict[str, tuple[Any, ...]]] = {"alpha": STRENGTH_GRID}
    tune: ClassVar[dict[str, tuple[str, float, float]]] = {"alpha": ("log", 1e-5, 100.0)}

    def __post_init__(self) -> None:
        if self.alpha is not None:
            _non_negative(alpha=self.alpha)
        _non_negative(beta=self.beta)
        check(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        check(self.attention_samples >= 1, "attention_samples must be >= 1")


class Delta(Method):
    name = "delta"
    summary = (
        "fine-tune with an attention-weighted feature-map distance to the source (Li et al. 2019)"
    )
    Params = DeltaParams
    revision: ClassVar[int] = 1  # 1: default α = TLlib's trade-off × batch; population std

    def transfer(self, ctx: TransferContext) -> Transfer:
        p: DeltaParams = self.params
        model = with_target_head(copy.deepcopy(ctx.source_model), ctx)
        head_name, _ = head_of(model)
        layers = delta_layers(p.layers, model)
        alpha = delta_alpha(p.alpha, ctx)
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
        penalties = [(alpha, behaviour), (p.beta, head_term(model, head_name, ctx))]
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
            details={"layers": layers, "alpha_used": alpha},
        )


def delta_alpha(alpha: float | None, ctx: TransferContext) -> float:
    """DELTA's α: ``alpha`` when given, else TLlib's trade-off × the batch the training loop
    draws (``min(batch size, training samples)``), which makes our batch mean × α equal
    TLlib's batch sum × its trade-off."""
    if alpha is not None:
        return alpha
    batch = batch_samples(ctx.target.train, ctx.target_fit.batch_size)
    check(
        batch is not None,
        "DELTA's default alpha is TLlib's trade-off × the training batch size, which this "
        "training data does not tell: give alpha",
    )
    return TLLIB_TRADE_OFF * batch


def batch_samples(data: object, batch_size: int) -> int | None:
    """Samples in one training batch as the loop draws them, over all processes:
    ``min(batch_size, len(data))`` for :class:`~pacnet.Data` and datasets (full batches
    only), a DataLoader's own batch size (× the processes when its sampler is distributed);
    None for other iterables of batches."""
    source = as_source(data, "the target training data")
    if isinstance(source, IterableSource):
        loader = source.source
        if isinstance(loader, DataLoader) and loader.batch_size is not None:
            return loader.batch_size * (distributed.world_size() if source.per_rank else 1)
        return None
    if not hasattr(source, "__len__"):
        return None
    return min(batch_size, len(source))


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
