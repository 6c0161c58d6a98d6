"""The stacked MLP the batched engine trains: its layers (:class:`Layout`), its forward
pass over the members' stacked tensors (:class:`StackedNet`), and the terms a member may
add to its loss (DELTA's :class:`FeaturePull`, BSS's :class:`Shrinkage`), batched
(:class:`Terms`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pacnet.errors import check

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}
"""The activations an MLP may have, by name (the benchmarks' MLP builds its layers from
this table, and the stacked trainer applies the same modules)."""


@dataclass(frozen=True)
class Layer:
    """One linear layer of a stacked MLP: the names of its weight ``[out, in]`` and bias
    ``[out]``, and, for a low-rank adapter on it (LoRA), of its factors ``A [r, in]`` and
    ``B [out, r]``: the layer computes ``x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ`` with the member's scale
    ``s`` (:attr:`Member.scales`)."""

    weight: str
    bias: str
    low_rank: tuple[str, str] | None = None


@dataclass(frozen=True)
class Layout:
    """An MLP as the stacked trainer runs it: its layers, input to output, with
    ``activation`` (a name of :data:`ACTIVATIONS`) between them."""

    layers: tuple[Layer, ...]
    activation: str = "relu"

    def names(self) -> list[str]:
        """Every tensor the layers read."""
        out = []
        for layer in self.layers:
            out += [layer.weight, layer.bias, *(layer.low_rank or ())]
        return out


@dataclass(frozen=True)
class FeaturePull:
    """DELTA's feature term on a member: ``weight · Σ_l ½ · mean_b Σ_c w_{l,c}·(F − S)²``,
    with ``F`` the member's output of layer ``l`` (before its activation), ``S`` that of
    the frozen source network ``source`` (its weights and biases by the layout's names) on
    the same rows, and ``w_{l,c}`` the channel weights of ``layers[l]`` (None: 1)."""

    weight: float
    layers: Mapping[int, Tensor | None]
    source: Mapping[str, Tensor]


@dataclass(frozen=True)
class Shrinkage:
    """BSS on a member: ``weight · Σ_{i<k} σ_(i)²``, the ``k`` smallest singular values of
    the (batch × features) matrix entering the last layer."""

    weight: float
    k: int = 1


Term = FeaturePull | Shrinkage


def as_stacked(t: Tensor) -> Tensor:
    """A tensor as the stack holds it: a matrix ``[out, in]`` as ``[in, out]`` (so a layer
    is one ``x @ W`` and its gradient comes out contiguous), a vector as ``[1, out]``."""
    return t.t().contiguous() if t.dim() == 2 else t.unsqueeze(0)


def padded_stack(parts: Sequence[Tensor], device: torch.device) -> Tensor:
    """``parts`` stacked, each padded with zeros to the largest size in every dimension."""
    shape = [max(sizes) for sizes in zip(*(p.shape for p in parts), strict=True)]
    if all(list(p.shape) == shape for p in parts):
        return torch.stack(list(parts)).to(device)
    out = torch.zeros(len(parts), *shape, dtype=parts[0].dtype)
    for i, p in enumerate(parts):
        out[i][tuple(slice(0, s) for s in p.shape)] = p
    return out.to(device)


class StackedNet:
    """The stacked MLP's forward pass over given stacked tensors (the members' or a
    subset's), with the layer outputs a term reads."""

    def __init__(self, layout: Layout, index: Mapping[str, int], taps: Sequence[int]):
        self.layout, self.index, self.taps = layout, index, set(taps)
        self.act = ACTIVATIONS[layout.activation]()

    def __call__(
        self, params: Sequence[Tensor], x: Tensor, scales: Tensor | None = None
    ) -> tuple[Tensor, dict[int, Tensor], Tensor]:
        """``(output, {layer: its output before the activation}, input of the last
        layer)``."""
        h, taps, last = x, {}, len(self.layout.layers) - 1
        head_in = x
        for i, layer in enumerate(self.layout.layers):
            if i == last:
                head_in = h
            z = torch.baddbmm(params[self.index[layer.bias]], h, params[self.index[layer.weight]])
            if layer.low_rank is not None:
                a, b = (params[self.index[n]] for n in layer.low_rank)
                z = z + torch.bmm(torch.bmm(h, a), b) * scales[:, i].view(-1, 1, 1)
            if i in self.taps:
                taps[i] = z
            h = self.act(z) if i < last else z
        return h, taps, head_in


class Terms:
    """The members' terms (they share their kinds: one stack's members do), as batched
    tensors."""

    def __init__(
        self,
        per_member: Sequence[Sequence[Term]],
        layout: Layout,
        index: Mapping[str, int],
        xs: Tensor,
        sizes: Sequence[int],
        device: torch.device,
    ):
        self.sizes = torch.tensor(sizes, dtype=torch.float32, device=device)
        self.source_outputs: list[tuple[int, Tensor, Tensor]] = []
        """DELTA: per layer, the source's outputs on every training row and the channel
        weights ``[M, 1, C]``."""
        self.alpha: Tensor | None = None
        self.eta: Tensor | None = None
        self.ks: list[int] = []
        self.taps: list[int] = []
        self._chosen: Tensor | None = None
        kinds = [type(t) for t in per_member[0]]
        check(len(set(kinds)) == len(kinds), "stacked training: one term of each kind at most")
        for j, kind in enumerate(kinds):
            terms = [own[j] for own in per_member]
            weights = torch.tensor([t.weight for t in terms], device=device)
            if kind is FeaturePull:
                self.alpha = weights
                self._source_outputs(terms, layout, index, xs, device)
            else:
                self.eta, self.ks = weights, [t.k for t in terms]

    def _source_outputs(
        self,
        terms: Sequence[FeaturePull],
        layout: Layout,
        index: Mapping[str, int],
        xs: Tensor,
        device: torch.device,
    ) -> None:
        """The source networks' layer outputs on every training row, computed once (the
        source is frozen, and a row's outputs do not depend on its batch)."""
        self.taps = sorted(terms[0].layers)
        plain = Layout(
            tuple(Layer(x.weight, x.bias) for x in layout.layers[: self.taps[-1] + 1]),
            layout.activation,
        )
        params: list[Tensor] = [torch.empty(0)] * len(index)
        for name in plain.names():
            params[index[name]] = padded_stack(
                [as_stacked(t.source[name].float()) for t in terms], device
            )
        with torch.no_grad():
            _, outputs, _ = StackedNet(plain, index, self.taps)(params, xs)
        for layer in self.taps:
            width = outputs[layer].shape[-1]
            channel = [
                torch.ones(width) if t.layers[layer] is None else t.layers[layer].float().cpu()
                for t in terms
            ]
            weights = torch.stack(channel).to(device).unsqueeze(1)
            self.source_outputs.append((layer, outputs[layer], weights))

    def added(
        self, losses: Tensor, idx: Tensor, taps: dict[int, Tensor], head_in: Tensor, rows: Tensor
    ) -> Tensor:
        """``losses`` with each member's terms on this step's rows (``rows``: 1 for a
        member's rows, 0 for padding) added."""
        if self.alpha is not None:
            total = torch.zeros_like(losses)
            for layer, source, channel in self.source_outputs:
                at = idx.unsqueeze(-1).expand(-1, -1, source.shape[-1])
                per_row = ((taps[layer] - torch.gather(source, 1, at)).square() * channel).sum(-1)
                total = total + 0.5 * (per_row * rows).sum(1) / self.sizes
            losses = losses + self.alpha * total
        if self.eta is not None:
            squares = squared_singular_values(head_in * rows.unsqueeze(-1))  # ascending
            chosen = self._smallest(squares.shape[1], head_in.shape[-1], squares.device)
            losses = losses + self.eta * (squares * chosen).sum(1).to(losses.dtype)
        return losses

    def _smallest(self, count: int, features: int, device: torch.device) -> Tensor:
        """``[M, count]``: 1 at each member's ``k`` smallest squared singular values of its
        own rows' matrix, in ascending order (it has ``min(rows, features)`` of them; the
        zeros its padding adds come first and are left out)."""
        if self._chosen is None:
            chosen = torch.zeros(len(self.ks), count, dtype=torch.float64)
            for i, (n, k) in enumerate(zip(self.sizes.tolist(), self.ks, strict=True)):
                zeros = count - min(int(n), features)
                chosen[i, zeros : zeros + k] = 1
            self._chosen = chosen.to(device)
        return self._chosen


def squared_singular_values(matrix: Tensor) -> Tensor:
    """The squared singular values of each ``[rows, features]`` matrix (of a batch of them),
    in ascending order: the eigenvalues of its smaller Gram matrix, computed in float64 so
    that the smallest keep their precision (BSS penalises those), and clamped at 0. The one
    definition both engines use (:func:`pacnet.methods.regularizers.shrinkage`); several
    times faster than :func:`torch.linalg.svdvals` with gradients."""
    wide = matrix.shape[-2] <= matrix.shape[-1]
    m = matrix.double() if matrix.device.type in ("cpu", "cuda") else matrix  # MPS: float32
    gram = m @ m.transpose(-1, -2) if wide else m.transpose(-1, -2) @ m
    return torch.linalg.eigvalsh(gram).clamp_min(0)
