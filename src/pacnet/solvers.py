"""Moved to :mod:`pacnet.benchmarks.solvers`; kept so that imports written before the move work."""

from pacnet.benchmarks.solvers import duffing_rhs, rk4, spectral_solve

__all__ = ["duffing_rhs", "rk4", "spectral_solve"]
