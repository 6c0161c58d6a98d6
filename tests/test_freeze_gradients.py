"""Zeroed gradients and the l2 term (pacnet.core.freeze.gradients): the fused l2 gradient
equals autograd's, follows a GradScaler's scale, reaches parameters another optimizer steps,
and folds own tensors' start as a constant offset."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import mlp
from freezing import assert_frozen_unchanged, snapshot, train

from pacnet import prune, train_only


@pytest.mark.parametrize("start", ["zero", "nonzero"])
def test_fused_l2_gradient_equals_autograd_of_the_penalty(start):
    """train_only(l2=λ) adds the gradient of λ·Σ(w − w₀)² over the trainable entries."""
    model = mlp()
    mask = prune(model, 0.7)
    trainable = {**~mask, "4.bias": torch.ones(1, dtype=torch.bool)}
    if start == "zero":
        from pacnet import zero_redundant

        zero_redundant(model, mask)
    start_values = snapshot(model)
    lam = 0.3
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 5)
    with train_only(model, trainable, optimizer, others="frozen", l2=lam) as session:
        assert all((m.start is None) == (start == "zero") for m in session.masked)
        with torch.no_grad():  # move trainable entries away from the start (penalty ≠ 0)
            for n, t in trainable.items():
                model.get_parameter(n).add_(torch.randn_like(model.get_parameter(n)) * t)
        params = dict(model.named_parameters())
        loss = (model(x) - 1).square().mean()
        penalty = sum(
            ((params[n] - start_values[n]) * t).square().sum() for n, t in trainable.items()
        )
        expected = torch.autograd.grad(
            loss + lam * penalty, [params[n] for n in trainable], retain_graph=True
        )
        optimizer.zero_grad()
        loss.backward()
        session.finish_grads()
        session.finish_grads()  # once per step: a second call adds nothing
        for (n, t), want in zip(trainable.items(), expected, strict=True):
            torch.testing.assert_close(params[n].grad, want * t, rtol=1e-5, atol=1e-6)
            assert torch.count_nonzero(params[n].grad[~t]) == 0


def test_l2_term_follows_the_scale_a_grad_scaler_hands_a_fused_optimizer():
    """scaler.step(fused) passes scaled gradients with optimizer.grad_scale; l2 must match."""
    runs = []
    for unscale_first in (True, False):
        model = mlp()
        mask = prune(model, 0.8)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01, fused=True)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        gen = torch.Generator().manual_seed(0)
        with train_only(model, ~mask, optimizer, l2=0.5):
            for _ in range(5):
                optimizer.zero_grad()
                loss = ((model(torch.randn(16, 5, generator=gen)) - 1.0) ** 2).mean()
                scaler.scale(loss).backward()
                if unscale_first:
                    scaler.unscale_(optimizer)
                scaler.step(optimizer)
                scaler.update()
        runs.append(snapshot(model))
    for n in runs[0]:
        torch.testing.assert_close(runs[0][n], runs[1][n], rtol=1e-5, atol=1e-6)
    assert not torch.equal(runs[0]["0.weight"], mlp().state_dict()["0.weight"])


def test_finish_grads_after_a_step_a_grad_scaler_skipped():
    """A GradScaler that finds inf skips step(): the next step must still be masked."""
    model = mlp()
    mask = prune(model, 0.8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    before = snapshot(model)
    trainable = mask["2.weight"]
    gen = torch.Generator().manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with train_only(model, mask, optimizer) as session:
            for step in range(4):
                optimizer.zero_grad()
                loss = ((model(torch.randn(16, 5, generator=gen)) - 1.0) ** 2).mean()
                scaler.scale(loss).backward()
                if step == 0:  # an overflow at a trainable entry: this step is skipped
                    model[2].weight.grad[trainable.nonzero()[0].tolist()] = float("inf")
                scaler.unscale_(optimizer)
                session.finish_grads()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                scaler.step(optimizer)
                scaler.update()
    assert session.rescued == []
    assert_frozen_unchanged(model, mask, before)
    assert not torch.equal(model[2].weight, before["2.weight"])


def test_l2_gradient_keeps_a_small_difference_from_a_large_start():
    """α·(w − w₀) is formed as a difference first, not as α·w − α·w₀ (cancellation)."""
    model = mlp()
    mask = prune(model, 0.5)
    with torch.no_grad():
        model[0].weight.fill_(1000.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    lam = 0.3
    with train_only(model, mask, optimizer, l2=lam) as session:
        w = model[0].weight
        with torch.no_grad():
            w.add_(torch.full_like(w, 1e-3) * mask["0.weight"])  # w − w₀ ≈ 1e-3 (exactly)
        model.zero_grad()
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        session.finish_grads()
        expected = 2 * lam * (w.detach().double() - 1000.0) * mask["0.weight"]
        torch.testing.assert_close(w.grad.double(), expected, rtol=1e-6, atol=0)


def test_l2_term_reaches_a_parameter_another_optimizer_steps():
    """Folding the term into one optimizer's weight decay must not skip parameters that
    optimizer does not hold (here the last bias, stepped by SGD)."""
    model = mlp()
    mask = prune(model, 0.8)
    from pacnet import zero_redundant

    zero_redundant(model, mask)
    trainable = {**~mask, "4.bias": torch.ones(1, dtype=torch.bool)}
    adam = torch.optim.Adam(
        [p for n, p in model.named_parameters() if n != "4.bias"], lr=0.01, fused=True
    )
    sgd = torch.optim.SGD([model[4].bias], lr=0.01)
    start, lam = model[4].bias.detach().clone(), 0.3
    gen = torch.Generator().manual_seed(0)
    with train_only(model, trainable, adam, others="frozen", l2=lam):
        for _ in range(4):
            adam.zero_grad()
            sgd.zero_grad()
            ((model(torch.randn(16, 5, generator=gen)) - 1.0) ** 2).mean().backward()
            raw, w = model[4].bias.grad.clone(), model[4].bias.detach().clone()
            adam.step()  # its pre-hook adds the term to every gradient under it
            torch.testing.assert_close(model[4].bias.grad, raw + 2 * lam * (w - start))
            sgd.step()


def test_own_tensors_fold_their_start_as_a_constant_offset():
    """Fused Adam's decay carries the whole term; a fully trainable tensor from a nonzero
    start gets −α·w₀ on its gradient first (fp32 and wider only)."""
    model = mlp()
    mask = prune(model, 0.8)
    from pacnet import zero_redundant

    zero_redundant(model, mask)
    start = model[4].bias.detach().clone()
    trainable = {**~mask, "4.bias": torch.ones(1, dtype=torch.bool)}
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, fused=True)
    lam = 0.3
    with train_only(model, trainable, optimizer, others="frozen", l2=lam) as session:
        train(model, optimizer, steps=2)
        assert session.folding.on
        [(param, offset)] = session.folding.offsets
        assert param is model[4].bias
        assert torch.equal(offset, start * (-2 * lam))
        assert all(g["weight_decay"] == 2 * lam for g in optimizer.param_groups)
    assert all(g["weight_decay"] == 0 for g in optimizer.param_groups)

    half = mlp().to(torch.bfloat16)
    mask = prune(half, 0.8)
    zero_redundant(half, mask)
    trainable = {**~mask, "4.bias": torch.ones(1, dtype=torch.bool)}
    optimizer = torch.optim.Adam(half.parameters(), lr=0.01, fused=True)
    with train_only(half, trainable, optimizer, others="frozen", l2=lam) as session:
        gen = torch.Generator().manual_seed(0)
        for _ in range(2):
            optimizer.zero_grad()
            x = torch.randn(16, 5, generator=gen).to(torch.bfloat16)
            ((half(x) - 1.0) ** 2).mean().backward()
            optimizer.step()
        assert not session.folding.on and session.folding.offsets == []  # explicit w − w₀
