import math

import pytest
import torch

from pacnet.benchmarks.solvers import duffing_rhs, rk4, spectral_solve

F64 = torch.float64


def damped_oscillator_exact(y0, damping, t):
    """x(t) of x'' + d x' + x = 0 (underdamped), per system."""
    out = []
    for (x0, v0), d in zip(y0.tolist(), damping.tolist(), strict=True):
        g = d / 2
        w = math.sqrt(1 - g * g)
        out.append(math.exp(-g * t) * (x0 * math.cos(w * t) + (v0 + g * x0) / w * math.sin(w * t)))
    return torch.tensor(out, dtype=F64)


def test_rk4_error_shrinks_at_fourth_order():
    damping = torch.tensor([0.2, 0.5, 1.0], dtype=F64)
    zero = torch.zeros(3, dtype=F64)
    rhs = duffing_rhs(damping, torch.ones(3, dtype=F64), zero, zero, zero)
    y0 = torch.tensor([[1.0, 0.0], [0.5, -0.3], [-0.2, 0.9]], dtype=F64)
    horizon = 5.0
    errors = []
    for steps in (50, 100, 200, 400):
        x = rk4(rhs, y0, horizon / steps, steps, record_every=steps)[-1, :, 0]
        errors.append((x - damped_oscillator_exact(y0, damping, horizon)).abs().max().item())
    orders = [math.log2(errors[i] / errors[i + 1]) for i in range(3)]
    assert all(3.8 < o < 4.3 for o in orders), orders


def test_rk4_records_the_requested_times():
    rhs = duffing_rhs(*(torch.zeros(2, dtype=F64) for _ in range(5)))  # x'' = 0: v constant
    y0 = torch.tensor([[0.0, 1.0], [1.0, -2.0]], dtype=F64)
    out = rk4(rhs, y0, 0.1, 10, record_every=5)
    assert out.shape == (3, 2, 2)
    assert torch.allclose(
        out[:, :, 0], torch.tensor([[0.0, 1.0], [0.5, 0.0], [1.0, -1.0]], dtype=F64)
    )


def grid(n):
    return torch.arange(n, dtype=F64) * (2 * math.pi / n)


@pytest.mark.parametrize("speed", [0.0, 0.7])
def test_spectral_solver_matches_analytic_heat_and_advection_diffusion(speed):
    x = grid(64)
    nu = torch.tensor([0.1, 0.3], dtype=F64)
    u0 = (torch.sin(x) + 0.5 * torch.cos(3 * x)).repeat(2, 1)
    u = spectral_solve(u0, nu, 0.01, 100, record_every=50, advection=speed, nonlinear=0.0)
    for j, t in enumerate((0.5, 1.0), start=1):
        xs = x - speed * t
        exact = torch.stack(
            [
                math.exp(-v * t) * torch.sin(xs) + 0.5 * math.exp(-9 * v * t) * torch.cos(3 * xs)
                for v in nu.tolist()
            ]
        )
        assert (u[j] - exact).abs().max() < 1e-12  # stated tolerance


def test_burgers_time_stepping_converges_at_fourth_order():
    u0 = torch.sin(grid(64))[None]
    nu = torch.tensor([0.05], dtype=F64)
    reference = spectral_solve(u0, nu, 1 / 1600, 1600, 1600)[-1]
    errors = [
        (spectral_solve(u0, nu, 1 / s, s, s)[-1] - reference).abs().max().item()
        for s in (25, 50, 100)
    ]
    orders = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(3.7 < o < 4.3 for o in orders), orders


def test_burgers_conserves_the_mean_and_dissipates_energy():
    x = grid(64)
    u0 = (0.3 + torch.sin(x) + 0.5 * torch.cos(2 * x))[None]
    u = spectral_solve(u0, torch.tensor([0.1], dtype=F64), 0.005, 200, 20)
    means = u.mean(-1).flatten()
    assert torch.allclose(means, torch.full_like(means, 0.3), atol=1e-12)
    energy = u.square().mean(-1).flatten()
    assert torch.all(energy[1:] < energy[:-1])
