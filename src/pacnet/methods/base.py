"""The interface every transfer method implements, and what it hands back.

A method gets a :class:`TransferContext` (the trained source model, source and target data,
loss, budgets, seed) and returns a :class:`Transfer`: the model for the target task, the
model it leaves for the source task (the same network for fine-tuning, which forgets; the
masked view for PAC-Net, which does not), and parameter counts. Methods never modify
``ctx.source_model``; they copy it.
"""

from __future__ import annotations

import copy
import functools
import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from torch import Tensor, nn

from pacnet.benchmarks.base import Benchmark, TaskData
from pacnet.config import make
from pacnet.core.tasks import Tasks
from pacnet.errors import PacnetError
from pacnet.methods.plan import SourceTraining, TrainingPlan
from pacnet.training.train import Data, FitConfig, FitResult, LossFn

SEARCH_BUDGET = 6
"""Candidates every method gets when its main strength is chosen on validation data."""

StateBuilder = Callable[[], Mapping[str, Tensor]]
Targets = Sequence[tuple[str, TaskData]]
"""Several targets by name, in the order one network serves them."""
Scorer = Callable[[nn.Module, Data], float]
"""A benchmark's metric of a model on data (lower is better)."""


def _no_cache(key: Mapping[str, Any], build: StateBuilder) -> Mapping[str, Tensor]:
    return build()


@dataclass
class TransferContext:
    """Everything a method may use for one run."""

    benchmark: Benchmark
    source_model: nn.Module
    source: TaskData
    target: TaskData
    seed: int
    source_key: str = ""
    memo: Callable[[Mapping[str, Any], StateBuilder], Mapping[str, Tensor]] = _no_cache
    amp: str = "none"
    kept: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)
    """What a method computes once per run from the source model and reuses in every fold
    and candidate of its selection (shared by the copies ``dataclasses.replace`` makes):
    PAC-Net's mask per ratio."""

    @property
    def loss_fn(self) -> LossFn:
        return self.benchmark.loss_fn()

    @property
    def source_fit(self) -> FitConfig:
        return replace(self.benchmark.source_fit(), amp=self.amp)

    @property
    def target_fit(self) -> FitConfig:
        return replace(self.benchmark.target_fit(), amp=self.amp)

    @functools.cached_property
    def new_head(self) -> dict[str, Tensor] | None:
        """A fresh head for the target (its output differs from the source's), or None when
        the target starts from a copy of the source head."""
        head = self.benchmark.target_head(self.seed)
        if head is None:
            return None
        device = next(self.source_model.parameters()).device
        return {name: t.to(device) for name, t in head.items()}


def install(model: nn.Module, tensors: Mapping[str, Tensor]) -> None:
    """Replace parameters by name with new ones holding ``tensors`` (shapes may change)."""
    for name, value in tensors.items():
        module_name, _, leaf = name.rpartition(".")
        module = model.get_submodule(module_name)
        module._parameters[leaf] = nn.Parameter(value.detach().clone())
        if isinstance(module, nn.Linear) and leaf == "weight":
            module.out_features, module.in_features = value.shape


def with_target_head(model: nn.Module, ctx: TransferContext) -> nn.Module:
    """``model`` with the target's fresh head installed, if the target needs one."""
    if ctx.new_head is not None:
        install(model, ctx.new_head)
    return model


def source_view(model: nn.Module, ctx: TransferContext) -> nn.Module:
    """What a one-network method leaves for the source task: the trained network itself, or,
    when the target got its own head, a copy with the source head put back."""
    if ctx.new_head is None:
        return model
    view = copy.deepcopy(model)
    source_params = dict(ctx.source_model.named_parameters())
    install(view, {name: source_params[name] for name in ctx.new_head})
    return view


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
    tasks: Tasks | None = None
    """PAC-Net: the per-task tensors of ``target_model``, which then holds every task
    (``pacnet.save(path, target_model, tasks)`` writes them all); None for one-network
    methods."""


@dataclass
class NoParams:
    """A method without hyperparameters of its own."""

    search: ClassVar[dict[str, tuple[Any, ...]]] = {}


def candidates(params_cls: type, fixed: Mapping[str, Any] = ()) -> list[dict[str, Any]]:
    """The hyperparameter settings a validation search tries: the product of ``search``
    over the names ``fixed`` leaves open."""
    space: dict[str, tuple[Any, ...]] = getattr(params_cls, "search", {})
    names = [n for n in space if n not in dict(fixed)]
    values = [space[n] for n in names]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]


def build(
    method_cls: type[Method],
    fixed: Mapping[str, Any] | None = None,
    chosen: Mapping[str, Any] | None = None,
) -> Method:
    """``method_cls`` with the hyperparameters ``fixed`` and a candidate's ``chosen`` values
    over them (each checked, one line for a bad one)."""
    return method_cls(make(method_cls.Params, {**(fixed or {}), **(chosen or {})}))


def one_network(
    model: nn.Module,
    ctx: TransferContext,
    fit: FitResult,
    details: dict[str, Any] | None = None,
) -> Transfer:
    """What a method that trains all of one network hands back: ``model`` for the target,
    :func:`source_view` of it for the source, every parameter trainable and stored once."""
    n = count(model)
    return Transfer(
        model, source_view(model, ctx), trainable=n, total=n, stored=n, fit=fit,
        details=dict(details or {}),
    )  # fmt: skip


def count(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


class Method(ABC):
    """A transfer strategy. Subclasses set ``name``, ``summary`` and ``Params``."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Params: ClassVar[type] = NoParams
    starts_from_source: ClassVar[bool] = True
    """False for methods whose start is not the plain source model (PAC-Net: its source
    training + Allocate is what equal source compute matches; scratch: no source at all),
    so ``--source-compute equal`` leaves them as they are."""
    revision: ClassVar[int] = 0
    """Raised when a method's defaults or behaviour change, so runs stored before the change
    (whose ids name only non-default settings) are not taken for new ones."""
    serves_several_targets: ClassVar[bool] = False
    """Whether :meth:`chain` serves several targets from one network (PAC-Net)."""

    def __init__(self, params: Any = None):
        self.params = params if params is not None else self.Params()

    stacks: ClassVar[bool] = False
    """Whether the batched engine may train this method's plans stacked: a method says so
    when its plans use only what :mod:`pacnet.methods.engine` translates (the model's own
    layers, LoRA's factors, L2-SP's and the head's pulls, a decay, DELTA's and BSS's
    terms); one that says nothing trains alone on either engine."""

    @abstractmethod
    def plan(self, ctx: TransferContext, final: bool = True) -> TrainingPlan:
        """The method's target training laid out (:class:`~pacnet.methods.plan.TrainingPlan`),
        the one description of it that either engine trains. ``final=False`` (a
        cross-validation fold, whose model is only scored) may skip extra measurements."""

    def transfer(self, ctx: TransferContext) -> Transfer:
        """Adapt to the target task described by ``ctx``: the plan, trained alone
        (:func:`pacnet.methods.engine.run_alone`), finished."""
        from pacnet.methods.engine import run_alone  # the engine builds on this module

        return run_alone(self, ctx)

    def source_trainings(self, ctx: TransferContext) -> list[SourceTraining]:
        """The trainings on the source task its plans start from, cached (PAC-Net's
        Allocate); the batched engine trains those of many runs together first."""
        return []

    def chain(self, ctx: TransferContext, targets: Targets, score: Scorer) -> dict[str, Any]:
        """Serve ``targets`` one after another from one network, where the method can
        (:attr:`serves_several_targets`); returns the record of each step, with the
        network under ``model`` and its tasks under ``tasks``."""
        raise PacnetError(f"method {self.name!r} cannot serve several targets from one network")
