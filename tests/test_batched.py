"""The batched engine: stacked members against the same runs trained alone.

Tolerance (``pacnet.training.stacked.TOLERANCE``): float32 weights within
``1e-4 + 1e-3·|w|`` entrywise, metrics within 5e-3 relative; frozen entries bit-exact.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from pacnet.benchmarks.mlp import MLP
from pacnet.experiments.run import batched, runner
from pacnet.experiments.run.spec import RunSpec
from pacnet.experiments.store.store import Store
from pacnet.experiments.sweep.sweep import WorkerOptions, sweep
from pacnet.methods import METHODS
from pacnet.methods.engine import stack_reason, target_training
from pacnet.training.cache import StateCache
from pacnet.training.stacked import TOLERANCE, Member, fit_stacked
from pacnet.training.train import Data, FitConfig, fit

TINY = {
    "source_samples": 400,
    "source_steps": 80,
    "target_steps": 40,
    "target_test": 200,
    "hidden": (16, 16),
    "target_pool": 60,
}
STACKED = tuple(METHODS)  # every method lays its runs out for the stacked trainer


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=TOLERANCE["weights_rtol"], atol=TOLERANCE["weights_atol"])


def same_metric(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=TOLERANCE["metric_rtol"])


def specs(method: str, sizes=(12, 30), seeds=(0, 1), **extra) -> list[RunSpec]:
    return [
        RunSpec("friedman", method, seed=s, target_size=n, bench_settings=TINY, **extra)
        for n in sizes
        for s in seeds
    ]


@pytest.mark.parametrize("method", STACKED)
def test_each_stacked_method_matches_its_runs_alone(method, tmp_path):
    cache = StateCache(tmp_path / "cache")
    group = specs(method, select="cv")
    alone = [runner.run_trained(replace(s, engine="sequential"), cache=cache) for s in group]
    together = batched.run_group(group, cache)
    for a, b in zip(alone, together, strict=True):
        ra, rb = a.result, b.result
        assert rb["engine"] == "batched" and ra["engine"] == "sequential"
        assert ra["run_id"] == rb["run_id"]
        assert ra["selection"]["chosen"] == rb["selection"]["chosen"]
        for x, y in zip(
            [c["val"] for c in ra["selection"]["candidates"]],
            [c["val"] for c in rb["selection"]["candidates"]],
            strict=True,
        ):
            assert same_metric(x, y)
        for key in ("target_test", "source_test_after"):
            assert same_metric(ra[key], rb[key]), (key, ra[key], rb[key])
        assert ra["fit"]["steps"] == rb["fit"]["steps"]
        assert math.isclose(ra["fit"]["final_loss"], rb["fit"]["final_loss"], rel_tol=1e-2)
        for key in ("trainable_params", "total_params", "stored_params"):
            assert ra[key] == rb[key]
        sa, sb = a.model.state_dict(), b.model.state_dict()
        assert sa.keys() == sb.keys()
        for name in sa:
            assert close(sa[name], sb[name]), name


def test_frozen_entries_stay_bit_exact(tmp_path):
    """PAC-Net's essential entries and the source task; the linear probe's body."""
    cache = StateCache(tmp_path / "cache")
    runs = batched.run_group(specs("pacnet", seeds=(0,)) + specs("pacnet", seeds=(3,)), cache)
    for trained in runs:
        model, tasks = trained.model, trained.tasks
        allocated = dict(tasks.export(model, "source").named_parameters())
        for name, p in model.named_parameters():
            if name in tasks.mask:
                keep = tasks.mask[name]
                assert torch.equal(p[keep], allocated[name][keep]), name
                assert not torch.equal(p[~keep], allocated[name][~keep])  # the target trained
    for trained in batched.run_group(specs("lora", select="cv"), cache):  # LoRA's base
        source = runner.prepare(specs("lora")[0], cache).source_model.state_dict()
        base = trained.model.base_model.model
        for name, value in source.items():
            layer, _, leaf = name.rpartition(".")
            module = base.get_submodule(layer)
            kept = getattr(module, "base_layer", None) or module.original_module
            assert torch.equal(getattr(kept, leaf), value), name
        assert trained.result["engine"] == "batched"
    probe = batched.run_group(specs("linear_probe"), cache)
    ctx = runner.prepare(specs("linear_probe")[0], cache)
    source = dict(ctx.source_model.named_parameters())
    for trained in probe:
        for name, p in trained.model.named_parameters():
            if not name.startswith("head."):
                assert torch.equal(p, source[name]), name


def members_for_stopping() -> tuple[list[Member], dict]:
    """Three members with early stopping: the first's validation data disagree with its
    training data, so it stops long before the others."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(40, 4, generator=gen)
    y = x.sum(1, keepdim=True)
    torch.manual_seed(1)
    model = MLP(4, (8,), 1)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = FitConfig(steps=200, batch_size=8, lr=3e-2, eval_every=5, patience=2)
    members = [
        Member(start, Data(x[:30], y[:30]), cfg, seed=0, trainable={n: True for n in start},
               val=Data(x[30:], -5 * y[30:])),
        Member(start, Data(x[:30], y[:30]), cfg, seed=1, trainable={n: True for n in start},
               val=Data(x[30:], y[30:])),
        Member(start, Data(x[:20], y[:20]), FitConfig(steps=120, batch_size=32, lr=1e-2),
               seed=2, trainable={"head.weight": True,
                                  "body.0.weight": start["body.0.weight"] > 0}),
    ]  # fmt: skip
    return members, model.spec()


def alone(member: Member, spec: dict) -> tuple[dict, object]:
    """``member`` trained by ``pacnet.fit`` alone (frozen entries by gradient masking)."""
    model = MLP.from_spec(spec)
    model.load_state_dict(member.start)
    params = dict(model.named_parameters())
    for name, p in params.items():
        where = member.trainable.get(name, False)
        if isinstance(where, torch.Tensor):
            p.register_hook(lambda g, w=where: g * w)
        else:
            p.requires_grad_(bool(where))
    result = fit(model, nn.functional.mse_loss, member.train, member.cfg,
                 val=member.val, seed=member.seed)  # fmt: skip
    return model.state_dict(), result


def test_a_member_that_stops_early_while_the_others_go_on():
    members, spec = members_for_stopping()
    stacked = fit_stacked(members, MLP.from_spec(spec).layout())
    (_, r0), (_, r1), (third, r2) = stacked
    assert r0.steps < r1.steps and r2.steps == 120
    for member, (state, result) in zip(members, stacked, strict=True):
        ref_state, ref = alone(member, spec)
        assert result.steps == ref.steps and result.best_step == ref.best_step
        assert [s for s, _ in result.val_curve] == [s for s, _ in ref.val_curve]
        for name in state:
            assert close(state[name], ref_state[name]), name
    # the early stopper holds its best state; the frozen entries of the third never moved
    start = members[2].start
    assert torch.equal(third["body.0.bias"], start["body.0.bias"])
    frozen = start["body.0.weight"] <= 0
    assert torch.equal(third["body.0.weight"][frozen], start["body.0.weight"][frozen])
    assert not torch.equal(third["head.weight"], start["head.weight"])


def test_early_protocol_runs_match(tmp_path):
    cache = StateCache(tmp_path / "cache")
    settings = {**TINY, "protocol": "early", "eval_every": 5, "patience": 2, "target_steps": 80}
    group = [
        RunSpec("friedman", "finetune", seed=s, target_size=30, bench_settings=settings,
                method_params={"lr": lr})
        for s in (0, 1) for lr in (0.03,)
    ]  # fmt: skip
    ra = [runner.run(replace(s, engine="sequential"), cache=cache) for s in group]
    rb = [t.result for t in batched.run_group(group, cache)]
    for a, b in zip(ra, rb, strict=True):
        assert (
            a["fit"]["steps"] == b["fit"]["steps"]
            and a["fit"]["best_step"] == b["fit"]["best_step"]
        )
        assert same_metric(a["target_test"], b["target_test"])


def test_runs_that_cannot_stack_run_alone(tmp_path):
    """Several targets in one network run on the sequential engine whatever the spec
    asks; so does a run that asks for it."""
    cache = StateCache(tmp_path / "cache")
    chain = RunSpec(
        "friedman", "pacnet", seed=0, target_size=20, bench_settings=TINY, targets=(1, 2)
    )
    assert chain.engine == "batched" and not batched.stacks(chain)
    trained = runner.run_trained(chain, tmp_path / "out", cache)
    assert trained.result["engine"] == "sequential"
    assert (tmp_path / "out" / "result.json").exists()
    spec = RunSpec("friedman", "delta", seed=0, target_size=20, bench_settings=TINY)
    assert batched.stacks(spec) and not batched.stacks(replace(spec, engine="sequential"))
    ran = runner.run_trained(replace(spec, engine="sequential"), None, cache).result
    assert ran["engine"] == "sequential" and ran["run_id"] == spec.run_id()


def test_a_plan_the_stack_cannot_express_trains_alone_in_the_group(tmp_path):
    """DELTA on the activations' outputs (not a linear layer's) and LoRA with dropout have
    no stacked form: in a batched group those trainings run alone and give what the
    sequential engine gives, bit for bit."""
    cache = StateCache(tmp_path / "cache")
    for method, params in (("delta", {"layers": "body.1,body.3"}), ("lora", {"dropout": 0.1})):
        group = specs(method, seeds=(0,), method_params=params)
        ctx = runner.prepare(group[0], cache)
        plan = METHODS[method](METHODS[method].Params(**params)).plan(ctx)
        try:
            assert stack_reason(target_training(plan, ctx, method)) is not None
        finally:
            plan.close()
        together = [t.result for t in batched.run_group(group, cache)]
        alone = [runner.run(replace(s, engine="sequential"), cache=cache) for s in group]
        for a, b in zip(alone, together, strict=True):
            assert a["target_test"] == b["target_test"], method


def test_a_sweep_on_either_engine_stores_the_same_runs(tmp_path):
    cache = StateCache(tmp_path / "cache")
    grid = specs("finetune", seeds=(0, 1, 2), select="cv") + specs("delta", seeds=(0,))
    found = {}
    for engine in ("batched", "sequential"):
        with Store(tmp_path / f"{engine}.sqlite") as store:
            runs = [replace(s, engine=engine) for s in grid]
            results = sweep(runs, store, cache=cache, options=WorkerOptions())
        found[engine] = {r["run_id"]: r for r in results}
    assert found["batched"].keys() == found["sequential"].keys() == {s.run_id() for s in grid}
    for run_id, a in found["sequential"].items():
        b = found["batched"][run_id]
        assert same_metric(a["target_test"], b["target_test"])
        assert b["engine"] == "batched" and a["engine"] == "sequential"


def test_engine_option_is_checked():
    from pacnet.errors import PacnetError

    with pytest.raises(PacnetError, match="unknown engine"):
        RunSpec("friedman", "finetune", engine="vectorised")


def test_transfer_compares_the_same_on_either_engine(tmp_path):
    """pacnet transfer: PAC-Net and the baselines (DELTA included) choose the same
    candidates with cross-validated errors within the tolerance on either engine."""
    from pacnet.tabular import pipeline

    rng = torch.Generator().manual_seed(0)

    def table(path, n, shift):
        x = torch.rand(n, 3, generator=rng) * 2 - 1
        y = torch.sin(2 * x[:, 0]) + x[:, 1] * (1 + shift) + 0.1 * torch.randn(n, generator=rng)
        rows = zip(x.tolist(), y.tolist(), strict=True)
        lines = ["a,b,c,y", *(",".join(f"{v:.6f}" for v in [*r, t]) for r, t in rows)]
        path.write_text("\n".join(lines) + "\n")
        return path

    source, target = table(tmp_path / "s.csv", 400, 0.0), table(tmp_path / "t.csv", 15, 1.0)
    found = {}
    for engine in ("batched", "sequential"):
        options = pipeline.TransferOptions(
            source, target, outputs=["y"], compare=["finetune", "l2sp", "delta"],
            config=pipeline.TableConfig(source_steps=150, target_steps=40, hidden=(16, 16)),
            engine=engine,
        )  # fmt: skip
        found[engine] = {r["method"]: r for r in pipeline.transfer(options).card["methods"]}
    assert found["batched"].keys() == found["sequential"].keys()
    for name, a in found["sequential"].items():
        b = found["batched"][name]
        assert a["chosen"] == b["chosen"], name
        assert math.isclose(a["cv"], b["cv"], rel_tol=TOLERANCE["metric_rtol"]), name
