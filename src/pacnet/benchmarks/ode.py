"""ODE surrogate transfer: the damped Duffing oscillator, solved by a vectorised RK4.

    x'' + δ·x' + α·x + β·x³ = γ·cos(ω t),   state (x, v = x'),

with δ (damping) and β (nonlinearity) drawn per trajectory from a regime's ranges, the
initial state from ``x0_range`` × ``v0_range``, and α, γ, ω fixed settings. The surrogate is
an MLP (δ, β, x0, v0, t) -> (x, v). The source regime is a weakly nonlinear oscillator with
many trajectories; the target regime (by default) is strongly nonlinear, with few
trajectories. Each trajectory is recorded at ``records`` evenly spaced times in
[0, ``horizon``] plus t = 0; a target size counts trajectories. Metric: RMSE of (x, v);
relative L2 is reported beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from pacnet.benchmarks.solvers import duffing_rhs, rk4
from pacnet.benchmarks.trajectory import (
    SOURCE_TRAINING_FIELDS,
    TrajectoryBenchmark,
    TrajectoryConfig,
    check_range,
    check_time_grid,
    uniform,
)


@dataclass
class ODEConfig(TrajectoryConfig):
    """Duffing transfer settings; ranges are LOW,HIGH."""

    source_damping: tuple[float, ...] = (0.1, 0.3)
    source_nonlinearity: tuple[float, ...] = (0.0, 0.5)
    target_damping: tuple[float, ...] = (0.1, 0.3)
    target_nonlinearity: tuple[float, ...] = (1.0, 2.0)
    stiffness: float = 1.0
    forcing: float = 0.0
    frequency: float = 1.0
    x0_range: tuple[float, ...] = (-1.0, 1.0)
    v0_range: tuple[float, ...] = (-1.0, 1.0)
    horizon: float = 10.0
    dt: float = 0.01
    records: int = 50

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in (
            "source_damping",
            "source_nonlinearity",
            "target_damping",
            "target_nonlinearity",
            "x0_range",
            "v0_range",
        ):
            check_range(name, getattr(self, name))
        check_time_grid(self.horizon, self.dt, self.records)


class ODE(TrajectoryBenchmark):
    name = "ode"
    metric = "rmse"
    summary = "Duffing oscillator surrogate (RK4 data), weak -> strong nonlinearity, RMSE"
    Config = ODEConfig
    quick: ClassVar[dict[str, Any]] = {
        "source_trajectories": 300,
        "source_steps": 600,
        "target_steps": 150,
        "target_test": 50,
    }
    physics_fields = (
        "source_damping",
        "source_nonlinearity",
        "target_damping",
        "target_nonlinearity",
        "stiffness",
        "forcing",
        "frequency",
        "x0_range",
        "v0_range",
        "horizon",
        "dt",
        "records",
    )
    source_fields = (*physics_fields, *SOURCE_TRAINING_FIELDS)

    def draw(self, regime: str, n: int, gen: torch.Generator) -> Tensor:
        c = self.config
        return torch.stack(
            [
                uniform(getattr(c, f"{regime}_damping"), n, gen),
                uniform(getattr(c, f"{regime}_nonlinearity"), n, gen),
                uniform(c.x0_range, n, gen),
                uniform(c.v0_range, n, gen),
            ],
            dim=1,
        )

    def simulate(self, systems: Tensor) -> tuple[Tensor, Tensor, int]:
        c = self.config
        n = systems.shape[0]
        steps = round(c.horizon / c.dt)
        full = torch.full((n,), 1.0, dtype=torch.float64)
        rhs = duffing_rhs(
            systems[:, 0], c.stiffness * full, systems[:, 1], c.forcing * full, c.frequency * full
        )
        states = rk4(rhs, systems[:, 2:4], c.dt, steps, steps // c.records)  # (m, n, 2)
        states = states.transpose(0, 1)  # (n, m, 2)
        m = states.shape[1]
        times = torch.linspace(0, c.horizon, m, dtype=torch.float64)
        inputs = torch.cat(
            [systems[:, None, :].expand(n, m, 4), times[None, :, None].expand(n, m, 1)], dim=2
        )
        return inputs, states, steps
