"""PAC-Net as a method: prune the source model, allocate, calibrate."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

from torch import nn

from pacnet.errors import check, check_ratio
from pacnet.mask import prune
from pacnet.methods.base import Method, Transfer, TransferContext, count
from pacnet.pac import allocate, calibrate, parameter_report


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

    def transfer(self, ctx: TransferContext) -> Transfer:
        p: PacNetParams = self.params
        model = copy.deepcopy(ctx.source_model)
        mask = prune(model, p.ratio, p.scope)
        alloc_fit = ctx.source_fit
        if p.allocate_steps is not None:
            alloc_fit = replace(alloc_fit, steps=p.allocate_steps)

        def build() -> dict:
            allocate(model, mask, ctx.source.train, ctx.loss_fn, alloc_fit, seed=0)
            return model.state_dict()

        key = {
            "step": "allocate",
            "source": ctx.source_key,
            "ratio": p.ratio,
            "scope": p.scope,
            "fit": asdict(alloc_fit),
        }
        model.load_state_dict(ctx.memo(key, build))
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
        )
