"""train_only stays exact at every step when the loop or the optimizer changes under it:
closures, gradual unfreezing, groups and settings changed inside the context, optimizer
state cleared or replaced, an eps of 0, sparse gradients."""

import warnings

import pytest
import torch
from conftest import mlp
from torch import nn

from pacnet import Data, FitConfig, PacnetError, fit, prune, train_only, zero_redundant


def tanh_mlp(seed=0):
    """No dead units: every trainable entry gets a nonzero gradient (Adam with eps 0)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)
    )


def _bits(t):
    return t.detach().view(torch.int32)


class Watch:
    """The model's parameters now; ``check()`` asserts that every entry ``trainable``
    freezes, and every parameter in ``whole``, still holds its value bit for bit."""

    def __init__(self, model, trainable, whole=()):
        self.model, self.trainable, self.whole = model, trainable, list(whole)
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.checks = 0

    def check(self):
        for n, t in self.trainable.items():
            now = self.model.get_parameter(n)
            assert torch.equal(_bits(now)[~t], _bits(self.before[n])[~t]), n
        for n in self.whole:
            assert torch.equal(_bits(self.model.get_parameter(n)), _bits(self.before[n])), n
        self.checks += 1

    def trained(self, name, share=0.5):
        """Assert that most trainable entries of ``name`` moved."""
        t = self.trainable[name]
        moved = self.model.get_parameter(name).detach()[t] != self.before[name][t]
        assert moved.float().mean() > share, f"{name} barely trained"


def batches(steps, seed=0, n=16):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        yield torch.randn(n, 5, generator=gen)


def step(model, optimizer, x):
    optimizer.zero_grad()
    ((model(x) - 1.0) ** 2).mean().backward()
    optimizer.step()


def run(model, optimizer, watch, steps, seed=0):
    for x in batches(steps, seed):
        step(model, optimizer, x)
        watch.check()


# closures --------------------------------------------------------------------------------


def test_sgd_step_with_a_closure_keeps_frozen_entries():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    mask = prune(model, ratio=0.8)
    x, y = torch.randn(32, 4), torch.randn(32, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    watch = Watch(model, mask)
    with train_only(model, mask, opt):

        def closure():
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        for _ in range(5):
            opt.step(closure)  # frozen entries of 0.weight must not move
            watch.check()
    watch.trained("0.weight", share=0.3)


CLOSURE_OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01),
    "adam_fused": lambda p: torch.optim.Adam(p, lr=0.01, fused=True),
    "adamw_fused": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.0, fused=True),
}


@pytest.mark.parametrize("name", list(CLOSURE_OPTIMIZERS))
@pytest.mark.parametrize("keyword", [False, True])
def test_step_with_a_closure_keeps_frozen_entries_at_every_step(name, keyword):
    model = mlp()
    mask = prune(model, 0.8)
    optimizer = CLOSURE_OPTIMIZERS[name](model.parameters())
    watch = Watch(model, mask)
    with train_only(model, mask, optimizer) as session:
        for x in batches(10):

            def closure(x=x):
                optimizer.zero_grad()
                loss = ((model(x) - 1.0) ** 2).mean()
                loss.backward()
                return loss

            loss = optimizer.step(closure=closure) if keyword else optimizer.step(closure)
            assert torch.isfinite(loss)
            watch.check()
        assert not session.restores
        assert bool(session.parked) == (name != "sgd")  # Adam still parks
    for n in mask:
        watch.trained(n)


def lbfgs_run(masked_by):
    """Four LBFGS steps with the gradients masked by train_only or by the closure itself;
    the model, and the Watch of the train_only run."""
    model = tanh_mlp()
    mask = prune(model, 0.7)
    optimizer = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=5)
    x = torch.randn(32, 5, generator=torch.Generator().manual_seed(0))
    watch = Watch(model, mask)
    evaluations = 0

    def closure():
        nonlocal evaluations
        evaluations += 1
        optimizer.zero_grad()
        loss = ((model(x) - 1.0) ** 2).mean()
        loss.backward()
        if masked_by == "closure":
            for n, t in mask.items():
                model.get_parameter(n).grad.mul_(t)
        return loss

    if masked_by == "closure":
        for _ in range(4):
            optimizer.step(closure)
        return model, None
    with train_only(model, mask, optimizer) as session:
        for _ in range(4):
            optimizer.step(closure)
            watch.check()
    assert session.restores and evaluations > 4
    return model, watch


def test_lbfgs_sees_masked_gradients_at_every_evaluation():
    """LBFGS calls the closure several times per step: each evaluation's gradients are
    masked, so it trains like LBFGS on the trainable entries alone."""
    model, watch = lbfgs_run("train_only")
    ref, _ = lbfgs_run("closure")
    for (n, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)
    watch.trained("2.weight")


def l2_closure_run(optimizer_name, finish):
    """Six steps with a closure under l2 = 0.5; ``finish``: the closure calls finish_grads."""
    model = mlp()
    mask = prune(model, 0.8)
    optimizer = CLOSURE_OPTIMIZERS[optimizer_name](model.parameters())
    watch = Watch(model, mask)
    with train_only(model, mask, optimizer, l2=0.5) as session:
        for x in batches(6):

            def closure(x=x):
                optimizer.zero_grad()
                loss = ((model(x) - 1.0) ** 2).mean()
                loss.backward()
                if finish:
                    session.finish_grads()
                return loss

            optimizer.step(closure)
            watch.check()
    return model


@pytest.mark.parametrize("optimizer_name", ["sgd", "adam_fused"])
def test_a_closure_that_finishes_the_gradients_itself_adds_the_l2_term_once(optimizer_name):
    """finish_grads() inside the closure (before clipping) and the step's own preparation
    give the same run: the term is added once per evaluation."""
    finished = l2_closure_run(optimizer_name, finish=True)
    prepared = l2_closure_run(optimizer_name, finish=False)
    for p, q in zip(finished.parameters(), prepared.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


# gradual unfreezing ------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer_name", ["sgd", "adam_fused"])
def test_parameters_frozen_whole_stay_frozen_when_unfrozen_inside(optimizer_name):
    """others="frozen" and a mask entry that is all False: turning requires_grad back on
    inside the context does not let the optimizer move them."""
    model = mlp()
    mask = dict(prune(model, 0.8))
    mask["2.bias"] = torch.zeros(16, dtype=torch.bool)  # frozen whole by the mask
    optimizer = CLOSURE_OPTIMIZERS[optimizer_name](model.parameters())
    watch = Watch(model, mask, whole=["2.bias", "4.weight", "4.bias"])
    with train_only(model, mask, optimizer, others="frozen") as session:
        run(model, optimizer, watch, 2)
        for p in model.parameters():
            p.requires_grad_(True)  # gradual unfreezing
        run(model, optimizer, watch, 5, seed=1)
        assert not session.restores
    assert all(p.requires_grad for p in model.parameters())
    watch.trained("0.weight")


def test_lbfgs_cannot_move_parameters_frozen_whole_when_unfrozen_inside():
    """LBFGS evaluates with every parameter of its group, gradient or not: those frozen whole
    that get gradients again lose them at each evaluation."""
    model = tanh_mlp()
    mask = prune(model, 0.8)
    optimizer = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4)
    x = torch.randn(32, 5, generator=torch.Generator().manual_seed(0))
    watch = Watch(model, mask, whole=["0.bias", "2.bias", "4.weight", "4.bias"])

    def closure():
        optimizer.zero_grad()
        loss = ((model(x) - 1.0) ** 2).mean()
        loss.backward()
        return loss

    with train_only(model, mask, optimizer, others="frozen") as session:
        optimizer.step(closure)
        watch.check()
        for p in model.parameters():
            p.requires_grad_(True)
        for _ in range(3):
            optimizer.step(closure)
            watch.check()
        assert session.restores
    watch.trained("2.weight")


class ShrinkAll(torch.optim.Optimizer):
    """SGD that also shrinks every parameter it holds, with a gradient or not."""

    def __init__(self, params, lr):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                p.mul_(0.99)
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])


def test_an_optimizer_that_moves_parameters_without_gradients_cannot_move_frozen_ones():
    model = mlp()
    mask = dict(prune(model, 0.8))
    mask["2.bias"] = torch.zeros(16, dtype=torch.bool)
    optimizer = ShrinkAll(model.parameters(), lr=0.05)
    watch = Watch(model, mask, whole=["2.bias", "4.weight", "4.bias"])
    with train_only(model, mask, optimizer, others="frozen") as session:
        run(model, optimizer, watch, 4)
        assert session.restores
    watch.trained("0.weight")


@pytest.mark.parametrize("optimizer_name", ["sgd", "adam", "adam_fused"])
@pytest.mark.parametrize("others", ["trainable", "frozen"])
def test_masked_parameter_without_requires_grad_on_entry_is_held_when_unfrozen(
    optimizer_name, others
):
    model = mlp()
    mask = prune(model, 0.8)
    model[2].weight.requires_grad_(False)  # unfrozen later, inside the context
    optimizer = CLOSURE_OPTIMIZERS[optimizer_name](model.parameters())
    watch = Watch(model, mask)
    with train_only(model, mask, optimizer, others=others) as session:
        run(model, optimizer, watch, 2)
        assert torch.equal(model[2].weight, watch.before["2.weight"])
        model[2].weight.requires_grad_(True)
        run(model, optimizer, watch, 8, seed=1)
        assert not session.restores
        assert ("2.weight" in session.parked) == (optimizer_name != "sgd")
    watch.trained("2.weight")


def test_unfrozen_parameters_get_no_weight_decay_meant_for_the_l2_term():
    """Fused Adam's weight decay can carry the l2 term (Calibrate); a parameter outside the
    term that starts to get gradients inside the context must not get it."""
    model = mlp()
    mask = prune(model, 0.8)
    zero_redundant(model, mask)
    trainable = {"0.weight": ~mask["0.weight"]}
    model[4].weight.requires_grad_(False)
    rest = [p for n, p in model.named_parameters() if n not in ("0.weight", "4.weight")]
    optimizer = torch.optim.Adam(
        [{"params": [model[0].weight, model[4].weight]}, {"params": rest}], lr=0.01, fused=True
    )
    watch = Watch(model, trainable)
    with train_only(model, trainable, optimizer, others="trainable", l2=0.3) as session:
        run(model, optimizer, watch, 3)
        assert session.folding.on  # the kernel's weight decay is the term
        model[4].weight.requires_grad_(True)  # outside the mask: trains without the term
        optimizer.zero_grad()
        model(torch.randn(4, 5)).sum().backward()
        raw = model[4].weight.grad.clone()
        optimizer.step()
        assert optimizer.param_groups[0]["weight_decay"] == 0  # no decay reached it
        torch.testing.assert_close(model[4].weight.grad, raw)
        run(model, optimizer, watch, 3, seed=1)
    assert optimizer.param_groups[0]["weight_decay"] == 0


# groups and settings changed inside the context -------------------------------------------


@pytest.mark.parametrize(
    "optimizer_name",
    ["sgd_momentum", "adamw_fused", "adam"],
)
def test_a_group_with_weight_decay_added_inside_switches_to_write_back(optimizer_name):
    model = mlp()
    mask = prune(model, 0.8)
    first = [model[0].weight, model[0].bias, model[4].weight, model[4].bias]
    make = {
        "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
        "adamw_fused": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.0, fused=True),
        "adam": lambda p: torch.optim.Adam(p, lr=0.01),
    }[optimizer_name]
    optimizer = make(first)
    watch = Watch(model, mask)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with train_only(model, mask, optimizer) as session:
            run(model, optimizer, watch, 3)
            assert not session.restores
            optimizer.add_param_group(
                {"params": [model[2].weight, model[2].bias], "weight_decay": 0.1}
            )
            run(model, optimizer, watch, 6, seed=1)
            assert session.restores and "weight decay" in session.reason
    assert session.rescued == []
    watch.trained("2.weight")


def test_a_group_without_decay_added_inside_keeps_the_cheap_path():
    model = mlp()
    mask = prune(model, 0.8)
    optimizer = torch.optim.Adam([model[0].weight, model[0].bias], lr=0.01, fused=True)
    watch = Watch(model, mask)
    with train_only(model, mask, optimizer) as session:
        run(model, optimizer, watch, 2)
        optimizer.add_param_group({"params": [model[2].weight, model[2].bias]})
        run(model, optimizer, watch, 4, seed=1)
        assert not session.restores
        assert session.parked == ["0.weight", "2.weight"]
    watch.trained("2.weight")


@pytest.mark.parametrize("setting", ["weight_decay", "maximize"])
def test_a_setting_switched_on_inside_switches_to_write_back(setting):
    model = mlp()
    mask = prune(model, 0.8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    watch = Watch(model, mask)
    with train_only(model, mask, optimizer) as session:
        run(model, optimizer, watch, 2)
        optimizer.param_groups[0][setting] = 0.1 if setting == "weight_decay" else True
        run(model, optimizer, watch, 4, seed=1)
        assert session.restores and setting.replace("_", " ") in session.reason
    watch.trained("0.weight")


def test_adam_whose_second_moment_decay_is_set_to_zero_inside_unparks():
    model = tanh_mlp()
    mask = prune(model, 0.8)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, fused=True)
    watch = Watch(model, mask)
    with train_only(model, mask, optimizer) as session:
        run(model, optimizer, watch, 3)
        assert session.parked
        optimizer.param_groups[0]["betas"] = (0.9, 0.0)  # β2·inf would be NaN
        run(model, optimizer, watch, 3, seed=1)
        assert session.parked == [] and not session.restores
        assert all(torch.isfinite(p).all() for p in model.parameters())


def _split(model):
    """Groups as pacnet.calibrate makes them: the last bias (which starts as a copy, not at
    0) in a group of its own, so the other group's weight decay can carry the l2 term."""
    rest = [p for n, p in model.named_parameters() if n != "4.bias"]
    return [{"params": rest}, {"params": [model[4].bias]}]


def test_weight_decay_set_on_a_group_carrying_the_l2_term_is_kept():
    """Fused Adam's weight decay carries Calibrate's l2 term; a decay the user sets there is
    the user's own: it stays, frozen entries are written back, the term comes explicitly."""
    runs = []
    for restore in ("auto", "always"):
        model = mlp()
        mask = prune(model, 0.8)
        zero_redundant(model, mask)
        trainable = {**~mask, "4.bias": torch.ones(1, dtype=torch.bool)}
        optimizer = torch.optim.Adam(_split(model), lr=0.01, fused=True)
        watch = Watch(model, trainable, whole=["4.weight"])
        with train_only(
            model, trainable, optimizer, others="frozen", l2=0.3, restore=restore
        ) as session:
            run(model, optimizer, watch, 4)
            assert session.folding.on == (restore == "auto")
            optimizer.param_groups[0]["weight_decay"] = 0.05
            run(model, optimizer, watch, 4, seed=1)
            assert session.restores and optimizer.param_groups[0]["weight_decay"] == 0.05
            saved = optimizer.state_dict()
        assert optimizer.param_groups[0]["weight_decay"] == 0.05
        assert saved["param_groups"][0]["weight_decay"] == 0.05
        runs.append(model)
    for p, ref in zip(runs[0].parameters(), runs[1].parameters(), strict=True):
        torch.testing.assert_close(p, ref, rtol=1e-4, atol=1e-6)


# optimizer state cleared or replaced ------------------------------------------------------


def _clear(optimizer, model):
    optimizer.state.clear()


def _delete(optimizer, model):
    del optimizer.state[model[2].weight]


def _zero_second_moment(optimizer, model):
    state = optimizer.state[model[2].weight]
    state["exp_avg_sq"] = torch.zeros_like(state["exp_avg_sq"])


def _new_state_dict(optimizer, model):
    optimizer.state[model[2].weight] = {}


def _new_state_mapping(optimizer, model):
    from collections import defaultdict

    optimizer.state = defaultdict(dict)


@pytest.mark.parametrize(
    "change", [_clear, _delete, _zero_second_moment, _new_state_dict, _new_state_mapping]
)
@pytest.mark.parametrize("fused", [False, True])
def test_parked_adam_whose_state_is_cleared_or_replaced_parks_again(change, fused):
    model = mlp()
    mask = prune(model, 0.8)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, fused=fused)
    watch = Watch(model, mask)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with train_only(model, mask, optimizer) as session:
            run(model, optimizer, watch, 3)
            assert "2.weight" in session.parked
            change(optimizer, model)  # a warm restart
            run(model, optimizer, watch, 5, seed=1)
            assert not session.restores
            assert sorted(session.parked) == ["0.weight", "2.weight"]
    for n in mask:
        watch.trained(n)


REPLACED_STATE = {  # optimizer, the state key given random values at every entry
    "sgd": (lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), "momentum_buffer"),
    "adam_unparked": (lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.9, 0.0)), "exp_avg"),
    "adam_parked": (lambda p: torch.optim.Adam(p, lr=0.01), "exp_avg"),
}


@pytest.mark.parametrize("case", list(REPLACED_STATE))
def test_state_replaced_with_values_at_frozen_entries_keeps_frozen_entries(case):
    """Zeroed gradients need zero state at frozen entries: state replaced with other values
    switches to the write-back; a parked parameter's new state is parked again at once."""
    model = mlp()
    mask = prune(model, 0.8)
    make, key = REPLACED_STATE[case]
    optimizer = make(model.parameters())
    watch = Watch(model, mask)
    with train_only(model, mask, optimizer) as session:
        run(model, optimizer, watch, 3)
        assert ("2.weight" in session.parked) == (case == "adam_parked")
        state = optimizer.state[model[2].weight] = dict(optimizer.state[model[2].weight])
        state[key] = torch.randn_like(model[2].weight)
        if case == "adam_parked":
            state["exp_avg_sq"] = torch.ones_like(model[2].weight)
        run(model, optimizer, watch, 4, seed=1)
        if case == "adam_parked":
            assert not session.restores and "2.weight" in session.parked
        else:
            assert session.restores and key in session.reason
    watch.trained("2.weight")


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("mode", ["allocate", "calibrate"])
def test_a_steady_loop_never_reviews_or_rescans(monkeypatch, mode, optimizer):
    """The per-step checks compare identities only: the loops `pacnet bench` times never
    re-derive the path or look at the optimizer's state again."""
    from pacnet.experiments.bench.models import placed
    from pacnet.experiments.bench.modes import stepper

    model, x, y = placed("friedman_mlp", "cpu")
    step, context = stepper(mode, "friedman_mlp", model, x, y, optimizer)
    with context() as session:
        calls = []
        monkeypatch.setattr(session, "_review", lambda: calls.append("review"))
        monkeypatch.setattr(session, "_restate", lambda: calls.append("restate"))
        for _ in range(3):
            step()
        calls.clear()
        monkeypatch.setattr(session, "_prepare_grads", lambda _: calls.append("prepare"))
        for _ in range(6):  # the steady lists of the last step serve (see _steady_step)
            step()
        assert calls == []
        assert not session.restores and bool(session.parked) == (optimizer == "adam")


# eps = 0 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fused", [False, True])
def test_adam_with_eps_zero_keeps_frozen_entries_bit_for_bit(fused):
    model = tanh_mlp()
    mask = prune(model, 0.8)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, eps=0.0, fused=fused)
    watch = Watch(model, mask)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with train_only(model, mask, optimizer) as session:
            assert session.restores and "eps" in session.reason
            run(model, optimizer, watch, 6)
    assert session.rescued == []
    for n in mask:
        assert torch.isfinite(model.get_parameter(n)).all()
        watch.trained(n)


def test_eps_set_to_zero_inside_switches_to_the_exact_write_back():
    model = tanh_mlp()
    mask = prune(model, 0.8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    watch = Watch(model, mask)
    with train_only(model, mask, optimizer) as session:
        run(model, optimizer, watch, 2)
        optimizer.param_groups[0]["eps"] = 0.0
        run(model, optimizer, watch, 4, seed=1)
        assert session.restores
    assert session.rescued == []


# a frozen -0.0 ----------------------------------------------------------------------------


def test_sgd_keeps_a_frozen_negative_zero():
    """g·0 is -0.0 for a negative gradient, and -0.0 − (-0.0)·lr is +0.0: the frozen
    gradient entries of such a parameter are set to +0.0 instead."""
    model = mlp()
    mask = prune(model, 0.5)
    with torch.no_grad():
        model[0].weight[~mask["0.weight"]] = -0.0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    watch = Watch(model, mask)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with train_only(model, mask, optimizer) as session:
            run(model, optimizer, watch, 5)
            assert not session.restores
    assert model[0].weight.detach()[~mask["0.weight"]].signbit().all()


# sparse gradients --------------------------------------------------------------------------


class Bag(nn.Module):
    def __init__(self, sparse=True):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(20, 4, sparse=sparse)
        self.head = nn.Linear(4, 1)

    def forward(self, idx):
        return self.head(self.emb(idx).mean(1))


def _emb_mask(model):
    gen = torch.Generator().manual_seed(1)
    return {"emb.weight": torch.rand(model.emb.weight.shape, generator=gen) < 0.5}


def _ids(steps):
    gen = torch.Generator().manual_seed(2)
    return [torch.randint(0, 20, (8, 5), generator=gen) for _ in range(steps)]


@pytest.mark.parametrize("l2", [0.0, 0.5])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sparse_embedding_gradients_are_masked(l2, momentum):
    model = Bag()
    mask = _emb_mask(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=momentum)
    watch = Watch(model, mask)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with train_only(model, mask, optimizer, l2=l2) as session:
            for idx in _ids(6):
                optimizer.zero_grad()
                model(idx).square().mean().backward()
                assert model.emb.weight.grad.is_sparse
                optimizer.step()
                watch.check()
            assert not session.restores
    watch.trained("emb.weight", share=0.3)


def test_fit_trains_a_sparse_embedding_with_sgd_and_keeps_frozen_entries():
    model = Bag()
    mask = _emb_mask(model)
    watch = Watch(model, mask)
    model.register_forward_pre_hook(lambda *_: watch.check())  # before every step's forward
    idx = torch.randint(0, 20, (64, 5), generator=torch.Generator().manual_seed(3))
    data = Data(idx, torch.randn(64, 1, generator=torch.Generator().manual_seed(4)))
    cfg = FitConfig(steps=8, batch_size=16, lr=0.5, optimizer="sgd")
    fit(
        model,
        nn.functional.mse_loss,
        data,
        cfg,
        wrap=lambda opt: train_only(model, mask, opt, l2=0.1),
    )
    watch.check()
    assert watch.checks == 9
    watch.trained("emb.weight", share=0.3)


def test_make_optimizer_refuses_adam_for_sparse_gradients_in_one_line():
    from pacnet.training.train import make_optimizer, sparse_grad_params

    model = Bag()
    sparse = sparse_grad_params(model)
    assert list(sparse) == ["emb.weight"] and sparse_grad_params(Bag(sparse=False)) == {}
    for name in ("adam", "adamw"):
        with pytest.raises(PacnetError, match=r"'emb\.weight' gets sparse gradients") as error:
            make_optimizer(list(model.parameters()), FitConfig(optimizer=name), sparse=sparse)
        assert "\n" not in str(error.value) and "optimizer='sgd'" in str(error.value)
    with pytest.raises(PacnetError, match="weight_decay=0"):
        make_optimizer(
            list(model.parameters()), FitConfig(optimizer="sgd", weight_decay=0.1), sparse=sparse
        )
    sgd = make_optimizer(list(model.parameters()), FitConfig(optimizer="sgd"), sparse=sparse)
    assert not sgd.param_groups[0]["fused"]
    head_only = make_optimizer(list(model.head.parameters()), FitConfig(), sparse=sparse)
    assert head_only.param_groups[0]["fused"]  # no sparse parameter among them
