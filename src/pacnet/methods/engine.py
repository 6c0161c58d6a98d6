"""The two engines that train a method's :class:`~pacnet.methods.plan.TrainingPlan`.

* ``sequential`` (:func:`train_alone`): :func:`pacnet.fit` over the parameters the plan
  trains, inside :func:`pacnet.train_only` where only some entries train or a decay pulls
  them (PAC-Net's λ, folded into fused Adam's weight decay); the plan's penalties are added
  to the loss.
* ``batched`` (:func:`train_together`): many trainings of pacnet's MLP as one stacked model
  (:func:`pacnet.training.stacked.fit_stacked`), each as the sequential engine trains it up
  to float rounding (:data:`pacnet.training.stacked.TOLERANCE`). The plan is translated
  once: its MLP's layers (with LoRA's factors where peft wrapped them), what trains, the
  pulls of L2-SP's terms and PAC-Net's decay, DELTA's feature term and BSS's shrinkage.

Either way a method's run is :func:`run_alone` / :func:`run_together`: plan, engine,
``plan.finish``. The plan is laid out under :func:`~pacnet.training.train.seeded` with the
run's seed, so a run depends on nothing but its context.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
from torch import Tensor, nn

from pacnet.benchmarks.mlp import MLP
from pacnet.core.pac import masked_fit
from pacnet.errors import PacnetError, check
from pacnet.methods.base import Method, Transfer, TransferContext
from pacnet.methods.plan import SourceTraining, Training, TrainingPlan
from pacnet.methods.regularizers import L2, FeatureDistance, SpectralShrinkage, StartingPoint
from pacnet.training.stacked import (
    FeaturePull,
    Layer,
    Layout,
    Member,
    Shrinkage,
    fit_stacked,
    supports,
)
from pacnet.training.train import (
    Data,
    FitResult,
    device_of,
    fit,
    make_optimizer,
    seeded,
    sparse_grad_params,
)

ENGINES = ("batched", "sequential")
"""``--engine``: stack what can be stacked (the default), or train every run alone."""
DEFAULT_ENGINE = ENGINES[0]
MAX_MEMBERS = 512
"""Members trained in one stacked model at most."""
MAX_WEIGHTS = 2**25
"""Weights (members × weights per member) in one stacked model at most: with gradients,
Adam's state, masks and anchors about 1 GiB."""


def check_engine(engine: str) -> None:
    """Fail in one line unless ``engine`` is one of :data:`ENGINES`."""
    check(engine in ENGINES, f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")


def laid_out(method: Method, ctx: TransferContext, final: bool = True) -> TrainingPlan:
    """``method.plan(ctx, final)`` with the random generators seeded by the run's seed."""
    with seeded(ctx.seed, device_of(ctx.source_model)):
        return method.plan(ctx, final)


def target_training(plan: TrainingPlan, ctx: TransferContext, desc: str) -> Training:
    """The plan's training on the target data of ``ctx``, with its budget."""
    cfg = ctx.target_fit if plan.lr is None else replace(ctx.target_fit, lr=plan.lr)
    return Training(
        plan.model, plan.trainable, ctx.target.train, cfg, ctx.loss_fn, ctx.seed,
        ctx.target.val, plan.penalties, plan.decay, desc,
    )  # fmt: skip


def run_each(
    pairs: Sequence[tuple[Method, TransferContext]],
    final: bool = True,
    engine: str = DEFAULT_ENGINE,
) -> list[Transfer]:
    """Every ``method``'s run on its context on ``engine``: :func:`run_together`, or
    :func:`run_alone` one after another."""
    check_engine(engine)
    if engine == "batched":
        return run_together(pairs, final)
    return [run_alone(method, ctx, final) for method, ctx in pairs]


def run_alone(method: Method, ctx: TransferContext, final: bool = True) -> Transfer:
    """``method``'s run on the sequential engine: plan, :func:`train_alone`, finish
    (``final=False``: as in :func:`run_together`)."""
    plan = laid_out(method, ctx, final)
    try:
        result = train_alone(target_training(plan, ctx, method.name))
    finally:
        plan.close()
    return plan.finish(result)


def run_together(
    pairs: Sequence[tuple[Method, TransferContext]], final: bool = True
) -> list[Transfer]:
    """Every ``method``'s run on its context, the trainings of the methods that stack
    (:attr:`Method.stacks`) stacked (:func:`train_together`), the others alone;
    ``final=False`` (cross-validation folds, only scored) lets a plan skip what only the
    final run reports. Each run agrees with :func:`run_alone` within
    :data:`pacnet.training.stacked.TOLERANCE`."""
    plans: list[TrainingPlan] = []
    try:
        plans += (laid_out(method, ctx, final) for method, ctx in pairs)  # (closed if one fails)
        trainings = [
            target_training(plan, ctx, method.name)
            for plan, (method, ctx) in zip(plans, pairs, strict=True)
        ]
        stacking = [i for i, (method, _) in enumerate(pairs) if method.stacks]
        results = [
            None if method.stacks else train_alone(t)
            for (method, _), t in zip(pairs, trainings, strict=True)
        ]
        for i, result in zip(
            stacking, train_together([trainings[i] for i in stacking]), strict=True
        ):
            results[i] = result
    finally:
        for plan in plans:
            plan.close()
    return [plan.finish(result) for plan, result in zip(plans, results, strict=True)]


def train_alone(t: Training) -> FitResult:
    """Train ``t`` with :func:`pacnet.fit`: an optimizer over the parameters it trains;
    :func:`pacnet.train_only` holds the other entries and adds the decay
    (:func:`pacnet.core.pac.masked_fit`, as Allocate and Calibrate train)."""
    params = dict(t.model.named_parameters())
    trains = {n: w for n, w in t.trainable.items() if w is not False}
    chosen = [params[n] for n in trains]
    if not t.decay and not any(isinstance(w, Tensor) for w in trains.values()):
        optimizer = make_optimizer(chosen, t.cfg, sparse=sparse_grad_params(t.model))
        return fit(
            t.model, t.loss_fn, t.train, t.cfg, optimizer=optimizer, val=t.val,
            penalties=t.penalties, seed=t.seed, desc=t.desc,
        )  # fmt: skip
    masks = {
        n: w if isinstance(w, Tensor) else torch.ones_like(params[n], dtype=torch.bool)
        for n, w in trains.items()
    }
    fitting = (t.train, t.loss_fn, t.cfg, t.val, t.seed, t.desc)
    return masked_fit(t.model, chosen, masks, "frozen", t.decay, *fitting, penalties=t.penalties)


def why_not(ctx: TransferContext) -> str | None:
    """Why the runs of ``ctx``'s benchmark cannot train on the batched engine (None: they
    can): the checks every stacked training passes, on the source model and the target
    data (pacnet's MLP trained with the mean squared error and Adam on data in memory)."""
    t = Training(
        ctx.source_model, {}, ctx.target.train, ctx.target_fit, ctx.loss_fn, val=ctx.target.val
    )
    try:
        _mlp_in(t.model)
        _check_fits(t, device_of(t.model))
    except PacnetError as exc:
        return str(exc)
    return None


def train_together(trainings: Sequence[Training]) -> list[FitResult]:
    """Train every one of ``trainings`` (each an MLP under MSE and Adam, data in memory),
    stacked in chunks of at most :data:`MAX_MEMBERS` members: the trained values go into
    each one's model, and each gets the :class:`FitResult` :func:`train_alone` would give.
    A training the stack cannot express (:func:`stack_reason`: LoRA with dropout, DELTA on
    an activation's output, ...) trains alone."""
    results: list[FitResult | None] = [None] * len(trainings)
    laid: dict[int, _Stackable] = {}
    for i, t in enumerate(trainings):
        try:
            laid[i] = _Stackable(t)
        except PacnetError:  # a plan the stack cannot express (stack_reason): alone
            results[i] = train_alone(t)
    for chunk in _chunks(laid):
        first = laid[chunk[0]]
        trained = fit_stacked([laid[i].member for i in chunk], first.layout, first.device)
        for i, (state, result) in zip(chunk, trained, strict=True):
            laid[i].write_back(state)
            results[i] = result
    return [r for r in results if r is not None]


def train_source_trainings(steps: Sequence[SourceTraining]) -> None:
    """The source trainings that the runs' plans will need and their caches do not hold yet,
    trained together and stored, where more than one is missing (one alone is left to the
    plan that needs it, which trains it on the sequential engine)."""
    missing: dict[str, SourceTraining] = {}
    for step in steps:
        name = json.dumps(step.key, sort_keys=True, default=str)
        if name not in missing and not step.cached():
            missing[name] = step
    if len(missing) < 2:
        return
    trainings = [s.make() for s in missing.values()]  # built only for the missing ones
    train_together(trainings)
    for step, t in zip(missing.values(), trainings, strict=True):
        step.memo(step.key, t.model.state_dict)


def stack_reason(t: Training) -> str | None:
    """Why ``t`` cannot train on the batched engine (None: it can)."""
    try:
        _Stackable(t)
    except PacnetError as exc:
        return str(exc)
    return None


class _Stackable:
    """One training translated for :func:`fit_stacked`: its MLP's layers as the stack's
    tensors (``"{layer}.weight"``, ``.bias``, and LoRA's ``.A``, ``.B``), which entries
    train, the pulls and the terms."""

    def __init__(self, t: Training):
        self.training = t
        inner, mlp_layout = _mlp_in(t.model)
        self.device = device_of(t.model)
        _check_fits(t, self.device)
        self.params: dict[str, nn.Parameter] = {}
        layers, scales = [], {}
        for i, layer in enumerate(mlp_layout.layers):
            module = inner.get_submodule(layer.weight.rpartition(".")[0])
            weight, bias, low_rank = _parts(module)
            self.params[f"{i}.weight"], self.params[f"{i}.bias"] = weight, bias
            if low_rank is not None:
                self.params[f"{i}.A"], self.params[f"{i}.B"], scales[i] = low_rank
            factors = (f"{i}.A", f"{i}.B") if low_rank is not None else None
            layers.append(Layer(f"{i}.weight", f"{i}.bias", factors))
        self.layout = Layout(tuple(layers), mlp_layout.activation)
        self.modules = {
            layer.weight.rpartition(".")[0]: i for i, layer in enumerate(mlp_layout.layers)
        }
        check(
            all(p.dtype == torch.float32 for p in self.params.values()),
            "the model's weights are not float32",
        )
        outputs = self.params[f"{len(layers) - 1}.weight"].shape[0]
        for data in (t.train, t.val):
            check(
                data is None or (data.y.dim() == 2 and data.y.shape[1] == outputs),
                f"the labels are not [rows, {outputs}] as the model's outputs",
            )
        slot = {id(p): s for s, p in self.params.items()}
        named = dict(t.model.named_parameters())
        trainable = {}
        for name, where in t.trainable.items():
            check(id(named[name]) in slot, f"it trains {name}, outside the MLP's layers")
            trainable[slot[id(named[name])]] = where
        pulls, terms = self._penalties(t, slot)
        if t.decay:
            check(not pulls, "a decay and pulls in the loss at once")
            pulls = {s: (t.decay, self.params[s].detach().clone()) for s in trainable}
        start = {s: p.detach() for s, p in self.params.items()}
        self.member = Member(
            start, t.train, t.cfg, t.seed, trainable, pulls, bool(pulls) and not t.decay,
            t.val, terms, scales,
        )  # fmt: skip

    def _penalties(
        self, t: Training, slot: dict[int, str]
    ) -> tuple[dict[str, tuple[float, Tensor]], list]:
        """The plan's penalties as pulls ``c·‖w − a‖²`` (L2-SP's and the head's terms) and
        stacked terms (DELTA's, BSS's)."""
        pulls: dict[str, tuple[float, Tensor]] = {}
        terms: list = []
        for weight, term in t.penalties:
            if isinstance(term, StartingPoint | L2):
                pairs = (
                    term.pairs
                    if isinstance(term, StartingPoint)
                    else [(p, torch.zeros_like(p)) for p in term.params]
                )
                for p, anchor in pairs:
                    check(id(p) in slot, "a pull on a parameter outside the MLP's layers")
                    check(slot[id(p)] not in pulls, "two pulls on one parameter")
                    pulls[slot[id(p)]] = (weight / 2, anchor.detach())
            elif isinstance(term, FeatureDistance):
                terms.append(self._feature_pull(weight, term))
            elif isinstance(term, SpectralShrinkage):
                last = len(self.layout.layers) - 1
                check(self.modules.get(term.head) == last, "BSS on another layer than the head")
                terms.append(Shrinkage(weight, term.k))
            else:
                raise PacnetError(f"the penalty {type(term).__name__} has no stacked form")
        return pulls, terms

    def _feature_pull(self, weight: float, term: FeatureDistance) -> FeaturePull:
        unknown = [n for n in term.layers if n not in self.modules]
        check(not unknown, f"DELTA compares {unknown[:1]}, not a linear layer of the MLP")
        layers = {}
        for name in term.layers:
            a = term.attention.get(name)
            layers[self.modules[name]] = None if a is None else a.shape[0] * a
        source_inner, source_layout = _mlp_in(term.source)
        source = {}
        for i, layer in enumerate(source_layout.layers[: max(layers) + 1]):
            w, b, _ = _parts(source_inner.get_submodule(layer.weight.rpartition(".")[0]))
            check(w.shape == self.params[f"{i}.weight"].shape, "DELTA on a layer of a new shape")
            source[f"{i}.weight"], source[f"{i}.bias"] = w.detach(), b.detach()
        return FeaturePull(weight, layers, source)

    def write_back(self, state: dict[str, Tensor]) -> None:
        """Put the trained values into the training's model."""
        with torch.no_grad():
            for s, p in self.params.items():
                p.copy_(state[s])


def _check_fits(t: Training, device: torch.device) -> None:
    """What the stacked trainer needs of a training beyond its model: the mean squared
    error, Adam without clipping or mixed precision, labelled data in memory (validation
    data where there is patience), a CPU or CUDA device."""
    check(t.loss_fn is nn.functional.mse_loss, "the loss is not the mean squared error")
    why = supports(t.cfg)
    check(why is None, str(why))
    check(isinstance(t.train, Data) and t.train.y is not None, "the data are not in memory")
    check(t.val is None or isinstance(t.val, Data), "the validation data are not in memory")
    check(t.cfg.patience is None or t.val is not None, "early stopping without validation data")
    check(device.type in ("cpu", "cuda"), f"the stacked trainer runs on CPU or CUDA, not {device}")


def _mlp_in(model: nn.Module) -> tuple[nn.Module, Layout]:
    """pacnet's MLP inside ``model`` (the model itself, or the one a peft model wraps) and
    its layout."""
    inner = model
    base = getattr(model, "base_model", None)
    if base is not None and isinstance(getattr(base, "model", None), MLP):
        inner = base.model
    check(isinstance(inner, MLP), "the model is not pacnet's MLP")
    return inner, inner.layout()


def _parts(module: nn.Module) -> tuple[nn.Parameter, nn.Parameter, tuple | None]:
    """The weight and bias a linear layer computes with and, for a peft LoRA layer, its
    factors ``A``, ``B`` and scale; a layer peft keeps a trainable copy of
    (``modules_to_save``) computes with the copy."""
    copies = getattr(module, "modules_to_save", None)
    if copies is not None:
        check(list(copies) == ["default"], "several peft adapters")
        module = copies["default"]
    low_rank = None
    if hasattr(module, "base_layer") and hasattr(module, "lora_A"):
        check(list(module.lora_A) == ["default"], "several peft adapters")
        dropout = module.lora_dropout["default"]
        check(isinstance(dropout, nn.Identity), "LoRA dropout")
        a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
        low_rank = (a, b, float(module.scaling["default"]))
        module = module.base_layer
    check(isinstance(module, nn.Linear) and module.bias is not None, "a layer is not linear")
    return module.weight, module.bias, low_rank


def _chunks(laid: Mapping[int, _Stackable]) -> list[list[int]]:
    """Indices by layout, batch size rounded up to a multiple of 8 (so little padding) and
    steps, in chunks of at most MAX_MEMBERS members and MAX_WEIGHTS weights."""
    by_kind: dict[tuple, list[int]] = {}
    for i, s in laid.items():
        m = s.member
        key = (s.layout, str(s.device), -(-min(m.cfg.batch_size, len(m.train)) // 8), m.cfg.steps)
        by_kind.setdefault(key, []).append(i)
    out = []
    for group in by_kind.values():
        weights = sum(t.numel() for t in laid[group[0]].member.start.values())
        most = max(1, min(MAX_MEMBERS, MAX_WEIGHTS // max(weights, 1)))
        out += [group[k : k + most] for k in range(0, len(group), most)]
    return out
