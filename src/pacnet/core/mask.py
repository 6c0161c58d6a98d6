"""Masks: which weights are *essential* (kept for the source task) and which are *redundant*.

A :class:`Mask` maps a parameter name to a boolean tensor of the parameter's shape,
``True`` = essential. :func:`prune` builds one from weight magnitudes, as PAC-Net's first
step does: ``ratio`` is the fraction of prunable weights that becomes redundant (the paper's
0.8), the largest-magnitude rest is essential.

Counts are exact: ``round(ratio * n)`` weights are redundant (Python's ``round``, half to
even), per layer or over all prunable weights at once. Among equal magnitudes the earlier
entries (in the model's parameter order, then row-major order) are pruned first, so a mask
depends on nothing but the weights. The global threshold is found by a radix selection over
the float bit patterns, a few passes over the weights with memory bounded by a chunk, with no
full sort and no concatenated copy of the model.
"""

from __future__ import annotations

import json
import math
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from pacnet.core.entries import CHUNK, chunks
from pacnet.core.roles import (
    MASKED,
    Plan,
    PrunableRule,
    check_model,
    compact_names,
    default_roles,
    find_head,
    frozen_by_rule,
    guess_head,
    head_doubt,
    make_plan,
    unwrap,
)
from pacnet.core.scores import SCORES, activation_scores
from pacnet.errors import PacnetError, check, check_ratio
from pacnet.io import read_safetensors, write_safetensors
from pacnet.training import distributed

__all__ = ["Mask", "PrunableRule", "find_head", "prunable_names", "prune", "shared_mask"]

_KEY_DTYPES = {2: torch.int16, 4: torch.int32, 8: torch.int64}
_MASK_FORMAT = "pacnet.mask"


def prunable_names(
    model: nn.Module,
    prunable: PrunableRule = None,
    head: str | None = "auto",
    embeddings: bool = True,
) -> list[str]:
    """Names of the parameters a mask covers, in the model's parameter order.

    ``prunable`` is ``None`` (the default rule of :mod:`pacnet.core.roles`: every weight that
    multiplies activations, except the head's), an iterable of parameter names, or a
    predicate ``(name, parameter) -> bool``. ``head`` is the head module (``"auto"``:
    :func:`~pacnet.core.roles.find_head`); ``embeddings=False`` leaves embedding tables out.
    """
    return list(make_plan(model, prunable, head, embeddings).masked)


class Mask(Mapping[str, Tensor]):
    """Essential (``True``) / redundant (``False``) entries per parameter name.

    ``plan`` (set by :func:`prune`) records the roles of the model's tensors (the head, the
    per-task tensors, tied names) so that everything after pruning uses the same choice.
    """

    def __init__(self, tensors: Mapping[str, Tensor], plan: Plan | None = None):
        self.plan = plan
        self._tensors: dict[str, Tensor] = {}
        for name, value in tensors.items():
            check(
                isinstance(value, Tensor) and value.dtype == torch.bool,
                f"mask entry {name!r} must be a bool tensor",
            )
            self._tensors[name] = value
        check(self._tensors, "a mask needs at least one parameter")

    def __getitem__(self, name: str) -> Tensor:
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __invert__(self) -> Mask:
        """The complement: redundant entries become ``True``."""
        return Mask({n: ~m for n, m in self._tensors.items()}, self.plan)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mask):
            return NotImplemented
        return self._tensors.keys() == other._tensors.keys() and all(
            self[n].shape == other[n].shape and torch.equal(self[n].cpu(), other[n].cpu())
            for n in self
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Mask({len(self)} tensors, {self.essential}/{self.total} essential)"

    # ---- counts -----------------------------------------------------------------------
    def counts(self) -> dict[str, tuple[int, int]]:
        """Per parameter: (essential count, total count)."""
        return {n: (int(m.sum()), m.numel()) for n, m in self._tensors.items()}

    @property
    def total(self) -> int:
        return sum(m.numel() for m in self._tensors.values())

    @property
    def essential(self) -> int:
        return sum(int(m.sum()) for m in self._tensors.values())

    @property
    def redundant(self) -> int:
        return self.total - self.essential

    @property
    def density(self) -> float:
        """Fraction of covered entries that are essential."""
        return self.essential / self.total

    def summary(self) -> str:
        """A per-layer table of essential counts and density."""
        width = max(len(n) for n in self)
        lines = [f"{'parameter':<{width}}  {'essential':>10}  {'total':>10}  density"]
        for name, (kept, total) in self.counts().items():
            lines.append(f"{name:<{width}}  {kept:>10}  {total:>10}  {kept / total:.3f}")
        lines.append(
            f"{'all':<{width}}  {self.essential:>10}  {self.total:>10}  {self.density:.3f}"
        )
        if self.plan is not None:
            lines.append(self.plan.describe())
        return "\n".join(lines)

    # ---- model checks -----------------------------------------------------------------
    def check(self, model: nn.Module) -> None:
        """Fail with one line unless every mask name is a parameter of the same shape."""
        params = dict(unwrap(model).named_parameters())
        for name, m in self._tensors.items():
            if name not in params:
                raise PacnetError(
                    f"mask entry {name!r} is not a parameter of the model "
                    "(was the mask made for another architecture?)"
                )
            if tuple(params[name].shape) != tuple(m.shape):
                raise PacnetError(
                    f"mask entry {name!r} has shape {tuple(m.shape)} but the model's parameter "
                    f"has shape {tuple(params[name].shape)}"
                )

    def to(self, device: torch.device | str) -> Mask:
        return Mask({n: m.to(device) for n, m in self._tensors.items()}, self.plan)

    # ---- compact storage --------------------------------------------------------------
    def pack(self) -> tuple[dict[str, Tensor], dict[str, list[int]]]:
        """Bit-pack the mask: one uint8 tensor per name (8 entries a byte) and the shapes."""
        packed = {
            n: torch.from_numpy(np.packbits(m.detach().cpu().numpy().ravel(), bitorder="little"))
            for n, m in self._tensors.items()
        }
        return packed, {n: list(m.shape) for n, m in self._tensors.items()}

    @classmethod
    def unpack(
        cls,
        packed: Mapping[str, Tensor],
        shapes: Mapping[str, Iterable[int]],
        plan: Plan | None = None,
    ) -> Mask:
        """Inverse of :meth:`pack`."""
        check(packed.keys() == shapes.keys(), "packed mask names and shapes do not match")
        out = {}
        for name, shape in shapes.items():
            shape = tuple(int(s) for s in shape)
            numel = math.prod(shape)
            data = packed[name]
            check(
                data.dtype == torch.uint8 and data.numel() == (numel + 7) // 8,
                f"packed mask entry {name!r} has {data.numel()} bytes, expected {(numel + 7) // 8}",
            )
            bits = np.unpackbits(data.numpy(), count=numel, bitorder="little")
            out[name] = torch.from_numpy(bits.astype(bool)).reshape(shape)
        return cls(out, plan)

    def save(self, path: str | Path) -> None:
        """Write the mask to a safetensors file: bit-packed, then zlib-compressed per entry
        (a 20 %-dense magnitude mask takes about 0.74 bits per weight, header included)."""
        packed, shapes = self.pack()
        compressed = {
            n: torch.frombuffer(bytearray(zlib.compress(t.numpy().tobytes(), 6)), dtype=torch.uint8)
            for n, t in packed.items()
        }
        meta = {
            "format": _MASK_FORMAT,
            "version": "2",
            "encoding": "zlib",
            "shapes": json.dumps(shapes),
        }
        if self.plan is not None:
            meta["plan"] = self.plan.to_json()
        write_safetensors(path, compressed, meta)

    @classmethod
    def load(cls, path: str | Path) -> Mask:
        """Read a mask written by :meth:`save` (also the uncompressed version-1 files)."""
        tensors, meta = read_safetensors(path)
        check(meta.get("format") == _MASK_FORMAT, f"{path}: not a pacnet mask file")
        try:
            shapes = json.loads(meta["shapes"])
        except (KeyError, json.JSONDecodeError):
            raise PacnetError(f"{path}: mask file has no readable shape table") from None
        if meta.get("encoding") == "zlib":
            try:
                tensors = {
                    n: torch.frombuffer(
                        bytearray(zlib.decompress(t.numpy().tobytes())), dtype=torch.uint8
                    )
                    for n, t in tensors.items()
                }
            except zlib.error:
                raise PacnetError(f"{path}: mask file is corrupt (cannot decompress)") from None
        try:
            plan = Plan.from_json(meta["plan"]) if "plan" in meta else None
        except PacnetError as exc:
            raise PacnetError(f"{path}: {exc}") from None
        return cls.unpack(tensors, shapes, plan)


# ---- selection by magnitude ---------------------------------------------------------------
def _keys(chunk: Tensor, dtype: torch.dtype) -> Tensor:
    """Integer keys ordered like |chunk| (IEEE bit patterns of non-negative floats)."""
    return chunk.to(dtype).abs().view(_KEY_DTYPES[torch.finfo(dtype).bits // 8])


def _kth_key(tensors: list[Tensor], rank: int, dtype: torch.dtype) -> int:
    """The ``rank``-th smallest key (1-based) over all tensors, by 16-bit radix passes."""
    bits = torch.finfo(dtype).bits
    prefix, rank_left = 0, rank
    shifts = list(range(((bits - 1) // 16) * 16, -1, -16))
    for i, shift in enumerate(shifts):
        hist = torch.zeros(1 << 16, dtype=torch.int64, device=tensors[0].device)
        for t in tensors:
            for chunk in chunks(t):
                keys = _keys(chunk, dtype)  # int32 (int64 for float64): non-negative
                if keys.dtype == torch.int16:
                    keys = keys.int()
                if i:
                    keys = keys[(keys >> (shift + 16)) == prefix]
                hist += torch.bincount((keys >> shift) & 0xFFFF, minlength=1 << 16).to(hist.device)
        cum = hist.cumsum(0)
        digit = int(torch.searchsorted(cum, torch.tensor(rank_left, device=cum.device)))
        rank_left -= int(cum[digit - 1]) if digit else 0
        prefix = (prefix << 16) | digit
    return prefix


def select_essential(tensors: list[Tensor], n_redundant: int) -> list[Tensor]:
    """Essential masks for ``tensors`` with exactly ``n_redundant`` smallest-magnitude entries
    pruned (ties: the earlier entries first).

    Works chunk by chunk: besides the bool masks it returns, memory stays within a chunk.
    """
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    if n_redundant == 0:
        return [torch.ones_like(t, dtype=torch.bool) for t in tensors]
    threshold = _kth_key(tensors, n_redundant, dtype)
    out = []
    below = 0
    for t in tensors:
        essential = torch.empty(t.numel(), dtype=torch.bool, device=t.device)
        for start, chunk in zip(range(0, t.numel(), CHUNK), chunks(t), strict=True):
            part = essential[start : start + chunk.numel()]
            torch.ge(_keys(chunk, dtype), threshold, out=part)
            below += part.numel() - int(part.sum())
        out.append(essential)
    ties_needed = n_redundant - below  # entries equal to the threshold, earliest first
    for t, essential in zip(tensors, out, strict=True):
        for start, chunk in zip(range(0, t.numel(), CHUNK), chunks(t), strict=True):
            if ties_needed <= 0:
                break
            ties = (_keys(chunk, dtype) == threshold).nonzero().flatten()[:ties_needed]
            essential[start + ties] = False
            ties_needed -= ties.numel()
    return [essential.reshape(t.shape) for t, essential in zip(tensors, out, strict=True)]


def prune(
    model: nn.Module,
    ratio: float = 0.8,
    scope: str = "global",
    prunable: PrunableRule = None,
    head: str | None = "auto",
    *,
    embeddings: bool = True,
    warn: bool = True,
    score: str = "magnitude",
    inputs: object = None,
) -> Mask:
    """Magnitude pruning: the ``ratio`` smallest-|w| prunable weights become redundant (or
    the smallest ``|W_ij|·‖X_j‖₂`` with ``score="activation"``).

    Args:
        model: any module; its weights are read, not changed.
        ratio: fraction of prunable weights that is redundant, in (0, 1); paper: 0.8.
        scope: ``"global"`` (one threshold over all prunable weights, as in the paper) or
            ``"layer"`` (the same ratio within every parameter). Under ``"global"`` a
            parameter the threshold would leave without a single essential entry (an
            embedding of small values next to large projections) keeps its own largest
            ``1 − ratio`` share instead (at least one entry), so the source never loses a whole
            layer; a warning
            names it.
        prunable: which parameters to cover (default: every weight that multiplies
            activations, see :mod:`pacnet.core.roles`), names, or a predicate.
        head: the output module, whose tensors are per-task (``"auto"``:
            :func:`~pacnet.core.roles.find_head`; None: no head).
        embeddings: cover embedding tables (default) or leave them frozen.
        warn: warn about every tensor left frozen (the mask does not cover it and it is
            not per-task), however small, about weights the global threshold would leave without any
            essential entry (they keep their own share), and
            about an automatic head that is only a guess (the last weight layer, where the
            model ends in something else), naming them.

        score: ``"magnitude"`` (``|w|``, the paper's and the default) or ``"activation"``
            (``|W_ij|·‖X_j‖₂``, Wanda's score: the norm of each weight's input feature over
            ``inputs``; see :mod:`pacnet.core.scores`).
        inputs: the model's inputs for ``score="activation"`` (a few hundred samples): a
            tensor, :class:`~pacnet.Data`, a Dataset, a DataLoader or a list of batches
            (labels are ignored).

    Returns:
        A :class:`Mask` with ``True`` on essential weights; ``mask.plan`` holds the roles
        of every tensor (head, per-task, tied names) for everything that follows, and
        ``mask.summary()`` / ``mask.plan.describe()`` report the coverage.
    """
    ratio = check_ratio(ratio)
    check(scope in ("global", "layer"), f"scope must be 'global' or 'layer', got {scope!r}")
    check(score in SCORES, f"score must be one of {', '.join(SCORES)}, got {score!r}")
    check(
        score == "magnitude" or inputs is not None,
        "score='activation' ranks |W|·‖X‖ over inputs: pass inputs= (a few hundred of the "
        "model's inputs)",
    )
    model = unwrap(model)
    doubt = None
    if head == "auto":
        check_model(model)
        head, guessed = guess_head(model)
        doubt = head_doubt(model, head) if guessed else None
    plan = make_plan(model, prunable, head, embeddings)
    params = dict(model.named_parameters())
    names = list(plan.masked)
    tensors = [params[n].detach() for n in names]
    for name, t in zip(names, tensors, strict=True):
        check(
            t.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64),
            f"parameter {name!r} has dtype {t.dtype}; pruning ranks float16/bfloat16/32/64 weights",
        )
        finite = all(bool(torch.isfinite(chunk).all()) for chunk in chunks(t))
        check(finite, f"parameter {name!r} holds NaN or inf; cannot rank it")
    if warn:
        _warn_uncovered(model, plan, embeddings)
        if doubt:
            warnings.warn(f"prune: {doubt}", UserWarning, stacklevel=2)
    if score == "activation":
        tensors = _activation(model, names, inputs, warn)
    masks = _essential(names, tensors, ratio, scope, warn)
    return Mask(dict(zip(names, masks, strict=True)), plan)


def _activation(model: nn.Module, names: list[str], inputs: object, warn: bool) -> list[Tensor]:
    """The activation scores of ``names`` (see :mod:`pacnet.core.scores`), naming the
    weights whose input no hook saw."""
    tensors, unseen = activation_scores(model, names, inputs)
    if warn and unseen:
        warnings.warn(
            f"prune: no input of {', '.join(unseen[:5])}{', …' if len(unseen) > 5 else ''} "
            "was seen by a forward hook; they are scored with the median input norm",
            UserWarning,
            stacklevel=3,
        )
    return tensors


def _essential(
    names: list[str], tensors: list[Tensor], ratio: float, scope: str, warn: bool
) -> list[Tensor]:
    """The essential entries by ``scope``; under one global threshold a tensor it would
    empty keeps its own largest share (a tensor left all zeros in the source, an embedding
    or a projection, breaks the source or divides 0 by 0), named in a warning."""
    if scope == "global":
        total = sum(t.numel() for t in tensors)
        masks = select_essential(tensors, round(ratio * total))
    else:
        masks = [select_essential([t], round(ratio * t.numel()))[0] for t in tensors]
    empty = [i for i, m in enumerate(masks) if m.numel() and not bool(m.any())]
    for i in empty:  # its own share, and at least one entry
        n = tensors[i].numel()
        masks[i] = select_essential([tensors[i]], min(round(ratio * n), n - 1))[0]
    if warn and empty:
        listed = [names[i] for i in empty]
        warnings.warn(
            f"prune: {', '.join(listed[:5])}{', …' if len(listed) > 5 else ''} would keep no "
            "essential weight under one global threshold (their magnitudes are small next to "
            f"the rest); each keeps its own largest {1 - ratio:.0%} instead, as "
            "scope='layer' would",
            UserWarning,
            stacklevel=3,
        )
    return masks


def shared_mask(compute: Callable[[], Mask]) -> Mask:
    """The :class:`Mask` ``compute()`` returns on rank 0, broadcast to every rank of a
    ``torchrun`` job and verified there by checksum (just ``compute()`` outside one)."""
    if not distributed.active():
        return compute()
    packed = shapes = plan = None
    if distributed.is_main():
        mask = compute()
        packed, shapes = mask.pack()
        plan = mask.plan.to_json() if mask.plan is not None else None
    packed, shapes, plan = distributed.broadcast_object((packed, shapes, plan))
    mask = Mask.unpack(packed, shapes, Plan.from_json(plan) if plan is not None else None)
    check(
        distributed.ranks_agree(distributed.checksum(mask.pack()[0])),
        "the pruning mask differs between ranks after broadcasting it (checksum mismatch)",
    )
    return mask


def _warn_uncovered(model: nn.Module, plan: Plan, embeddings: bool) -> None:
    """Name every tensor the mask leaves frozen, however small (not those
    ``embeddings=False`` chose)."""
    explicit: set[str] = set()
    if not embeddings:
        with_tables = default_roles(model, plan.head, embeddings=True)
        explicit = {n for n in plan.frozen if with_tables.get(n) == MASKED}
    frozen = frozen_by_rule(plan, explicit)
    if frozen:
        share = sum(plan.sizes[n] for n in frozen) / sum(plan.sizes.values())
        warnings.warn(
            f"prune: {', '.join(compact_names(frozen))} ({share:.2%} of the parameters) are "
            "not covered by the mask and stay frozen for every target; pass prunable= to "
            "include them",
            UserWarning,
            stacklevel=3,
        )
