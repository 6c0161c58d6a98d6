"""Per-task parameters: one network, several tasks, each owning a few tensors of its own.

Every parameter and buffer of a PAC-Net model has one of three roles:

* **masked-shared** — prunable weights, covered by the :class:`~pacnet.core.mask.Mask`. The source
  task sees only its essential entries (redundant entries read as 0); a target sees all.
  With several targets every entry has an *owner* (PackNet-style): the index of the task
  in :attr:`Tasks.order` that trained it (0 = source, 1 = first target, …, :data:`FREE` =
  none yet). A task sees the entries of its own and of earlier tasks; later tasks' entries
  read as 0 for it. The map is a ``uint8`` tensor per weight, created only when a target
  gives entries back (:meth:`Tasks.release`); until then it is implied by the mask.
* **per-task** — tensors each task owns outright: by default the head (output layer), every
  bias-like tensor, the affine parameters of normalisation layers and every buffer
  (see :mod:`pacnet.core.roles`). A new task gets its own copies (or fresh tensors, e.g.
  a head with a different output size), so training it never touches another task's copy.
* **frozen-shared** — every other parameter: trained with the source, frozen afterwards.

:class:`Tasks` holds the per-task tensors of every task and swaps a task's tensors into the
model by name (the model's ``_parameters`` / ``_buffers`` entries are replaced, not copied,
so the other tasks' tensors are not in the model at all while it trains). A tied tensor
(one tensor under several names) is swapped under all its names, so it stays tied.
:meth:`Tasks.use` is a read-only view: the task's buffers (BatchNorm statistics) are put
back as they were on exit even if the model ran in train mode inside it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from pacnet.core.mask import Mask, select_essential
from pacnet.core.roles import (
    NORMS,
    PER_TASK,
    Plan,
    aliases,
    default_roles,
    find_head,
    inside,
    is_norm,
    make_plan,
    slot_of,
    tie_mismatch,
    unwrap,
)
from pacnet.errors import PacnetError, check, check_type

__all__ = ["FREE", "NORMS", "SOURCE", "Tasks", "per_task_names"]

SOURCE = "source"
FREE = 255
"""Owner code of a masked-shared entry that no task owns (yet): it reads as +0.0."""


def per_task_names(
    model: nn.Module, head: str | None = "auto", biases: bool = True, norms: bool = True
) -> list[str]:
    """Default per-task names (:mod:`pacnet.core.roles`): the head's tensors, bias-like tensors
    (``biases``), normalisation layers' parameters (``norms``) and every buffer. With
    ``biases=False`` or ``norms=False`` those parameters are frozen-shared instead."""
    model = unwrap(model)
    head_name = find_head(model) if head == "auto" else head
    names = []
    for name, role in default_roles(model, head_name).items():
        if role != PER_TASK:
            continue
        module, _, is_param = slot_of(model, name)
        if is_param and not inside(name, head_name) and not (norms if is_norm(module) else biases):
            continue
        names.append(name)
    return names


def _put(model: nn.Module, name: str, value: Tensor) -> None:
    """Place ``value`` in the model under ``name`` (parameter or buffer slot)."""
    module, leaf, is_param = slot_of(model, name)
    (module._parameters if is_param else module._buffers)[leaf] = value
    if isinstance(module, nn.RNNBase):  # RNNs run on a cached list of their weights
        module._init_flat_weights()


class Tasks:
    """The per-task tensors of one network and the mask that separates source from target.

    Args:
        model: the network; its current per-task tensors become the source task's (by
            reference: they are the same objects).
        mask: essential (``True``) entries of the masked-shared weights.
        names: per-task parameter and buffer names (default :func:`per_task_names`).
    """

    def __init__(self, model: nn.Module, mask: Mask, names: Iterable[str] | None = None):
        model = unwrap(model)
        check_type(mask, Mask, "mask", "the pacnet.Mask that pacnet.prune returns")
        mask.check(model)
        self.mask = mask
        self.plan: Plan = mask.plan if mask.plan is not None else make_plan(model, list(mask))
        """The roles of the model's tensors: the mask's (decided by :func:`pacnet.prune`), or
        for a mask made without one, the default roles with the mask's names masked."""
        links = self.plan.aliases
        if mask.plan is not None:
            odd = tie_mismatch(links, aliases(model))
            check(odd is None, f"the mask was pruned from another model: {odd}")
        if names is None:
            chosen = list(self.plan.per_task)
        else:
            names = list(names)
            for given in names:
                canonical = links.get(given, given)
                check(
                    canonical not in mask or canonical == given,
                    f"{given!r} is tied to {canonical!r}, which the mask covers: one tensor "
                    "cannot be both masked and per-task",
                )
            chosen = list(dict.fromkeys(links.get(n, n) for n in names))
        self.names: tuple[str, ...] = tuple(chosen)
        overlap = [n for n in self.names if n in mask]
        check(not overlap, f"{overlap[:1]} cannot be both masked and per-task")
        self.slots: dict[str, list[str]] = {n: self.plan.names_of(n) for n in self.names}
        """Every name (canonical first, then aliases) of each per-task tensor."""
        self.order: list[str] = [SOURCE]
        self.tensors: dict[str, dict[str, Tensor]] = {SOURCE: {}}
        for name in self.names:
            module, leaf, is_param = slot_of(model, name)
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
        check(
            copy_from in self.tensors,
            f"unknown task {copy_from!r}; known: {', '.join(self.order)}",
        )
        check(len(self.order) < FREE, f"at most {FREE - 1} targets fit in one network")
        if len(self.order) > 1:
            check(
                self.owner is not None
                and any(bool((o == FREE).any()) for o in self.owner.values()),
                f"no free weights left for task {task!r}: task {self.order[-1]!r} owns all the "
                "redundant weights; let it give some back first (calibrate(..., reserve=f) or "
                "tasks.release(...))",
            )
        init = self._checked_init(init or {}, self.tensors[copy_from])
        fresh: dict[str, Tensor] = {}
        for name, old in self.tensors[copy_from].items():
            value = init.get(name, old).detach().clone().to(old.device, old.dtype)
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

    def _checked_init(
        self, init: Mapping[str, Tensor], base: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        """``init`` by canonical name, after one-line checks: per-task names only, tensors of
        the same kind (a float64 tensor from NumPy becomes the model's float dtype), and a
        layer whose tensor changes shape (a new head) gets all its tensors."""
        links = self.plan.aliases
        out: dict[str, Tensor] = {}
        for given, value in init.items():
            name = links.get(given, given)
            if name not in self.names:
                raise PacnetError(self._not_per_task(given))
            check(
                isinstance(value, Tensor),
                f"init[{given!r}] must be a tensor, got {type(value).__name__}",
            )
            check(
                value.is_floating_point() == base[name].is_floating_point(),
                f"init[{given!r}] is {value.dtype} but the model holds {base[name].dtype}",
            )
            out[name] = value
        for name, value in out.items():
            if tuple(value.shape) == tuple(base[name].shape):
                continue
            layer = name.rpartition(".")[0]
            rest = [n for n in base if n.rpartition(".")[0] == layer and n not in out]
            if rest:
                raise PacnetError(
                    f"init gives {name!r} a new shape {tuple(value.shape)} but not {rest[0]!r} "
                    f"(shape {tuple(base[rest[0]].shape)}): give every tensor of the new layer"
                )
        return out

    @torch.no_grad()
    def drop(self, model: nn.Module, task: str, then: str = SOURCE) -> None:
        """Undo :meth:`add` of the newest ``task`` (e.g. after its training failed): its
        masked entries become free (+0.0) again, its own tensors are forgotten and ``then``
        is put back into the model (without recording the model's tensors as ``task``'s)."""
        model = unwrap(model)
        check(task != SOURCE, "the source task cannot be dropped")
        check(task == self.order[-1], f"only the newest task ({self.order[-1]!r}) can be dropped")
        check(
            then in self.tensors and then != task,
            f"unknown task {then!r}; known (besides {task!r}): "
            f"{', '.join(t for t in self.order if t != task)}",
        )
        params = dict(model.named_parameters())
        for name, where in self.owned(task).items():
            params[name].masked_fill_(where.to(params[name].device), 0)
        if self.owner is not None:
            index = self.index(task)
            for o in self.owner.values():
                o.masked_fill_(o == index, FREE)
        if self.active == task:
            self.activate(model, then, record=False)
        del self.tensors[task]
        self.order.pop()

    def _not_per_task(self, name: str) -> str:
        """Why ``name`` cannot get a task's own value."""
        canonical = self.plan.aliases.get(name, name)
        role = "the mask covers it" if canonical in self.mask else "it is frozen-shared"
        if canonical != name:
            return (
                f"{name!r} is tied to {canonical!r} and {role}, so a task cannot replace it "
                "alone: untie them before pruning (e.g. a Hugging Face config's "
                "tie_word_embeddings=False) to give the target a head of its own"
            )
        return f"{name!r} is not a per-task tensor ({role})"

    def activate(self, model: nn.Module, task: str, record: bool = True) -> None:
        """Put ``task``'s per-task tensors into the model (shared weights are not changed).

        With ``record`` the model's current per-task tensors are first recorded as the
        active task's, so a ``model.to(...)`` that replaced a buffer is not lost.
        """
        model = unwrap(model)
        check(task in self.tensors, f"unknown task {task!r}; known: {', '.join(self.order)}")
        incoming = dict(self.tensors[task])  # before recording: ``task`` may be the active one
        if record:
            current = {}
            for name, value in incoming.items():  # check everything before changing anything
                module, leaf, is_param = slot_of(model, name)
                now = (module._parameters if is_param else module._buffers)[leaf]
                if now is None:
                    continue
                if (now.dtype, now.device) != (value.dtype, value.device):
                    raise PacnetError(
                        f"task {task!r} holds {name!r} as {value.dtype} on {value.device} but the "
                        f"model uses {now.dtype} on {now.device}; call tasks.to(...) "
                        "after model.to(...)"
                    )
                current[name] = now
            self.tensors[self.active].update(current)
            if task == self.active:  # the model's tensors are the task's own, newest ones
                incoming.update(current)
        for name, value in incoming.items():
            for slot in self.slots[name]:  # every name of a tied tensor: it stays tied
                _put(model, slot, value)
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
        model = unwrap(model)
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
        model = unwrap(model)
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
        keep = select_essential(values, n_release)
        for name, kept in zip(names, keep, strict=True):
            released = torch.zeros_like(owned[name])
            released[owned[name]] = ~kept.to(released.device)
            self.owner[name][released] = FREE
            params[name].masked_fill_(released.to(params[name].device), 0)
        return n_release

    @torch.no_grad()
    def hide(self, model: nn.Module, task: str) -> dict[str, Tensor]:
        """Zero the entries ``task`` must not see; returns their values (for :meth:`unhide`)."""
        model = unwrap(model)
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
        model = unwrap(model)
        params = dict(model.named_parameters())
        hidden = self.hidden(task) or {}
        for name, values in saved.items():
            params[name].masked_scatter_(hidden[name].to(params[name].device), values)

    @contextmanager
    def use(self, model: nn.Module, task: str) -> Iterator[nn.Module]:
        """Run the model as ``task``: its per-task tensors in, entries it must not see zeroed.

        A read-only view: on exit the previous task, the hidden weight values and the task's
        own buffers (which a forward pass in train mode updates, e.g. BatchNorm statistics)
        are put back bit for bit, whatever mode the model ran in. Train a task with
        :func:`~pacnet.calibrate` or :meth:`activate`, not inside this.
        """
        check(self.hiding is None, "tasks.use() cannot be nested")
        previous = self.active
        self.activate(model, task)
        own = dict(self.tensors[task])
        buffers = {n: t.clone() for n, t in own.items() if not isinstance(t, nn.Parameter)}
        saved = self.hide(model, task)
        self.hiding = task if saved else None
        try:
            yield model
        finally:
            self.unhide(model, task, saved)
            self.hiding = None
            with torch.no_grad():  # the task's buffers as they were (a forward pass in
                for name, value in buffers.items():  # train mode updates them in place)
                    if own[name].shape != value.shape:  # one that sized itself on first use
                        own[name].resize_(value.shape)
                    own[name].copy_(value)
            self.tensors[task].update(own)  # and the same objects, if one was replaced
            self.activate(model, previous, record=False)

    def export(self, model: nn.Module, task: str) -> nn.Module:
        """A standalone copy of the model as ``task`` (for serving or evaluation)."""
        import copy

        with self.use(model, task):
            try:
                return copy.deepcopy(model)
            except RuntimeError as exc:
                if "deepcopy" not in str(exc):
                    raise
                raise PacnetError(
                    "cannot copy this model: a hook-based torch.nn.utils.weight_norm, "
                    "spectral_norm or prune keeps a computed weight that deepcopy refuses; use "
                    "torch.nn.utils.parametrizations instead, or pacnet.save then "
                    "pacnet.load(..., task=...)"
                ) from None
