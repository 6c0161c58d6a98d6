"""Exact masked training: only the entries a mask marks ``True`` may change.

Zeroing gradients alone does not freeze a weight in general: momentum, weight decay (SGD's
coupled decay, AdamW's decoupled decay) and optimizer state from earlier steps move entries
whose gradient is zero. :func:`train_only` wraps the user's own loop with optimizer step
hooks (a pre-hook sees the final gradients: after DDP's all-reduce and GradScaler's
unscaling; with ``optimizer.step(closure)`` they are prepared after each call of the
closure, e.g. every evaluation LBFGS makes) and picks the cheapest of three exact ways to
hold the frozen entries:

* **Zeroed gradients** (SGD, Adam or AdamW with no weight decay, ``maximize`` off, an
  ``eps`` that is not 0 and no earlier state for the masked parameters): before every
  step the frozen gradient entries are zeroed with one batched ``torch._foreach_mul_`` (a
  ``masked_fill_``, which gives +0.0, where a frozen value is -0.0), after the gradient of
  ``l2·‖w − w₀‖²`` over the trainable entries (``w₀``: the values on entry) is added in
  one batched pass. A frozen entry then has zero gradient and zero state, and its update
  is ``w ± 0.0 = w``. Sparse gradients (``nn.Embedding(sparse=True)``) are coalesced and
  their values masked; with ``l2 > 0`` they are made dense first, as the term is.
* **Parking** (Adam or AdamW as above with ``β2 > 0``, for parameters whose frozen values
  are finite and not ``-0.0``). The first step zeroes the frozen gradient entries; then
  Adam's second moment is set to ``+inf`` there. From then on the update at a frozen entry
  is ``lr·m/(√inf + eps) = ±0.0`` whatever its gradient, and ``w ∓ 0.0 = w`` bit for bit:
  no per-step pass over the gradients at all. With ``l2 > 0``, a fused, coupled-decay Adam
  group whose own weight decay is 0 and whose parameters are all under the term from a
  zero start (masked weights whose trainable entries start at 0, as in Calibrate) gets the
  term's gradient ``2·l2·w`` as the kernel's own weight decay, so a Calibrate step costs
  what a plain one does; other parameters under the term get the explicit pass
  (:func:`pacnet.calibrate` puts the task's own tensors, which start as copies, in a group
  of their own for this). On exit the moments at frozen entries are set to 0, the frozen
  gradient entries too (what zeroed gradients would have left), and the groups' own weight
  decay is put back; ``optimizer.state_dict()`` inside the context returns that clean
  state. ``load_state_dict`` inside the context parks again if the loaded state is zero at
  the frozen entries, and switches to the write-back otherwise.
* **Write-back** (any other optimizer, or ``restore="always"``): after every step the
  frozen entries are written back: ``w ← w·keep + frozen`` with two batched
  ``torch._foreach`` calls (``keep``: the mask as 0/1; ``frozen``: entry values at frozen
  places, 0 elsewhere). ``w·0 + f`` equals ``f`` exactly for every finite ``w`` and ``f``
  except ``f = -0.0``; the rare parameter holding a frozen ``-0.0`` (or a non-finite
  frozen value) takes an exact ``torch.where`` path instead, and so does every parameter
  under an ``eps`` of 0 (Adam's ``0/0`` at a zero-gradient entry is NaN, and ``NaN·0`` is
  NaN).

The choice follows the optimizer through the context, checked at each step from the
identities of its groups, their settings and the per-parameter state (no pass over any
tensor unless one of them changed):

* a group added (``add_param_group``) or a setting switched inside the context (weight
  decay, ``maximize``, ``eps``, ``betas``) is checked as on entry; where frozen entries are
  no longer provably still, the frozen values are captured at that moment (nothing has
  moved them yet) and the write-back takes over (``handle.restores``, ``handle.reason``).
  A weight decay set on a group whose decay carries the l2 term is the user's: it stays,
  and the term is added explicitly. A ``β2`` set to 0 unparks the group's parameters
  (their moments at frozen entries are zeroed, their frozen gradient entries again);
* optimizer state cleared or replaced (``optimizer.state.clear()``, ``del
  optimizer.state[p]``, a new state tensor) is parked again (state with a second moment),
  goes back to zeroed gradients until the next step parks it (cleared state), or switches
  to the write-back (state nonzero at frozen entries).

A non-finite value can still move a frozen entry: a NaN or inf gradient there (``NaN·0`` is
NaN, and so is ``inf/inf``), or an optimizer step that makes a weight NaN before the
write-back. Such a run has diverged; as a safety net the frozen entries are checked on exit
against their values on entry (a compact copy, none when they are all ``+0.0`` as in
Allocate) and put back with a warning if anything moved them.
:meth:`MaskedTraining.finish_grads` applies the term and zeroes every frozen gradient entry
early, for loops that clip gradients (so the norm counts only trainable entries).

Every masked parameter is held, whatever its ``requires_grad`` on entry (gradual
unfreezing inside the context is exact; a parameter without a gradient costs nothing per
step). Parameters the mask does not cover follow ``others``: ``"trainable"`` leaves them
alone, ``"frozen"`` turns off their ``requires_grad`` for the duration (and clears their
gradient); a parameter the mask freezes whole (``others="frozen"``, or a mask entry all
``False``) that gets a gradient anyway has it set to ``None`` before each step, so the
optimizer skips it (every ``torch.optim`` optimizer but LBFGS does; under the write-back,
one that does not also has such parameters it holds copied back). Everything is undone on
exit. The mask's tensors are used as they are, without a copy, where parking holds the
entries: do not edit them inside the context.
"""

from __future__ import annotations

import math
import operator
import sys
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from pacnet.core.entries import chunks
from pacnet.core.mask import Mask
from pacnet.core.roles import unwrap
from pacnet.errors import check

RESTORE_MODES = ("auto", "always")
_ADAM = (torch.optim.Adam, torch.optim.AdamW)
_STILL_AT_ZERO_GRAD = (torch.optim.SGD, *_ADAM)
"""Optimizers whose update leaves an entry exactly unchanged while its gradient and state
are zero (given no weight decay and ``maximize`` off)."""
_MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


@dataclass
class _Masked:
    name: str
    param: nn.Parameter
    keep: Tensor  # 1 where trainable, 0 where frozen, on the parameter's device: bool
    # (1 byte per weight) where parking holds the frozen entries or a frozen value is -0.0;
    # the parameter's dtype where a multiply runs every step (a bool multiply is ~4x slower
    # on CPU)
    start: Tensor | None  # w₀ for the l2 term, or None where the trainable entries start at 0
    plain: bool = True  # frozen values finite and not -0.0: ``w ± 0.0 = w`` holds them
    seen: tuple[dict, tuple] | None = None  # the optimizer's state for it and that state's
    # values as the last step left them (None: no state yet)

    def multiplies(self) -> None:
        """Make ``keep`` the parameter's dtype, for a fast multiply every step (not where a
        frozen value is -0.0: ``g·0`` can be -0.0, which turns it into +0.0)."""
        if self.plain:
            self.keep = self.keep.to(self.param.dtype)


@dataclass
class _Frozen:
    """What the write-back path needs for one parameter."""

    param: nn.Parameter
    keep: Tensor  # the mask as 0/1 in the parameter's dtype (unused where ``exact``)
    values: Tensor | None  # frozen values (0 at trainable entries); None when all zero
    exact: Tensor | None  # bool mask (True = trainable) for the torch.where path, else None


def _frozen_copy(m: _Masked, exact: bool) -> _Frozen:
    values = m.param.detach()
    trainable = m.keep.bool()
    at_frozen = values[~trainable]
    if exact or bool((~torch.isfinite(at_frozen)).any()) or _has_negative_zero(at_frozen):
        return _Frozen(m.param, m.keep, values.clone(), trainable)
    frozen = values * (1 - m.keep)
    return _Frozen(m.param, m.keep, frozen if bool(frozen.any()) else None, None)


def _bits(t: Tensor) -> Tensor:
    """The tensor's bit patterns as integers (so -0.0 != +0.0 and NaN == NaN)."""
    return t.view(
        {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}[t.element_size()]
    )


def _frozen_pieces(param: nn.Parameter, keep: Tensor) -> Iterator[Tensor]:
    """The values at frozen entries, chunk by chunk (memory bounded by a chunk)."""
    for values, keeps in zip(chunks(param), chunks(keep), strict=True):
        yield values[keeps.logical_not()]


def _scan_frozen(param: nn.Parameter, keep: Tensor) -> tuple[Tensor | None, bool]:
    """The values at frozen entries, 1-D (None when they are all +0.0: nothing to keep), and
    whether an update of ``±0.0`` leaves each of them exactly as it is (finite, not -0.0)."""
    count, nonzero, plain = 0, False, True
    for piece in _frozen_pieces(param, keep):
        count += piece.numel()
        nonzero = nonzero or bool(_bits(piece).any())
        plain = plain and bool(torch.isfinite(piece).all()) and not _has_negative_zero(piece)
    if not nonzero:
        return None, plain
    copy = torch.empty(count, dtype=param.dtype, device=param.device)
    start = 0
    for piece in _frozen_pieces(param, keep):
        copy[start : start + piece.numel()] = piece
        start += piece.numel()
    return copy, plain


def _has_negative_zero(t: Tensor) -> bool:
    return bool(((t == 0) & t.signbit()).any())


def _unchanged(param: nn.Parameter, keep: Tensor, copy: Tensor | None) -> bool:
    """Whether the frozen entries hold ``copy`` (or +0.0 everywhere), bit for bit."""
    start = 0
    for piece in _frozen_pieces(param, keep):
        if copy is None:
            if bool(_bits(piece).any()):
                return False
        elif not torch.equal(_bits(piece), _bits(copy[start : start + piece.numel()])):
            return False
        start += piece.numel()
    return True


def _masked_sparse(grad: Tensor, keep: Tensor) -> Tensor:
    """A sparse gradient with +0.0 at its frozen entries (coalesced)."""
    grad = grad.coalesce()
    rows = keep[tuple(grad.indices())]  # the mask at each stored value
    values = grad.values().masked_fill(rows.logical_not(), 0.0)
    return torch.sparse_coo_tensor(
        grad.indices(), values, grad.shape, is_coalesced=True, check_invariants=False
    )


def _zero_eps(optimizer: torch.optim.Optimizer, ids: set[int]) -> str | None:
    """Why an ``eps`` of 0 gives ``0/0`` at zero-gradient entries of the parameters ``ids``,
    or None (the unfused kernels add eps in the parameter's dtype, the fused ones in
    float32 or wider)."""
    for group in _holding(optimizer, ids):
        eps = group.get("eps")
        if not isinstance(eps, float | int):
            continue
        dtypes = {p.dtype for p in group["params"] if id(p) in ids}
        for dtype in dtypes:
            if float(eps if group.get("fused") else torch.tensor(eps, dtype=dtype)) == 0:
                return f"eps {eps} is 0 in {dtype}: 0/0 at zero-gradient entries"
    return None


def _why_restore(
    optimizer: torch.optim.Optimizer, params: list[nn.Parameter], fresh: bool = True
) -> str | None:
    """None when ``optimizer`` provably leaves zero-gradient entries of ``params`` unchanged,
    else the reason it may not (``fresh``: also require no earlier state for them)."""
    if type(optimizer) not in _STILL_AT_ZERO_GRAD:
        return f"{type(optimizer).__name__} is not one of SGD, Adam, AdamW"
    ids = {id(p) for p in params}
    for group in _holding(optimizer, ids):
        if group.get("weight_decay", 0) != 0:
            return "weight decay moves zero-gradient entries"
        if group.get("maximize", False):
            return "maximize can turn a frozen -0.0 into +0.0"
    zero_eps = _zero_eps(optimizer, ids)
    if zero_eps is not None:
        return zero_eps
    if fresh and any(optimizer.state.get(p) for p in params):
        return "the optimizer already holds state for masked parameters"
    return None


def _holding(optimizer: torch.optim.Optimizer, ids: set[int]) -> list[dict]:
    """The optimizer's parameter groups that hold any of the parameters ``ids``."""
    return [g for g in optimizer.param_groups if any(id(p) in ids for p in g["params"])]


def _skips_gradless(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` leaves a parameter whose gradient is None alone, state included
    (every ``torch.optim`` optimizer but LBFGS)."""
    return type(optimizer).__module__.startswith("torch.optim.") and not isinstance(
        optimizer, torch.optim.LBFGS
    )


def _layout(optimizer: torch.optim.Optimizer) -> list[int]:
    """The identities of the optimizer's group list and groups, and their sizes."""
    groups = optimizer.param_groups
    return [id(groups), *(n for g in groups for n in (id(g), len(g["params"])))]


def _nonzero_at_frozen(values: Tensor, keep: Tensor) -> bool:
    if values.is_sparse:
        values = values.to_dense()
    for chunk, keeps in zip(chunks(values), chunks(keep), strict=True):
        if bool(chunk[keeps.logical_not()].any()):
            return True
    return False


def _dirty(state: Mapping[str, Any], m: _Masked) -> str | None:
    """The first state tensor of ``m`` that is nonzero at frozen entries, by key, or None."""
    for key, value in state.items():
        if (
            torch.is_tensor(value)
            and value.shape == m.param.shape
            and _nonzero_at_frozen(value, m.keep)
        ):
            return key
    return None


def _state_moved(m: _Masked, state: dict | None) -> bool:
    """Whether ``state`` (the optimizer's for ``m`` now) is not what the last step left."""
    if m.seen is None:
        return bool(state)
    held, values = m.seen
    return (
        state is not held
        or len(state) != len(values)
        or not all(map(operator.is_, state.values(), values))
    )


def _seen(state: dict | None) -> tuple[dict, tuple] | None:
    return (state, tuple(state.values())) if state else None


class MaskedTraining:
    """The handle :func:`train_only` yields; it applies the mask to gradients and weights."""

    def __init__(
        self,
        masked: list[_Masked],
        optimizer: torch.optim.Optimizer,
        l2: float,
        restore: str,
        whole: list[tuple[nn.Parameter, Tensor | None]],
        frozen: list[nn.Parameter],
    ):
        self.masked = masked
        self.optimizer = optimizer
        self.l2 = l2
        self.whole = whole  # (param, w₀ or None for all +0.0): fully trainable, under l2
        self.frozen = frozen
        """Parameters the mask freezes whole: their gradients are dropped before each step."""
        params = [m.param for m in masked]
        reason = _why_restore(optimizer, params) if restore == "auto" else "restore='always'"
        self.restores = reason is not None
        """Whether frozen entries are written back after each step (else provably still)."""
        self.reason = reason
        self.parked: list[str] = []
        """Parameters whose frozen entries Adam's state holds still (see the module notes;
        kept after exit); the others have their frozen gradient entries zeroed every step."""
        self.rescued: list[str] = []
        """Set on exit: parameters whose frozen entries had moved and were put back."""
        self._frozen: list[_Frozen] = []
        self._kept: list[tuple[nn.Parameter, Tensor]] = []  # whole frozen, written back
        self._skips = True  # whether the write-back may skip parameters without a gradient
        self._net: list[Tensor | None] = []  # compact copies for the exit check
        self._checks = not self.restores  # whether _net was taken (on entry)
        if not self.restores:
            for m in masked:
                copy, m.plain = _scan_frozen(m.param, m.keep)
                self._net.append(copy)
        self._groups: list[dict] = []  # the groups holding masked parameters
        self._held: list[_Masked] = []  # the masked parameters the optimizer holds
        self._to_park: set[int] = set()  # parkable, not parked yet
        self._parked: list[_Masked] = []
        self._pending = list(masked)  # not parked: their frozen gradient entries are zeroed
        self._decays: dict[int, tuple[dict, float]] = {}  # folding groups: (group, own decay)
        self._folded: set[int] = set()  # parameters whose l2 term the kernel adds
        self._folding = False  # whether the folding groups carry the l2 term right now
        self._idle: list[nn.Parameter] = []  # in folding groups, outside the term, no grad
        self._ready = False
        self._grad_hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._backward_hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._state = optimizer.state
        self._layout: list[int] = []
        self._seen: list[tuple] = []  # the settings of _groups as last checked
        self._review()

    def finish_grads(self) -> None:
        """Add the l2 gradient and zero every frozen gradient entry now, once per step, after
        the step's last ``backward()`` (and after ``scaler.unscale_(optimizer)`` with a
        GradScaler): e.g. before gradient clipping, so the norm sees what the optimizer will."""
        if not self._grad_hooks:  # a new backward starts a new step, even if the last
            # step was skipped (a GradScaler that found inf/NaN does not call step())
            self._grad_hooks = [
                p.register_post_accumulate_grad_hook(self._new_grads)
                for p in [m.param for m in self.masked] + [p for p, _ in self.whole]
                if p.requires_grad
            ]
            for m in self.masked:  # parked entries are zeroed too, every step from now on
                m.multiplies()
        self._prepare(everything=True)

    def _new_grads(self, _: Tensor) -> None:
        self._ready = False

    def mask_each_backward(self) -> None:
        """Zero the frozen gradient entries as each backward accumulates them, for trainers
        that clip gradients with no place for :meth:`finish_grads` in between (the Hugging
        Face Trainer): the clipping norm then counts only trainable entries. The l2 term is
        still added just before the step, after clipping (like weight decay)."""
        if self._backward_hooks:
            return
        for m in self.masked:
            if not m.param.requires_grad:
                continue
            frozen = m.keep.logical_not() if m.keep.dtype == torch.bool else m.keep == 0
            self._backward_hooks.append(
                m.param.register_post_accumulate_grad_hook(partial(_zero_frozen, frozen=frozen))
            )

    def _settings(self) -> list[tuple]:
        """What decides the way frozen entries are held, per group holding masked ones (and
        per group whose weight decay carries the l2 term)."""
        return [
            (g.get("weight_decay"), g.get("maximize"), g.get("eps"), g.get("betas"), g.get("fused"))
            for g in self._groups + [group for group, _ in self._decays.values()]
        ]

    @torch.no_grad()
    def _prepare(self, everything: bool) -> None:
        """This step's gradients: none for parameters frozen whole, the l2 term added, frozen
        entries zeroed where needed (``everything``: in every masked parameter, parked or
        not)."""
        for p in self.frozen:
            if p.grad is not None:
                p.grad = None
        if self._ready:
            return
        self._ready = True
        if self._idle and any(p.grad is not None for p in self._idle):  # unfrozen: not
            # under the term, so the kernel's decay must not reach them
            self._stop_folding()
        fold = bool(self._decays) and not everything
        self._fold(fold)
        # A fused optimizer stepped by a GradScaler that did not unscale first sees scaled
        # gradients (it unscales inside its kernel): scale the l2 term alike.
        scale = getattr(self.optimizer, "grad_scale", None)
        alpha = 2 * self.l2 * (float(scale) if scale is not None else 1.0)
        live = [m for m in self.masked if m.param.grad is not None]
        whole = [(p, s) for p, s in self.whole if p.grad is not None] if self.l2 else []
        sparse = any(m.param.grad.is_sparse for m in live) or any(
            p.grad.is_sparse for p, _ in whole
        )
        if sparse:
            live = self._sparse(live, whole)
        if self.l2:  # batched adds: α·w where w₀ = 0, α·(w − w₀) elsewhere
            pairs = [(m.param, m.start) for m in live] + whole
            if fold:  # the kernel adds these parameters' term itself
                pairs = [(p, s) for p, s in pairs if id(p) not in self._folded]
            shifted = [(p, s) for p, s in pairs if s is not None]
            diffs = (  # w − w₀ first, so a small difference is not lost in α·w
                torch._foreach_sub([p for p, _ in shifted], [s for _, s in shifted])
                if shifted
                else []
            )
            terms = [p for p, s in pairs if s is None] + list(diffs)
            if terms:
                grads = [p.grad for p, s in pairs if s is None] + [p.grad for p, _ in shifted]
                torch._foreach_add_(grads, terms, alpha=alpha)
        zero = live if everything else [m for m in self._pending if m.param.grad is not None]
        if sparse:  # masked already
            zero = [m for m in zero if not m.param.grad.is_sparse]
        fast = [m for m in zero if m.keep.dtype != torch.bool]
        if fast:
            torch._foreach_mul_([m.param.grad for m in fast], [m.keep for m in fast])
        for m in zero:  # bool keeps (before parking, or a frozen -0.0): +0.0 where frozen
            if m.keep.dtype == torch.bool:
                m.param.grad.masked_fill_(m.keep.logical_not(), 0.0)

    def _sparse(
        self, live: list[_Masked], whole: list[tuple[nn.Parameter, Tensor | None]]
    ) -> list[_Masked]:
        """Sparse gradients: made dense where the (dense) l2 term joins them, else masked
        here. Returns the masked parameters whose gradients are dense."""
        if self.l2:
            for p in [m.param for m in live] + [p for p, _ in whole]:
                if p.grad.is_sparse:
                    p.grad = p.grad.to_dense()
            return live
        for m in live:
            if m.param.grad.is_sparse:
                m.param.grad = _masked_sparse(m.param.grad, m.keep)
        return [m for m in live if not m.param.grad.is_sparse]

    def _fold(self, on: bool) -> None:
        """Put the l2 term into the folding groups' weight decay, or their own decay back."""
        if on != self._folding:
            for group, own in self._decays.values():
                group["weight_decay"] = 2 * self.l2 if on else own
            self._folding = on
            self._seen = self._settings()

    def _own_decay(self, group: dict) -> float | None:
        """A folding group's own weight decay, where the group's decay is still what folding
        set (None for other groups, and where the user has set a decay since)."""
        entry = self._decays.get(id(group))
        if entry is None:
            return None
        own = entry[1]
        return own if group["weight_decay"] == (2 * self.l2 if self._folding else own) else None

    def _stop_folding(self) -> None:
        """Give the folding groups their own weight decay back (a decay the user set since
        stays) and add the l2 term explicitly from now on."""
        if not self._decays:
            return
        for group, _ in self._decays.values():
            own = self._own_decay(group)
            if own is not None:
                group["weight_decay"] = own
        self._decays, self._folded, self._folding, self._idle = {}, set(), False, []
        self._seen = self._settings()

    def _review(self) -> None:
        """On entry, and when the optimizer's groups or their settings change: which groups
        hold masked parameters, and which way holds their frozen entries. Frozen entries are
        still as on entry here (this runs before a step), so the write-back can start now."""
        self._stop_folding()
        ids = {id(m.param) for m in self.masked}
        self._groups = _holding(self.optimizer, ids)
        group_of = {id(p): g for g in self._groups for p in g["params"]}
        self._held = [m for m in self.masked if id(m.param) in group_of]
        if not self.restores:
            for m in [m for m in self._parked if not self._parks(m, group_of)]:
                self._unpark_one(m)  # β2 set to 0: β2·inf would be NaN
                self._parked.remove(m)
                self.parked.remove(m.name)
                self._pending.append(m)
            self.reason = _why_restore(self.optimizer, [m.param for m in self.masked], False)
            self.restores = self.reason is not None
        if self.restores:
            self._write_back()
        else:
            parked = {id(m) for m in self._parked}
            self._to_park = {
                id(m.param)
                for m in self._held
                if m.plain and id(m) not in parked and self._parks(m, group_of)
            }
            for m in self._pending:
                if id(m.param) not in self._to_park:
                    m.multiplies()
            if self._parked and not self._to_park:
                self._plan_folding()
        self._layout, self._seen = _layout(self.optimizer), self._settings()

    def _parks(self, m: _Masked, group_of: dict[int, dict]) -> bool:
        """Whether the optimizer holds ``m`` in a group where +inf in Adam's second moment
        holds an entry still (``β2·inf`` is NaN at β2 = 0)."""
        group = group_of.get(id(m.param))
        return group is not None and type(self.optimizer) in _ADAM and group["betas"][1] > 0

    @torch.no_grad()
    def _park(self) -> None:
        """Set Adam's second moment to +inf at the frozen entries of every parameter that
        now has state: its update there is then ``lr·m/inf = ±0.0`` whatever the gradient."""
        pending = []
        for m in self._pending:
            state = self.optimizer.state.get(m.param)
            if id(m.param) not in self._to_park or not state or "exp_avg_sq" not in state:
                pending.append(m)
                continue
            _fill_moments(state, m.keep, math.inf)
            self._parked.append(m)
            self.parked.append(m.name)
            self._to_park.discard(id(m.param))
        self._pending = pending
        if not self._to_park:
            self._plan_folding()

    def _plan_folding(self) -> None:
        """Find the groups whose (coupled, fused) weight decay can be the l2 term: every
        parameter in them is under the term from a zero start (frozen entries parked), is
        frozen whole, or has no gradient (checked before each step)."""
        if not self.l2:
            return
        at_zero = {id(m.param) for m in self._parked if m.start is None}
        at_zero |= {id(p) for p, s in self.whole if s is None}
        outside = at_zero | {id(p) for p in self.frozen}
        for group in self.optimizer.param_groups:
            ps = group["params"]
            if (
                group.get("fused")
                and not group.get("decoupled_weight_decay", False)
                and group.get("weight_decay", 0) == 0
                and not group.get("maximize", False)
                and any(id(p) in at_zero for p in ps)
                and all(id(p) in outside or (not p.requires_grad and p.grad is None) for p in ps)
            ):
                self._decays[id(group)] = (group, group.get("weight_decay", 0))
                self._folded |= {id(p) for p in ps if id(p) in at_zero}
                self._idle += [p for p in ps if id(p) not in outside]
        self._seen = self._settings()

    def _unpark_one(self, m: _Masked) -> None:
        """Zero the moments and the gradient at ``m``'s frozen entries (what zeroed gradients
        leave), and put the group's own weight decay back where it carries the term."""
        self._stop_folding()
        _fill_moments(self.optimizer.state.get(m.param, {}), m.keep, 0.0, _MOMENTS)
        if m.param.grad is not None:
            m.param.grad.masked_fill_(m.keep.logical_not(), 0.0)
        m.multiplies()

    @torch.no_grad()
    def _unpark(self) -> None:
        """Give the optimizer back the state it would have without parking (zero moments at
        frozen entries, whose gradients would have been zeroed) and its own weight decay."""
        self._stop_folding()
        for m in self._parked:
            _fill_moments(self.optimizer.state.get(m.param, {}), m.keep, 0.0, _MOMENTS)
            if m.param.grad is not None:
                m.param.grad.masked_fill_(m.keep.logical_not(), 0.0)
        self._parked, self._pending, self._to_park = [], list(self.masked), set()

    @torch.no_grad()
    def _restate(self) -> None:
        """The optimizer's state for masked parameters was cleared or replaced since the last
        step: park again where there is a second moment, zero the gradients again where the
        state is gone (the next step parks it), and switch to the write-back where the new
        state is nonzero at frozen entries."""
        state = self._state = self.optimizer.state
        parked = {id(m) for m in self._parked}
        for m in self._held:
            now = state.get(m.param)
            if not _state_moved(m, now):
                continue
            m.seen = _seen(now)
            if id(m) in parked:
                if now and "exp_avg_sq" in now:
                    _fill_moments(now, m.keep, math.inf)
                    continue
                self._unpark_one(m)
                self._parked.remove(m)
                self.parked.remove(m.name)
                self._pending.append(m)
                self._to_park.add(id(m.param))
            key = _dirty(now, m) if now else None
            if key is not None:
                self.restores = True
                self.reason = f"optimizer state {key!r} of {m.name} was replaced inside the context"
                self._stop_folding()
                self._write_back()
                return

    @torch.no_grad()
    def _clean_state_dict(self, optimizer: torch.optim.Optimizer, state_dict: dict) -> None:
        """``optimizer.state_dict()`` inside the context: the state without parking."""
        index: dict[int, int] = {}  # parameter -> its key in the state dict (torch's order)
        at = 0
        for group in optimizer.param_groups:
            for p in group["params"]:
                index.setdefault(id(p), at)
                at += 1
        for m in self._parked:
            key = index.get(id(m.param))
            if key is None or key not in state_dict["state"]:
                continue
            frozen = m.keep.logical_not()
            state_dict["state"][key] = {
                k: v.masked_fill(frozen, 0.0) if k in _MOMENTS else v
                for k, v in state_dict["state"][key].items()
            }
        for group, packed in zip(optimizer.param_groups, state_dict["param_groups"], strict=True):
            own = self._own_decay(group)
            if own is not None:
                packed["weight_decay"] = own

    @torch.no_grad()
    def _state_loaded(self, optimizer: torch.optim.Optimizer) -> None:
        """After ``optimizer.load_state_dict`` inside the context: park again from scratch if
        the loaded state is what zeroed gradients leave, else write frozen entries back."""
        # the loaded groups are new dicts: none carries the term, whatever folding did
        self._decays, self._folded, self._folding, self._idle = {}, set(), False, []
        self._parked, self._pending, self._ready = [], list(self.masked), False
        self.parked = []
        self._state = optimizer.state
        if not self.restores:
            dirty = [
                key
                for m in self.masked
                if (key := _dirty(optimizer.state.get(m.param, {}), m)) is not None
            ]
            if dirty:
                self.restores = True
                self.reason = f"loaded optimizer state {dirty[0]!r} is nonzero at frozen entries"
        self._review()
        for m in self.masked:
            m.seen = _seen(optimizer.state.get(m.param))

    def _write_back(self) -> None:
        """Capture what the write-back puts back after every step: the frozen entries of
        every masked parameter and, for an optimizer that may move a parameter without a
        gradient, the parameters frozen whole that it holds."""
        exact = _zero_eps(self.optimizer, {id(m.param) for m in self.masked}) is not None
        for m in self.masked:
            m.multiplies()
        self._frozen = [_frozen_copy(m, exact) for m in self.masked]
        self._skips = _skips_gradless(self.optimizer)
        held = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        self._kept = [
            (p, p.detach().clone()) for p in self.frozen if not self._skips and id(p) in held
        ]
        self._to_park = set()

    @torch.no_grad()
    def _check_frozen(self) -> None:
        """On exit: frozen entries as on entry (or as the write-back holds them), else put
        back with a warning."""
        if self._checks:
            for m, copy in zip(self.masked, self._net, strict=True):
                if not _unchanged(m.param, m.keep, copy):
                    frozen = m.keep.logical_not()
                    if copy is None:
                        copy = torch.zeros(
                            int(frozen.sum()), dtype=m.param.dtype, device=frozen.device
                        )
                    m.param.detach().masked_scatter_(frozen, copy)
                    self.rescued.append(m.name)
        else:  # w·0 + f is not f where the optimizer made w non-finite
            for m, f in zip(self.masked, self._frozen, strict=True):
                w = m.param.detach()
                values = f.values if f.values is not None else torch.zeros_like(w)
                fixed = torch.where(m.keep.bool(), w, values)
                if not torch.equal(_bits(fixed), _bits(w)):
                    w.copy_(fixed)
                    self.rescued.append(m.name)
        if self.rescued:
            warnings.warn(
                f"train_only: frozen entries of {', '.join(self.rescued)} moved during "
                "training (non-finite gradients or weights, or gradients edited before the "
                "step?) and were put back on exit",
                RuntimeWarning,
                stacklevel=4,
            )

    def _before_step(
        self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict
    ) -> tuple[tuple, dict] | None:
        if self._layout != _layout(optimizer) or self._seen != self._settings():
            self._review()
        if not self.restores and (
            optimizer.state is not self._state
            or any(_state_moved(m, optimizer.state.get(m.param)) for m in self._held)
        ):
            self._restate()
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
        if closure is None:
            self._prepare(everything=False)
            self._ready = False  # the step runs now (even if it raises, the next one is new)
            return None

        def prepared() -> Any:
            """The closure, then this evaluation's gradients prepared (LBFGS evaluates
            several times per step: each is a new backward)."""
            self._ready = False
            loss = closure()
            self._prepare(everything=False)
            return loss

        if "closure" in kwargs:
            return args, {**kwargs, "closure": prepared}
        return (*args[:1], prepared, *args[2:]), kwargs

    @torch.no_grad()
    def _after_step(self, *_: object) -> None:
        self._ready = False
        if self._to_park:
            self._park()
        if not self.restores:
            for m in self._held:  # state the step created
                if m.seen is None:
                    m.seen = _seen(self.optimizer.state.get(m.param))
            return
        frozen = [f for f in self._frozen if f.param.grad is not None or not self._skips]
        fast = [f for f in frozen if f.exact is None]
        if fast:
            torch._foreach_mul_([f.param for f in fast], [f.keep for f in fast])
        with_values = [f for f in fast if f.values is not None]
        if with_values:
            torch._foreach_add_([f.param for f in with_values], [f.values for f in with_values])
        zero_frozen = [f.param for f in fast if f.values is None]
        if zero_frozen:  # w·0 may be -0.0; adding +0.0 gives the +0.0 that was there
            torch._foreach_add_(zero_frozen, 0.0)
        for f in frozen:
            if f.exact is not None:
                torch.where(f.exact, f.param, f.values, out=f.param)
        for p, values in self._kept:
            p.copy_(values)

    def _close(self) -> None:
        for h in self._grad_hooks + self._backward_hooks:
            h.remove()
        self._grad_hooks, self._backward_hooks = [], []
        for m in self.masked:  # no hold on the optimizer's state after exit
            m.seen = None
        self._unpark()
        self._check_frozen()


@torch.no_grad()
def _zero_frozen(param: nn.Parameter, frozen: Tensor) -> None:
    """+0.0 at the frozen entries of ``param``'s gradient (dense or sparse)."""
    if param.grad is None:
        return
    if param.grad.is_sparse:
        param.grad = _masked_sparse(param.grad, frozen.logical_not())
    else:
        param.grad.masked_fill_(frozen, 0.0)


def _fill_moments(
    state: Mapping[str, Any], keep: Tensor, value: float, keys: tuple[str, ...] = _MOMENTS[1:]
) -> None:
    """Set the state's ``keys`` (Adam's second moments by default) to ``value`` at the
    frozen entries."""
    frozen = keep.logical_not()
    for key in keys:
        if key in state:
            state[key].masked_fill_(frozen, value)


@contextmanager
def train_only(
    model: nn.Module,
    mask: Mapping[str, Tensor],
    optimizer: torch.optim.Optimizer,
    others: str = "trainable",
    *,
    l2: float = 0.0,
    restore: str = "auto",
) -> Iterator[MaskedTraining]:
    """Inside this context only entries where ``mask`` is ``True`` change under ``optimizer``.

    Args:
        model: the module being trained.
        mask: parameter name -> bool tensor, ``True`` = may change (a :class:`Mask`, or its
            complement ``~mask`` to train the redundant entries).
        optimizer: any ``torch.optim`` optimizer over (some of) the model's parameters; the
            exactness holds for SGD (momentum, weight decay), Adam, AdamW and the rest,
            stepped with or without a closure.
        others: policy for parameters not in ``mask``: ``"trainable"`` or ``"frozen"``.
        l2: strength of ``l2·Σ(w − w₀)²`` over the trainable entries of the parameters in
            ``mask`` (``w₀``: their values on entry), added as a gradient before each step
            (it is not part of the loss you see). For PAC-Net's calibration the trainable
            entries start at 0 and no copy of ``w₀`` is kept.
        restore: ``"auto"`` writes frozen entries back after each step unless the optimizer
            provably leaves them unchanged (see the module notes); ``"always"`` always
            writes them back (use it if your loop edits gradients between
            :meth:`MaskedTraining.finish_grads` and the step).

    Yields:
        a :class:`MaskedTraining` handle (``finish_grads()``, ``restores``, ``parked``).

    Example:
        >>> with pacnet.train_only(model, ~mask, opt):
        ...     for x, y in loader:
        ...         opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
    """
    model = unwrap(model)
    check(
        others in ("trainable", "frozen"), f"others must be 'trainable' or 'frozen', got {others!r}"
    )
    check(restore in RESTORE_MODES, f"restore must be 'auto' or 'always', got {restore!r}")
    check(l2 >= 0, f"l2 must be >= 0, got {l2}")
    if isinstance(mask, Mask):
        mask.check(model)
    else:
        Mask(mask).check(model)
    params = dict(model.named_parameters())
    masked: list[_Masked] = []
    whole: list[tuple[nn.Parameter, Tensor | None]] = []
    frozen = []
    for name, trainable in mask.items():
        param = params[name]
        if bool(trainable.all()):
            if l2:  # no copy of a start that is all +0.0
                start = param.detach().clone() if bool(_bits(param.detach()).any()) else None
                whole.append((param, start))
            continue
        if not bool(trainable.any()):
            frozen.append(param)
            continue
        keep = trainable.to(param.device)
        starts_at_zero = not l2 or not any(
            bool((values * keeps).any())
            for values, keeps in zip(chunks(param), chunks(keep), strict=True)
        )
        masked.append(
            _Masked(name, param, keep, None if starts_at_zero else param.detach().clone())
        )
    if others == "frozen":
        frozen += [p for n, p in params.items() if n not in mask]
    switched = [p for p in frozen if p.requires_grad]
    session = MaskedTraining(masked, optimizer, l2, restore, whole, frozen)
    with torch.no_grad():
        for m in masked:  # a gradient accumulated before entering
            if m.param.grad is not None and m.param.grad.is_sparse:
                m.param.grad = _masked_sparse(m.param.grad, m.keep)
            elif m.param.grad is not None:
                m.param.grad.masked_fill_(m.keep.logical_not(), 0.0)
    handles = [
        optimizer.register_step_pre_hook(session._before_step),
        optimizer.register_step_post_hook(session._after_step),
        optimizer.register_state_dict_post_hook(session._clean_state_dict),
        optimizer.register_load_state_dict_post_hook(session._state_loaded),
    ]
    for p in switched:
        p.requires_grad_(False)
    for p in frozen:
        p.grad = None
    try:
        yield session
    finally:
        # A context still open when the interpreter exits is closed while torch tears its
        # tensors down: touching them then aborts the process, and nobody needs them back.
        if not sys.is_finalizing():
            for h in handles:
                h.remove()
            for p in switched:
                p.requires_grad_(True)
            session._close()
