"""Shared machinery of the simulated (ODE and PDE) surrogate benchmarks.

A subclass says how to draw one system per trajectory in a parameter *regime*
(:meth:`TrajectoryBenchmark.draw`) and how to simulate a batch of them
(:meth:`TrajectoryBenchmark.simulate`, float64, vectorised). This module turns that into
the benchmark contract:

* the source task: ``source_trajectories`` systems of the source regime, split by
  trajectory into train / validation / test;
* the target task of a seed: a pool of ``target_pool`` trajectories of the target regime
  (``--target-size N`` takes the first N, so sizes are nested and every method sees the
  same data) and ``target_test`` held-out trajectories;
* data cached on disk by a hash of everything that determines it (regenerated when missing
  or corrupt), with its generation time and throughput (trajectory-steps per second);
* inputs and outputs standardised with the source training statistics; the surrogate is an
  MLP mapping the standardised (parameters, initial state, position/time) to the state;
* metrics in the data's own units: RMSE and relative L2 ``‖ŷ − y‖ / ‖y‖`` over all test points.
"""

from __future__ import annotations

import math
import time
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from pacnet.benchmarks.base import Benchmark, BudgetConfig, TaskData
from pacnet.benchmarks.mlp import MLP
from pacnet.config import to_dict
from pacnet.errors import check
from pacnet.training.cache import StateCache
from pacnet.training.train import Data, LossFn, outputs

DATA_VERSION = 1


@dataclass
class TrajectoryConfig(BudgetConfig):
    """Settings every trajectory benchmark shares (sizes are numbers of trajectories)."""

    source_trajectories: int = 2000
    source_val_fraction: float = 0.1
    source_test_fraction: float = 0.1
    target_pool: int = 50
    target_test: int = 200
    hidden: tuple[int, ...] = (128, 128)
    activation: str = field(default="tanh", metadata={"help": "relu, tanh, gelu or silu"})
    source_batch: int = 256
    target_batch: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.source_trajectories >= 10, "source_trajectories must be >= 10")
        check(
            self.target_pool >= 1 and self.target_test >= 1,
            "target_pool and target_test must be >= 1",
        )
        for name in ("source_val_fraction", "source_test_fraction"):
            check(0 < getattr(self, name) < 0.5, f"{name} must lie in (0, 0.5)")


def check_range(name: str, bounds: tuple[float, ...], positive: bool = False) -> None:
    """A (low, high) range with low <= high (and low > 0 if ``positive``)."""
    check(len(bounds) == 2 and bounds[0] <= bounds[1], f"{name} must be LOW,HIGH with LOW <= HIGH")
    check(not positive or bounds[0] > 0, f"{name} must be positive")


def check_time_grid(horizon: float, dt: float, records: int) -> int:
    """The number of solver steps; fails unless ``horizon`` is a whole number of ``dt`` steps
    that ``records`` evenly spaced records divide."""
    check(horizon > 0 and dt > 0, "horizon and dt must be > 0")
    steps = round(horizon / dt)
    check(abs(steps * dt - horizon) < 1e-9 * horizon, "horizon must be a whole number of dt steps")
    check(
        records >= 1 and steps % records == 0,
        f"records ({records}) must divide the {steps} solver steps",
    )
    return steps


def uniform(bounds: tuple[float, float], n: int, gen: torch.Generator) -> Tensor:
    """``n`` float64 draws from U[low, high]."""
    low, high = bounds
    return low + (high - low) * torch.rand(n, generator=gen, dtype=torch.float64)


SOURCE_TRAINING_FIELDS = (
    "source_trajectories",
    "source_val_fraction",
    "source_test_fraction",
    "hidden",
    "activation",
    "source_steps",
    "source_lr",
    "source_batch",
)
"""Settings besides the physics that determine a trajectory benchmark's source model."""


class TrajectoryBenchmark(Benchmark):
    """Base of the ODE and PDE surrogate benchmarks (see the module docstring)."""

    physics_fields: tuple[str, ...] = ()
    threads = 1
    source_seed = 0

    def __init__(self, config: Any, cache: StateCache | None = None):
        super().__init__(config, cache)
        self.generation = {"seconds": 0.0, "trajectory_steps": 0.0, "cached": 0.0}
        inputs, outputs = self._trajectories("source", config.source_trajectories, self.source_seed)
        n_test = max(1, round(config.source_trajectories * config.source_test_fraction))
        n_val = max(1, round(config.source_trajectories * config.source_val_fraction))
        self._split = (n_val, n_test)
        train_in, train_out = inputs[n_val + n_test :], outputs[n_val + n_test :]
        self.in_mean, self.in_std = _stats(train_in)
        self.out_mean, self.out_std = _stats(train_out)
        self._source_raw = (inputs, outputs)
        self._source: TaskData | None = None

    # ---- what a subclass provides -----------------------------------------------------
    @abstractmethod
    def draw(self, regime: str, n: int, gen: torch.Generator) -> Tensor:
        """(n, P) float64 system parameters (and initial states) of ``regime``."""

    @abstractmethod
    def simulate(self, systems: Tensor) -> tuple[Tensor, Tensor, int]:
        """(inputs (n, m, D_in), outputs (n, m, D_out), solver steps per trajectory)."""

    # ---- data -------------------------------------------------------------------------
    def _trajectories(self, regime: str, n: int, seed: int) -> tuple[Tensor, Tensor]:
        settings = to_dict(self.config)
        key = {
            "step": "data",
            "version": DATA_VERSION,
            "benchmark": self.name,
            "physics": {k: settings[k] for k in self.physics_fields},
            "regime": regime,
            "n": n,
            "seed": seed,
        }

        def build() -> dict[str, Tensor]:
            start = time.perf_counter()
            gen = torch.Generator().manual_seed(seed)
            inputs, outputs, steps = self.simulate(self.draw(regime, n, gen))
            seconds = time.perf_counter() - start
            self.generation["seconds"] += seconds
            self.generation["trajectory_steps"] += n * steps
            return {
                "inputs": inputs.float(),
                "outputs": outputs.float(),
                "seconds": torch.tensor(seconds, dtype=torch.float64),
                "trajectory_steps": torch.tensor(float(n * steps), dtype=torch.float64),
            }

        before = self.generation["seconds"]
        data = self.cache(key, build)
        if self.generation["seconds"] == before:
            self.generation["cached"] += 1
        return data["inputs"], data["outputs"]

    def _data(self, inputs: Tensor, outputs: Tensor) -> Data:
        x = ((inputs - self.in_mean) / self.in_std).reshape(-1, inputs.shape[-1])
        y = ((outputs - self.out_mean) / self.out_std).reshape(-1, outputs.shape[-1])
        trajectory = torch.arange(inputs.shape[0]).repeat_interleave(inputs.shape[1])
        return Data(x, y, trajectory)

    def source(self) -> TaskData:
        if self._source is None:
            inputs, outputs = self._source_raw
            n_val, n_test = self._split
            self._source = TaskData(
                train=self._data(inputs[n_val + n_test :], outputs[n_val + n_test :]),
                val=self._data(inputs[:n_val], outputs[:n_val]),
                test=self._data(inputs[n_val : n_val + n_test], outputs[n_val : n_val + n_test]),
            )
        return self._source

    def target(self, seed: int, size: int) -> TaskData:
        cfg = self.config
        check(size >= 1, f"target size must be >= 1, got {size}")
        check(
            size <= cfg.target_pool,
            f"target size {size} exceeds the pool of {cfg.target_pool} trajectories "
            "(raise target_pool)",
        )
        pool_in, pool_out = self._trajectories("target", cfg.target_pool, 2 * seed + 1)
        test_in, test_out = self._trajectories("target", cfg.target_test, 2 * seed + 2)
        inputs, outputs = pool_in[:size], pool_out[:size]
        test = self._data(test_in, test_out)
        return self.labelled(
            size, "trajectories", lambda s: self._data(inputs[s], outputs[s]), test
        )

    # ---- model, training, metrics -----------------------------------------------------
    def make_model(self, seed: int) -> nn.Module:
        inputs, outputs = self._source_raw
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return MLP(
                inputs.shape[-1], self.config.hidden, outputs.shape[-1], self.config.activation
            )

    def loss_fn(self) -> LossFn:
        return nn.functional.mse_loss

    @torch.no_grad()
    def metrics(self, model: nn.Module, data: Data) -> dict[str, float]:
        sq_err = sq_true = 0.0
        count = 0
        for out, y in outputs(model, data, 8192):
            pred = out.cpu() * self.out_std + self.out_mean
            true = y * self.out_std + self.out_mean
            sq_err += float((pred - true).double().square().sum())
            sq_true += float(true.double().square().sum())
            count += true.numel()
        return {
            "rmse": math.sqrt(sq_err / count),
            "rel_l2": math.sqrt(sq_err / max(sq_true, 1e-300)),
        }

    def score(self, model: nn.Module, data: Data) -> float:
        return self.metrics(model, data)[self.metric]

    def details(self) -> dict[str, Any]:
        g = self.generation
        throughput = g["trajectory_steps"] / g["seconds"] if g["seconds"] else None
        return {
            "data_generation_seconds": round(g["seconds"], 4),
            "data_trajectory_steps": g["trajectory_steps"],
            "data_throughput_trajectory_steps_per_s": throughput,
            "data_sets_from_cache": int(g["cached"]),
        }


def _stats(t: Tensor) -> tuple[Tensor, Tensor]:
    flat = t.reshape(-1, t.shape[-1])
    std = flat.std(0)
    return flat.mean(0), torch.where(std > 0, std, torch.ones_like(std))
