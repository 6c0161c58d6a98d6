"""Moved to :mod:`pacnet.benchmarks.mlp`; kept so that imports written before the move work."""

from pacnet.benchmarks.mlp import MLP, describe_spec, spec_of

__all__ = ["MLP", "describe_spec", "spec_of"]
