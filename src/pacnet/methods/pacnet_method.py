"""PAC-Net as a method: prune the source model, allocate, calibrate."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from pacnet.core.mask import Mask, prune, shared_mask
from pacnet.core.pac import (
    allocate,
    calibrate,
    open_task,
    parameter_report,
    zero_redundant,
)
from pacnet.core.scores import SCORES
from pacnet.core.tasks import Tasks
from pacnet.errors import check, check_ratio
from pacnet.methods.base import Method, Scorer, Targets, Transfer, TransferContext, count
from pacnet.methods.engine import train_alone
from pacnet.methods.plan import SourceTraining, Training, TrainingPlan
from pacnet.training.train import Data, FitConfig, FitResult, infer, outputs


@dataclass
class PacNetParams:
    """PAC-Net hyperparameters (paper: ratio 0.8, λ 0.01, one global threshold)."""

    ratio: float = 0.8
    lam: float = 0.01
    scope: str = "global"
    allocate_steps: int | None = None
    prune_score: str = field(
        default="magnitude",
        metadata={"help": "magnitude (|w|, the paper's) or activation (|W|·‖X‖ over 256 "
                  "source inputs, Wanda's)"},
    )  # fmt: skip
    allocate_on: str = field(
        default="labelled",
        metadata={"help": "what Allocate trains on: labelled (the source task), "
                  "source-inputs or target-inputs (distilled from the unpruned model, labels "
                  "withheld), none (prune only); generated: tables only"},
    )  # fmt: skip
    tune: ClassVar[dict[str, tuple[str, float, float]]] = {
        "ratio": ("float", 0.3, 0.95),
        "lam": ("log", 1e-4, 10.0),
    }
    search: ClassVar[dict[str, tuple[Any, ...]]] = {"lam": (0.001, 0.01, 0.1), "ratio": (0.5, 0.8)}

    def __post_init__(self) -> None:
        check_ratio(self.ratio)
        check(self.lam >= 0, f"lam (λ) must be >= 0, got {self.lam}")
        check(
            self.scope in ("global", "layer"),
            f"scope must be 'global' or 'layer', got {self.scope!r}",
        )
        check(
            self.allocate_steps is None or self.allocate_steps >= 0, "allocate_steps must be >= 0"
        )
        check(
            self.prune_score in SCORES,
            f"prune_score must be one of {', '.join(SCORES)}, got {self.prune_score!r}",
        )
        check(
            self.allocate_on in ALLOCATE_ON,
            f"allocate_on must be one of {', '.join(ALLOCATE_ON)}, got {self.allocate_on!r}",
        )


ALLOCATE_ON = ("labelled", "source-inputs", "target-inputs", "generated", "none")
"""What Allocate trains on (``--allocate-on``)."""
SCORE_INPUTS = 256
"""Source inputs the activation score sees."""


MAX_INPUTS = 20_000
"""Inputs at most that distillation and the activation score read from streamed data."""


def inputs_of(data: Any, limit: int = MAX_INPUTS) -> Tensor:
    """The inputs of ``data`` (labels dropped): all of a :class:`Data`, the first ``limit``
    of data streamed in chunks (image folders)."""
    if isinstance(data, Data):
        return data.x
    parts, count = [], 0
    for x, _ in data.chunks(256):
        parts.append(x)
        count += len(x)
        if count >= limit:
            break
    return torch.cat(parts)[:limit]


def allocate_on(
    model: nn.Module, mask: Mask, ctx: TransferContext, on: str, cfg: FitConfig
) -> None:
    """Allocate as ``on`` says: on the labelled source task; by distillation from the
    unpruned model on the source's or the target's inputs (labels withheld; the target's
    validation inputs count as unlabelled target inputs; KL for class labels, MSE for
    values); or not at all (prune only)."""
    if on == "none":
        zero_redundant(model, mask)
        return
    if on == "labelled":
        train_alone(allocate_training(model, mask, ctx, cfg))
        return
    task = ctx.source if on == "source-inputs" else ctx.target
    parts = [inputs_of(task.train)]
    if on == "target-inputs" and task.val is not None:
        parts.append(inputs_of(task.val))
    inputs = Data(torch.cat(parts))
    labels = getattr(ctx.source.train, "y", None)  # withheld; their kind says what the
    # outputs are (streamed images: class labels)
    labels = labels if labels is not None else torch.zeros(1, dtype=torch.long)
    kind = "mse" if labels is None or labels.is_floating_point() else "kl"
    cfg = replace(cfg, patience=None)  # no labelled validation to stop on
    allocate(model, mask, inputs, None, cfg, seed=0, teacher="copy", distill=kind, holdout=0)


def allocate_training(
    model: nn.Module, mask: Mask, ctx: TransferContext, cfg: FitConfig
) -> Training:
    """Allocate on the labelled source task, as a training either engine runs: the
    redundant entries set to +0.0 and held there, the essential ones and every other
    parameter trained (:func:`pacnet.allocate`'s), early stopping on the source's
    validation data where ``cfg`` has patience."""
    zero_redundant(model, mask)
    trainable: dict[str, Tensor | bool] = {
        n: mask.get(n, True) for n, p in model.named_parameters() if p.requires_grad
    }
    val = ctx.source.val if cfg.patience is not None else None
    return Training(model, trainable, ctx.source.train, cfg, ctx.loss_fn, 0, val, desc="allocate")


def source_fidelity(ctx: TransferContext, mask: Mask, allocated: nn.Module) -> dict[str, Any]:
    """How much of the source model survives: the source metric (on the source's test set)
    after Prune alone and after Allocate, and the agreement of each with the unpruned
    model on those held-out inputs: top-1 agreement for class labels, the RMSE between
    outputs otherwise."""
    pruned = copy.deepcopy(ctx.source_model)
    zero_redundant(pruned, mask)
    test = ctx.source.test
    reference, labels = _outputs(ctx.source_model, test)
    classes = labels is not None and not labels.is_floating_point()
    out: dict[str, Any] = {"agreement": "top1" if classes else "output_rmse"}
    for stage, net in (("prune", pruned), ("allocate", allocated)):
        got, _ = _outputs(net, test)
        out[f"metric_after_{stage}"] = ctx.benchmark.score(net, test)
        if classes:
            agree = (got.argmax(-1) == reference.argmax(-1)).float().mean()
        else:
            agree = (got.float() - reference.float()).square().mean().sqrt()
        out[f"agreement_after_{stage}"] = float(agree)
    return out


def _outputs(model: nn.Module, data: Any) -> tuple[Tensor, Tensor | None]:
    """The model's outputs on ``data``'s inputs (in eval mode, on the CPU) and the labels
    of the first chunk (their kind says what the outputs are)."""
    outs, first = [], None
    for out, y in outputs(model, data):
        outs.append(out.detach().cpu())
        first = y if first is None else first
    return torch.cat(outs), first if isinstance(first, Tensor) else None


class PacNet(Method):
    name = "pacnet"
    summary = (
        "prune the source, retrain its essential weights, train the redundant ones on the target"
    )
    Params = PacNetParams
    stacks = True
    starts_from_source = False  # its source training + Allocate is the reference
    serves_several_targets = True
    revision: ClassVar[int] = 1  # 1: Calibrate's λ term on the task's own tensors folds into
    # fused Adam's weight decay as (g − 2λ·w₀) + 2λ·w (was g + 2λ·(w − w₀)): same term,
    # rounded differently

    def allocated(self, ctx: TransferContext) -> tuple[nn.Module, Mask]:
        """A copy of the source model, pruned and allocated (cached per source and setting)."""
        p: PacNetParams = self.params
        model, mask, key, alloc_fit = self.allocation(ctx)

        def build() -> dict:
            allocate_on(model, mask, ctx, p.allocate_on, alloc_fit)
            return model.state_dict()

        model.load_state_dict(ctx.memo(key, build))
        return model, mask

    def allocation(self, ctx: TransferContext) -> tuple[nn.Module, Mask, dict[str, Any], FitConfig]:
        """What Allocate starts from and how it is cached: a copy of the source model (not
        yet pruned), its mask, the cache key of the allocated state and Allocate's budget."""
        p: PacNetParams = self.params
        check(
            p.allocate_on != "generated",
            f"allocate_on 'generated' draws table rows from stored input statistics: it is "
            f"for pacnet transfer, and {ctx.benchmark.name} is not a table",
        )
        model = copy.deepcopy(ctx.source_model)
        key, alloc_fit = self.allocation_key(ctx)
        found = ("mask", p.ratio, p.scope, p.prune_score)
        if found not in ctx.kept:
            inputs = (
                inputs_of(ctx.source.train, SCORE_INPUTS) if p.prune_score == "activation" else None
            )
            ctx.kept[found] = shared_mask(
                lambda: prune(model, p.ratio, p.scope, score=p.prune_score, inputs=inputs)
            )  # rank 0's
        kept = ctx.kept[found]
        mask = Mask({n: t.clone() for n, t in kept.items()}, kept.plan)
        return model, mask, key, alloc_fit

    def allocation_key(self, ctx: TransferContext) -> tuple[dict[str, Any], FitConfig]:
        """The cache key of the allocated state and Allocate's budget."""
        p: PacNetParams = self.params
        alloc_fit = ctx.source_fit
        if p.allocate_steps is not None:
            alloc_fit = replace(alloc_fit, steps=p.allocate_steps)
        key = {
            "step": "allocate",
            "source": ctx.source_key,
            "ratio": p.ratio,
            "scope": p.scope,
            "fit": asdict(alloc_fit),
        }
        if p.prune_score != "magnitude":
            key["score"] = p.prune_score
        if p.allocate_on != "labelled":
            key["on"] = p.allocate_on
        return key, alloc_fit

    def source_trainings(self, ctx: TransferContext) -> list[SourceTraining]:
        """Allocate on the labelled source task, which the batched engine may train
        together with other runs' (other ratios, say) before their plans."""
        if self.params.allocate_on != "labelled":
            return []

        def make() -> Training:
            model, mask, _, cfg = self.allocation(ctx)
            return allocate_training(model, mask, ctx, cfg)

        return [SourceTraining(self.allocation_key(ctx)[0], make, ctx.memo)]

    def plan(self, ctx: TransferContext, final: bool = True) -> TrainingPlan:
        """Calibrate: the target task added and active, its free entries at 0; what it owns
        trains, pulled toward its start with λ (as :func:`pacnet.calibrate` trains it)."""
        p: PacNetParams = self.params
        model, mask = self.allocated(ctx)
        fidelity = source_fidelity(ctx, mask, model) if final else {}
        tasks = Tasks(model, mask)
        open_task(model, tasks, "target", ctx.new_head)

        def finish(result: FitResult) -> Transfer:
            return self._handed_back(model, tasks, result, fidelity, final)

        return TrainingPlan(model, dict(tasks.trainable(model)), finish, decay=p.lam)

    def _handed_back(
        self,
        model: nn.Module,
        tasks: Tasks,
        result: FitResult,
        fidelity: dict[str, Any],
        final: bool = True,
    ) -> Transfer:
        """The Transfer of a calibrated ``model``; ``final=False`` (a fold, only scored on
        the target) leaves out the source view (the model stands in for it)."""
        report = parameter_report(model, tasks)
        source_view: nn.Module = tasks.export(model, "source") if final else model
        return Transfer(
            model,
            source_view,
            trainable=report["redundant"] + report["per_task"],
            total=count(model),
            stored=report["total"] + report["per_task"] * (report["tasks"] - 1),
            fit=result,
            details={
                "essential": report["essential"],
                "redundant": report["redundant"],
                "per_task": report["per_task"],
                "source_fidelity": fidelity,
            },
            tasks=tasks,
        )

    def chain(self, ctx: TransferContext, targets: Targets, score: Scorer) -> dict[str, Any]:
        """Serve ``targets`` one after another from one network (equal shares of the
        redundant weights: target i gives back ``1 − 1/(targets left)`` of what it trained).

        After each addition every task so far is scored on its test set, and the outputs
        of every finished task (on its first 256 test inputs) are compared bit for bit with
        those it gave when it was finished.
        """
        p: PacNetParams = self.params
        check(len(targets) >= 1, "no targets to chain")
        names = [name for name, _ in targets]
        check(len(set(names)) == len(names), f"targets repeat: {', '.join(names)}")
        check("source" not in names, "'source' is not a target name")
        model, mask = self.allocated(ctx)
        tests = {"source": ctx.source.test, **{name: task.test for name, task in targets}}
        tasks = Tasks(model, mask)
        finished: dict[str, Tensor] = {}
        steps: list[dict[str, Any]] = []
        exact = True

        def probe(task: str) -> Tensor:
            with tasks.use(model, task):
                return infer(model, tests[task].x[:256]).detach().clone()

        finished["source"] = probe("source")  # as Allocate left it, before any target
        for i, (name, task) in enumerate(targets):
            tasks, fit = calibrate(
                model,
                mask,
                task.train,
                ctx.loss_fn,
                ctx.target_fit,
                lam=p.lam,
                tasks=tasks,
                task=name,
                val=task.val,
                seed=ctx.seed,
                init=ctx.new_head,
                reserve=1 - 1 / (len(targets) - i),
            )
            same = {t: torch.equal(probe(t), out) for t, out in finished.items()}
            exact = exact and all(same.values())
            finished[name] = probe(name)
            scores = {}
            for t in tasks.order:
                with tasks.use(model, t):
                    scores[t] = score(model, tests[t])
            steps.append(
                {"added": name, "scores": scores, "earlier_identical": same, "fit": fit.as_dict()}
            )
        owned = tasks.owned
        return {
            "targets": names,
            "steps": steps,
            "earlier_tasks_bit_identical": exact,
            "owned": {t: owned(t).essential for t in tasks.order},
            "model": model,  # the network and its tasks (not stored in result.json)
            "tasks": tasks,
        }
