"""Exact masked training: only the entries a mask marks ``True`` may change.

Zeroing gradients does not freeze a weight: momentum, weight decay (SGD's coupled decay,
AdamW's decoupled decay) and Adam's ε all move entries whose gradient is zero. So
:func:`train_only` does two things around the user's own loop:

* after the gradient of a masked parameter is accumulated, the frozen entries of the
  gradient are zeroed (so gradient clipping, logging and optimizer state only see the
  trainable entries);
* after every ``optimizer.step()`` the frozen entries are written back to the values they had
  on entry, bit for bit: ``w ← w·keep + frozen`` with two batched ``torch._foreach`` calls,
  where ``keep`` is the mask as 0/1 and ``frozen`` the entry values at frozen places and 0
  elsewhere. ``w·0 + f`` equals ``f`` exactly for every finite ``f`` except ``-0.0``; the rare
  parameter holding a frozen ``-0.0`` (or a non-finite frozen value) takes an exact
  ``torch.where`` path instead.

Parameters the mask does not cover follow ``others``: ``"trainable"`` leaves them alone,
``"frozen"`` turns off their ``requires_grad`` for the duration (and clears their gradient),
so no optimizer touches them. Everything is undone on exit.

A frozen entry that holds ``+0.0`` comes back as ``+0.0`` (not ``-0.0``): parameters whose
frozen entries are all zero get a scalar ``+ 0.0`` after the multiply.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pacnet.errors import check
from pacnet.mask import Mask


@dataclass
class _Masked:
    param: nn.Parameter
    keep: Tensor  # 1 where trainable, 0 where frozen; the parameter's dtype and device
    frozen: Tensor | None  # frozen values (0 at trainable entries); None when all zero
    exact: Tensor | None  # bool mask for the exact torch.where path, else None


def _prepare(param: nn.Parameter, trainable: Tensor) -> _Masked:
    trainable = trainable.to(param.device)
    keep = trainable.to(param.dtype)
    values = param.detach()
    at_frozen = values[~trainable]
    awkward = bool(
        (~torch.isfinite(at_frozen)).any() or ((at_frozen == 0) & at_frozen.signbit()).any()
    )
    if awkward:
        return _Masked(param, keep, values.clone(), trainable)
    frozen = values * (1 - keep)
    return _Masked(param, keep, frozen if bool(frozen.any()) else None, None)


@contextmanager
def train_only(
    model: nn.Module,
    mask: Mapping[str, Tensor],
    optimizer: torch.optim.Optimizer,
    others: str = "trainable",
) -> Iterator[None]:
    """Inside this context only entries where ``mask`` is ``True`` change under ``optimizer``.

    Args:
        model: the module being trained.
        mask: parameter name -> bool tensor, ``True`` = may change (a :class:`Mask`, or its
            complement ``~mask`` to train the redundant entries).
        optimizer: any ``torch.optim`` optimizer over (some of) the model's parameters; the
            exactness holds for SGD (momentum, weight decay), Adam, AdamW and the rest,
            because frozen entries are restored after each step.
        others: policy for parameters not in ``mask``: ``"trainable"`` or ``"frozen"``.

    Example:
        >>> with pacnet.train_only(model, ~mask, opt):
        ...     for x, y in loader:
        ...         opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()
    """
    check(
        others in ("trainable", "frozen"), f"others must be 'trainable' or 'frozen', got {others!r}"
    )
    if isinstance(mask, Mask):
        mask.check(model)
    else:
        Mask(mask).check(model)
    params = dict(model.named_parameters())
    masked = []
    fully_frozen = []
    for name, trainable in mask.items():
        if bool(trainable.all()):
            continue
        if not bool(trainable.any()):
            fully_frozen.append(params[name])
            continue
        masked.append(_prepare(params[name], trainable))
    if others == "frozen":
        fully_frozen += [p for n, p in params.items() if n not in mask]
    fully_frozen = [p for p in fully_frozen if p.requires_grad]

    fast = [m for m in masked if m.exact is None]
    fast_params = [m.param for m in fast]
    fast_keep = [m.keep for m in fast]
    with_values = [m for m in fast if m.frozen is not None]
    zero_frozen = [m.param for m in fast if m.frozen is None]
    exact = [m for m in masked if m.exact is not None]

    def restore(*_: object) -> None:
        with torch.no_grad():
            if fast_params:
                torch._foreach_mul_(fast_params, fast_keep)
            if with_values:
                torch._foreach_add_([m.param for m in with_values], [m.frozen for m in with_values])
            if zero_frozen:  # w·0 may be -0.0; adding +0.0 gives the +0.0 that was there
                torch._foreach_add_(zero_frozen, 0.0)
            for m in exact:
                torch.where(m.exact, m.param, m.frozen, out=m.param)

    def mask_grad(keep: Tensor):
        def hook(param: Tensor) -> None:
            if param.grad is not None:
                param.grad.mul_(keep)

        return hook

    handles = []
    for m in masked:
        if m.param.grad is not None:  # a gradient accumulated before entering
            m.param.grad.mul_(m.keep)
        if m.param.requires_grad:
            handles.append(m.param.register_post_accumulate_grad_hook(mask_grad(m.keep)))
    handles.append(optimizer.register_step_post_hook(restore))
    for p in fully_frozen:
        p.requires_grad_(False)
        p.grad = None
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for p in fully_frozen:
            p.requires_grad_(True)
