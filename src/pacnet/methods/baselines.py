"""References without a transfer regulariser: scratch, fine-tuning, linear probe."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from pacnet.core.mask import find_head
from pacnet.errors import check
from pacnet.methods.base import (
    Method,
    Transfer,
    TransferContext,
    count,
    one_network,
    with_target_head,
)
from pacnet.methods.plan import TrainingPlan
from pacnet.training.train import FitResult

LR_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)


@dataclass
class LearningRate:
    """The learning rate is the main strength (``None``: the benchmark's target lr)."""

    lr: float | None = None
    search: ClassVar[dict[str, tuple[Any, ...]]] = {"lr": LR_GRID}
    tune: ClassVar[dict[str, tuple[str, float, float]]] = {"lr": ("log", 1e-5, 1e-1)}

    def __post_init__(self) -> None:
        check(self.lr is None or self.lr > 0, f"lr must be > 0, got {self.lr}")


def everything(model: nn.Module) -> dict[str, bool]:
    """Every parameter that requires a gradient trains, all of its entries."""
    return {name: True for name, p in model.named_parameters() if p.requires_grad}


def head_of(model: nn.Module) -> tuple[str, nn.Module]:
    """The model's output module (the last Linear/Conv) and its name."""
    name = find_head(model)
    check(name is not None, "the model has no Linear/Conv output layer to use as its head")
    return name, model.get_submodule(name)


def keep_eval(module: nn.Module) -> None:
    """Make ``module`` and its children stay in eval mode whatever ``train()`` asks, so a
    frozen body keeps its BatchNorm statistics and dropout off."""
    for m in module.modules():
        m.train = lambda mode=True, _m=m: nn.Module.train(_m, False)  # type: ignore[method-assign]
        nn.Module.train(m, False)


class Scratch(Method):
    name = "scratch"
    summary = "train a fresh model on the target data only (the source model is kept aside)"
    Params = LearningRate
    stacks = True
    starts_from_source = False

    def plan(self, ctx: TransferContext, final: bool = True) -> TrainingPlan:
        model = with_target_head(ctx.benchmark.make_model(ctx.seed), ctx)
        model.to(next(ctx.source_model.parameters()).device)
        n = count(model)

        def finish(result: FitResult) -> Transfer:
            stored = n + count(ctx.source_model)
            return Transfer(model, ctx.source_model, n, n, stored, fit=result)

        return TrainingPlan(model, everything(model), finish, lr=self.params.lr)


class FineTune(Method):
    name = "finetune"
    summary = "start from the source model and train all weights on the target (one network)"
    Params = LearningRate
    stacks = True

    def plan(self, ctx: TransferContext, final: bool = True) -> TrainingPlan:
        model = with_target_head(copy.deepcopy(ctx.source_model), ctx)
        return TrainingPlan(
            model,
            everything(model),
            lambda result: one_network(model, ctx, result),
            lr=self.params.lr,
        )


class LinearProbe(Method):
    name = "linear_probe"
    summary = "freeze the source body, train only the head (a copy; the source keeps its own)"
    Params = LearningRate
    stacks = True

    def plan(self, ctx: TransferContext, final: bool = True) -> TrainingPlan:
        model = with_target_head(copy.deepcopy(ctx.source_model), ctx)
        head_name, head = head_of(model)
        model.requires_grad_(False)
        head.requires_grad_(True)
        for name, child in model.named_children():
            if head_name != name and not head_name.startswith(name + "."):
                keep_eval(child)
        n_head = sum(p.numel() for p in head.parameters())

        def finish(result: FitResult) -> Transfer:
            total = count(model)
            return Transfer(model, ctx.source_model, n_head, total, total + n_head, fit=result)

        return TrainingPlan(model, everything(model), finish, lr=self.params.lr)
