"""What :func:`pacnet.prune` ranks: ``|W|`` (magnitude, the paper's) or ``|W_ij|·‖X_j‖₂``
(``score="activation"``, Wanda's score: Sun et al., 2023), where ``‖X_j‖₂`` is the norm of
the weight's input feature ``j`` over the inputs given, collected by forward hooks.

What ``X_j`` is for each kind of masked weight:

* ``nn.Linear``, ``nn.Bilinear`` (each input) and a leaf layer's weight such as Hugging
  Face's ``Conv1D`` (``x @ W``): the input's last dimension, over every other dimension;
* convolutions: input channel ``j`` over the batch and every position (grouped
  convolutions by group);
* ``nn.MultiheadAttention``'s input projections: the query, key and value inputs for their
  thirds of ``in_proj_weight`` (or ``q/k/v_proj_weight``);
* recurrent layers: the sequence's features for the first layer's ``weight_ih_l0``;
* embeddings: a row's lookups: ``‖X_j‖₂ = √(count of token j)`` (a lookup is a one-hot
  input), so rows never looked up rank last; counted at every ``F.embedding`` call on the
  table, wherever it happens (a scaled word embedding's own forward, a table tied under
  several modules, learned positions looked up by position);
* experts (stacks of matrices, ``(experts, out, in)`` or ``(experts, in, out)``): each
  expert's matrix by the inputs routed to that expert, seen where the matrix is applied —
  ``F.linear(x, W[e])``, ``x @ W[e]``, or a grouped matmul over the stack
  (``torch._grouped_mm``, transformers' default) — so ``gate_up_proj`` and ``down_proj``
  alike; an expert no input reached takes the median norm of the others; a stack applied
  otherwise falls back to its module's input where that fits (``(…, in)``).

A weight whose input no hook can see (``MultiheadAttention``'s ``out_proj`` inside its
fused forward, deeper recurrent weights, a free matrix, a position table indexed directly
rather than looked up) gets the
median input norm of those that were seen, so it ranks by magnitude on a common scale; the
summary names them.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from pacnet.core.roles import slot_of
from pacnet.errors import PacnetError, check, first_line
from pacnet.training.batches import as_source, to_device
from pacnet.training.train import device_of, infer, modes_kept

SCORES = ("magnitude", "activation")
_INPUT_KEYWORDS = ("input", "hidden_states", "x", "inputs")
"""Keyword names under which a layer may get its input (``layer(hidden_states=h)``)."""


class _Norms:
    """Running sums of squares of input features, per (module, role)."""

    def __init__(self) -> None:
        self.sums: dict[tuple[int, str], Tensor] = {}
        self.mixed: set[tuple[int, str]] = set()
        """Keys whose calls disagreed in size (a layer used two ways): not scored."""
        self.hit: dict[tuple[int, str], Tensor] = {}
        """For per-row sums (:meth:`add_row`): which rows (experts) saw any input."""

    def add_row(self, key: tuple[int, str], row: int, rows: int, squares: Tensor) -> None:
        """Add ``squares`` to row ``row`` of a ``(rows, features)`` sum (one expert's inputs)."""
        squares = squares.detach().double()
        table = self.sums.get(key)
        if table is None:
            shape, device = (rows, len(squares)), squares.device
            table = self.sums[key] = torch.zeros(shape, dtype=torch.float64, device=device)
            self.hit[key] = torch.zeros(rows, dtype=torch.bool, device=device)
        if table.shape[1] != len(squares):
            return
        table[row] += squares
        self.hit[key][row] = True

    def add(self, key: tuple[int, str], squares: Tensor) -> None:
        squares = squares.detach().double()
        if key in self.mixed:
            return
        if key not in self.sums:
            self.sums[key] = squares
        elif self.sums[key].shape == squares.shape:
            self.sums[key] = self.sums[key] + squares
        else:
            self.mixed.add(key)
            del self.sums[key]


def _feature_squares(x: Tensor, dim: int) -> Tensor:
    """Σ x² over every dimension but ``dim``."""
    x = x.detach().double()
    dims = [d for d in range(x.dim()) if d != dim % x.dim()]
    return x.square().sum(dims) if dims else x.square()


def _layer_of(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The layer that uses the weight ``name`` and the weight's name there: for a
    parametrisation's ``original*`` the parametrised layer and tensor (weight norm's
    direction, spectral norm's original), which the forward pass calls with the input."""
    match = re.fullmatch(r"(?:(.*)\.)?parametrizations\.([^.]+)\.original\d?", name)
    if match:
        return model.get_submodule(match.group(1) or ""), match.group(2)
    module, leaf, _ = slot_of(model, name)
    return module, leaf


def _hooks(model: nn.Module, names: list[str], norms: _Norms) -> list[Any]:
    """Forward pre-hooks on the modules owning the masked weights ``names`` (not on
    embeddings: their lookups are seen where they happen, by :class:`_Calls`)."""
    handles = []
    seen: set[int] = set()
    for name in names:
        module = _layer_of(model, name)[0]
        if id(module) in seen or isinstance(module, nn.Embedding | nn.EmbeddingBag):
            continue
        seen.add(id(module))
        key = id(module)

        def hook(mod: nn.Module, args: tuple, kwargs: dict, key: int = key) -> None:
            _observe(mod, key, args, kwargs, norms)

        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    return handles


def _observe(module: nn.Module, key: int, args: tuple, kwargs: dict, norms: _Norms) -> None:
    """Add the input features ``module`` is called with (positional tensors first, then
    keyword ones, as a model may call a layer either way); a call without a tensor input
    is not seen."""
    inputs = [a for a in args if isinstance(a, Tensor)]
    inputs += [v for k, v in kwargs.items() if isinstance(v, Tensor) and k in _INPUT_KEYWORDS]
    if isinstance(module, nn.modules.conv._ConvNd) and inputs:
        norms.add((key, "channels"), _feature_squares(inputs[0], 1 if inputs[0].dim() > 1 else 0))
    elif isinstance(module, nn.MultiheadAttention):
        q = args[0] if args else kwargs.get("query")
        k = args[1] if len(args) > 1 else kwargs.get("key", q)
        v = args[2] if len(args) > 2 else kwargs.get("value", k)
        for role, x in (("q", q), ("k", k), ("v", v)):
            if isinstance(x, Tensor):
                norms.add((key, role), _feature_squares(x, -1))
    elif isinstance(module, nn.RNNBase):
        x = args[0] if args else kwargs.get("input")
        if isinstance(x, nn.utils.rnn.PackedSequence):
            x = x.data
        if isinstance(x, Tensor):
            norms.add((key, "last"), _feature_squares(x, -1))
    elif isinstance(module, nn.Bilinear) and len(inputs) >= 2:
        norms.add((key, "first"), _feature_squares(inputs[0], -1))
        norms.add((key, "second"), _feature_squares(inputs[1], -1))
    elif inputs:
        norms.add((key, "last"), _feature_squares(inputs[0], -1))


_MATMULS = (Tensor.__matmul__, torch.matmul, torch._C.TensorBase.matmul, torch.mm)
"""``x @ W`` as the functions a torch-function mode sees it called."""


class _Calls(TorchFunctionMode):
    """Sees the inputs of masked tensors where a layer's hook cannot.

    * Every ``F.embedding`` / ``F.embedding_bag`` call on a tracked table counts the rows
      looked up (by tensor identity, so a subclass's own forward such as a scaled word
      embedding, a table tied under several modules and one looked up outside its module
      are all seen; a table that picks its rows otherwise, learned positions indexed
      directly, is not).
    * One matrix taken from a tracked stack (``experts.down_proj[e]``) and then applied,
      ``F.linear(x, W[e])`` or ``x @ W[e]``, adds ``x``'s features to expert ``e``'s row;
      so does a grouped matmul over the whole stack (``torch._grouped_mm``, transformers'
      default for experts), each expert's rows by the offsets.
    """

    def __init__(self, tables: dict[int, tuple[int, int]], stacks: dict[int, tuple], norms: _Norms):
        super().__init__()
        self.tables, self.stacks, self.norms = tables, stacks, norms
        self.slices: dict[int, tuple] = {}  # id -> (weakref, stack key, experts, row)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is F.embedding or func is F.embedding_bag:
            self._lookup(args[0] if args else kwargs.get("input"),
                         args[1] if len(args) > 1 else kwargs.get("weight"))  # fmt: skip
        elif self.stacks and func is Tensor.__getitem__ and id(args[0]) in self.stacks:
            self._sliced(args[0], args[1], out)
        elif self.slices and func is F.linear:
            x, weight = args[0] if args else kwargs.get("input"), kwargs.get("weight")
            self._applied(x, args[1] if len(args) > 1 else weight, "in_last")
        elif self.slices and func in _MATMULS and len(args) == 2:
            self._applied(args[0], args[1], "in_first")
        elif self.stacks and getattr(func, "__name__", "") in ("_grouped_mm", "grouped_mm"):
            offs = kwargs.get("offs", args[2] if len(args) > 2 else None)
            self._grouped(args[0] if args else kwargs.get("mat_a"),
                          args[1] if len(args) > 1 else kwargs.get("mat_b"), offs)  # fmt: skip
        return out

    def _lookup(self, ids: Any, weight: Any) -> None:
        found = self.tables.get(id(weight))
        if found is None or not isinstance(ids, Tensor) or ids.is_floating_point():
            return
        key, rows = found
        ids = ids.reshape(-1).long()
        if not ids.numel() or (int(ids.min()) >= 0 and int(ids.max()) < rows):
            self.norms.add((key, "rows"), torch.bincount(ids, minlength=rows).to(torch.float64))

    def _sliced(self, stack: Tensor, index: Any, out: Any) -> None:
        """Remember ``out = stack[index]`` where ``index`` names one expert."""
        if isinstance(index, Tensor) and index.numel() == 1 and not index.is_floating_point():
            index = int(index)
        if isinstance(index, int) and isinstance(out, Tensor) and out.dim() == 2:
            key, experts = self.stacks[id(stack)]
            self.slices[id(out)] = (weakref.ref(out), key, experts, index % experts)

    def _grouped(self, x: Any, weight: Any, offs: Any) -> None:
        """A grouped matmul over every expert at once (``torch._grouped_mm``): the rows of
        ``x`` up to ``offs[e]`` (after ``offs[e - 1]``) are expert ``e``'s inputs."""
        stack = weight if id(weight) in self.stacks else getattr(weight, "_base", None)
        found = self.stacks.get(id(stack)) if stack is not None else None
        if found is None or not isinstance(x, Tensor) or not isinstance(offs, Tensor):
            return
        (key, leaf), experts = found
        if weight is stack:
            layout = "in_first"  # the stack is (experts, in, out)
        elif tuple(weight.shape) == (experts, stack.shape[2], stack.shape[1]):
            layout = "in_last"  # a transposed view of (experts, out, in)
        else:
            return
        start = 0
        for e, end in enumerate(offs.tolist()[:experts]):
            if end > start:
                squares = _feature_squares(x[start:end], -1)
                self.norms.add_row((key, f"{layout}:{leaf}"), e, experts, squares)
            start = end

    def _applied(self, x: Any, weight: Any, layout: str) -> None:
        found = self.slices.get(id(weight))
        if found is None or found[0]() is not weight or not isinstance(x, Tensor):
            return
        _, (key, leaf), experts, row = found
        features = weight.shape[-1] if layout == "in_last" else weight.shape[0]
        if x.shape[-1] == features:
            self.norms.add_row((key, f"{layout}:{leaf}"), row, experts, _feature_squares(x, -1))


def _tracked(model: nn.Module, names: list[str]) -> tuple[dict, dict]:
    """The masked embedding tables among ``names`` (tensor identity -> (owner key, rows))
    and the masked stacks of matrices (identity -> ((owner key, role), experts))."""
    params = dict(model.named_parameters())
    tables, stacks = {}, {}
    for name in names:
        owner, leaf = _layer_of(model, name)
        t = params[name]
        if isinstance(owner, nn.Embedding | nn.EmbeddingBag) and t.dim() == 2:
            tables[id(t)] = (id(owner), t.shape[0])
        elif t.dim() == 3 and not isinstance(owner, nn.modules.conv._ConvNd | nn.Bilinear):
            stacks[id(t)] = ((id(owner), leaf), t.shape[0])
    return tables, stacks


def _experts_scale(sums: Tensor, hit: Tensor, w: Tensor, layout: str) -> Tensor:
    """Each expert's input norms broadcast over its matrix (inputs along its last
    dimension, ``in_last``, or its middle one, ``in_first``); an expert no input was routed
    to takes the median norm of the others (ranked by magnitude on their scale)."""
    norms = sums.sqrt()
    if not bool(hit.all()):
        norms[~hit] = norms[hit].median() if bool(hit.any()) else 1.0
    return (norms[:, None, :] if layout == "in_last" else norms[:, :, None]).expand(w.shape)


def _score(module: nn.Module, leaf: str, weight: Tensor, norms: _Norms) -> Tensor | None:
    """``‖X_j‖₂`` broadcast to ``weight``'s shape, or None where no input was seen."""
    key = id(module)
    w = weight.detach()
    for layout, features in (("in_last", -1), ("in_first", 1)):  # (E, out, in), (E, in, out)
        per_expert = norms.sums.get((key, f"{layout}:{leaf}"))
        if per_expert is not None and w.dim() == 3 and per_expert.shape[1] == w.shape[features]:
            return _experts_scale(per_expert, norms.hit[(key, f"{layout}:{leaf}")], w, layout)
    if (key, "rows") in norms.sums and w.dim() == 2:
        return norms.sums[(key, "rows")].sqrt()[:, None].expand(w.shape)
    if (key, "channels") in norms.sums and w.dim() >= 3:
        channels = norms.sums[(key, "channels")].sqrt()
        groups = getattr(module, "groups", 1)
        transposed = getattr(module, "transposed", False)
        if transposed:  # weight (in, out / groups, k…): input channel is dim 0
            return channels.reshape(-1, *([1] * (w.dim() - 1))).expand(w.shape)
        per_group = w.shape[1]
        out_per_group = w.shape[0] // groups
        rows = [
            channels[(o // out_per_group) * per_group : (o // out_per_group + 1) * per_group]
            for o in range(w.shape[0])
        ]
        return (
            torch.stack(rows).reshape(w.shape[0], per_group, *([1] * (w.dim() - 2))).expand(w.shape)
        )
    if isinstance(module, nn.MultiheadAttention) and leaf.endswith("proj_weight"):
        if leaf == "in_proj_weight":
            e = w.shape[0] // 3
            parts = [norms.sums.get((key, r)) for r in ("q", "k", "v")]
            if any(p is None or p.numel() != w.shape[1] for p in parts):
                return None
            return torch.cat([p.sqrt()[None].expand(e, -1) for p in parts])
        role = leaf[0]
        part = norms.sums.get((key, role))
        return (
            part.sqrt()[None].expand(w.shape)
            if part is not None and part.numel() == w.shape[1]
            else None
        )
    if isinstance(module, nn.RNNBase):
        part = norms.sums.get((key, "last"))
        if leaf == "weight_ih_l0" and part is not None and part.numel() == w.shape[1]:
            return part.sqrt()[None].expand(w.shape)
        return None
    if isinstance(module, nn.Bilinear) and w.dim() == 3:
        a, b = norms.sums.get((key, "first")), norms.sums.get((key, "second"))
        if a is None or b is None:
            return None
        return (a.sqrt()[:, None] * b.sqrt()[None, :])[None].expand(w.shape)
    part = norms.sums.get((key, "last"))
    if part is None:
        return None
    n = part.numel()
    if type(module).__name__ == "Conv1D" and w.dim() == 2 and w.shape[0] == n:
        return part.sqrt()[:, None].expand(w.shape)  # Hugging Face's x @ W, W (in, out)
    if w.shape[-1] == n:  # x @ Wᵀ (Linear) or a stack of them, (…, out, in)
        return part.sqrt().expand(w.shape)
    if w.dim() == 2 and w.shape[0] == n:  # x @ W (Conv1D)
        return part.sqrt()[:, None].expand(w.shape)
    return None


def activation_scores(
    model: nn.Module, names: list[str], inputs: object, batch_size: int = 64
) -> tuple[list[Tensor], list[str]]:
    """``|W|·‖X‖`` for each masked weight ``names`` over ``inputs`` (see the module notes),
    and the names whose input was not seen (scored with the median norm)."""
    params = dict(model.named_parameters())
    norms = _Norms()
    handles = _hooks(model, names, norms)
    device = device_of(model)
    try:
        with torch.no_grad(), modes_kept(model), _Calls(*_tracked(model, names), norms):
            model.eval()
            for batch in _input_batches(inputs, batch_size):
                try:
                    infer(model, to_device(batch, device))
                except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                    raise PacnetError(
                        "prune(score='activation'): the model cannot run on the inputs "
                        f"({type(exc).__name__}: {first_line(exc)})"
                    ) from None
    finally:
        for h in handles:
            h.remove()
    check(norms.sums, "prune(score='activation'): the inputs reached none of the masked weights")
    features = [
        (v[norms.hit[key]] if key in norms.hit else v).sqrt().flatten()
        for key, v in norms.sums.items()
        if key[1] != "rows"
    ]
    median = torch.cat(features).median() if features else torch.tensor(1.0, dtype=torch.float64)
    scores, unseen = [], []
    for name in names:
        module, leaf = _layer_of(model, name)
        scale = _score(module, leaf, params[name], norms)
        if scale is None:
            unseen.append(name)
            scale = median
        weight = params[name].detach()
        scores.append(weight.float().abs() * scale.to(weight.device, torch.float32))
    return scores, unseen


def _input_batches(inputs: object, batch_size: int) -> Iterable[Any]:
    """Batches of model inputs from a tensor, :class:`Data`, a Dataset, a DataLoader or a
    list of batches (labels are dropped)."""
    if isinstance(inputs, Tensor):
        yield from inputs.split(batch_size)
        return
    if isinstance(inputs, Mapping):
        yield inputs
        return
    for batch in as_source(inputs, "the inputs").chunks(batch_size):
        packed = isinstance(batch, nn.utils.rnn.PackedSequence)
        if isinstance(batch, tuple | list) and len(batch) in (1, 2) and not packed:
            yield batch[0]  # (inputs, labels), or inputs alone as TensorDataset(x) gives them
        else:
            yield batch
