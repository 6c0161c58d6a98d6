"""PDE surrogate transfer: viscous Burgers on a periodic domain, by a pseudo-spectral solver.

    u_t + u·u_x = ν·u_xx  on x ∈ [0, 2π), periodic,
    u(x, 0) = Σ_{k=1..modes} a_k sin(kx) + b_k cos(kx),  a_k, b_k ~ U[−amplitude/k, amplitude/k],

with ν drawn per trajectory from a regime's range. The surrogate is an MLP
(ν, a_1, b_1, …, x, t) -> u. The source regime is the more viscous one with many
trajectories; the target regime (by default) has lower viscosity (steeper fronts) and few
trajectories. Each trajectory is recorded on every ``x_stride``-th grid point at
``records`` evenly spaced times in [0, ``horizon``] plus t = 0; a target size counts
trajectories. Metric: relative L2 over all test points; RMSE is reported beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from pacnet.benchmarks.solvers import spectral_solve
from pacnet.benchmarks.trajectory import (
    SOURCE_TRAINING_FIELDS,
    TrajectoryBenchmark,
    TrajectoryConfig,
    check_range,
    check_time_grid,
    uniform,
)
from pacnet.errors import check


@dataclass
class PDEConfig(TrajectoryConfig):
    """Burgers transfer settings; ranges are LOW,HIGH."""

    source_trajectories: int = 600
    target_test: int = 100
    source_viscosity: tuple[float, ...] = (0.08, 0.15)
    target_viscosity: tuple[float, ...] = (0.03, 0.05)
    modes: int = 2
    amplitude: float = 1.0
    grid: int = 64
    x_stride: int = 4
    horizon: float = 1.0
    dt: float = 0.005
    records: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("source_viscosity", self.source_viscosity, positive=True)
        check_range("target_viscosity", self.target_viscosity, positive=True)
        check(self.modes >= 1 and self.amplitude >= 0, "modes must be >= 1 and amplitude >= 0")
        check(self.grid >= 8 and self.grid % 2 == 0, "grid must be an even number >= 8")
        check(
            1 <= self.x_stride <= self.grid and self.grid % self.x_stride == 0,
            "x_stride must divide the grid",
        )
        check_time_grid(self.horizon, self.dt, self.records)


class PDE(TrajectoryBenchmark):
    name = "pde"
    metric = "rel_l2"
    summary = "viscous Burgers surrogate (spectral solver), high -> low viscosity, relative L2"
    Config = PDEConfig
    quick: ClassVar[dict[str, Any]] = {
        "source_trajectories": 120,
        "source_steps": 600,
        "target_steps": 150,
        "target_test": 30,
    }
    physics_fields = (
        "source_viscosity",
        "target_viscosity",
        "modes",
        "amplitude",
        "grid",
        "x_stride",
        "horizon",
        "dt",
        "records",
    )
    source_fields = (*physics_fields, *SOURCE_TRAINING_FIELDS)

    def draw(self, regime: str, n: int, gen: torch.Generator) -> Tensor:
        c = self.config
        columns = [uniform(getattr(c, f"{regime}_viscosity"), n, gen)]
        for k in range(1, c.modes + 1):
            bound = c.amplitude / k
            columns += [uniform((-bound, bound), n, gen), uniform((-bound, bound), n, gen)]
        return torch.stack(columns, dim=1)

    def simulate(self, systems: Tensor) -> tuple[Tensor, Tensor, int]:
        c = self.config
        n = systems.shape[0]
        x = torch.arange(c.grid, dtype=torch.float64) * (2 * math.pi / c.grid)
        u0 = torch.zeros(n, c.grid, dtype=torch.float64)
        for k in range(1, c.modes + 1):
            a, b = systems[:, 2 * k - 1, None], systems[:, 2 * k, None]
            u0 = u0 + a * torch.sin(k * x) + b * torch.cos(k * x)
        steps = round(c.horizon / c.dt)
        u = spectral_solve(u0, systems[:, 0], c.dt, steps, steps // c.records)  # (T, n, grid)
        u = u[:, :, :: c.x_stride]
        xs = x[:: c.x_stride]
        times = torch.linspace(0, c.horizon, u.shape[0], dtype=torch.float64)
        t_grid, x_grid = torch.meshgrid(times, xs, indexing="ij")  # (T, X)
        points = t_grid.numel()
        coords = torch.stack([x_grid.reshape(-1), t_grid.reshape(-1)], dim=1)  # (T*X, 2)
        inputs = torch.cat(
            [
                systems[:, None, :].expand(n, points, systems.shape[1]),
                coords[None].expand(n, points, 2),
            ],
            dim=2,
        )
        outputs = u.permute(1, 0, 2).reshape(n, points, 1)
        return inputs, outputs, steps
