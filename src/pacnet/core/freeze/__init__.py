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
  what a plain one does; parameters under the term that do not start at zero (Calibrate's
  own tensors, which start as copies) fold in as ``(g − 2·l2·w₀) + 2·l2·w``, and the rest
  get the explicit pass. On exit the moments at frozen entries are set to 0, the frozen
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

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from pacnet.core.entries import Masked, bits, chunks, masked_sparse
from pacnet.core.freeze.handle import MaskedTraining
from pacnet.core.mask import Mask
from pacnet.core.roles import unwrap
from pacnet.errors import check, check_type

__all__ = ["RESTORE_MODES", "MaskedTraining", "train_only"]

RESTORE_MODES = ("auto", "always")


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
    check_type(mask, Mapping, "mask", "a pacnet.Mask, ~mask, or names -> bool tensors")
    check_type(optimizer, torch.optim.Optimizer, "optimizer", "a torch.optim optimizer")
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
    masked: list[Masked] = []
    whole: list[tuple[nn.Parameter, Tensor | None]] = []
    frozen = []
    for name, trainable in mask.items():
        param = params[name]
        if bool(trainable.all()):
            if l2:  # no copy of a start that is all +0.0
                start = param.detach().clone() if bool(bits(param.detach()).any()) else None
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
        masked.append(Masked(name, param, keep, None if starts_at_zero else param.detach().clone()))
    if others == "frozen":
        frozen += [p for n, p in params.items() if n not in mask]
    switched = [p for p in frozen if p.requires_grad]
    session = MaskedTraining(masked, optimizer, l2, restore, whole, frozen)
    with torch.no_grad():
        for m in masked:  # a gradient accumulated before entering
            if m.param.grad is not None and m.param.grad.is_sparse:
                m.param.grad = masked_sparse(m.param.grad, m.keep)
            elif m.param.grad is not None:
                m.param.grad.masked_fill_(m.keep.logical_not(), 0.0)
    session.attach()
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
            for p in switched:
                p.requires_grad_(True)
            session.close()
