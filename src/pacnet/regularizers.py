"""Transfer regularisers: small modules whose ``forward()`` returns one scalar term.

The training loop adds each term with its weight (``pacnet.fit(..., penalties=[(w, term)])``).
Definitions, with the conventions that make a weight independent of the batch size (TLlib
sums feature distances over the batch; we average over it, so its weights and ours differ
by the batch size for DELTA):

* :class:`L2` — ``½ Σ ‖w‖²`` (the new head's penalty in L2-SP and DELTA).
* :class:`StartingPoint` — L2-SP (Li et al. 2018): ``½ Σ ‖w − w⁰‖²`` toward the source weights.
* :class:`FeatureDistance` — DELTA (Li et al. 2019): per layer and channel,
  ``Σ_l Σ_c a_{l,c} · ‖F_t(x)_{l,c} − F_s(x)_{l,c}‖² / (2·B)`` with the source model frozen
  and ``a`` the channel attention (uniform ``a = 1`` gives the plain feature-map distance).
* :class:`SpectralShrinkage` — BSS (Chen et al. 2019): ``Σ_{i<k} σ_{(i)}²``, the k smallest
  singular values of the batch feature matrix, squared.

:class:`FeatureTap` captures module outputs with forward hooks, so a term can read the
features of the forward pass the loop has just made.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from pacnet.errors import check


class L2(nn.Module):
    """``½ Σ ‖w‖²`` over ``params``."""

    def __init__(self, params: Iterable[nn.Parameter]):
        super().__init__()
        self.params = list(params)

    def forward(self) -> Tensor:
        return 0.5 * torch.stack([p.square().sum() for p in self.params]).sum()


class StartingPoint(nn.Module):
    """L2-SP: ``½ Σ ‖w − w⁰‖²``; the starting values ``w⁰`` are copied at construction."""

    def __init__(self, params: Mapping[str, nn.Parameter]):
        super().__init__()
        check(params, "L2-SP needs at least one parameter to anchor")
        self.pairs = [(p, p.detach().clone()) for p in params.values()]

    def forward(self) -> Tensor:
        return 0.5 * torch.stack([(p - w0).square().sum() for p, w0 in self.pairs]).sum()


class FeatureTap:
    """Keeps the latest output of each named module (forward hooks); ``close()`` removes them."""

    def __init__(self, model: nn.Module, names: Sequence[str]):
        modules = dict(model.named_modules())
        unknown = [n for n in names if n not in modules]
        check(not unknown, f"no module named {unknown[:1]} in the model")
        self.names = list(names)
        self.features: dict[str, Tensor] = {}
        self._handles = [modules[n].register_forward_hook(self._keep(n)) for n in self.names]

    def _keep(self, name: str):
        def hook(_module: nn.Module, _inputs: object, output: Tensor) -> None:
            self.features[name] = output

        return hook

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def per_channel_sq_distance(a: Tensor, b: Tensor) -> Tensor:
    """``‖a_c − b_c‖²`` per sample and channel: (B, C, ...) -> (B, C)."""
    check(a.shape == b.shape, f"feature shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    diff = (a - b).reshape(a.shape[0], a.shape[1], -1)
    return diff.square().sum(-1)


class FeatureDistance(nn.Module):
    """DELTA's behavioural term between the model and a frozen source model.

    Args:
        target_tap: features of the model being trained (its forward pass feeds it).
        source_model: frozen source model; run on the same batch by :meth:`forward`.
        source_tap: features of ``source_model`` at the same module names.
        attention: per layer name a (C,) weight per channel; missing = uniform 1.
    """

    def __init__(
        self,
        target_tap: FeatureTap,
        source_model: nn.Module,
        source_tap: FeatureTap,
        attention: Mapping[str, Tensor] | None = None,
    ):
        super().__init__()
        self.target_tap, self.source_model, self.source_tap = target_tap, source_model, source_tap
        self.attention = dict(attention or {})
        self.inputs: Tensor | None = None

    def observe(self, x: Tensor) -> None:
        """Run the frozen source model on the batch the model is trained on."""
        with torch.no_grad():
            self.source_model(x)
        self.inputs = x

    def forward(self) -> Tensor:
        terms = []
        for name in self.target_tap.names:
            t, s = self.target_tap.features[name], self.source_tap.features[name].detach()
            dist = per_channel_sq_distance(t, s)  # (B, C)
            weight = self.attention.get(name)
            if weight is not None:
                dist = dist * weight.to(dist)
            terms.append(dist.sum() / (2 * t.shape[0]))
        return torch.stack(terms).sum()


class SpectralShrinkage(nn.Module):
    """BSS: the sum of the ``k`` smallest squared singular values of a (B, D) feature batch."""

    def __init__(self, tap: FeatureTap, name: str, k: int = 1):
        super().__init__()
        check(k >= 1, f"BSS k must be >= 1, got {k}")
        self.tap, self.name, self.k = tap, name, k

    def forward(self) -> Tensor:
        return shrinkage(self.tap.features[self.name], self.k)


def shrinkage(features: Tensor, k: int) -> Tensor:
    """``Σ_{i<k} σ_{(i)}²`` over the smallest singular values of ``features`` (B, ...)."""
    matrix = features.reshape(features.shape[0], -1)
    sigma = torch.linalg.svdvals(matrix)  # descending
    k = min(k, sigma.numel())
    return sigma[-k:].square().sum()
