"""One checkpoint file for all tasks of a PAC-Net network (safetensors, no pickle).

Layout of the tensors:

* ``shared/<name>`` — every parameter and buffer no task owns, as trained (full weights);
* ``mask/<name>`` — the essential mask, bit-packed (8 entries a byte);
* ``owner/<bit>/<name>`` — with several targets only: the owning task's index of every
  masked entry as ``ceil(log2(tasks + 1))`` bit planes, each bit-packed (free entries
  take the code ``len(tasks)``);
* ``task/<task>/<name>`` — each task's own tensors (head, biases, norms, BN statistics).

The metadata (JSON strings) holds the format name and version, the pacnet version, the task
order, the per-task names, the mask shapes, the plan (head, tied names: see
:mod:`pacnet.core.roles`), free-form ``extra`` and a SHA-256 over all tensors, checked on load.
A tied tensor is stored once; loading needs a model tied the same way and keeps the tie.
Two tasks cost one set of shared weights plus a 1-bit mask plus the small per-task tensors:
about half of two dense models.

A method that trains one plain network (fine-tuning and the other baselines) is saved by
:func:`save_network` as a *one-network* file: format ``pacnet.network``, every tensor of
the model's ``state_dict`` under ``net/<name>`` (a tied tensor once), the task it serves,
``extra`` and the same checksum. :func:`load` reads both kinds; :func:`inspect` describes
both.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pacnet.core.mask import Mask
from pacnet.core.roles import Plan, aliases, slot_of, tie_mismatch, unwrap
from pacnet.core.tasks import FREE, Tasks
from pacnet.errors import PacnetError, check, check_type, first_line, pacnet_version
from pacnet.io import read_safetensors, tensor_digest, write_safetensors

FORMAT = "pacnet.checkpoint"
NETWORK_FORMAT = "pacnet.network"
NETWORK_FORMAT_VERSION = 1
FORMAT_VERSION = 2
"""2: adds the ownership map of networks with several targets (``owner/<bit>/<name>``).
Files without one (one target) are still written as version 1, so older pacnet reads them."""


def save(
    path: str | Path, model: nn.Module, tasks: Tasks, extra: Mapping[str, Any] | None = None
) -> str:
    """Write the whole multi-task network (all tasks) to ``path``, atomically; returns the
    file's tensor checksum (SHA-256, as :func:`inspect` reports it).

    Tensors that share storage (tied weights) are stored once; the metadata names the aliases.
    """
    model = unwrap(model)
    check_type(
        tasks,
        Tasks,
        "tasks",
        "the Tasks that calibrate returns (pacnet.Tasks(model, mask) before it)",
    )
    check(
        tasks.hiding is None,
        "cannot save inside tasks.use(): the hidden weights are zeroed; save outside it",
    )
    tasks.activate(model, tasks.active)  # record the model's current per-task tensors
    owned = {slot for slots in tasks.slots.values() for slot in slots}
    state = {n: t for n, t in model.state_dict().items() if n not in owned}
    tensors, aliases = _once(state, "shared/")
    packed, shapes = tasks.mask.pack()
    tensors.update({f"mask/{n}": t for n, t in packed.items()})
    if tasks.owner is not None:
        tensors.update(_owner_planes(tasks))
    for task in tasks.order:
        tensors.update({f"task/{task}/{n}": t for n, t in tasks.tensors[task].items()})
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION if tasks.owner is not None else 1),
        "pacnet_version": pacnet_version(),
        "tasks": json.dumps(tasks.order),
        "per_task_names": json.dumps(list(tasks.names)),
        "mask_shapes": json.dumps(shapes),
        "extra": json.dumps(dict(extra or {})),
        "aliases": json.dumps(aliases),
        "plan": tasks.plan.to_json(),
        "sha256": tensor_digest(tensors),
    }
    write_safetensors(path, tensors, meta)
    return meta["sha256"]


def _once(state: Mapping[str, Tensor], prefix: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """``state`` under ``prefix`` with every tied tensor (one storage under several names)
    stored once; returns (tensors, {alias: canonical name})."""
    tensors: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...], torch.dtype], str] = {}
    for n, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if t.numel() and key in seen:
            aliases[n] = seen[key]
        else:
            seen[key] = n
            tensors[f"{prefix}{n}"] = t
    return tensors, aliases


def save_network(
    path: str | Path,
    model: nn.Module,
    task: str = "target",
    extra: Mapping[str, Any] | None = None,
) -> str:
    """Write one plain network (every tensor of ``model.state_dict()``) to ``path``,
    atomically, as the model for ``task``: what a method that trains a single network
    (fine-tuning, L2-SP, …) leaves. :func:`load` reads it back into a model of the same
    architecture. Returns the tensor checksum."""
    model = unwrap(model)
    tensors, aliases = _once(model.state_dict(), "net/")
    meta = {
        "format": NETWORK_FORMAT,
        "format_version": str(NETWORK_FORMAT_VERSION),
        "pacnet_version": pacnet_version(),
        "tasks": json.dumps([task]),
        "extra": json.dumps(dict(extra or {})),
        "aliases": json.dumps(aliases),
        "sha256": tensor_digest(tensors),
    }
    write_safetensors(path, tensors, meta)
    return meta["sha256"]


def _read_network(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A one-network file's tensors (by state_dict name, aliases restored) and metadata."""
    tensors, meta = read_safetensors(path)
    try:
        version = int(meta["format_version"])
        parsed = {k: json.loads(meta[k]) for k in ("tasks", "extra", "aliases")}
    except (KeyError, ValueError):
        raise PacnetError(f"{path}: checkpoint metadata is incomplete or malformed") from None
    check(
        version <= NETWORK_FORMAT_VERSION,
        f"{path}: network format version {version} is newer than this pacnet reads "
        f"({NETWORK_FORMAT_VERSION}); upgrade pacnet",
    )
    check(
        tensor_digest(tensors) == meta.get("sha256"),
        f"{path}: checkpoint is corrupted (tensor checksum mismatch)",
    )
    parsed["sha256"] = meta["sha256"]
    state = {k.removeprefix("net/"): v for k, v in tensors.items() if k.startswith("net/")}
    for alias, canonical in parsed["aliases"].items():
        check(canonical in state, f"{path}: alias {alias!r} names a missing tensor")
        state[alias] = state[canonical]
    return state, parsed


def _load_network(path: str | Path, model: nn.Module, task: str) -> nn.Module:
    state, meta = _read_network(path)
    check(
        task in meta["tasks"],
        f"{path}: holds one network, for task {meta['tasks'][0]!r}, not {task!r}",
    )
    plain = unwrap(model)
    own = plain.state_dict()
    _copy_matching(path, own, state, set(own))
    return model


def file_format(path: str | Path) -> str:
    """The format a pacnet safetensors file declares (``pacnet.checkpoint`` for a
    multi-task network, ``pacnet.network`` for one plain network); a one-line error for
    anything else."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    check(not path.is_dir(), f"{path}: is a directory; name a .safetensors file")
    check(path.is_file(), f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            found = (f.metadata() or {}).get("format")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise PacnetError(f"{path}: not a readable safetensors file ({first_line(exc)})") from None
    check(
        found in (FORMAT, NETWORK_FORMAT),
        f"{path}: not a pacnet checkpoint (format {found!r})",
    )
    return str(found)


def _owner_planes(tasks: Tasks) -> dict[str, Tensor]:
    free_code = len(tasks.order)
    planes = max(1, math.ceil(math.log2(free_code + 1)))
    codes = {n: torch.where(o == FREE, free_code, o.int()).cpu() for n, o in tasks.owners().items()}
    out = {}
    for bit in range(planes):
        packed, _ = Mask({n: (c >> bit) & 1 == 1 for n, c in codes.items()}).pack()
        out.update({f"owner/{bit}/{n}": t for n, t in packed.items()})
    return out


def _read_owner(
    tensors: Mapping[str, Tensor], meta: Mapping[str, Any], device: torch.device
) -> dict[str, Tensor] | None:
    """The ownership map stored by :func:`_owner_planes`, or None (one target)."""
    bits = sorted({int(k.split("/")[1]) for k in tensors if k.startswith("owner/")})
    if not bits:
        return None
    free_code = len(meta["tasks"])
    codes: dict[str, Tensor] = {}
    for bit in bits:
        prefix = f"owner/{bit}/"
        plane = Mask.unpack(
            {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)},
            meta["mask_shapes"],
        )
        for n, m in plane.items():
            codes[n] = codes.get(n, torch.zeros(m.shape, dtype=torch.int32)) | (m.int() << bit)
    check(all(int(c.max()) <= free_code for c in codes.values()), "ownership map names no task")
    return {
        n: torch.where(c == free_code, FREE, c).to(torch.uint8).to(device) for n, c in codes.items()
    }


def _read(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors, meta = read_safetensors(path)
    check(
        meta.get("format") == FORMAT,
        f"{path}: not a pacnet checkpoint (format {meta.get('format')!r})",
    )
    try:
        version = int(meta["format_version"])
        parsed = {
            k: json.loads(meta[k]) for k in ("tasks", "per_task_names", "mask_shapes", "extra")
        }
        parsed["aliases"] = json.loads(meta.get("aliases", "{}"))
        parsed["plan"] = Plan.from_json(meta["plan"]) if "plan" in meta else None
    except (KeyError, ValueError):
        raise PacnetError(f"{path}: checkpoint metadata is incomplete or malformed") from None
    check(
        version <= FORMAT_VERSION,
        f"{path}: checkpoint format version {version} is newer than this pacnet reads "
        f"({FORMAT_VERSION}); upgrade pacnet",
    )
    check(
        tensor_digest(tensors) == meta.get("sha256"),
        f"{path}: checkpoint is corrupted (tensor checksum mismatch)",
    )
    parsed["sha256"] = meta["sha256"]
    return tensors, parsed


def load_tasks(path: str | Path, model: nn.Module) -> Tasks:
    """Load every task into ``model`` (built with the same architecture); returns the tasks.

    The model is left active as the last task, with full shared weights.
    """
    model = unwrap(model)
    check(
        file_format(path) == FORMAT,
        f"{path}: holds one plain network, not the tasks of a PAC-Net network; load it "
        "with pacnet.load",
    )
    tensors, meta = _read(path)
    shared = {k.removeprefix("shared/"): v for k, v in tensors.items() if k.startswith("shared/")}
    packed = {k.removeprefix("mask/"): v for k, v in tensors.items() if k.startswith("mask/")}
    names = meta["per_task_names"]
    for alias, canonical in meta["aliases"].items():
        check(canonical in shared, f"{path}: alias {alias!r} names a missing tensor")
        shared[alias] = shared[canonical]
    plan: Plan | None = meta["plan"]
    if plan is not None:
        odd = tie_mismatch(plan.aliases, aliases(model))
        check(odd is None, f"{path}: {odd}")
    links = plan.aliases if plan is not None else {}
    own_slots = set(names) | {a for a, c in links.items() if c in set(names)}
    state = model.state_dict()
    expected = {n for n in state if n not in own_slots}
    _copy_matching(path, state, shared, expected)
    mask = Mask.unpack(packed, meta["mask_shapes"], plan)
    device = next(model.parameters()).device
    tasks = Tasks(model, mask.to(device), names)
    try:
        tasks.owner = _read_owner(tensors, meta, device)
    except PacnetError as exc:
        raise PacnetError(f"{path}: {exc}") from None
    for task in meta["tasks"]:
        own = {n: tensors.get(f"task/{task}/{n}") for n in names}
        absent = [n for n, v in own.items() if v is None]
        check(not absent, f"{path}: task {task!r} lacks its tensor {absent[:1]}")
        loaded: dict[str, Tensor] = {}
        for name, value in own.items():
            module, leaf, is_param = slot_of(model, name)
            own_tensor = (module._parameters if is_param else module._buffers)[leaf]
            value = value.to(device=own_tensor.device, dtype=own_tensor.dtype)
            if is_param:  # as trainable as the model's own (never an integer tensor)
                value = nn.Parameter(value, requires_grad=own_tensor.requires_grad)
            loaded[name] = value
        tasks.tensors[task] = loaded
        if task not in tasks.order:
            tasks.order.append(task)
    tasks.activate(model, tasks.order[-1], record=False)  # the model's own tensors are stale
    return tasks


def load(path: str | Path, model: nn.Module, task: str = "target") -> nn.Module:
    """Load one task's model from a checkpoint into ``model`` and return it.

    ``task="source"`` gives the source model exactly as after Allocate (redundant weights
    0, the source's own tensors); any other task name gives that calibrated model. A
    one-network file (:func:`save_network`) holds the model of one task only.
    """
    if file_format(path) == NETWORK_FORMAT:
        return _load_network(path, model, task)
    tasks = load_tasks(path, model)
    check(task in tasks.order, f"{path}: no task {task!r} (has {', '.join(tasks.order)})")
    tasks.activate(model, task)
    tasks.hide(model, task)
    return model


def inspect(path: str | Path) -> dict[str, Any]:
    """What a checkpoint holds (verified against its checksum): tasks, counts, metadata.

    ``kind`` is ``"tasks"`` for a PAC-Net network (every key below) and ``"network"`` for a
    one-network file (``tasks``, ``values``, ``extra``, ``sha256``)."""
    if file_format(path) == NETWORK_FORMAT:
        state, meta = _read_network(path)
        unique = {id(v): v for v in state.values()}
        return {
            "kind": "network",
            "format": NETWORK_FORMAT,
            "tasks": meta["tasks"],
            "values": sum(v.numel() for v in unique.values()),
            "extra": meta["extra"],
            "sha256": meta["sha256"],
        }
    tensors, meta = _read(path)
    packed = {k.removeprefix("mask/"): v for k, v in tensors.items() if k.startswith("mask/")}
    mask = Mask.unpack(packed, meta["mask_shapes"])
    owner = _read_owner(tensors, meta, torch.device("cpu"))
    if owner is None:
        owned = {"source": mask.essential}
        owned.update({t: mask.redundant for t in meta["tasks"][1:2]})
    else:
        owned = {
            t: sum(int((o == k).sum()) for o in owner.values()) for k, t in enumerate(meta["tasks"])
        }
    shared = sum(v.numel() for k, v in tensors.items() if k.startswith("shared/"))
    per_task = {
        task: sum(v.numel() for k, v in tensors.items() if k.startswith(f"task/{task}/"))
        for task in meta["tasks"]
    }
    return {
        "kind": "tasks",
        "format": FORMAT,
        "tasks": meta["tasks"],
        "essential": mask.essential,
        "redundant": mask.redundant,
        "density": mask.density,
        "owned": owned,
        "shared_values": shared,
        "per_task_values": per_task,
        "per_task_names": meta["per_task_names"],
        "head": meta["plan"].head if meta["plan"] is not None else None,
        "coverage": meta["plan"].describe() if meta["plan"] is not None else None,
        "extra": meta["extra"],
        "sha256": meta["sha256"],
    }


def _copy_matching(
    path: Any, model_state: dict[str, Tensor], stored: dict[str, Tensor], expected: set[str]
) -> None:
    """Copy ``stored`` into ``model_state`` after checking that it holds exactly the
    ``expected`` names with the model's shapes (one-line errors naming ``path``)."""
    missing, unexpected = expected - stored.keys(), stored.keys() - expected
    check(
        not missing and not unexpected,
        f"{path}: checkpoint does not match the model's architecture "
        f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})",
    )
    for name, value in stored.items():
        check(
            tuple(model_state[name].shape) == tuple(value.shape),
            f"{path}: {name!r} has shape {tuple(value.shape)} in the checkpoint but "
            f"{tuple(model_state[name].shape)} in the model",
        )
    with torch.no_grad():
        for name, value in stored.items():
            model_state[name].copy_(value)
