"""The handle :func:`pacnet.train_only` yields: it picks and switches the way frozen entries
are held (zeroed gradients, parking, write-back; see :mod:`pacnet.core.freeze`) and runs
them from the optimizer's step hooks."""

from __future__ import annotations

import math
import warnings
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from pacnet.core.entries import Masked, put_back, scan_frozen, zero_frozen
from pacnet.core.freeze.gradients import add_l2, densify_or_mask, no_grad, zero_at_frozen
from pacnet.core.freeze.optimizer_state import (
    OptimizerWatch,
    dirty,
    fill_moments,
    holding,
    seen,
    state_moved,
    why_restore,
    zero_eps,
)
from pacnet.core.freeze.parking import WIDE_FLOATS, Folding, Parking
from pacnet.core.freeze.write_back import WriteBack


class MaskedTraining:
    """The handle :func:`train_only` yields; it applies the mask to gradients and weights."""

    def __init__(
        self,
        masked: list[Masked],
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
        reason = why_restore(optimizer, params) if restore == "auto" else "restore='always'"
        self.restores = reason is not None
        """Whether frozen entries are written back after each step (else provably still)."""
        self.reason = reason
        self.rescued: list[str] = []
        """Set on exit: parameters whose frozen entries had moved and were put back."""
        self.parking = Parking(optimizer, masked)
        self.folding = Folding(optimizer, l2)
        self.write_back = WriteBack()
        self._copies: list[Tensor | None] | None = None  # frozen values on entry, for the
        # exit check (taken where the write-back does not hold them from the start)
        if not self.restores:
            self._copies = []
            for m in masked:
                copy, m.plain = scan_frozen(m.param, m.keep)
                self._copies.append(copy)
        self._groups: list[dict] = []  # the groups holding masked parameters
        self._held: list[Masked] = []  # the masked parameters the optimizer holds
        self.watch = OptimizerWatch(optimizer, lambda: self._groups + self.folding.groups())
        self._ready = False
        self._steady: tuple | None = None  # see _steady_step
        self._grad_hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._backward_hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._optimizer_hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._review()

    def attach(self) -> None:
        """Hook into the optimizer: its steps (before and after), its ``state_dict()`` and
        its ``load_state_dict()``."""
        o = self.optimizer
        self._optimizer_hooks = [
            o.register_step_pre_hook(self._before_step),
            o.register_step_post_hook(self._after_step),
            o.register_state_dict_post_hook(self._clean_state_dict),
            o.register_load_state_dict_post_hook(self._state_loaded),
        ]

    def close(self) -> None:
        """Unhook, give the optimizer its state and settings back as zeroed gradients would
        have left them, and check (and repair, with a warning) the frozen entries;
        :func:`~pacnet.train_only` calls it on exit."""
        for h in self._optimizer_hooks + self._grad_hooks + self._backward_hooks:
            h.remove()
        self._optimizer_hooks, self._grad_hooks, self._backward_hooks = [], [], []
        for m in self.masked:  # no hold on the optimizer's state after exit
            m.seen = None
        self._stop_folding()
        self.parking.unpark_all()
        self._check_frozen()

    @property
    def parked(self) -> list[str]:
        """Parameters whose frozen entries Adam's state holds still (see the module notes;
        kept after exit); the others have their frozen gradient entries zeroed every step."""
        return self.parking.names

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
                m.param.register_post_accumulate_grad_hook(partial(zero_frozen, frozen=frozen))
            )

    # -- gradients before a step (zeroed gradients) -------------------------------------

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
        if everything or not self._steady_step():
            with no_grad():
                self._prepare_grads(everything)

    def _steady_step(self) -> bool:
        """The step as the last one went (every gradient there and dense, no GradScaler
        scale, nothing changed since): its lists are kept, so a short step is not slowed by
        building them anew. Whether it applied."""
        steady = self._steady
        if steady is None or getattr(self.optimizer, "grad_scale", None) is not None:
            return False
        params, pairs, fold, zero = steady
        for p in params:
            g = p.grad
            if g is None or g.is_sparse:
                return False
        if fold or pairs or zero:
            with no_grad():
                if fold:
                    self.folding.add_offsets(None)
                if pairs:
                    add_l2(pairs, 2 * self.l2)
                if zero:
                    zero_at_frozen(zero)
        return True

    def _prepare_grads(self, everything: bool) -> None:
        self._steady = None
        if self.folding.idle and any(p.grad is not None for p in self.folding.idle):
            self._stop_folding()  # unfrozen: not under the term, so the kernel's decay
            # must not reach them
        fold = bool(self.folding.decays) and not everything
        if self.folding.fold(fold):
            self.watch.settle_settings()
        live = [m for m in self.masked if m.param.grad is not None]
        whole = [(p, s) for p, s in self.whole if p.grad is not None]
        sparse = False
        for m in live:
            sparse = sparse or m.param.grad.is_sparse
        for p, _ in whole:
            sparse = sparse or p.grad.is_sparse
        if sparse:
            live = densify_or_mask(live, whole, self.l2)
        pairs: list[tuple[nn.Parameter, Tensor | None]] = []
        if self.l2:
            # A fused optimizer stepped by a GradScaler that did not unscale first sees
            # scaled gradients (it unscales inside its kernel): scale the l2 term alike.
            scale = getattr(self.optimizer, "grad_scale", None)
            pairs = [(m.param, m.start) for m in live] + whole
            if fold:  # the kernel adds α·w to these parameters' gradients itself
                pairs = [(p, s) for p, s in pairs if id(p) not in self.folding.folded]
                self.folding.add_offsets(scale)
            add_l2(pairs, 2 * self.l2, scale)
        pending = [m for m in self.parking.pending if m.param.grad is not None]
        zero = live if everything else pending
        if sparse:  # masked already
            zero = [m for m in zero if not m.param.grad.is_sparse]
        if zero:
            zero_at_frozen(zero)
        complete = len(live) == len(self.masked) and len(whole) == len(self.whole)
        if complete and not (everything or sparse or self.folding.idle):
            params = [m.param for m in self.masked] + [p for p, _ in self.whole]
            self._steady = (params, pairs, fold and bool(self.folding.offsets), zero)

    # -- which way holds the frozen entries ----------------------------------------------

    def _review(self) -> None:
        """On entry, and when the optimizer's groups or their settings change: which groups
        hold masked parameters, and which way holds their frozen entries. Frozen entries are
        still as on entry here (this runs before a step), so the write-back can start now."""
        self._steady = None
        self._stop_folding()
        ids = {id(m.param) for m in self.masked}
        self._groups = holding(self.optimizer, ids)
        group_of = {id(p): g for g in self._groups for p in g["params"]}
        self._held = [m for m in self.masked if id(m.param) in group_of]
        parking = self.parking
        if not self.restores:
            for m in [m for m in parking.parked if not parking.parks(m, group_of)]:
                self._stop_folding()  # β2 set to 0: β2·inf would be NaN
                parking.unpark(m)
            self.reason = why_restore(self.optimizer, [m.param for m in self.masked], False)
            self.restores = self.reason is not None
        if self.restores:
            self._write_back()
        else:
            parked = {id(m) for m in parking.parked}
            parking.to_park = {
                id(m.param)
                for m in self._held
                if m.plain and id(m) not in parked and parking.parks(m, group_of)
            }
            for m in parking.pending:
                if id(m.param) not in parking.to_park:
                    m.multiplies()
            if parking.parked and not parking.to_park:
                self._plan_folding()
        self.watch.settle()

    def _write_back(self) -> None:
        """Capture what the write-back puts back after every step from now on."""
        exact = zero_eps(self.optimizer, {id(m.param) for m in self.masked}) is not None
        self.write_back.capture(self.optimizer, self.masked, self.frozen, exact)
        self.parking.to_park = set()

    def _plan_folding(self) -> None:
        """Let fused, coupled-decay groups carry the l2 term where they can (see
        :class:`~pacnet.core.freeze.parking.Folding`)."""
        self._steady = None
        if not self.l2:
            return
        at_zero = {id(m.param) for m in self.parking.parked if m.start is None}
        at_zero |= {id(p) for p, s in self.whole if s is None}
        shifted = {id(p): (p, s) for p, s in self.whole if s is not None and s.dtype in WIDE_FLOATS}
        under = at_zero | set(shifted)
        self.folding.plan(under, under | {id(p) for p in self.frozen}, shifted)
        self.watch.settle_settings()

    def _stop_folding(self) -> None:
        """Give the folding groups their own weight decay back and add the l2 term
        explicitly from now on."""
        self._steady = None
        if self.folding.stop():
            self.watch.settle_settings()

    # -- optimizer state (the bookkeeping) -------------------------------------------------

    @torch.no_grad()
    def _restate(self) -> None:
        """The optimizer's state for masked parameters was cleared or replaced since the last
        step: park again where there is a second moment, zero the gradients again where the
        state is gone (the next step parks it), and switch to the write-back where the new
        state is nonzero at frozen entries."""
        self._steady = None
        state = self.watch.state = self.optimizer.state
        parking = self.parking
        parked = {id(m) for m in parking.parked}
        for m in self._held:
            now = state.get(m.param)
            if not state_moved(m, now):
                continue
            m.seen = seen(now)
            if id(m) in parked:
                if now and "exp_avg_sq" in now:
                    fill_moments(now, m.keep, math.inf)
                    continue
                self._stop_folding()
                parking.unpark(m)
                parking.to_park.add(id(m.param))
            key = dirty(now, m) if now else None
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
        for m in self.parking.parked:
            key = index.get(id(m.param))
            if key is None or key not in state_dict["state"]:
                continue
            state_dict["state"][key] = self.parking.clean(state_dict["state"][key], m)
        for group, packed in zip(optimizer.param_groups, state_dict["param_groups"], strict=True):
            own = self.folding.own_decay(group)
            if own is not None:
                packed["weight_decay"] = own

    @torch.no_grad()
    def _state_loaded(self, optimizer: torch.optim.Optimizer) -> None:
        """After ``optimizer.load_state_dict`` inside the context: park again from scratch if
        the loaded state is what zeroed gradients leave, else write frozen entries back."""
        self._steady = None
        # the loaded groups are new dicts: none carries the term, whatever folding did
        self.folding.forget()
        self.parking.forget()
        self._ready = False
        self.watch.state = optimizer.state
        if not self.restores:
            found = [
                key
                for m in self.masked
                if (key := dirty(optimizer.state.get(m.param, {}), m)) is not None
            ]
            if found:
                self.restores = True
                self.reason = f"loaded optimizer state {found[0]!r} is nonzero at frozen entries"
        self._review()
        for m in self.masked:
            m.seen = seen(optimizer.state.get(m.param))

    # -- the step hooks ------------------------------------------------------------------

    def _before_step(
        self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict
    ) -> tuple[tuple, dict] | None:
        if self.watch.groups_changed():
            self._review()
        if not self.restores and self.watch.state_changed(self._held):
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

    def _after_step(self, *_: object) -> None:
        self._ready = False
        if self.parking.to_park:
            self._steady = None
            if self.parking.park():
                self._plan_folding()
        if not self.restores:
            for m in self._held:  # state the step created
                if m.seen is None:
                    m.seen = seen(self.optimizer.state.get(m.param))
            return
        with no_grad():
            self.write_back.apply()

    # -- exit ------------------------------------------------------------------------------

    @torch.no_grad()
    def _check_frozen(self) -> None:
        """On exit: frozen entries as on entry (or as the write-back holds them), else put
        back with a warning."""
        if self._copies is not None:
            self.rescued += [
                m.name
                for m, copy in zip(self.masked, self._copies, strict=True)
                if put_back(m, copy)
            ]
        else:  # w·0 + f is not f where the optimizer made w non-finite
            self.rescued += self.write_back.repair(self.masked)
        if self.rescued:
            warnings.warn(
                f"train_only: frozen entries of {', '.join(self.rescued)} moved during "
                "training (non-finite gradients or weights, or gradients edited before the "
                "step?) and were put back on exit",
                RuntimeWarning,
                stacklevel=4,
            )


__all__ = ["MaskedTraining"]
