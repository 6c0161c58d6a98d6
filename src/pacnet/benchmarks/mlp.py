"""Small models the benchmarks use (ResNet-18 comes with the image benchmarks)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from pacnet.errors import PacnetError, check
from pacnet.training.stacked import ACTIVATIONS, Layer, Layout


def check_activation(name: str) -> None:
    """Fail in one line, listing the choices, unless ``name`` is an activation an
    :class:`MLP` has."""
    check(
        name in ACTIVATIONS,
        f"activation must be one of {', '.join(ACTIVATIONS)}, got {name!r}",
    )


def check_hidden(hidden: Sequence[int]) -> None:
    """Fail in one line unless every hidden width is at least 1."""
    check(all(h >= 1 for h in hidden), f"hidden must hold widths >= 1, got {list(hidden)}")


class MLP(nn.Module):
    """``in -> hidden... -> out`` with a named ``head`` (the output layer, per task).

    :meth:`spec` describes the architecture as JSON-ready values, and :meth:`from_spec`
    builds a fresh one from it, so a checkpoint that stores the spec needs nothing else to
    be loaded.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation: str = "relu",
    ):
        super().__init__()
        check_activation(activation)
        check_hidden(hidden)
        check(in_features >= 1 and out_features >= 1, "an MLP needs >= 1 input and output")
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, out_features)
        self.activation = activation
        self.hidden = tuple(int(h) for h in hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))

    def layout(self) -> Layout:
        """The layers' weight and bias names, input to output, and the activation between
        them: how the stacked trainer runs this MLP."""
        names = [f"body.{2 * i}" for i in range(len(self.hidden))] + ["head"]
        return Layout(tuple(Layer(f"{n}.weight", f"{n}.bias") for n in names), self.activation)

    def spec(self) -> dict[str, Any]:
        """The architecture: ``{"kind": "mlp", "in_features", "hidden", "out_features",
        "activation"}``."""
        first = self.body[0] if len(self.body) else self.head
        return {
            "kind": "mlp",
            "in_features": int(first.in_features),
            "hidden": list(self.hidden),
            "out_features": int(self.head.out_features),
            "activation": self.activation,
        }

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> MLP:
        """A freshly initialised MLP of the architecture ``spec`` (from :meth:`spec`)."""
        check(
            isinstance(spec, Mapping) and spec.get("kind") == "mlp",
            f"not an MLP spec: {spec!r}",
        )
        try:
            hidden = [int(h) for h in spec["hidden"]]
            return cls(
                int(spec["in_features"]),
                hidden,
                int(spec["out_features"]),
                str(spec.get("activation", "relu")),
            )
        except (KeyError, TypeError, ValueError):
            raise PacnetError(f"malformed MLP spec: {dict(spec)!r}") from None


def describe_spec(spec: Mapping[str, Any]) -> str:
    """One line for an MLP spec, e.g. ``MLP 3 -> 64,64 -> 1 (relu)``."""
    hidden = ",".join(str(h) for h in spec.get("hidden", [])) or "none"
    return (
        f"MLP {spec.get('in_features')} -> {hidden} -> {spec.get('out_features')} "
        f"({spec.get('activation', 'relu')})"
    )


def spec_of(model: nn.Module) -> dict[str, Any] | None:
    """The spec of ``model`` if it is an :class:`MLP` (else None)."""
    return model.spec() if isinstance(model, MLP) else None
