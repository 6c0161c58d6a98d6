"""DELTA (Li et al. 2019): fine-tuning with an attention-weighted feature-map distance to
the source model, as TLlib publishes it.

DELTA follows TLlib (``tllib/regularization/delta.py`` and its example
``examples/task_adaptation/image_classification/delta.py``). TLlib sums the feature term
over the batch, ours averages it (see :mod:`pacnet.methods.regularizers`), so the same loss
needs ``α_ours = trade_off_TLlib × B`` with ``B`` the training batch size: DELTA's default α
(``alpha=None``) is TLlib's default trade-off 0.01 × the target batch the training loop
draws (``min(batch_size, training samples)``), which is exactly TLlib's published setting
for any benchmark; an explicit α is used as given. ``layers="tllib"`` compares the layers
TLlib hooks, each ResNet stage's last convolution, instead of the stage outputs.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from pacnet.core.roles import covered_layers
from pacnet.errors import check
from pacnet.io import tensor_digest
from pacnet.methods.base import Method, TransferContext, one_network, with_target_head
from pacnet.methods.baselines import LinearProbe, everything, head_of
from pacnet.methods.plan import TrainingPlan
from pacnet.methods.regularized import STRENGTH_GRID, head_term, non_negative
from pacnet.methods.regularizers import FeatureDistance, FeatureTap
from pacnet.training import distributed
from pacnet.training.batches import IterableSource, as_source, to_device
from pacnet.training.train import Data, LossFn, infer, outputs

TLLIB_TRADE_OFF = 0.01
"""TLlib's default DELTA trade-off (``--trade-off-backbone``), for its batch-summed term."""

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
    named = dict.fromkeys(n.strip() for n in spec.split(",") if n.strip())  # each once
    return list(named) or default_layers(model)


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
            non_negative(alpha=self.alpha)
        non_negative(beta=self.beta)
        check(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        check(self.attention_samples >= 1, "attention_samples must be >= 1")


class Delta(Method):
    name = "delta"
    summary = (
        "fine-tune with an attention-weighted feature-map distance to the source (Li et al. 2019)"
    )
    Params = DeltaParams
    stacks = True
    revision: ClassVar[int] = 1  # 1: default α = TLlib's trade-off × batch; population std

    def plan(self, ctx: TransferContext, final: bool = True) -> TrainingPlan:
        p: DeltaParams = self.params
        model = with_target_head(copy.deepcopy(ctx.source_model), ctx)
        head_name, _ = head_of(model)
        layers = delta_layers(p.layers, model)
        alpha = delta_alpha(p.alpha, ctx)
        source = copy.deepcopy(ctx.source_model)
        attention = attention_for(ctx, source, layers, p) if p.attention else None
        behaviour = FeatureDistance(model, source, layers, attention)
        penalties = [(alpha, behaviour), (p.beta, head_term(model, head_name, ctx))]
        details = {"layers": layers, "alpha_used": alpha}
        finish = functools.partial(one_network, model, ctx, details=details)
        return TrainingPlan(model, everything(model), finish, penalties=penalties)


def attention_for(
    ctx: TransferContext, source: nn.Module, layers: list[str], p: DeltaParams
) -> dict[str, Tensor]:
    """DELTA's channel attention on ``ctx``'s target data, measured with ``source`` (a copy
    of the source model) once per run and data: every candidate α of a cross-validation
    fold shares it."""
    train = ctx.target.train
    held = {"x": train.x, "y": train.y}
    if ctx.target.val is not None:
        held.update(val_x=ctx.target.val.x, val_y=ctx.target.val.y)
    key = ("delta-attention", tuple(layers), p.temperature, p.attention_samples,
           ctx.new_head is not None, tensor_digest(held))  # fmt: skip
    if key not in ctx.kept:
        scorer = source
        if ctx.new_head is not None:  # as TLlib: first fit a head on the target data
            scorer = LinearProbe().transfer(ctx).target_model
        data = Data(train.x[: p.attention_samples], train.y[: p.attention_samples])
        ctx.kept[key] = channel_attention(scorer, layers, data, ctx.loss_fn, p.temperature)
    return ctx.kept[key]


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


@torch.no_grad()
def channel_attention(
    model: nn.Module,
    layers: Sequence[str],
    data: Data,
    loss_fn: LossFn,
    temperature: float = 5.0,
    batch_size: int = 1024,
) -> dict[str, Tensor]:
    """DELTA's channel attention: how much the loss on ``data`` rises when a channel is off.

    For each layer and output channel ``c``, the channel's output is set to zero (a forward
    hook) and the loss increase ``Δ_c`` over ``data`` is measured with the source model
    (in eval mode). Per layer, ``a = softmax(zscore(Δ) / temperature)``, as in TLlib (the
    z-score with the population standard deviation, NumPy's ``std``). On a bias-free
    convolution (TLlib's layers), zeroing a channel's output is TLlib's zeroing of that
    channel's weights.
    """
    modules = dict(model.named_modules())
    was_training = model.training
    model.eval()

    def mean_loss() -> float:
        total = 0.0
        for out, y in outputs(model, data, batch_size):
            total += float(loss_fn(out, to_device(y, out.device))) * len(y)
        return total / len(data)

    base = mean_loss()
    attention = {}
    off = {"channel": 0}

    def silence(_m: nn.Module, _i: object, out: Tensor) -> Tensor:
        out = out.clone()
        out[:, off["channel"]] = 0
        return out

    for name in layers:
        width = _channels(model, name, data)
        handle = modules[name].register_forward_hook(silence)
        try:
            deltas = []
            for c in range(width):
                off["channel"] = c
                deltas.append(mean_loss() - base)
        finally:
            handle.remove()
        delta = torch.tensor(deltas, dtype=torch.float64)
        spread = delta.std(correction=0)
        z = (delta - delta.mean()) / spread if spread > 0 else torch.zeros_like(delta)
        attention[name] = torch.softmax(z / temperature, 0).float()
    model.train(was_training)
    return attention


def _channels(model: nn.Module, name: str, data: Data) -> int:
    tap = FeatureTap(model, [name])
    try:
        infer(model, data.x[:1])
        return tap.features[name].shape[1]
    finally:
        tap.close()
