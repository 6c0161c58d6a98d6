"""Per-task parameters: one network, several tasks, each owning a few tensors of its own.

Every parameter and buffer of a PAC-Net model has one of three roles:

* **masked-shared** — prunable weights, covered by the :class:`~pacnet.mask.Mask`. The source
  task sees only its essential entries (redundant entries read as 0); a target sees all.
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

    def __repr__(self) -> str:
        return f"Tasks({self.order}, active={self.active!r}, {len(self.names)} per-task tensors)"

    def add(
        self, task: str, init: Mapping[str, Tensor] | None = None, copy_from: str = SOURCE
    ) -> None:
        """Create ``task``'s per-task tensors: copies of ``copy_from``'s, or ``init[name]``."""
        check(task not in self.tensors, f"task {task!r} already exists")
        check(copy_from in self.tensors, f"unknown task {copy_from!r}")
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
        return self

    def trainable(self, model: nn.Module) -> dict[str, Tensor]:
        """What the active (non-source) task trains, for :func:`~pacnet.train_only`:
        the redundant entries of the masked weights and all of its own parameters."""
        check(self.active != SOURCE, "the source task's weights are fixed; activate a target")
        params = dict(model.named_parameters())
        own = {
            n: torch.ones_like(params[n], dtype=torch.bool)
            for n in self.names
            if n in params and params[n].requires_grad
        }
        return {**~self.mask, **own}

    def hidden(self, task: str) -> Mask | None:
        """Masked-shared entries ``task`` must not see (``True`` = hidden), or None."""
        return ~self.mask if task == SOURCE else None

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
