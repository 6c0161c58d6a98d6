"""train_only stays exact at every step when the training loop changes under it: steps
with closures (L-BFGS included), parameters unfrozen inside the context, a frozen -0.0, and
sparse embedding gradients."""

import warnings

import pytest
import torch
from conftest import mlp
from freezing import Watch, batches, run, tanh_mlp
from torch import nn

from pacnet import Data, FitConfig, PacnetError, fit, prune, train_only, zero_redundant

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
