"""Vectorised reference solvers for the scientific benchmarks (float64, many systems at once).

* :func:`rk4` — classical fourth-order Runge–Kutta for ``dy/dt = f(t, y)`` on a batch of
  states, recording the solution at every ``record_every``-th step.
* :func:`duffing_rhs` — the damped Duffing oscillator ``x'' + δx' + x + βx³ = γ cos(ωt)``.
* :func:`spectral_solve` — the 1-D periodic equation ``u_t + a·u·u_x + c·u_x = ν·u_xx`` on
  ``[0, 2π)`` by a Fourier pseudo-spectral method with an integrating factor for the linear
  part (exact for heat and advection) and RK4 for the nonlinear part, 2/3-rule dealiasing.
  ``a = 1`` is viscous Burgers, ``a = 0`` the advection–diffusion (heat when ``c = 0``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from pacnet.errors import check

Rhs = Callable[[Tensor, Tensor], Tensor]


def rk4(f: Rhs, y0: Tensor, dt: float, steps: int, record_every: int = 1) -> Tensor:
    """Integrate ``dy/dt = f(t, y)`` from ``t = 0``; returns (records + 1, *y0.shape).

    Row 0 is ``y0``; row i is the state after ``i * record_every`` steps.
    """
    check(
        dt > 0 and steps >= 1 and record_every >= 1,
        "rk4 needs dt > 0, steps >= 1, record_every >= 1",
    )
    check(steps % record_every == 0, "steps must be a multiple of record_every")
    out = [y0]
    y, t = y0, 0.0
    for step in range(1, steps + 1):
        k1 = f(t, y)
        k2 = f(t + dt / 2, y + dt / 2 * k1)
        k3 = f(t + dt / 2, y + dt / 2 * k2)
        k4 = f(t + dt, y + dt * k3)
        y = y + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        t = step * dt
        if step % record_every == 0:
            out.append(y)
    return torch.stack(out)


def duffing_rhs(
    damping: Tensor, stiffness: Tensor, nonlinearity: Tensor, forcing: Tensor, frequency: Tensor
) -> Rhs:
    """Right-hand side for states (B, 2) = (x, v), each parameter a (B,) tensor."""

    def f(t: float, y: Tensor) -> Tensor:
        x, v = y[:, 0], y[:, 1]
        acc = (
            -damping * v - stiffness * x - nonlinearity * x**3 + forcing * torch.cos(frequency * t)
        )
        return torch.stack([v, acc], dim=1)

    return f


def spectral_solve(
    u0: Tensor,
    viscosity: Tensor,
    dt: float,
    steps: int,
    record_every: int = 1,
    advection: float = 0.0,
    nonlinear: float = 1.0,
) -> Tensor:
    """Solve ``u_t + a·u·u_x + c·u_x = ν·u_xx`` on a periodic grid; returns (records+1, B, n).

    Args:
        u0: (B, n) initial values on the grid ``x_j = 2πj/n``.
        viscosity: (B,) ν per system.
        dt, steps, record_every: time step, number of steps, recording stride.
        advection: speed c. nonlinear: a (1 = Burgers, 0 = linear).
    """
    check(u0.dim() == 2, f"u0 must be (batch, grid), got shape {tuple(u0.shape)}")
    check(steps % record_every == 0, "steps must be a multiple of record_every")
    n = u0.shape[1]
    k = torch.fft.rfftfreq(n, d=1.0 / n).to(u0)  # wavenumbers 0..n/2
    linear = -viscosity[:, None] * k**2 - 1j * advection * k  # (B, n//2+1)
    half = torch.exp(linear * dt / 2)
    full = half * half
    keep = (k <= n / 3).to(u0)  # 2/3-rule dealiasing of the nonlinear term

    def nonlinear_term(v_hat: Tensor) -> Tensor:
        if nonlinear == 0:
            return torch.zeros_like(v_hat)
        u = torch.fft.irfft(v_hat, n=n)
        return -nonlinear * 0.5j * k * torch.fft.rfft(u * u) * keep  # -(u²/2)_x

    v = torch.fft.rfft(u0)
    out = [u0]
    for step in range(1, steps + 1):
        a = dt * nonlinear_term(v)
        b = dt * nonlinear_term(half * (v + a / 2))
        c = dt * nonlinear_term(half * v + b / 2)
        d = dt * nonlinear_term(full * v + half * c)
        v = full * v + (full * a + 2 * half * (b + c) + d) / 6
        if step % record_every == 0:
            out.append(torch.fft.irfft(v, n=n))
    return torch.stack(out)
