"""PAC-Net as a method: prune the source model, allocate, calibrate."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from pacnet.core.mask import Mask, prune, shared_mask
from pacnet.core.pac import allocate, calibrate, parameter_report
from pacnet.core.tasks import Tasks
from pacnet.errors import check, check_ratio
from pacnet.methods.base import Method, Scorer, Targets, Transfer, TransferContext, count
from pacnet.training.train import infer


@dataclass
class PacNetParams:
    """PAC-Net hyperparameters (paper: ratio 0.8, λ 0.01, one global threshold)."""

    ratio: float = 0.8
    lam: float = 0.01
    scope: str = "global"
    allocate_steps: int | None = None
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


class PacNet(Method):
    name = "pacnet"
    summary = (
        "prune the source, retrain its essential weights, train the redundant ones on the target"
    )
    Params = PacNetParams
    starts_from_source = False  # its source training + Allocate is the reference
    serves_several_targets = True
    revision: ClassVar[int] = 1  # 1: Calibrate's λ term on the task's own tensors folds into
    # fused Adam's weight decay as (g − 2λ·w₀) + 2λ·w (was g + 2λ·(w − w₀)): same term,
    # rounded differently

    def allocated(self, ctx: TransferContext) -> tuple[nn.Module, Mask]:
        """A copy of the source model, pruned and allocated (cached per source and setting)."""
        p: PacNetParams = self.params
        model = copy.deepcopy(ctx.source_model)
        mask = shared_mask(lambda: prune(model, p.ratio, p.scope))  # rank 0's
        alloc_fit = ctx.source_fit
        if p.allocate_steps is not None:
            alloc_fit = replace(alloc_fit, steps=p.allocate_steps)

        val = ctx.source.val if alloc_fit.patience is not None else None  # early stopping

        def build() -> dict:
            allocate(model, mask, ctx.source.train, ctx.loss_fn, alloc_fit, val=val, seed=0)
            return model.state_dict()

        key = {
            "step": "allocate",
            "source": ctx.source_key,
            "ratio": p.ratio,
            "scope": p.scope,
            "fit": asdict(alloc_fit),
        }
        model.load_state_dict(ctx.memo(key, build))
        return model, mask

    def transfer(self, ctx: TransferContext) -> Transfer:
        p: PacNetParams = self.params
        model, mask = self.allocated(ctx)
        tasks, result = calibrate(
            model,
            mask,
            ctx.target.train,
            ctx.loss_fn,
            ctx.target_fit,
            lam=p.lam,
            val=ctx.target.val,
            seed=ctx.seed,
            init=ctx.new_head,
        )
        report = parameter_report(model, tasks)
        source_view: nn.Module = tasks.export(model, "source")
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
