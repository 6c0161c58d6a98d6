"""The interface every transfer method implements, and what it hands back.

A method gets a :class:`TransferContext` (the trained source model, source and target data,
loss, budgets, seed) and returns a :class:`Transfer`: the model for the target task, the
model it leaves for the source task (the same network for fine-tuning, which forgets; the
masked view for PAC-Net, which does not), and parameter counts. Methods never modify
``ctx.source_model``; they copy it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

from pacnet.benchmarks.base import Benchmark, Task
from pacnet.train import FitConfig, FitResult, LossFn

StateBuilder = Callable[[], Mapping[str, Tensor]]


def _no_cache(key: Mapping[str, Any], build: StateBuilder) -> Mapping[str, Tensor]:
    return build()


@dataclass
class TransferContext:
    """Everything a method may use for one run."""

    benchmark: Benchmark
    source_model: nn.Module
    source: Task
    target: Task
    seed: int
    source_key: str = ""
    memo: Callable[[Mapping[str, Any], StateBuilder], Mapping[str, Tensor]] = _no_cache

    @property
    def loss_fn(self) -> LossFn:
        return self.benchmark.loss_fn()

    @property
    def source_fit(self) -> FitConfig:
        return self.benchmark.source_fit()

    @property
    def target_fit(self) -> FitConfig:
        return self.benchmark.target_fit()


@dataclass
class Transfer:
    """What a method produced."""

    target_model: nn.Module
    source_model: nn.Module
    trainable: int
    total: int
    stored: int
    fit: FitResult
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class NoParams:
    """A method without hyperparameters of its own."""


def count(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


class Method(ABC):
    """A transfer strategy. Subclasses set ``name``, ``summary`` and ``Params``."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Params: ClassVar[type] = NoParams

    def __init__(self, params: Any = None):
        self.params = params if params is not None else self.Params()

    @abstractmethod
    def transfer(self, ctx: TransferContext) -> Transfer:
        """Adapt to the target task described by ``ctx``."""
