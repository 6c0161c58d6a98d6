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
from pacnet.core.freeze import train_only
from pacnet.errors import PacnetError, check
from pacnet.methods.base import Method, Transfer, TransferContext
from pacnet.methods.plan import SourceStep, Training, TrainingPlan
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


def run_alone(method: Method, ctx: TransferContext) -> Transfer:
    """``method``'s run on the sequential engine: plan, :func:`train_alone`, finish."""
    plan = laid_out(method, ctx)
    try:
        result = train_alone(target_training(plan, ctx, method.name))
    finally:
        plan.close()
    return plan.finish(result)


def run_together(
    pairs: Sequence[tuple[Method, TransferContext]], final: bool = True
) -> list[Transfer]:
    """Every ``method``'s run on its context, the trainings stacked
    (:func:`train_together`); ``final=False`` (cross-validation folds, only scored) lets
    a plan skip what only the final run reports. Each run agrees with :func:`run_alone`
    within :data:`pacnet.training.stacked.TOLERANCE`."""
    plans = [laid_out(method, ctx, final) for method, ctx in pairs]
    try:
        trainings = [
            target_training(plan, ctx, method.name)
            for plan, (method, ctx) in zip(plans, pairs, strict=True)
        ]
        results = train_together(trainings)
    finally:
        for plan in plans:
            plan.close()
    return [plan.finish(result) for plan, result in zip(plans, results, strict=True)]


def train_alone(t: Training) -> FitResult:
    """Train ``t`` with :func:`pacnet.fit`: an optimizer over the parameters it trains;
    :func:`pacnet.train_only` holds the other entries and adds the decay."""
    params = dict(t.model.named_parameters())
    chosen = [params[n] for n in t.trainable]
    optimizer = make_optimizer(chosen, t.cfg, sparse=sparse_grad_params(t.model))
    wrap = None
    if t.decay or any(isinstance(w, Tensor) for w in t.trainable.values()):
        masks = {
            n: w if isinstance(w, Tensor) else torch.ones_like(params[n], dtype=torch.bool)
            for n, w in t.trainable.items()
        }

        def wrap(opt: torch.optim.Optimizer):
            return train_only(t.model, masks, opt, others="frozen", l2=t.decay)

    return fit(
        t.model, t.loss_fn, t.train, t.cfg, optimizer=optimizer, val=t.val,
        penalties=t.penalties, seed=t.seed, desc=t.desc, wrap=wrap,
    )  # fmt: skip


def why_not(ctx: TransferContext) -> str | None:
    """Why the runs of ``ctx``'s benchmark cannot train on the batched engine (None: they
    can): it needs pacnet's MLP trained with the mean squared error and Adam on data held
    in memory."""
    if ctx.benchmark.loss_fn() is not nn.functional.mse_loss:
        return "the benchmark's loss is not the mean squared error"
    if type(ctx.source_model) is not MLP:
        return "the model is not pacnet's MLP"
    if not isinstance(ctx.target.train, Data):
        return "the target data are not held in memory"
    return supports(ctx.target_fit)


def stackable(method_cls: type[Method]) -> bool:
    """Whether ``method_cls`` lays its runs out for the batched engine (:attr:`Method.stacks`)."""
    return method_cls.stacks


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


def train_source_steps(steps: Sequence[SourceStep]) -> None:
    """The source steps that the runs' plans will need and their caches do not hold yet,
    trained together and stored, where more than one is missing (one alone is left to the
    plan that needs it, which trains it on the sequential engine)."""
    missing: dict[str, SourceStep] = {}
    for step in steps:
        name = json.dumps(step.key, sort_keys=True, default=str)
        if name not in missing and not step.cached():
            missing[name] = step
    if len(missing) < 2:
        return
    train_together([s.training for s in missing.values()])
    for step in missing.values():
        step.memo(step.key, step.training.model.state_dict)


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
        check(isinstance(t.train, Data) and t.train.y is not None, "the data are not in memory")
        check(supports(t.cfg) is None, str(supports(t.cfg)))
        self.training = t
        inner, mlp_layout = _mlp_in(t.model)
        self.device = device_of(t.model)
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
        val = t.val if isinstance(t.val, Data) or t.val is None else None
        check(val is t.val, "the validation data are not in memory")
        self.member = Member(
            start, t.train, t.cfg, t.seed, trainable, pulls, bool(pulls) and not t.decay,
            val, terms, scales,
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
            source[f"{i}.weight"], source[f"{i}.bias"] = w.detach(), b.detach()
        return FeaturePull(weight, layers, source)

    def write_back(self, state: dict[str, Tensor]) -> None:
        """Put the trained values into the training's model."""
        with torch.no_grad():
            for s, p in self.params.items():
                p.copy_(state[s])


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
