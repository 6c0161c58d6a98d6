"""Exact masked training: only the entries a mask marks ``True`` may change.

Zeroing gradients alone does not freeze a weight in general: momentum, weight decay (SGD's
coupled decay, AdamW's decoupled decay) and optimizer state from earlier steps move entries
whose gradient is zero. :func:`train_only` wraps the user's own loop with optimizer step
hooks (a pre-hook sees the final gradients: after DDP's all-reduce and GradScaler's
unscaling) and picks the cheapest of three exact ways to hold the frozen entries:

* **Zeroed gradients** (SGD, Adam or AdamW with no weight decay, ``maximize`` off and no
  earlier state for the masked parameters): before every step the frozen gradient entries
  are zeroed with one batched ``torch._foreach_mul_``, after the gradient of
  ``l2·‖w − w₀‖²`` over the trainable entries (``w₀``: the values on entry) is added in one
  batched pass. A frozen entry then has zero gradient and zero state, and its update is
  ``w ± 0.0 = w``. (Not for an unfused Adam whose ``eps`` is 0 in the parameter's dtype,
  e.g. the default 1e-8 in float16: its update at such an entry is ``0/0``.)
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
  frozen value) takes an exact ``torch.where`` path instead.

A non-finite value can still move a frozen entry: a NaN or inf gradient there (``NaN·0`` is
NaN, and so is ``inf/inf``), or an optimizer step that makes a weight NaN before the
write-back. Such a run has diverged; as a safety net the frozen entries are checked on exit
against their values on entry (a compact copy, none when they are all ``+0.0`` as in
Allocate) and put back with a warning if anything moved them.
:meth:`MaskedTraining.finish_grads` applies the term and zeroes every frozen gradient entry
early, for loops that clip gradients (so the norm counts only trainable entries).

Parameters the mask does not cover follow ``others``: ``"trainable"`` leaves them alone,
``"frozen"`` turns off their ``requires_grad`` for the duration (and clears their gradient),
so no optimizer touches them. Everything is undone on exit. The mask's tensors are used as
they are, without a copy, where parking holds the entries: do not edit them inside the
context.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pacnet.errors import PacnetError, check
from pacnet.mask import Mask, _chunks

RESTORE_MODES = ("auto", "always")
_ADAM = (torch.optim.Adam, torch.optim.AdamW)
_STILL_AT_ZERO_GRAD = (torch.optim.SGD, *_ADAM)
"""Optimizers whose update leaves an entry exactly unchanged while its gradient and state
are zero (given no weight decay and ``maximize`` off)."""


@dataclass
class _Masked:
    name: str
    param: nn.Parameter
    keep: Tensor  # 1 where trainable, 0 where frozen, on the parameter's device: bool
    # (1 byte per weight) where parking holds the frozen entries; the parameter's dtype
    # where a multiply runs every step (a bool multiply is ~4x slower on CPU)
    start: Tensor | None  # w₀ for the l2 term, or None where the trainable entries start at 0

    def multiplies(self) -> None:
        """Make ``keep`` the parameter's dtype, for a fast multiply every step."""
        self.keep = self.keep.to(self.param.dtype)


@dataclass
class _Frozen:
    """What the write-back path needs for one parameter."""

    param: nn.Parameter
    values: Tensor | None  # frozen values (0 at trainable entries); None when all zero
    exact: Tensor | None  # bool mask (True = trainable) for the torch.where path, else None


def _frozen_copy(param: nn.Parameter, keep: Tensor) -> _Frozen:
    values = param.detach()
    trainable = keep.bool()
    at_frozen = values[~trainable]
    awkward = bool((~torch.isfinite(at_frozen)).any()) or _has_negative_zero(at_frozen)
    if awkward:
        return _Frozen(param, values.clone(), trainable)
    frozen = values * (1 - keep)
    return _Frozen(param, frozen if bool(frozen.any()) else None, None)


def _bits(t: Tensor) -> Tensor:
    """The tensor's bit patterns as integers (so -0.0 != +0.0 and NaN == NaN)."""
    return t.view(
        {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}[t.element_size()]
    )


def _frozen_pieces(param: nn.Parameter, keep: Tensor) -> Iterator[Tensor]:
    """The values at frozen entries, chunk by chunk (memory bounded by a chunk)."""
    for values, keeps in zip(_chunks(param), _chunks(keep), strict=True):
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
        if isinstance(optimizer, torch.optim.Adam) and not group.get("fused"):
            for p in group["params"]:  # the unfused kernels add eps in the parameter's dtype
                if id(p) in ids and float(torch.tensor(group["eps"], dtype=p.dtype)) == 0:
                    return f"eps {group['eps']} is 0 in {p.dtype}: 0/0 at zero-gradient entries"
    if fresh and any(optimizer.state.get(p) for p in params):
        return "the optimizer already holds state for masked parameters"
    return None


def _holding(optimizer: torch.optim.Optimizer, ids: set[int]) -> list[dict]:
    """The optimizer's parameter groups that hold any of the parameters ``ids``."""
    return [g for g in optimizer.param_groups if any(id(p) in ids for p in g["params"])]


def _parks(optimizer: torch.optim.Optimizer, groups: list[dict]) -> bool:
    """Whether +inf in Adam's second moment holds an entry still (``β2·inf`` is NaN at 0)."""
    return type(optimizer) in _ADAM and all(float(g["betas"][1]) > 0 for g in groups)


def _nonzero_at_frozen(values: Tensor, keep: Tensor) -> bool:
    for chunk, keeps in zip(_chunks(values), _chunks(keep), strict=True):
        if bool(chunk[keeps.logical_not()].any()):
            return True
    return False


_MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


class MaskedTraining:
    """The handle :func:`train_only` yields; it applies the mask to gradients and weights."""

    def __init__(
        self,
        masked: list[_Masked],
        optimizer: torch.optim.Optimizer,
        l2: float,
        restore: str,
        whole: list[tuple[nn.Parameter, Tensor | None]],
    ):
        self.masked = masked
        self.optimizer = optimizer
        self.l2 = l2
        self.whole = whole  # (param, w₀ or None for all +0.0): fully trainable, under l2
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
        self._groups = _holding(optimizer, {id(p) for p in params})
        self._frozen: list[_Frozen] = []
        self._net: list[Tensor | None] = []  # compact copies for the exit check
        self._checks = not self.restores  # whether _net was taken (on entry)
        self._parkable: set[int] = set()
        if self.restores:
            self._write_back()
        else:
            scans = [_scan_frozen(m.param, m.keep) for m in masked]
            self._net = [copy for copy, _ in scans]
            held = {id(p) for g in optimizer.param_groups for p in g["params"]}
            if _parks(optimizer, self._groups):
                self._parkable = {
                    id(m.param)
                    for m, (_, ok) in zip(masked, scans, strict=True)
                    if ok and id(m.param) in held
                }
            for m in masked:
                if id(m.param) not in self._parkable:
                    m.multiplies()
        self._to_park = set(self._parkable)  # parkable, not parked yet
        self._parked: list[_Masked] = []
        self._pending = list(masked)  # not parked: their frozen gradient entries are zeroed
        self._decays: dict[int, tuple[dict, float]] = {}  # folding groups: (group, own decay)
        self._folded: set[int] = set()  # parameters whose l2 term the kernel adds
        self._folding = False  # whether the folding groups carry the l2 term right now
        self._ready = False
        self._grad_hooks: list[torch.utils.hooks.RemovableHandle] = []

    def finish_grads(self) -> None:
        """Add the l2 gradient and zero every frozen gradient entry now, once per step, after
        the step's last ``backward()`` (and after ``scaler.unscale_(optimizer)`` with a
        GradScaler): e.g. before gradient clipping, so the norm sees what the optimizer will."""
        if not self._grad_hooks:  # a new backward starts a new step, even if the last
            # step was skipped (a GradScaler that found inf/NaN does not call step())
            self._grad_hooks = [
                p.register_post_accumulate_grad_hook(self._new_grads)
                for p in [m.param for m in self.masked] + [p for p, _ in self.whole]
            ]
            for m in self.masked:  # parked entries are zeroed too, every step from now on
                m.multiplies()
        self._prepare(everything=True)

    def _new_grads(self, _: Tensor) -> None:
        self._ready = False

    @torch.no_grad()
    def _prepare(self, everything: bool) -> None:
        """This step's gradients: the l2 term added, frozen entries zeroed where needed
        (``everything``: in every masked parameter, parked or not)."""
        if self._ready:
            return
        self._ready = True
        fold = bool(self._decays) and not everything
        self._fold(fold)
        # A fused optimizer stepped by a GradScaler that did not unscale first sees scaled
        # gradients (it unscales inside its kernel): scale the l2 term alike.
        scale = getattr(self.optimizer, "grad_scale", None)
        alpha = 2 * self.l2 * (float(scale) if scale is not None else 1.0)
        live = [m for m in self.masked if m.param.grad is not None]
        if self.l2:  # batched adds: α·w where w₀ = 0, α·(w − w₀) elsewhere
            pairs = [(m.param, m.start) for m in live]
            pairs += [(p, s) for p, s in self.whole if p.grad is not None]
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
        fast = [m for m in zero if m.keep.dtype != torch.bool]
        if fast:
            torch._foreach_mul_([m.param.grad for m in fast], [m.keep for m in fast])
        for m in zero:  # bool keeps (before parking): no float copy of the mask
            if m.keep.dtype == torch.bool:
                m.param.grad.masked_fill_(m.keep.logical_not(), 0.0)

    def _fold(self, on: bool) -> None:
        """Put the l2 term into the folding groups' weight decay, or their own decay back."""
        if on != self._folding:
            for group, own in self._decays.values():
                group["weight_decay"] = 2 * self.l2 if on else own
            self._folding = on

    def _expected_decay(self, group: dict) -> float:
        entry = self._decays.get(id(group))
        if entry is None:
            return 0.0
        return 2 * self.l2 if self._folding else entry[1]

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
            frozen = m.keep.logical_not()
            for key in ("exp_avg_sq", "max_exp_avg_sq"):
                if key in state:
                    state[key].masked_fill_(frozen, math.inf)
            self._parked.append(m)
            self.parked.append(m.name)
            self._to_park.discard(id(m.param))
        self._pending = pending
        if not self._to_park:
            self._plan_folding()

    def _plan_folding(self) -> None:
        """Find the groups whose (coupled, fused) weight decay can be the l2 term: every
        parameter in them is under the term from a zero start (frozen entries parked), or
        cannot get a gradient."""
        if not self.l2:
            return
        at_zero = {id(m.param) for m in self._parked if m.start is None}
        at_zero |= {id(p) for p, s in self.whole if s is None}
        for group in self.optimizer.param_groups:
            ps = group["params"]
            if (
                group.get("fused")
                and not group.get("decoupled_weight_decay", False)
                and group.get("weight_decay", 0) == 0
                and not group.get("maximize", False)
                and any(id(p) in at_zero for p in ps)
                and all(id(p) in at_zero or (not p.requires_grad and p.grad is None) for p in ps)
            ):
                self._decays[id(group)] = (group, group.get("weight_decay", 0))
                self._folded |= {id(p) for p in ps if id(p) in at_zero}

    @torch.no_grad()
    def _unpark(self) -> None:
        """Give the optimizer back the state it would have without parking (zero moments at
        frozen entries, whose gradients would have been zeroed) and its own weight decay."""
        self._fold(False)
        for m in self._parked:
            state = self.optimizer.state.get(m.param, {})
            frozen = m.keep.logical_not()
            for key in _MOMENTS:
                if key in state:
                    state[key].masked_fill_(frozen, 0.0)
            if m.param.grad is not None:
                m.param.grad.masked_fill_(frozen, 0.0)
        self._parked, self._pending, self._to_park = [], list(self.masked), set()
        self._decays, self._folded = {}, set()

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
            if id(group) in self._decays:
                packed["weight_decay"] = self._decays[id(group)][1]

    @torch.no_grad()
    def _state_loaded(self, optimizer: torch.optim.Optimizer) -> None:
        """After ``optimizer.load_state_dict`` inside the context: park again from scratch if
        the loaded state is what zeroed gradients leave, else write frozen entries back."""
        params = [m.param for m in self.masked]
        self._groups = _holding(optimizer, {id(p) for p in params})
        self._parked, self._pending, self._ready = [], list(self.masked), False
        self._decays, self._folded, self._folding = {}, set(), False
        self.parked = []
        if self.restores:
            return
        reason = _why_restore(optimizer, params, fresh=False)
        dirty = [
            key
            for m in self.masked
            for key, value in optimizer.state.get(m.param, {}).items()
            if torch.is_tensor(value)
            and value.shape == m.param.shape
            and _nonzero_at_frozen(value, m.keep)
        ]
        if reason is None and dirty:
            reason = f"loaded optimizer state {dirty[0]!r} is nonzero at frozen entries"
        if reason is not None:
            self.restores, self.reason = True, reason
            self._write_back()
            self._to_park = set()
            return
        if not _parks(optimizer, self._groups):
            self._parkable = set()
            for m in self.masked:
                m.multiplies()
        self._to_park = set(self._parkable)

    def _write_back(self) -> None:
        """Switch to writing frozen entries back after every step."""
        for m in self.masked:
            m.multiplies()
        self._frozen = [_frozen_copy(m.param, m.keep) for m in self.masked]
        self._parkable = set()

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

    def _before_step(self, *_: object) -> None:
        if not self.restores and any(
            g.get("weight_decay", 0) != self._expected_decay(g) or g.get("maximize", False)
            for g in self._groups
        ):
            raise PacnetError(
                "train_only: weight decay or maximize was switched on inside the context; "
                "use restore='always' for optimizers whose settings change"
            )
        self._prepare(everything=False)
        self._ready = False  # the step runs now (even if it raises, the next one is new)

    @torch.no_grad()
    def _after_step(self, *_: object) -> None:
        self._ready = False
        if self._to_park:
            self._park()
        if not self.restores:
            return
        fast = [f for f, m in zip(self._frozen, self.masked, strict=True) if f.exact is None]
        keeps = [m.keep for f, m in zip(self._frozen, self.masked, strict=True) if f.exact is None]
        if fast:
            torch._foreach_mul_([f.param for f in fast], keeps)
        with_values = [f for f in fast if f.values is not None]
        if with_values:
            torch._foreach_add_([f.param for f in with_values], [f.values for f in with_values])
        zero_frozen = [f.param for f in fast if f.values is None]
        if zero_frozen:  # w·0 may be -0.0; adding +0.0 gives the +0.0 that was there
            torch._foreach_add_(zero_frozen, 0.0)
        for f in self._frozen:
            if f.exact is not None:
                torch.where(f.exact, f.param, f.values, out=f.param)

    def _close(self) -> None:
        for h in self._grad_hooks:
            h.remove()
        self._grad_hooks = []
        self._unpark()
        self._check_frozen()


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
            exactness holds for SGD (momentum, weight decay), Adam, AdamW and the rest.
        others: policy for parameters not in ``mask``: ``"trainable"`` or ``"frozen"``.
        l2: strength of ``l2·Σ(w − w₀)²`` over the trainable entries of the parameters in
            ``mask`` (``w₀``: their values on entry), added as a gradient before each step
            (it is not part of the loss you see). For PAC-Net's calibration the trainable
            entries start at 0 and no copy of ``w₀`` is kept.
        restore: ``"auto"`` writes frozen entries back after each step unless the optimizer
            provably leaves them unchanged (see the module notes); ``"always"`` always
            writes them back (use it if your loop edits gradients between
            :meth:`MaskedTraining.finish_grads` and the step, or changes the optimizer's
            weight decay inside the context).

    Yields:
        a :class:`MaskedTraining` handle (``finish_grads()``, ``restores``, ``parked``).

    Example:
        >>> with pacnet.train_only(model, ~mask, opt):
        ...     for x, y in loader:
        ...         opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
    """
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
    fully_frozen = []
    for name, trainable in mask.items():
        param = params[name]
        if bool(trainable.all()):
            if l2 and param.requires_grad:  # no copy of a start that is all +0.0
                start = param.detach().clone() if bool(_bits(param.detach()).any()) else None
                whole.append((param, start))
            continue
        if not bool(trainable.any()):
            fully_frozen.append(param)
            continue
        keep = trainable.to(param.device)
        starts_at_zero = not l2 or not any(
            bool((values * keeps).any())
            for values, keeps in zip(_chunks(param), _chunks(keep), strict=True)
        )
        masked.append(
            _Masked(name, param, keep, None if starts_at_zero else param.detach().clone())
        )
    if others == "frozen":
        fully_frozen += [p for n, p in params.items() if n not in mask]
    fully_frozen = [p for p in fully_frozen if p.requires_grad]
    session = MaskedTraining(
        [m for m in masked if m.param.requires_grad], optimizer, l2, restore, whole
    )
    for m in masked:
        if m.param.grad is not None:  # a gradient accumulated before entering
            m.param.grad.mul_(m.keep)
    handles = [
        optimizer.register_step_pre_hook(session._before_step),
        optimizer.register_step_post_hook(session._after_step),
        optimizer.register_state_dict_post_hook(session._clean_state_dict),
        optimizer.register_load_state_dict_post_hook(session._state_loaded),
    ]
    for p in fully_frozen:
        p.requires_grad_(False)
        p.grad = None
    try:
        yield session
    finally:
        # A context still open when the interpreter exits is closed while torch tears its
        # tensors down: touching them then aborts the process, and nobody needs them back.
        if not sys.is_finalizing():
            for h in handles:
                h.remove()
            for p in fully_frozen:
                p.requires_grad_(True)
            session._close()
