"""Per-task parameters: one network, several tasks, each owning a few tensors of its own.

Every parameter and buffer of a PAC-Net model has one of three roles:

* **masked-shared** — prunable weights, covered by the :class:`~pacnet.mask.Mask`. The source
  task sees only its essential entries (redundant entries read as 0); a target sees all.
  With several targets every entry has an *owner* (PackNet-style): the index of the task
  in :attr:`Tasks.order` that trained it (0 = source, 1 = first target, …, :data:`FREE` =
  none yet). A task sees the entries of its own and of earlier tasks; later tasks' entries
  read as 0 for it. The map is a ``uint8`` tensor per weight, created only when a target
  gives entries back (:meth:`Tasks.release`); until then it is implied by the mask.
* **per-task** — tensors each task owns outright: by default the head (output layer), every
  bias, and the affine parameters and running statistics of normalisation layers. A new task
  gets its own copies (or fresh tensors, e.g. a head with a different output size), so
  training it never touches another task's copy.
* **frozen-shared** — every other parameter: trained with the source, frozen afterwards.

:class:`Tasks` holds the per-task tensors of every task and swaps a task's tensors into the
model by name (the model's ``_parameters`` / ``_buffers`` entries are replaced, not copied,
so the other tasks' tensors are not in the model at all while it trains).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from pacnet.errors import PacnetError, check
from pacnet.mask import Mask, find_head

NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
SOURCE = "source"
FREE = 255
"""Owner code of a masked-shared entry that no task owns (yet): it reads as +0.0."""


def per_task_names(
    model: nn.Module, head: str | None = "auto", biases: bool = True, norms: bool = True
) -> list[str]:
    """Default per-task names: the head's tensors, biases, and norm parameters and buffers."""
    head_name = find_head(model) if head == "auto" else head
    names: list[str] = []
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        is_head = head_name is not None and mod_name == head_name
        is_norm = norms and isinstance(module, NORMS)
        for leaf, value in module._parameters.items():
            if value is not None and (is_head or is_norm or (biases and leaf == "bias")):
                names.append(prefix + leaf)
        if is_head or is_norm:
            names += [prefix + leaf for leaf, b in module._buffers.items() if b is not None]
    return list(dict.fromkeys(names))


def _slot(model: nn.Module, name: str) -> tuple[nn.Module, str, bool]:
    """(owning module, leaf name, is_parameter) for a dotted parameter or buffer name."""
    mod_name, _, leaf = name.rpartition(".")
    try:
        module = model.get_submodule(mod_name)
    except AttributeError:
        raise PacnetError(f"{name!r} is not a parameter or buffer of the model") from None
    if leaf in module._parameters:
        return module, leaf, True
    if leaf in module._buffers:
        return module, leaf, False
    raise PacnetError(f"{name!r} is not a parameter or buffer of the model")


class Tasks:
    """The per-task tensors of one network and the mask that separates source from target.

    Args:
        model: the network; its current per-task tensors become the source task's (by
            reference: they are the same objects).
        mask: essential (``True``) entries of the masked-shared weights.
        names: per-task parameter and buffer names (default :func:`per_task_names`).
    """

    def __init__(self, model: nn.Module, mask: Mask, names: Iterable[str] | None = None):
        mask.check(model)
        self.mask = mask
        self.names: tuple[str, ...] = tuple(per_task_names(model) if names is None else names)
        overlap = [n for n in self.names if n in mask]
        check(not overlap, f"{overlap[:1]} cannot be both masked and per-task")
        self.order: list[str] = [SOURCE]
        self.tensors: dict[str, dict[str, Tensor]] = {SOURCE: {}}
        for name in self.names:
            module, leaf, is_param = _slot(model, name)
            table = module._parameters if is_param else module._buffers
            self.tensors[SOURCE][name] = table[leaf]
        self.active = SOURCE
        self.hiding: str | None = None  # the task whose hidden entries are zeroed right now
        self.owner: dict[str, Tensor] | None = None
        """Owner index per masked entry (``uint8``), or None while the mask implies it:
        essential entries the source's, the rest the first target's (FREE before one)."""

    def __repr__(self) -> str:
        return f"Tasks({self.order}, active={self.active!r}, {len(self.names)} per-task tensors)"

    def add(
        self, task: str, init: Mapping[str, Tensor] | None = None, copy_from: str = SOURCE
    ) -> None:
        """Create ``task``'s per-task tensors: copies of ``copy_from``'s, or ``init[name]``."""
        check(task not in self.tensors, f"task {task!r} already exists")
        check(copy_from in self.tensors, f"unknown task {copy_from!r}")
        check(len(self.order) < FREE, f"at most {FREE - 1} targets fit in one network")
        if len(self.order) > 1:
            check(
                self.owner is not None
                and any(bool((o == FREE).any()) for o in self.owner.values()),
                f"no free weights left for task {task!r}: task {self.order[-1]!r} owns all the "
                "redundant weights; let it give some back first (calibrate(..., reserve=f) or "
                "tasks.release(...))",
            )
        init = dict(init or {})
        unknown = [n for n in init if n not in self.names]
        check(not unknown, f"{unknown[:1]} is not a per-task tensor name")
        fresh: dict[str, Tensor] = {}
        for name, old in self.tensors[copy_from].items():
            value = init.get(name, old).detach().clone().to(old.device)
            if isinstance(old, nn.Parameter):
                fresh[name] = nn.Parameter(value, requires_grad=old.requires_grad)
            else:
                fresh[name] = value
        self.tensors[task] = fresh
        self.order.append(task)
        if self.owner is not None:  # the new task owns what is free
            index = len(self.order) - 1
            for o in self.owner.values():
                o.masked_fill_(o == FREE, index)

    def activate(self, model: nn.Module, task: str, record: bool = True) -> None:
        """Put ``task``'s per-task tensors into the model (shared weights are not changed).

        With ``record`` the model's current per-task tensors are first recorded as the
        active task's, so a ``model.to(...)`` that replaced a buffer is not lost.
        """
        check(task in self.tensors, f"unknown task {task!r}; known: {', '.join(self.order)}")
        outgoing = self.tensors[self.active]
        for name, value in self.tensors[task].items():
            module, leaf, is_param = _slot(model, name)
            table = module._parameters if is_param else module._buffers
            current = table[leaf]
            if current is not None and record:
                outgoing[name] = current
                if (current.dtype, current.device) != (value.dtype, value.device):
                    raise PacnetError(
                        f"task {task!r} holds {name!r} as {value.dtype} on {value.device} but the "
                        f"model uses {current.dtype} on {current.device}; call tasks.to(...) "
                        "after model.to(...)"
                    )
            table[leaf] = value
        self.active = task

    def to(self, *args: object, **kwargs: object) -> Tasks:
        """Convert every task's tensors as ``nn.Module.to`` does (a dtype applies to floating
        point tensors only); call it with the same arguments as ``model.to``."""
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)

        def convert(t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        for tensors in self.tensors.values():
            for name, value in tensors.items():
                if isinstance(value, nn.Parameter):
                    value.data = convert(value.data)
                else:
                    tensors[name] = convert(value)
        if device is not None:
            self.mask = self.mask.to(device)
            if self.owner is not None:
                self.owner = {n: o.to(device) for n, o in self.owner.items()}
        return self

    def owners(self) -> dict[str, Tensor]:
        """The ownership map (task index per masked entry; :data:`FREE` for none), as uint8
        tensors; built from the mask while it is implied (see :attr:`owner`)."""
        if self.owner is not None:
            return self.owner
        rest = 1 if len(self.order) > 1 else FREE
        return {n: torch.where(m, 0, rest).to(torch.uint8) for n, m in self.mask.items()}

    def owned(self, task: str) -> Mask:
        """The masked-shared entries ``task`` owns (``True``)."""
        index = self.index(task)
        if self.owner is None:
            return self.mask if index == 0 else ~self.mask
        return Mask({n: o == index for n, o in self.owner.items()})

    def index(self, task: str) -> int:
        """``task``'s position in :attr:`order` (0 = source)."""
        check(task in self.tensors, f"unknown task {task!r}; known: {', '.join(self.order)}")
        return self.order.index(task)

    def trainable(self, model: nn.Module) -> dict[str, Tensor]:
        """What the active (non-source) task trains, for :func:`~pacnet.train_only`:
        the masked entries it owns and all of its own parameters. Only the newest task may
        train: later tasks read the entries of earlier ones."""
        check(self.active != SOURCE, "the source task's weights are fixed; activate a target")
        later = self.order[self.index(self.active) + 1 :]
        check(
            not later,
            f"task {self.active!r} is final: {', '.join(later)} build on its weights; only the "
            "newest task can train",
        )
        params = dict(model.named_parameters())
        own = {
            n: torch.ones_like(params[n], dtype=torch.bool)
            for n in self.names
            if n in params and params[n].requires_grad
        }
        return {**self.owned(self.active), **own}

    def hidden(self, task: str) -> Mask | None:
        """Masked-shared entries ``task`` must not see (``True`` = hidden), or None: the
        entries of later tasks and free ones."""
        index = self.index(task)
        if self.owner is None:
            return ~self.mask if index == 0 else None
        hidden = Mask({n: o > index for n, o in self.owner.items()})
        return hidden if hidden.redundant < hidden.total else None

    @torch.no_grad()
    def release(self, model: nn.Module, task: str, fraction: float) -> int:
        """Give back the smallest-magnitude ``fraction`` of ``task``'s masked entries: they
        become free (+0.0) for the next task. ``task`` must be the newest; retrain it on what
        it keeps afterwards. Returns the number of entries released."""
        from pacnet.mask import _select

        check(0 <= fraction < 1, f"fraction must lie in [0, 1), got {fraction}")
        check(task != SOURCE, "the source's essential weights cannot be released")
        check(task == self.order[-1], f"only the newest task ({self.order[-1]!r}) can release")
        params = dict(model.named_parameters())
        if self.owner is None:
            self.owner = self.owners()
        index = self.index(task)
        names = list(self.owner)
        owned = {n: self.owner[n] == index for n in names}
        values = [params[n].detach()[owned[n].to(params[n].device)] for n in names]
        count = sum(v.numel() for v in values)
        n_release = round(fraction * count)
        if n_release == 0:
            return 0
        keep = _select(values, n_release)
        for name, kept in zip(names, keep, strict=True):
            released = torch.zeros_like(owned[name])
            released[owned[name]] = ~kept.to(released.device)
            self.owner[name][released] = FREE
            params[name].masked_fill_(released.to(params[name].device), 0)
        return n_release

    @torch.no_grad()
    def hide(self, model: nn.Module, task: str) -> dict[str, Tensor]:
        """Zero the entries ``task`` must not see; returns their values (for :meth:`unhide`)."""
        params = dict(model.named_parameters())
        saved = {}
        for name, hide in (self.hidden(task) or {}).items():
            w, hide = params[name], hide.to(params[name].device)
            saved[name] = w[hide].clone()
            w.masked_fill_(hide, 0)
        return saved

    @torch.no_grad()
    def unhide(self, model: nn.Module, task: str, saved: Mapping[str, Tensor]) -> None:
        """Put back the values :meth:`hide` took out, bit for bit."""
        params = dict(model.named_parameters())
        hidden = self.hidden(task) or {}
        for name, values in saved.items():
            params[name].masked_scatter_(hidden[name].to(params[name].device), values)

    @contextmanager
    def use(self, model: nn.Module, task: str) -> Iterator[nn.Module]:
        """Run the model as ``task``: its per-task tensors in, entries it must not see zeroed.

        On exit the previous task and the hidden weight values are put back bit for bit.
        """
        check(self.hiding is None, "tasks.use() cannot be nested")
        previous = self.active
        self.activate(model, task)
        saved = self.hide(model, task)
        self.hiding = task if saved else None
        try:
            yield model
        finally:
            self.unhide(model, task, saved)
            self.hiding = None
            self.activate(model, previous)

    def export(self, model: nn.Module, task: str) -> nn.Module:
        """A standalone copy of the model as ``task`` (for serving or evaluation)."""
        import copy

        with self.use(model, task):
            return copy.deepcopy(model)
