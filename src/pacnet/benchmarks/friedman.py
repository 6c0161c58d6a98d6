"""Friedman #1 regression transfer (Friedman 1991; transfer family of Pardoe & Stone 2010).

x ~ U[0, 1]^10 (five features carry no signal) and one *concept* (a, b, c) gives

    y = a1·10·sin(π(b1x1+c1)(b2x2+c2)) + a2·20·(b3x3+c3−0.5)² + a3·10(b4x4+c4)
        + a4·5(b5x5+c5) + ε,   ε ~ N(0, noise²),

with a_i, b_i ~ N(1, (0.1·d)²) and c_i ~ N(0, (0.05·d)²), d = ``distance`` (1 = Pardoe &
Stone's spread; larger moves targets further from the source). The source is one fixed
draw with ``source_samples`` points (paper: 20,000, half train, half test); a seed draws a
target concept and its samples, so every method with that seed sees the same data.

Labels are standardised with the source training mean and standard deviation (for both
tasks), so the model trains with MSE on unit-scale targets; that scaling is what the
calibration strength λ is relative to. The metric is RMSE in the original units of y,
measured on noisy test labels (the noise floor is ``noise``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from pacnet.benchmarks.base import Benchmark, BudgetConfig, TaskData
from pacnet.benchmarks.mlp import MLP
from pacnet.errors import check
from pacnet.training.cache import StateCache
from pacnet.training.train import Data, LossFn, evaluate

FEATURES = 10


@dataclass(frozen=True)
class Concept:
    """One Friedman #1 task: the scales a (4), b (5) and shifts c (5)."""

    a: tuple[float, ...]
    b: tuple[float, ...]
    c: tuple[float, ...]

    @classmethod
    def draw(cls, generator: torch.Generator, distance: float) -> Concept:
        def normal(n: int, mean: float, std: float) -> tuple[float, ...]:
            values = mean + std * torch.randn(n, generator=generator, dtype=torch.float64)
            return tuple(values.tolist())

        return cls(
            normal(4, 1.0, 0.1 * distance),
            normal(5, 1.0, 0.1 * distance),
            normal(5, 0.0, 0.05 * distance),
        )

    def __call__(self, x: Tensor) -> Tensor:
        a, b, c = self.a, self.b, self.c
        u = [b[i] * x[:, i] + c[i] for i in range(5)]
        return (
            a[0] * 10 * torch.sin(math.pi * u[0] * u[1])
            + a[1] * 20 * (u[2] - 0.5) ** 2
            + a[2] * 10 * u[3]
            + a[3] * 5 * u[4]
        )


@dataclass
class FriedmanConfig(BudgetConfig):
    """Friedman #1 transfer settings; the defaults run on 2 CPU cores in seconds per run."""

    source_samples: int = 20000
    source_val_fraction: float = 0.1
    target_pool: int = 500
    target_test: int = 5000
    distance: float = 1.0
    noise: float = 1.0
    noisy_test: bool = True
    source_concept: int = 0
    hidden: tuple[int, ...] = (128, 128)
    activation: str = field(default="relu", metadata={"help": "relu, tanh, gelu or silu"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check(
            self.source_samples >= 100, f"source_samples must be >= 100, got {self.source_samples}"
        )
        check(self.target_pool >= 1, f"target_pool must be >= 1, got {self.target_pool}")
        check(self.distance >= 0, f"distance must be >= 0, got {self.distance}")
        check(self.noise >= 0, f"noise must be >= 0, got {self.noise}")
        check(0 < self.source_val_fraction < 1, "source_val_fraction must lie in (0, 1)")


class Friedman(Benchmark):
    name = "friedman"
    metric = "rmse"
    summary = "Friedman #1 regression transfer (Pardoe & Stone concepts), MLP, RMSE"
    Config = FriedmanConfig
    threads = 1
    quick: ClassVar[dict[str, Any]] = {
        "source_samples": 4000,
        "source_steps": 800,
        "target_steps": 200,
        "target_test": 1000,
    }
    source_fields = (
        "source_samples",
        "source_val_fraction",
        "distance",
        "noise",
        "source_concept",
        "hidden",
        "activation",
        "source_steps",
        "source_lr",
        "source_batch",
    )

    def __init__(self, config: FriedmanConfig, cache: StateCache | None = None):
        super().__init__(config, cache)
        self._source: TaskData | None = None
        gen = torch.Generator().manual_seed(1_000_003 + config.source_concept)
        self.source_concept = Concept.draw(gen, config.distance)
        x, y = self._sample(self.source_concept, config.source_samples, gen)
        n_train = config.source_samples // 2
        self.y_mean = float(y[:n_train].mean())
        self.y_std = float(y[:n_train].std())
        self._source_xy = (x, y)

    # ---- data -------------------------------------------------------------------------
    def _sample(
        self, concept: Concept, n: int, gen: torch.Generator, noisy: bool = True
    ) -> tuple[Tensor, Tensor]:
        x = torch.rand(n, FEATURES, generator=gen, dtype=torch.float64)
        y = concept(x)
        if noisy:
            y = y + self.config.noise * torch.randn(n, generator=gen, dtype=torch.float64)
        return x, y

    def _data(self, x: Tensor, y: Tensor) -> Data:
        return Data(x.float(), ((y - self.y_mean) / self.y_std).float().unsqueeze(1))

    def source(self) -> TaskData:
        if self._source is None:
            x, y = self._source_xy
            n_train = self.config.source_samples // 2
            n_val = max(1, int(n_train * self.config.source_val_fraction))
            self._source = TaskData(
                train=self._data(x[n_val:n_train], y[n_val:n_train]),
                val=self._data(x[:n_val], y[:n_val]),
                test=self._data(x[n_train:], y[n_train:]),
            )
        return self._source

    def concept(self, seed: int) -> Concept:
        """The target concept of ``seed``."""
        return Concept.draw(
            torch.Generator().manual_seed(10_007 * (seed + 1)), self.config.distance
        )

    def target(self, seed: int, size: int) -> TaskData:
        cfg = self.config
        check(size >= 1, f"target size must be >= 1, got {size}")
        check(
            size <= cfg.target_pool,
            f"target size {size} exceeds the pool of {cfg.target_pool} (raise target_pool)",
        )
        concept = self.concept(seed)
        gen = torch.Generator().manual_seed(20_011 * (seed + 1))
        x, y = self._sample(concept, cfg.target_pool, gen)
        x, y = x[:size], y[:size]
        test_gen = torch.Generator().manual_seed(30_013 * (seed + 1))
        tx, ty = self._sample(concept, cfg.target_test, test_gen, noisy=cfg.noisy_test)
        return self.labelled(size, "samples", lambda s: self._data(x[s], y[s]), self._data(tx, ty))

    # ---- model and training -----------------------------------------------------------
    def make_model(self, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return MLP(FEATURES, self.config.hidden, 1, self.config.activation)

    def loss_fn(self) -> LossFn:
        return nn.functional.mse_loss

    def score(self, model: nn.Module, data: Data) -> float:
        return self.y_std * math.sqrt(evaluate(model, data, nn.functional.mse_loss))
