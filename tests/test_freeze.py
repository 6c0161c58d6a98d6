"""train_only (pacnet.core.freeze): frozen entries bit-identical under every optimizer, the
others trainable or frozen, the context's exit, and bad masks and policies refused."""

import warnings

import pytest
import torch
from conftest import mlp
from freezing import assert_frozen_unchanged, bits_equal, snapshot, train
from torch import nn

from pacnet import PacnetError, prune, train_only

OPTIMIZERS = {
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.1),
    "adam_wd": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.5),
    # no weight decay: frozen entries are provably still, so no write-back happens
    "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "adam_amsgrad": lambda p: torch.optim.Adam(p, lr=0.01, amsgrad=True),
    "adamw_no_decay": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.0),
    # fused kernels (what pacnet's own loop uses on CPU and CUDA)
    "adam_fused": lambda p: torch.optim.Adam(p, lr=0.01, fused=True),
    "sgd_fused_momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, fused=True),
    "adamw_fused_wd": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.5, fused=True),
}
NO_WRITE_BACK = {
    "sgd_nesterov",
    "adam_amsgrad",
    "adamw_no_decay",
    "adam_fused",
    "sgd_fused_momentum",
}

PARKED = {"adam_amsgrad", "adamw_no_decay", "adam_fused"}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("side", ["essential", "redundant"])
def test_frozen_entries_are_bit_identical_after_100_steps(name, side):
    model = mlp()
    mask = prune(model, 0.8)
    trainable = mask if side == "essential" else ~mask
    before = snapshot(model)
    optimizer = OPTIMIZERS[name](model.parameters())
    with train_only(model, trainable, optimizer, others="frozen") as session:
        assert session.restores == (name not in NO_WRITE_BACK), session.reason
        train(model, optimizer)
        # Adam without decay holds frozen entries by its state after the first step
        assert (session.parked == [m.name for m in session.masked]) == (name in PARKED)
        assert session.parked or name not in PARKED
    after = snapshot(model)
    for n, m in trainable.items():
        assert bits_equal(after[n][~m], before[n][~m]), n
        assert (after[n][m] != before[n][m]).float().mean() > 0.9, f"{n} barely trained"
    for n in before:
        if n not in trainable:
            assert bits_equal(after[n], before[n]), f"{n} should be frozen"


def test_zeroing_gradients_alone_would_not_freeze():
    """The reason train_only exists: momentum and weight decay move zero-gradient entries."""
    model = mlp()
    mask = prune(model, 0.8)
    before = snapshot(model)
    optimizer = OPTIMIZERS["adamw"](model.parameters())
    gen = torch.Generator().manual_seed(0)
    for _ in range(10):
        optimizer.zero_grad()
        ((model(torch.randn(16, 5, generator=gen)) - 1) ** 2).mean().backward()
        for n, p in model.named_parameters():
            if n in mask:
                p.grad.mul_(mask[n])
        optimizer.step()
    moved = [
        n for n, m in mask.items() if not torch.equal(model.get_parameter(n)[~m], before[n][~m])
    ]
    assert moved


def test_others_trainable_policy_and_gradients_are_masked():
    model = mlp()
    mask = prune(model, 0.5)
    before = snapshot(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = {}
    with train_only(model, mask, optimizer, others="trainable") as session:
        loss = model(torch.randn(4, 5)).sum()
        loss.backward()
        session.finish_grads()  # what the optimizer (and gradient clipping) will see
        seen = {n: model.get_parameter(n).grad.clone() for n in mask}
        optimizer.step()
    for n, m in mask.items():
        assert torch.count_nonzero(seen[n][~m]) == 0
    assert not torch.equal(model[4].weight, before["4.weight"])  # head not in mask: trained


def test_context_exit_restores_normal_training():
    model = mlp()
    mask = prune(model, 0.8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.1)
    with train_only(model, mask, optimizer, others="frozen"):
        train(model, optimizer, steps=2)
    assert all(p.requires_grad for p in model.parameters())
    before = snapshot(model)
    train(model, optimizer, steps=2)
    n = "0.weight"
    assert not torch.equal(model.get_parameter(n)[~mask[n]], before[n][~mask[n]])


def test_negative_zero_and_exact_path():
    model = mlp()
    mask = prune(model, 0.5)
    with torch.no_grad():
        w = model[0].weight
        w[~mask["0.weight"]] = -0.0
    before = snapshot(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.5)
    with train_only(model, mask, optimizer):
        train(model, optimizer, steps=20)
    m = mask["0.weight"]
    assert bits_equal(model[0].weight.detach()[~m], before["0.weight"][~m])
    assert model[0].weight.detach()[~m].signbit().all()


def test_bad_policy_and_mask_are_rejected():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    mask = prune(model, 0.5)
    with (
        pytest.raises(PacnetError, match="others"),
        train_only(model, mask, optimizer, others="maybe"),
    ):
        pass
    with (
        pytest.raises(PacnetError, match="not a parameter"),
        train_only(nn.Sequential(nn.Linear(5, 16)), mask, optimizer),
    ):
        pass


def test_allocate_in_own_loop_keeps_positive_zero_despite_optimizer_state():
    model = mlp()
    mask = prune(model, 0.8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train(model, optimizer, steps=3)  # momentum buffers hold values at every entry
    from pacnet import zero_redundant

    zero_redundant(model, mask)
    model(torch.randn(4, 5)).sum().backward()  # a gradient from before the context
    with train_only(model, mask, optimizer):
        for n, m in mask.items():
            assert torch.count_nonzero(model.get_parameter(n).grad[~m]) == 0
        train(model, optimizer, steps=5)
    for n, m in mask.items():
        assert torch.all(model.get_parameter(n).detach()[~m].view(torch.int32) == 0), n


def test_masked_parameter_without_requires_grad_is_accepted():
    model = mlp()
    mask = prune(model, 0.5)
    model[0].weight.requires_grad_(False)
    before = model[0].weight.detach().clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with train_only(model, mask, optimizer):
        train(model, optimizer, steps=3)
    assert torch.equal(model[0].weight, before)


@pytest.mark.parametrize("side", ["essential", "redundant"])
def test_frozen_entries_moved_by_nonfinite_gradients_are_put_back_on_exit(side):
    model = mlp()
    mask = prune(model, 0.8)
    if side == "redundant":
        from pacnet import zero_redundant

        zero_redundant(model, mask)  # frozen entries all +0.0: no copy is kept
    trainable = mask if side == "redundant" else ~mask
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    before = snapshot(model)
    frozen = ~trainable["2.weight"]

    def poison(grad):
        return grad.masked_fill(frozen, float("inf"))

    with (
        pytest.warns(RuntimeWarning, match="2.weight"),
        train_only(model, trainable, optimizer) as session,
    ):
        assert not session.restores
        handle = model[2].weight.register_hook(poison)
        train(model, optimizer, steps=3)
        handle.remove()
        assert not torch.isfinite(model[2].weight[frozen]).all()  # moved during training
    assert "2.weight" in session.rescued  # (the inf spreads to earlier layers too)
    assert_frozen_unchanged(model, trainable, before)


def test_a_group_of_fully_trainable_parameters_keeps_its_own_weight_decay():
    model = mlp()
    mask = prune(model, 0.8)
    trainable = {**~mask, "4.bias": torch.ones(1, dtype=torch.bool)}
    rest = [p for n, p in model.named_parameters() if n != "4.bias"]
    optimizer = torch.optim.Adam(
        [{"params": rest}, {"params": [model[4].bias], "weight_decay": 0.01}], lr=0.01, fused=True
    )
    with train_only(model, trainable, optimizer, others="frozen", l2=0.1) as session:
        train(model, optimizer, steps=5)
        assert not session.restores and session.parked
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0, 0.01]


def test_requires_grad_comes_back_even_if_the_exit_warning_is_an_error():
    model = mlp()
    mask = prune(model, 0.8)
    frozen = ~mask["2.weight"]
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with (
            pytest.raises(RuntimeWarning, match="put back"),
            train_only(model, mask, optimizer, others="frozen"),
        ):
            hook = model[2].weight.register_hook(lambda g: g.masked_fill(frozen, float("inf")))
            train(model, optimizer, steps=2)
            hook.remove()
    assert all(p.requires_grad for p in model.parameters())


def test_a_context_left_open_does_not_abort_the_interpreter_at_exit(tmp_path):
    """Closing the context while torch tears its tensors down used to abort the process."""
    import subprocess
    import sys

    script = tmp_path / "left_open.py"
    script.write_text(
        "import torch\n"
        "from torch import nn\n"
        "from pacnet import prune, train_only\n"
        "model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 1))\n"
        "optimizer = torch.optim.Adam(model.parameters(), lr=0.01)\n"
        "context = train_only(model, prune(model, 0.5), optimizer)\n"
        "context.__enter__()\n"
        "model(torch.randn(4, 5)).sum().backward()\n"
        "optimizer.step()\n"
        "print('trained')\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.strip() == "trained"


def test_steps_that_differ_from_the_last_one_are_prepared_anew():
    """The kept per-step lists are not reused when a gradient is missing, a setting changed
    or the optimizer's state was replaced: frozen entries stay exact and the term follows."""
    model = mlp()
    mask = prune(model, 0.8)
    from pacnet import zero_redundant

    zero_redundant(model, mask)
    trainable = {**~mask, "4.bias": torch.ones(1, dtype=torch.bool)}
    before = snapshot(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, fused=True)
    gen = torch.Generator().manual_seed(0)
    with train_only(model, trainable, optimizer, others="frozen", l2=0.3) as session:
        for step in range(12):
            optimizer.zero_grad()
            ((model(torch.randn(16, 5, generator=gen)) - 1.0) ** 2).mean().backward()
            if step == 4:  # no gradient for the own bias this step: it must not move
                model[4].bias.grad = None
                bias = model[4].bias.detach().clone()
            if step == 7:  # the user's own decay from now on: the write-back takes over
                optimizer.param_groups[0]["weight_decay"] = 0.01
            optimizer.step()
            if step == 4:
                assert torch.equal(model[4].bias, bias)
        assert session.restores and "weight decay" in session.reason
    assert session.rescued == []
    assert_frozen_unchanged(model, trainable, before)
    assert not torch.equal(model[4].bias, before["4.bias"])
