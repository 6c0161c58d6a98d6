"""What a benchmark is: source data, paired target draws, a model, a loss and a metric.

A benchmark knows nothing about transfer methods. It produces

* the **source task** (:meth:`Benchmark.source`): plenty of train, validation and test data;
* a **target task** for a seed and a target size (:meth:`Benchmark.target`): the seed alone
  fixes the target (its concept/regime and its samples), so every method run with that seed
  sees the same data (*paired* comparison), and the samples for a smaller size are a prefix
  of those for a larger one;
* a fresh model (:meth:`Benchmark.make_model`), the training loss on the model's scale, and
  the reported metric in the data's own units (:meth:`Benchmark.score`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

from pacnet.benchmarks.mlp import check_activation, check_hidden
from pacnet.errors import check
from pacnet.training.cache import StateCache
from pacnet.training.train import Data, FitConfig, LossFn

SOURCE_STEPS = "optimizer steps training the source model (and PAC-Net's Allocate)"
TARGET_STEPS = "optimizer steps every method gets on the target"
PROTOCOL = "fixed (train all target steps) or early (stop on held-out target samples)"


@dataclass
class BudgetConfig:
    """Training budgets and protocol, shared by every benchmark's settings.

    The source budget trains the source model (and PAC-Net's Allocate); the target budget is
    what every method gets on the target task. ``protocol="fixed"`` trains the full
    ``target_steps``; ``"early"`` holds out ``target_val_fraction`` of the target samples and
    stops after ``patience`` evaluations (every ``eval_every`` steps) without improvement.
    """

    source_steps: int = field(default=4000, metadata={"help": SOURCE_STEPS})
    source_lr: float = field(default=1e-3, metadata={"help": "source learning rate"})
    source_batch: int = field(default=128, metadata={"help": "source batch size"})
    target_steps: int = field(default=500, metadata={"help": TARGET_STEPS})
    target_lr: float = field(default=1e-3, metadata={"help": "target learning rate"})
    target_batch: int = field(default=32, metadata={"help": "target batch size"})
    protocol: str = field(default="fixed", metadata={"help": PROTOCOL})
    target_val_fraction: float = field(
        default=0.2, metadata={"help": "early: share of the target samples held out"}
    )
    patience: int = field(default=10, metadata={"help": "early: evaluations without gain"})
    eval_every: int = field(default=25, metadata={"help": "steps between evaluations"})

    def __post_init__(self) -> None:
        check(
            self.protocol in ("fixed", "early"),
            f"protocol must be 'fixed' or 'early', got {self.protocol!r}",
        )
        check(
            0 < self.target_val_fraction < 1,
            f"target_val_fraction must lie in (0, 1), got {self.target_val_fraction}",
        )
        check(self.patience >= 1, f"patience must be >= 1, got {self.patience}")
        for name in ("source_steps", "target_steps"):
            check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("source_batch", "target_batch", "eval_every"):
            check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("source_lr", "target_lr"):
            check(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        if hasattr(self, "activation"):  # the settings of an MLP benchmark
            check_activation(self.activation)
        if hasattr(self, "hidden"):
            check_hidden(self.hidden)

    def source_fit(self) -> FitConfig:
        """Budget for training the source model (and for Allocate)."""
        c = self
        return FitConfig(
            steps=c.source_steps,
            batch_size=c.source_batch,
            lr=c.source_lr,
            eval_every=max(c.eval_every, c.source_steps // 40),
        )

    def target_fit(self) -> FitConfig:
        """Budget every method gets on the target task."""
        c = self
        return FitConfig(
            steps=c.target_steps,
            batch_size=c.target_batch,
            lr=c.target_lr,
            eval_every=c.eval_every,
            patience=c.patience if c.protocol == "early" else None,
        )


@dataclass(frozen=True)
class TaskData:
    """One task's data: train (what a method may learn from), validation and test.

    Not to be confused with :class:`pacnet.Tasks`, the per-task tensors of one network."""

    train: Data
    val: Data | None
    test: Data


class Benchmark(ABC):
    """A transfer benchmark. Subclasses set ``name``, ``metric`` and ``Config``."""

    name: ClassVar[str]
    metric: ClassVar[str]
    summary: ClassVar[str]
    Config: ClassVar[type]
    quick: ClassVar[dict[str, Any]] = {}
    threads: ClassVar[int | None] = None
    """Torch CPU threads a run uses unless told otherwise (None: torch's default). Small
    models run faster on one thread, and parallel processes beat threads for them."""
    source_fields: ClassVar[tuple[str, ...]] = ()
    source_name: ClassVar[str | None] = None
    """Benchmarks with the same ``source_name`` and source settings share one source model
    (None: the benchmark's own name)."""
    family: ClassVar[str | None] = None
    """The family a benchmark belongs to (``tables``: the real tables, one benchmark each),
    under which ``pacnet benchmarks`` lists it; None: it stands alone."""

    def __init__(self, config: Any, cache: StateCache | None = None):
        self.config = config
        self.cache = cache or StateCache()

    @abstractmethod
    def source(self) -> TaskData:
        """The source task (deterministic: the same for every seed)."""

    @abstractmethod
    def target(self, seed: int, size: int) -> TaskData:
        """The target task of ``seed`` with ``size`` labelled training samples."""

    @abstractmethod
    def make_model(self, seed: int) -> nn.Module:
        """A freshly initialised model (seeded)."""

    @abstractmethod
    def loss_fn(self) -> LossFn:
        """Training loss on the model's output scale."""

    @abstractmethod
    def score(self, model: nn.Module, data: Data) -> float:
        """The reported metric (lower is better) in the data's own units."""

    def labelled(self, size: int, unit: str, part: Callable[[slice], Data], test: Data) -> TaskData:
        """The target task from its ``size`` labelled items, ``part(slice)`` giving the data of
        a slice of them: all train (protocol ``fixed``), or the first ``target_val_fraction``
        held out for early stopping (``early``)."""
        if self.config.protocol != "early":
            return TaskData(part(slice(None)), None, test)
        n_val = max(1, round(size * self.config.target_val_fraction))
        check(
            size - n_val >= 1,
            f"early stopping holds out {n_val} of the {size} target {unit} for validation, "
            "leaving none to train on: lower --target-val-fraction or raise --target-size",
        )
        return TaskData(part(slice(n_val, None)), part(slice(0, n_val)), test)

    def target_head(self, seed: int) -> dict[str, Tensor] | None:
        """Fresh head tensors (by parameter name) when the target's output differs from the
        source's; None when the target starts from a copy of the source head."""
        return None

    def metrics(self, model: nn.Module, data: Data) -> dict[str, float]:
        """Every metric the benchmark reports (the main one included)."""
        return {self.metric: self.score(model, data)}

    def details(self) -> dict[str, Any]:
        """Facts about this benchmark instance worth keeping with a result."""
        return {}

    def source_fit(self) -> FitConfig:
        """Budget for training the source model (and for Allocate)."""
        return self.config.source_fit()

    def target_fit(self) -> FitConfig:
        """Budget every method gets on the target task."""
        return self.config.target_fit()

    @property
    def max_target_size(self) -> int:
        """The largest target size a seed's pool holds."""
        return int(self.config.target_pool)

    def source_settings(self) -> dict[str, Any]:
        """The settings that determine the source model (its cache key)."""
        from pacnet.config import to_dict

        settings = to_dict(self.config)
        return {k: settings[k] for k in self.source_fields}
