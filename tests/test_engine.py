"""The two engines of pacnet.methods.engine: one plan per method, trained alone or stacked.

The stacked terms (DELTA's feature distance, BSS's smallest singular values, L2-SP's and
the head's pulls) are checked where they are computed: a one-step training reports the
loss of its first batch, penalties included, so the same plan trained one step on each
engine must report the same loss (float32 rounding apart) — for members whose batches
are padded in the stack (fewer rows than the largest member) and members that share
nothing but their kind.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch
from test_batched import TINY

from pacnet.experiments.run import runner
from pacnet.experiments.run.spec import RunSpec
from pacnet.methods import METHODS
from pacnet.methods.base import build, candidates
from pacnet.methods.engine import (
    laid_out,
    run_alone,
    stack_reason,
    target_training,
    train_alone,
    train_together,
)
from pacnet.training.cache import MemoryCache, StateCache
from pacnet.training.train import Data


@pytest.fixture(scope="module")
def contexts(tmp_path_factory):
    """Two target tasks of one tiny Friedman source model: 9 and 15 rows (one stack: the
    engine stacks batch sizes within a multiple of 8 together), fewer than the 16 hidden
    features, so BSS's matrices have as many singular values as rows."""
    cache = StateCache(tmp_path_factory.mktemp("cache"))
    return [
        runner.prepare(RunSpec("friedman", "finetune", seed=s, target_size=n,
                               bench_settings=TINY), cache)
        for s, n in ((0, 9), (1, 15))
    ]  # fmt: skip


def one_step(method, ctx):
    """The method's plan (laid out with the run's seed) as a training of one step: its
    reported loss is the first batch's. Every parameter is moved off its start by the same
    seeded noise first, so that the pulls toward the start and DELTA's distance to the
    source count from the first step on."""
    plan = laid_out(method, ctx)
    generator = torch.Generator().manual_seed(ctx.seed)
    with torch.no_grad():
        for p in plan.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    t = target_training(plan, ctx, method.name)
    return plan, replace(t, cfg=replace(t.cfg, steps=1))


@pytest.mark.parametrize(
    "name, params",
    [
        ("bss", {"weight": 300.0, "k": 1}),
        ("bss", {"weight": 100.0, "k": 3}),
        ("delta", {"alpha": 50.0}),
        ("delta", {"alpha": 20.0, "attention": False}),
        ("l2sp", {"alpha": 50.0, "beta": 20.0}),
        ("pacnet", {"lam": 10.0}),
        ("lora", {"rank": 3, "alpha": 6.0}),
    ],
)
def test_a_one_step_loss_is_the_same_on_both_engines(contexts, name, params):
    """Two members (9 and 15 rows: the first padded in the stack) trained one step
    together, and the same plans laid out again and trained alone: the reported losses,
    penalties included (strong enough to make most of them), and the weights after the
    step agree."""
    method = build(METHODS[name], params)
    stacked = [one_step(method, ctx) for ctx in contexts]
    single = [one_step(method, ctx) for ctx in contexts]
    try:
        together = train_together([t for _, t in stacked])
        alone = [train_alone(t) for _, t in single]
    finally:
        for plan, _ in stacked + single:
            plan.close()
    for (_, a), (_, b), ra, rb in zip(stacked, single, together, alone, strict=True):
        assert math.isclose(ra.final_loss, rb.final_loss, rel_tol=1e-5), name
        moved = dict(b.model.named_parameters())
        for n, p in a.model.named_parameters():
            assert torch.allclose(p, moved[n], rtol=1e-4, atol=1e-6), (name, n)


def test_every_method_lays_out_one_plan_that_stacks(contexts):
    """All eight methods: the plan trains on either engine (none falls back) and
    ``transfer`` is that plan trained alone."""
    ctx = contexts[0]
    for name, cls in METHODS.items():
        method = cls()
        assert cls.stacks, name
        plan = method.plan(ctx)
        try:
            assert stack_reason(target_training(plan, ctx, name)) is None, name
        finally:
            plan.close()
        a, b = method.transfer(ctx), run_alone(method, ctx)
        probe = ctx.target.test.x[:16]
        assert torch.equal(a.target_model(probe), b.target_model(probe)), name


def test_a_plan_the_stack_cannot_express_is_named(contexts):
    ctx = contexts[0]
    cases = [
        ("delta", {"layers": "body.1"}, "not a linear layer"),
        ("lora", {"dropout": 0.2}, "dropout"),
    ]
    for name, params, why in cases:
        plan = build(METHODS[name], params).plan(ctx)
        try:
            assert why in stack_reason(target_training(plan, ctx, name))
        finally:
            plan.close()
    plan = METHODS["finetune"]().plan(ctx)
    streamed = target_training(plan, ctx, "finetune")
    rows = torch.utils.data.TensorDataset(ctx.target.train.x, ctx.target.train.y)
    assert "not in memory" in stack_reason(replace(streamed, train=rows))


def test_delta_measures_its_attention_once_per_data(contexts, monkeypatch):
    from pacnet.methods import delta

    calls = []
    real = delta.channel_attention
    monkeypatch.setattr(
        delta, "channel_attention", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    ctx = replace(contexts[1], kept={})
    for alpha in (0.1, 1.0, 10.0):
        build(METHODS["delta"], {"alpha": alpha}).plan(ctx).close()
    assert len(calls) == 1
    half = Data(ctx.target.train.x[:7], ctx.target.train.y[:7])
    other = replace(ctx, target=replace(ctx.target, train=half))
    build(METHODS["delta"], {"alpha": 1.0}).plan(other).close()
    assert len(calls) == 2


def test_candidates_leave_out_what_is_fixed_and_build_checks_values():
    from pacnet.errors import PacnetError

    cls = METHODS["pacnet"]
    every = candidates(cls.Params)
    assert len(every) == len(cls.Params.search["lam"]) * len(cls.Params.search["ratio"])
    open_lam = candidates(cls.Params, {"ratio": 0.9})
    assert open_lam == [{"lam": v} for v in cls.Params.search["lam"]]
    method = build(cls, {"ratio": 0.9}, {"lam": 0.1})
    assert (method.params.ratio, method.params.lam) == (0.9, 0.1)
    with pytest.raises(PacnetError, match="ratio"):
        build(cls, {"ratio": 1.5})


def test_memory_cache_keeps_a_copy_and_says_what_it_holds():
    cache = MemoryCache()
    key = {"step": "allocate", "ratio": 0.8}
    state = {"w": torch.ones(3)}
    got = cache(key, lambda: state)
    state["w"].zero_()
    assert cache.contains(key) and not cache.contains({"step": "allocate"})
    assert torch.equal(got["w"], torch.ones(3))
    assert cache(key, lambda: pytest.fail("built twice")) is got


def test_what_the_stack_refuses_is_named(contexts):
    """Trainings the stacked trainer would compute differently are refused (they train
    alone): another loss, weights not in float32, labels not shaped as the outputs, early
    stopping without validation data."""
    from torch import nn

    ctx = contexts[0]
    plan = METHODS["finetune"]().plan(ctx)
    t = target_training(plan, ctx, "finetune")
    assert stack_reason(t) is None
    flat = Data(t.train.x, t.train.y.flatten())
    cases = [
        (replace(t, loss_fn=nn.functional.l1_loss), "mean squared error"),
        (replace(t, train=flat), "labels are not"),
        (replace(t, cfg=replace(t.cfg, patience=2), val=None), "without validation"),
    ]
    for training, why in cases:
        assert why in stack_reason(training), why
    double = copy.deepcopy(t.model).double()
    assert "float32" in stack_reason(replace(t, model=double, trainable={}))


def test_a_loss_that_turns_nan_fails_in_one_line_on_both_engines(contexts):
    """A learning rate of 1e30 sends the weights and then the loss to inf: ``fit`` stops
    with its one-line error, and the stack, which cannot stop one member, fails at the
    end with the same kind of line (a group that fails runs its runs alone)."""
    from pacnet.errors import PacnetError

    for train in (train_together, lambda ts: [train_alone(t) for t in ts]):
        plan = METHODS["finetune"]().plan(contexts[1])
        plan.lr = 1e30
        with pytest.raises(PacnetError, match=r"NaN|inf"):
            train([target_training(plan, contexts[1], "finetune")])


def test_false_in_a_plan_freezes_the_parameter(contexts):
    ctx = contexts[0]
    for train in (train_alone, lambda t: train_together([t])):
        plan = METHODS["finetune"]().plan(ctx)
        plan.trainable["head.bias"] = False
        bias, weight = (p.detach().clone() for p in (plan.model.head.bias, plan.model.head.weight))
        train(target_training(plan, ctx, "finetune"))
        assert torch.equal(plan.model.head.bias, bias)
        assert not torch.equal(plan.model.head.weight, weight)  # the rest trained


def test_delta_counts_a_layer_named_twice_once(contexts):
    from pacnet.methods.delta import delta_layers

    model = contexts[0].source_model
    assert delta_layers("body.0, body.0,body.2", model) == ["body.0", "body.2"]
