"""Transfer regularisers: small torch-only modules whose ``forward()`` returns one scalar term
(the data work, such as DELTA's channel attention, stays with the method).

The training loop adds each term with its weight (``pacnet.fit(..., penalties=[(w, term)])``).
Definitions (TLlib's conventions, except that feature terms average over the batch instead
of summing, so a weight does not depend on the batch size; TLlib's weight ``t`` on a
batch-summed term is ``α = t · B`` on ours, B the batch size, which is how DELTA's default
α is set in :mod:`pacnet.methods.regularized`):

* :class:`L2` — ``½ Σ ‖w‖²`` (the new head's penalty in L2-SP and DELTA).
* :class:`StartingPoint` — L2-SP (Li et al. 2018): ``½ Σ ‖w − w⁰‖²`` toward the source
  weights ``w⁰``, copied when the term is built.
* :class:`FeatureDistance` — DELTA (Li et al. 2019): with ``F`` the features of the model
  being trained and ``S`` those of the frozen source model on the same batch,
  ``½ · mean_b Σ_l Σ_c C_l·a_{l,c} · ‖F_{b,l,c} − S_{b,l,c}‖² / (H·W)``; ``a`` is the channel
  attention (a softmax over the channels of each layer, see
  :func:`pacnet.methods.delta.channel_attention`),
  and ``C_l·a_{l,c} = 1`` without attention. TLlib's ``AttentionBehavioralRegularization``
  is the same with ``Σ_b`` for ``mean_b``; its attention-free
  ``BehavioralRegularization`` is ``½ Σ_b Σ_l ‖F_{b,l} − S_{b,l}‖²``, without the
  ``/(H·W)`` that ours keeps without attention.
* :class:`SpectralShrinkage` — BSS (Chen et al. 2019): ``Σ_{i<k} σ_{(i)}²``, the k smallest
  singular values of the (batch × features) matrix entering the head, squared (computed
  as the eigenvalues of the smaller Gram matrix in float64, which keeps the smallest
  precise; TLlib takes ``torch.svd`` in float32).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from pacnet.errors import check
from pacnet.training.stacked_model import squared_singular_values


class L2(nn.Module):
    """``½ Σ ‖w‖²`` over ``params``."""

    def __init__(self, params: Iterable[nn.Parameter]):
        super().__init__()
        self.params = list(params)
        check(self.params, "an L2 term needs at least one parameter")

    def forward(self) -> Tensor:
        return 0.5 * torch.stack([p.square().sum() for p in self.params]).sum()


class StartingPoint(nn.Module):
    """L2-SP: ``½ Σ ‖w − w⁰‖²``; the starting values ``w⁰`` are copied at construction."""

    def __init__(self, params: Iterable[nn.Parameter]):
        super().__init__()
        self.pairs = [(p, p.detach().clone()) for p in params]
        check(self.pairs, "L2-SP needs at least one parameter to anchor")

    def forward(self) -> Tensor:
        return 0.5 * torch.stack([(p - w0).square().sum() for p, w0 in self.pairs]).sum()


class FeatureTap:
    """The latest output (or input) of each named module, kept by forward hooks."""

    def __init__(self, model: nn.Module, names: Sequence[str], capture: str = "output"):
        check(
            capture in ("output", "input"), f"capture must be 'output' or 'input', not {capture!r}"
        )
        modules = dict(model.named_modules())
        unknown = [n for n in names if n not in modules]
        check(not unknown, f"no module named {unknown[:1]} in the model")
        self.names = list(names)
        self.features: dict[str, Tensor] = {}

        def keeper(name: str):
            if capture == "output":
                return lambda _m, _i, out: self.features.__setitem__(name, out)
            return lambda _m, inputs: self.features.__setitem__(name, inputs[0])

        register = "register_forward_hook" if capture == "output" else "register_forward_pre_hook"
        self._handles = [getattr(modules[n], register)(keeper(n)) for n in self.names]

    def close(self) -> None:
        """Remove the hooks."""
        for h in self._handles:
            h.remove()
        self._handles.clear()


def channel_sq_distance(a: Tensor, b: Tensor) -> Tensor:
    """``‖a_c − b_c‖² / (H·W)`` per sample and channel: (B, C, ...) -> (B, C)."""
    check(a.shape == b.shape, f"feature shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    diff = (a - b).reshape(a.shape[0], a.shape[1], -1)
    return diff.square().mean(-1)


class FeatureDistance(nn.Module):
    """DELTA's behavioural term between ``model`` and a frozen copy of the source model.

    Whenever ``model`` runs forward in training mode, ``source_model`` runs on the same
    inputs (without gradients), so the term compares the two on the current batch.
    """

    def __init__(
        self,
        model: nn.Module,
        source_model: nn.Module,
        layers: Sequence[str],
        attention: Mapping[str, Tensor] | None = None,
    ):
        super().__init__()
        check(layers, "DELTA needs at least one layer")
        self.layers = list(layers)
        self.attention = {k: v.detach() for k, v in (attention or {}).items()}
        self.source = source_model.eval().requires_grad_(False)
        self.target_tap = FeatureTap(model, layers)
        self.source_tap = FeatureTap(source_model, layers)

        def run_source(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            if module.training:
                with torch.no_grad():
                    self.source(*inputs)

        self._hook = model.register_forward_pre_hook(run_source)

    def forward(self) -> Tensor:
        terms = []
        for name in self.layers:
            mine, theirs = self.target_tap.features[name], self.source_tap.features[name]
            dist = channel_sq_distance(mine, theirs)  # (B, C)
            weight = self.attention.get(name)
            if weight is not None:
                dist = dist * (weight.shape[0] * weight).to(dist)
            terms.append(0.5 * dist.sum(1).mean())
        return torch.stack(terms).sum()

    def close(self) -> None:
        """Remove every hook this term added."""
        self._hook.remove()
        self.target_tap.close()
        self.source_tap.close()


class SpectralShrinkage(nn.Module):
    """BSS on the features entering module ``head`` of ``model``."""

    def __init__(self, model: nn.Module, head: str, k: int = 1):
        super().__init__()
        check(k >= 1, f"BSS k must be >= 1, got {k}")
        self.k = k
        self.head = head
        self.tap = FeatureTap(model, [head], capture="input")

    def forward(self) -> Tensor:
        return shrinkage(self.tap.features[self.head], self.k)

    def close(self) -> None:
        self.tap.close()


def shrinkage(features: Tensor, k: int) -> Tensor:
    """``Σ_{i<k} σ_{(i)}²``: the ``k`` smallest singular values of ``features`` (B, ...)
    squared, from :func:`~pacnet.training.stacked_model.squared_singular_values` (the
    eigenvalues of the smaller Gram matrix in float64, as the batched engine computes
    them)."""
    matrix = features.reshape(features.shape[0], -1)
    squares = squared_singular_values(matrix)  # ascending
    return squares[: min(k, squares.numel())].sum().to(features.dtype)
