"""Small models the benchmarks use (ResNet-18 comes with the image benchmarks)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from pacnet.errors import check

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "silu": nn.SiLU}


class MLP(nn.Module):
    """``in -> hidden... -> out`` with a named ``head`` (the output layer, per task)."""

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation: str = "relu",
    ):
        super().__init__()
        check(activation in _ACTIVATIONS, f"unknown activation {activation!r}")
        check(all(h >= 1 for h in hidden), f"hidden sizes must be >= 1, got {list(hidden)}")
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), _ACTIVATIONS[activation]()]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))
