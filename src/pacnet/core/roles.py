"""Roles of a model's tensors, decided once per model: a :class:`Plan`.

PAC-Net gives every parameter and buffer one of three roles:

* **masked** — weights that multiply activations: the :class:`~pacnet.core.mask.Mask` covers
  them; the source keeps their essential entries, targets train the redundant ones;
* **per-task** — tensors every task owns a copy of: the head, every bias-like tensor, the
  affine parameters of normalisation layers, and every buffer (BatchNorm's running
  statistics, spectral norm's power-iteration vectors, a rotary embedding's frequencies
  that a forward pass may update, …);
* **frozen** — everything else: trained with the source, frozen for every target.

The rule is by role, not by name:

* Weights of known layers are masked: ``nn.Linear``, every convolution and transposed
  convolution, ``nn.Bilinear``, the input and hidden weights of ``nn.RNN``/``LSTM``/``GRU``
  (``weight_ih_l*``, ``weight_hh_l*``, ``weight_hr_l*``), ``nn.MultiheadAttention``'s
  projections (packed ``in_proj_weight`` or ``q/k/v_proj_weight``; ``out_proj`` is a
  Linear), and ``nn.Embedding``/``nn.EmbeddingBag`` tables (``embeddings=False`` makes
  embeddings frozen instead).
* The ``weight`` of any other layer without child modules (GPT-2's ``Conv1D``, a custom
  linear layer) is masked when at least two of its dimensions exceed 1. A *vector-like*
  parameter anywhere (every dimension but one is 1: a bias, a norm scale, a LayerScale, a
  ``(1, 1, d)`` class token) is per-task, and so is a 1-D or 2-D tensor named ``*bias`` or
  ``*biases`` (one bias per expert or per head, such as GPT-OSS's ``gate_up_proj_bias``,
  XLNet's ``r_w_bias`` or LeViT's ``attention_biases``).
* Stacks of matrices are masked, each matrix as a weight: a free-standing parameter of
  three or more dimensions, all larger than 1 (the experts of transformers' mixture-of-
  experts models, ``experts.gate_up_proj``/``down_proj`` of shape (experts, out, in);
  XLNet's and Funnel's relative-attention projections, (model, heads, head size)); and the
  2-D matrices of a module named like experts (DBRX's ``ffn.experts.mlp.w1/v1/w2``, the
  experts' matrices stacked along the rows). A ``(1, n, d)`` table has a unit dimension
  and is not a stack.
* Any other parameter (a free-standing 2-D position table, Mamba's ``A_log``, a matrix used
  as ``x @ self.W``, Swin's relative-position bias tables, Perceiver's latents, a router's
  weight inside a module with children) is frozen: what it does, and whether 0 means "off"
  for it, is unknown; :func:`pacnet.prune` names every such tensor in a warning and
  :meth:`Plan.describe` lists them, however small, and ``prunable=`` takes them in.
* Normalisation layers (BatchNorm, InstanceNorm, LayerNorm, GroupNorm, RMSNorm, and
  modules named like them) own per-task parameters, whatever their shape.
* Parametrised weights (``torch.nn.utils.parametrizations.weight_norm``,
  ``spectral_norm``, any ``parametrize.register_parametrization``, and the older hook
  versions ``weight_norm``/``spectral_norm``): the tensor holding the direction (``v``,
  ``original``, ``weight_orig``) takes the weight's role; a weight norm's magnitude ``g``
  is per-task.
* The head — the module that produces the output (see :func:`find_head`) — is per-task
  as a whole. A head whose weight is tied to another tensor (a language-model head tied to
  the input embedding) stays tied: the tied tensor keeps the role of its other name (the
  embedding's), so source and targets read it through both names alike.

Tied or shared tensors (one tensor under several names) are handled once, under the name
``model.named_parameters()`` gives them (their *canonical* name); the plan lists the other
names as aliases.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn
from torch.nn.utils import parametrize

from pacnet.errors import PacnetError, check, check_module

PrunableRule = Iterable[str] | Callable[[str, nn.Parameter], bool] | None

MASKED, PER_TASK, FROZEN = "masked", "per_task", "frozen"

NORMS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm, InstanceNorm, SyncBatchNorm
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
)
_NORM_NAME = re.compile(r"(Norm|Normalization)(\dd)?$")
_LINEAR_LIKE = (nn.Linear, nn.modules.conv._ConvNd, nn.Bilinear)
_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)
_WEIGHT_NAMES = ("weight", "weight_v", "weight_orig")  # also under the older norm hooks
_MHA_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
_RNN_WEIGHT = re.compile(r"weight_(ih|hh|hr)_l\d+(_reverse)?$")
_BIAS_NAME = re.compile(r"bias(es)?$")
_EXPERTS = re.compile(r"Expert")
HEAD_NAMES = ("lm_head", "head", "classifier", "fc", "score", "qa_outputs", "output", "out")
"""Names of a model's direct children that :func:`find_head` takes for its output head."""


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a normalisation layer (torch's, or one named like one, such as
    Hugging Face's ``LlamaRMSNorm``)."""
    return isinstance(module, NORMS) or bool(_NORM_NAME.search(type(module).__name__))


def vector_like(t: Tensor) -> bool:
    """At most one dimension exceeds 1: a bias, a scale, a ``(1, 1, d)`` token."""
    return t.dim() < 2 or sum(s > 1 for s in t.shape) <= 1


def _weight(module: nn.Module) -> Tensor | None:
    """The module's weight matrix, also under a parametrisation or the older hook versions
    of weight and spectral norm (without computing it)."""
    if parametrize.is_parametrized(module, "weight"):
        plist = module.parametrizations["weight"]
        return plist.original1 if _weight_normed(plist) else getattr(plist, "original", None)
    for name in _WEIGHT_NAMES:
        value = module._parameters.get(name)
        if value is not None:
            return value
    return None


def _weight_normed(plist: nn.Module) -> bool:
    """Whether a parametrisation list is torch's weight norm (originals ``g``, ``v``)."""
    return any(type(p).__name__ == "_WeightNorm" for p in plist)


def is_weight_layer(module: nn.Module) -> bool:
    """A layer that multiplies its input by a weight matrix and may serve as an output head:
    Linear, convolutions, Bilinear, or any other leaf module with a weight of at least two
    non-unit dimensions (e.g. Hugging Face's ``Conv1D``). Not an embedding, a norm or an RNN."""
    if isinstance(module, (*_EMBEDDINGS, nn.RNNBase, nn.MultiheadAttention)) or is_norm(module):
        return False
    weight = _weight(module)
    if weight is None:
        return False
    if isinstance(module, _LINEAR_LIKE):
        return True
    return _is_leaf(module) and not vector_like(weight)


def _is_leaf(module: nn.Module) -> bool:
    """No child modules but its parametrisations."""
    return not any(n != "parametrizations" for n, _ in module.named_children())


def weight_layers(model: nn.Module) -> list[str]:
    """Names of the model's weight layers (:func:`is_weight_layer`), in registration order."""
    return [n for n, m in model.named_modules() if is_weight_layer(m)]


def covered_layers(model: nn.Module) -> list[str]:
    """The weight layers (:func:`is_weight_layer`) whose ``weight`` the default mask covers:
    where LoRA puts adapters and DELTA reads features."""
    masked = set(make_plan(model).masked)
    return [n for n in weight_layers(model) if (f"{n}.weight" if n else "weight") in masked]


def find_head(model: nn.Module) -> str | None:
    """The module that produces the model's output (its parameters are per-task):

    1. a Hugging Face model's ``get_output_embeddings()`` (its language-model head);
    2. else the last direct child named ``lm_head``, ``head``, ``classifier``, ``fc``,
       ``score``, ``qa_outputs``, ``output`` or ``out`` that holds a weight layer (its last
       weight layer when it holds several, e.g. a ``classifier`` Sequential);
    3. else the last weight layer in registration order (:func:`is_weight_layer`).

    None for a model without weight layers. Pass ``head=`` to :func:`pacnet.prune` where
    this guesses wrong; the choice is then kept in the mask's :class:`Plan`.
    """
    return guess_head(model)[0]


def guess_head(model: nn.Module) -> tuple[str | None, bool]:
    """:func:`find_head`'s answer, and whether it is only the last weight layer (step 3)."""
    model = unwrap(model)
    names = {id(m): n for n, m in model.named_modules()}
    getter = getattr(model, "get_output_embeddings", None)
    if callable(getter):
        try:
            out = getter()
        except (NotImplementedError, AttributeError, TypeError):
            out = None
        if isinstance(out, nn.Module) and names.get(id(out)):
            return names[id(out)], False
    for child_name, child in reversed(list(model.named_children())):
        if child_name in HEAD_NAMES:
            inside = weight_layers(child)
            if inside:
                return (f"{child_name}.{inside[-1]}" if inside[-1] else child_name), False
    layers = weight_layers(model)
    return (layers[-1] if layers else None), True


@dataclass(frozen=True)
class Slot:
    """One name under which a tensor sits in the model."""

    name: str
    module: str  # the owning module's name ("" for the root)
    leaf: str
    is_param: bool


def slots(model: nn.Module) -> Iterator[tuple[Slot, nn.Module, Tensor]]:
    """Every name of every parameter and buffer, tied and shared ones included, with its
    module and tensor, in registration order."""
    for mod_name, module in model.named_modules(remove_duplicate=False):
        prefix = f"{mod_name}." if mod_name else ""
        for leaf, value in module._parameters.items():
            if value is not None:
                yield Slot(prefix + leaf, mod_name, leaf, True), module, value
        for leaf, value in module._buffers.items():
            if value is not None:
                yield Slot(prefix + leaf, mod_name, leaf, False), module, value


def _canonical(model: nn.Module) -> dict[int, str]:
    """Each tensor's canonical name (the one ``named_parameters()`` / ``named_buffers()``
    gives it), by tensor identity, in registration order."""
    canonical = {id(t): n for n, t in model.named_parameters()}
    canonical.update({id(t): n for n, t in model.named_buffers() if id(t) not in canonical})
    return canonical


def slot_of(model: nn.Module, name: str) -> tuple[nn.Module, str, bool]:
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


def aliases(model: nn.Module) -> dict[str, str]:
    """Every other name of a tied or shared tensor -> its canonical name."""
    canonical = _canonical(model)
    out = {}
    for slot, _, value in slots(model):
        name = canonical.get(id(value))
        if name is not None and name != slot.name:
            out[slot.name] = name
    return out


def tie_mismatch(saved: Mapping[str, str], built: Mapping[str, str]) -> str | None:
    """How two alias maps (:func:`aliases`) tie tensors differently, or None."""
    for alias, canonical in saved.items():
        if built.get(alias) != canonical:
            return (
                f"the saved network ties {alias!r} to {canonical!r} but the model does not; "
                "build it with the same tie (e.g. a Hugging Face config's tie_word_embeddings)"
            )
    for alias, canonical in built.items():
        if saved.get(alias) != canonical:
            return (
                f"the model ties {alias!r} to {canonical!r} but the saved network kept them "
                "apart; build it without that tie"
            )
    return None


def _owner(model: nn.Module, slot: Slot) -> tuple[str, nn.Module, str]:
    """(layer name, layer, tensor name) a parameter belongs to; for a parametrisation's
    ``original*`` the parametrised layer and tensor (e.g. ``("conv", conv, "weight")``)."""
    match = re.fullmatch(r"(?:(.*)\.)?parametrizations\.([^.]+)", slot.module)
    if match:
        layer = match.group(1) or ""
        return layer, model.get_submodule(layer), match.group(2)
    return slot.module, model.get_submodule(slot.module), slot.leaf


def _param_role(model: nn.Module, slot: Slot, value: Tensor, embeddings: bool) -> str:
    """The role of a parameter slot outside the head."""
    layer_name, layer, tensor = _owner(model, slot)
    if is_norm(layer):
        return PER_TASK
    g_of_weight_norm = (  # weight norm's magnitude, as a parametrisation or the older hook
        slot.module != layer_name
        and slot.leaf == "original0"
        and _weight_normed(layer.parametrizations[tensor])
    ) or tensor == "weight_g"
    if g_of_weight_norm:
        return PER_TASK
    weight_role = _known_weight(layer, tensor, embeddings)
    if weight_role is not None:
        return weight_role
    if vector_like(value) or (value.dim() <= 2 and _BIAS_NAME.search(tensor)):
        return PER_TASK  # a bias, a scale, or one bias per expert or head
    if tensor in _WEIGHT_NAMES and _is_leaf(layer):
        return MASKED  # the weight of a layer pacnet does not know by type, e.g. Conv1D
    if value.dim() >= 3 and all(s > 1 for s in value.shape):
        return MASKED  # a stack of matrices: experts, relative-attention projections
    if _EXPERTS.search(type(layer).__name__):
        return MASKED  # experts' matrices side by side in 2-D (DBRX's w1, v1, w2)
    return FROZEN  # a free-standing table or matrix: what it does is unknown


def _known_weight(layer: nn.Module, tensor: str, embeddings: bool) -> str | None:
    """The role of ``layer``'s tensor ``tensor`` when it is a known layer's weight."""
    if isinstance(layer, _EMBEDDINGS) and tensor in _WEIGHT_NAMES:
        return MASKED if embeddings else FROZEN
    if isinstance(layer, _LINEAR_LIKE) and tensor in _WEIGHT_NAMES:
        return MASKED
    if isinstance(layer, nn.RNNBase) and _RNN_WEIGHT.match(tensor):
        return MASKED
    if isinstance(layer, nn.MultiheadAttention) and tensor in _MHA_WEIGHTS:
        return MASKED
    return None


def inside(module_name: str, subtree: str | None) -> bool:
    """Whether ``module_name`` (or a dotted tensor name) lies in the module ``subtree``
    (``""``: the whole model; None: no module)."""
    if subtree is None:
        return False
    return subtree == "" or module_name == subtree or module_name.startswith(subtree + ".")


def default_roles(model: nn.Module, head: str | None, embeddings: bool = True) -> dict[str, str]:
    """Role of every canonical parameter and buffer name (see the module notes); ``head``
    is the head module's name (None: no head)."""
    canonical = _canonical(model)
    head_only: dict[str, str] = {}
    roles: dict[str, str] = {}
    for slot, _, value in slots(model):
        name = canonical.get(id(value), slot.name)
        if not slot.is_param:
            roles.setdefault(name, PER_TASK)
        elif inside(slot.module, head):
            head_only.setdefault(name, PER_TASK)
        elif name not in roles:
            roles[name] = _param_role(model, slot, value, embeddings)
    for name, role in head_only.items():  # a tensor of the head alone; tied ones keep
        roles.setdefault(name, role)  # the role of their other name
    order = {n: i for i, n in enumerate(canonical.values())}
    return dict(sorted(roles.items(), key=lambda kv: order.get(kv[0], len(order))))


@dataclass(frozen=True)
class Plan:
    """The roles of one model's tensors, decided once (by :func:`pacnet.prune`) and carried
    by the mask to :class:`~pacnet.Tasks`, :func:`~pacnet.calibrate`, :func:`~pacnet.save`
    and :func:`~pacnet.load`, so nothing guesses the head twice.

    Attributes:
        head: the head module's name (None: no head).
        masked: canonical names of the masked weights, in parameter order.
        per_task: canonical names of the per-task parameters and buffers.
        aliases: every other name of a tied or shared tensor -> its canonical name.
        embeddings: whether embedding tables are masked (else frozen).
        sizes: number of entries of every canonical parameter (for coverage reports).
        frozen: canonical names of the frozen parameters.
    """

    head: str | None
    masked: tuple[str, ...]
    per_task: tuple[str, ...]
    aliases: dict[str, str] = field(default_factory=dict)
    embeddings: bool = True
    sizes: dict[str, int] = field(default_factory=dict)
    frozen: tuple[str, ...] = ()

    def names_of(self, canonical: str) -> list[str]:
        """The canonical name and every alias of it."""
        return [canonical] + [a for a, c in self.aliases.items() if c == canonical]

    def coverage(self) -> dict[str, Any]:
        """What the mask covers: tensors and parameters, against the whole model."""
        total = sum(self.sizes.values())
        covered = sum(self.sizes.get(n, 0) for n in self.masked)
        return {
            "masked_tensors": len(self.masked),
            "parameter_tensors": len(self.sizes),
            "masked_parameters": covered,
            "parameters": total,
            "share": covered / total if total else 0.0,
            "head": self.head,
            "per_task_parameters": sum(self.sizes.get(n, 0) for n in self.per_task),
            "frozen_parameters": sum(self.sizes.get(n, 0) for n in self.frozen),
        }

    def describe(self) -> str:
        """One line: coverage, head, and every tensor that stays frozen, by name."""
        c = self.coverage()
        line = (
            f"mask covers {c['masked_tensors']} of {c['parameter_tensors']} parameter tensors, "
            f"{c['masked_parameters']:,} of {c['parameters']:,} parameters ({c['share']:.1%}); "
            f"head: {_head_label(self.head)}; per-task {c['per_task_parameters']:,}; "
            f"frozen {c['frozen_parameters']:,}"
        )
        if self.frozen:
            line += f" ({', '.join(compact_names(self.frozen))})"
        return line

    def to_json(self) -> str:
        return json.dumps(
            {
                "head": self.head,
                "masked": list(self.masked),
                "per_task": list(self.per_task),
                "aliases": self.aliases,
                "embeddings": self.embeddings,
                "sizes": self.sizes,
                "frozen": list(self.frozen),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            d = json.loads(text)
            return cls(
                head=d["head"],
                masked=tuple(d["masked"]),
                per_task=tuple(d["per_task"]),
                aliases=dict(d.get("aliases", {})),
                embeddings=bool(d.get("embeddings", True)),
                sizes={k: int(v) for k, v in d.get("sizes", {}).items()},
                frozen=tuple(d.get("frozen", ())),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            raise PacnetError("the stored plan (roles of the tensors) is malformed") from None


def compact_names(names: Iterable[str]) -> list[str]:
    """``names`` with the ones that differ in a single layer index written once, every
    name still stated: ``layers.0.mixer.A_log``, …, ``layers.23.mixer.A_log`` ->
    ``layers.{0-23}.mixer.A_log`` (``{0,2,5}`` where the indices have gaps)."""
    groups: dict[str, list[tuple[str, list[str]]]] = {}
    for name in names:
        parts = name.split(".")
        shape = ".".join("#" if part.isdigit() else part for part in parts)
        groups.setdefault(shape, []).append((name, [p for p in parts if p.isdigit()]))
    out = []
    for shape, members in groups.items():
        numbers = [n for _, n in members]
        varying = [i for i in range(len(numbers[0])) if len({n[i] for n in numbers}) > 1]
        if len(members) < 2 or len(varying) != 1:
            out.extend(name for name, _ in members)
            continue
        slot = varying[0]
        seen = sorted({int(n[slot]) for n in numbers})
        span = (
            f"{seen[0]}-{seen[-1]}"
            if seen == list(range(seen[0], seen[-1] + 1))
            else ",".join(map(str, seen))
        )
        fixed = iter([*numbers[0][:slot], "{" + span + "}", *numbers[0][slot + 1 :]])
        out.append(".".join(next(fixed) if part == "#" else part for part in shape.split(".")))
    return out


def _head_label(head: str | None) -> str:
    return "none" if head is None else head or "the whole model"


def unwrap(model: nn.Module) -> nn.Module:
    """The module that holds the parameters under their plain names: ``torch.compile``'s
    wrapper and (Distributed)DataParallel are looked through, so masks, plans and
    checkpoints made on a wrapped model fit the plain one. Anything but a module is
    refused in one line."""
    check_module(model)
    while True:
        if isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile
            model = model._orig_mod
        else:
            return model


def check_model(model: nn.Module) -> None:
    """Refuse, in one line, what no plan can serve: parameters that do not exist yet (lazy
    modules) and peft-wrapped models (adapters and base weights would be masked alike)."""
    check(
        not hasattr(model, "peft_config"),
        "this is a peft-wrapped model: its adapters and base weights would be masked alike; "
        "prune the base model (before get_peft_model, or after merge_and_unload())",
    )
    for name, p in model.named_parameters():
        check(
            not isinstance(p, nn.parameter.UninitializedParameter),
            f"parameter {name!r} is not initialised yet (a lazy module): run one forward "
            "pass before pruning",
        )


def head_doubt(model: nn.Module, head: str | None) -> str | None:
    """Why the automatic head ``head``, the last weight layer in registration order (step
    3 of :func:`find_head`), may be wrong, or None where it is surely the output layer (the
    last layer of nested ``nn.Sequential`` s, which run in that order). The reasons: the
    model's last module with parameters is neither the head nor inside it (a backbone
    without an output layer, such as Hugging Face's ``GPT2Model``, ends in a norm); or the
    order its layers run in is the model's own (two towers of a contrastive model, a custom
    ``forward``)."""
    if head is None or head == "":
        return None
    last = None
    for name, module in model.named_modules():
        if module._parameters and any(p is not None for p in module._parameters.values()):
            last = name
    if last is not None and last != head and not last.startswith(head + "."):
        return (
            f"the automatic head {head!r} is not where the model ends ({last!r}); pass "
            "head=None for a backbone without an output layer, or head='name'"
        )
    parts = head.split(".")
    chain = [model] + [model.get_submodule(".".join(parts[: i + 1])) for i in range(len(parts) - 1)]
    if not all(isinstance(m, nn.Sequential) for m in chain):
        return (
            f"the head {head!r} is a guess (the last weight layer in registration order; "
            f"the output of {type(model).__name__} may come from elsewhere): pass "
            "head='name', or head=None for a model without an output layer"
        )
    return None


def make_plan(
    model: nn.Module,
    prunable: PrunableRule = None,
    head: str | None = "auto",
    embeddings: bool = True,
) -> Plan:
    """Decide the role of every tensor of ``model`` (see the module notes).

    Args:
        model: any module.
        prunable: which parameters the mask covers: ``None`` (the default rule), names, or
            a predicate ``(name, parameter) -> bool``. Names may be aliases of tied tensors.
        head: the head module's name, ``"auto"`` (:func:`find_head`) or None (no head).
        embeddings: mask embedding tables (default) or freeze them.
    """
    model = unwrap(model)
    check_model(model)
    head_name = find_head(model) if head == "auto" else head
    if head_name is not None:
        try:
            model.get_submodule(head_name)
        except AttributeError:
            raise PacnetError(f"head {head_name!r} is not a module of the model") from None
    roles = default_roles(model, head_name, embeddings)
    params = dict(model.named_parameters())
    links = aliases(model)
    if prunable is None:
        masked = [n for n in params if roles.get(n) == MASKED and params[n].is_floating_point()]
    elif callable(prunable):
        masked = [n for n, p in params.items() if prunable(n, p)]
    else:
        wanted = [links.get(n, n) for n in ([prunable] if isinstance(prunable, str) else prunable)]
        unknown = [n for n in wanted if n not in params]
        check(not unknown, f"prunable names not in the model: {', '.join(unknown[:5])}")
        chosen = set(wanted)
        masked = [n for n in params if n in chosen]
    check(
        masked,
        "no prunable parameters: the model has no weight outside its head "
        f"({_head_label(head_name)}); pass prunable=[names] or head=None to choose them",
    )
    masked_set = set(masked)
    renorm = [
        slot.name
        for slot, module, _ in slots(model)
        if isinstance(module, _EMBEDDINGS)
        and module.max_norm is not None
        and links.get(slot.name, slot.name) in masked_set
    ]
    if renorm:
        raise PacnetError(
            f"{renorm[0]!r} belongs to an embedding with max_norm, which rescales its rows in "
            "place at every lookup (also in the source's view): it cannot be masked; pass "
            "embeddings=False or leave it out of prunable="
        )
    own = [n for n, r in roles.items() if r == PER_TASK and n not in masked_set]
    own_set = set(own)
    frozen = [n for n in params if n not in masked_set and n not in own_set]
    return Plan(
        head=head_name,
        masked=tuple(masked),
        per_task=tuple(own),
        aliases=links,
        embeddings=embeddings,
        sizes={n: p.numel() for n, p in params.items()},
        frozen=tuple(frozen),
    )


def frozen_by_rule(plan: Plan, explicit: set[str] = frozenset()) -> list[str]:
    """The frozen parameters of ``plan``, however small, but for those in ``explicit``
    (frozen by the caller's choice)."""
    return [n for n in plan.frozen if n not in explicit]
