"""The simplest references: training from scratch, and fine-tuning every weight."""

from __future__ import annotations

import copy

from pacnet.methods.base import Method, Transfer, TransferContext, count
from pacnet.train import fit


class Scratch(Method):
    name = "scratch"
    summary = "train a fresh model on the target data only (the source model is kept aside)"

    def transfer(self, ctx: TransferContext) -> Transfer:
        model = ctx.benchmark.make_model(ctx.seed)
        result = fit(
            model,
            ctx.loss_fn,
            ctx.target.train,
            ctx.target_fit,
            val=ctx.target.val,
            seed=ctx.seed,
            desc="scratch",
        )
        n = count(model)
        return Transfer(
            model,
            ctx.source_model,
            trainable=n,
            total=n,
            stored=n + count(ctx.source_model),
            fit=result,
        )


class FineTune(Method):
    name = "finetune"
    summary = "start from the source model and train all weights on the target (one network)"

    def transfer(self, ctx: TransferContext) -> Transfer:
        model = copy.deepcopy(ctx.source_model)
        result = fit(
            model,
            ctx.loss_fn,
            ctx.target.train,
            ctx.target_fit,
            val=ctx.target.val,
            seed=ctx.seed,
            desc="finetune",
        )
        n = count(model)
        return Transfer(model, model, trainable=n, total=n, stored=n, fit=result)
