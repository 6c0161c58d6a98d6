import warnings

import pytest
import torch
from conftest import mlp
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


def train(model, optimizer, steps=100, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 5, generator=gen)
        optimizer.zero_grad()
        ((model(x) - 1.0) ** 2).mean().backward()
        optimizer.step()


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def bits_equal(a, b):
    return torch.equal(a.view(torch.int32), b.view(torch.int32))


def assert_frozen_unchanged(model, trainable, before):
    """Every entry ``trainable`` marks False holds its value from ``before``, bit for bit."""
    for n, t in trainable.items():
        assert bits_equal(model.get_parameter(n).detach()[~t], before[n][~t]), n


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


def test_write_back_is_chosen_unless_provably_unneeded():
    model = mlp()
    mask = prune(model, 0.8)
    cases = {
        "adam": (torch.optim.Adam(model.parameters(), lr=0.1), "auto", False),
        "adam_wd": (torch.optim.Adam(model.parameters(), weight_decay=0.1), "auto", True),
        "rmsprop": (torch.optim.RMSprop(model.parameters()), "auto", True),
        "sgd_maximize": (torch.optim.SGD(model.parameters(), lr=0.1, maximize=True), "auto", True),
        "always": (torch.optim.Adam(model.parameters(), lr=0.1), "always", True),
    }
    for label, (optimizer, restore, expected) in cases.items():
        with train_only(model, mask, optimizer, restore=restore) as session:
            assert session.restores == expected, label
    used = torch.optim.Adam(model.parameters(), lr=0.1)
    train(model, used, steps=1)
    with train_only(model, mask, used) as session:
        assert session.restores and "state" in session.reason


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


def test_weight_decay_switched_on_inside_the_context_switches_to_write_back():
    model = mlp()
    mask = prune(model, 0.8)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    before = snapshot(model)
    with train_only(model, mask, optimizer) as session:
        train(model, optimizer, steps=2)
        assert session.parked and not session.restores
        optimizer.param_groups[0]["weight_decay"] = 0.1
        train(model, optimizer, steps=3)
        assert session.restores and "weight decay" in session.reason
        assert_frozen_unchanged(model, mask, before)
    assert session.rescued == []
    assert_frozen_unchanged(model, mask, before)


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


def calibration_run(restore, others="frozen", l2=0.3, checkpoint_midway=False):
    """Train the redundant entries (and the last bias) with fused Adam; return the model,
    the optimizer, the session and the trainable mask."""
    model = mlp()
    mask = prune(model, 0.8)
    from pacnet import zero_redundant

    zero_redundant(model, mask)
    trainable = {**~mask, "4.bias": torch.ones(1, dtype=torch.bool)}
    if others == "trainable":  # 4.weight stays outside the mask and the l2 term
        trainable.pop("4.bias")
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, fused=True)
    with train_only(model, trainable, optimizer, others=others, l2=l2, restore=restore) as s:
        train(model, optimizer, steps=20)
        if checkpoint_midway:  # what a loop that checkpoints and resumes does
            saved = optimizer.state_dict()
            assert not any(
                torch.isinf(v).any() for st in saved["state"].values() for v in st.values()
            ), "parking leaked into the state dict"
            assert all(g["weight_decay"] == 0 for g in saved["param_groups"])
            optimizer.load_state_dict(saved)
            assert s.parked == []  # parked again from scratch after the next step
        train(model, optimizer, steps=20, seed=1)
    return model, optimizer, s, trainable


@pytest.mark.parametrize("case", ["term_everywhere", "others_trainable", "checkpoint_midway"])
def test_parked_adam_trains_like_zeroed_gradients_and_hands_back_clean_state(case):
    """Parking (Adam's second moment at +inf on frozen entries, the l2 term as the kernel's
    weight decay) gives what zeroing the frozen gradients and the write-back path give."""
    others = "trainable" if case == "others_trainable" else "frozen"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a rescue on exit would mean frozen entries moved
        model, optimizer, session, trainable = calibration_run(
            "auto", others, checkpoint_midway=case == "checkpoint_midway"
        )
    ref_model, ref_optimizer, ref_session, _ = calibration_run("always", others)
    assert session.parked == [m.name for m in session.masked] != [], session.parked
    assert ref_session.parked == [] and session.rescued == []
    before = mlp().state_dict()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p, ref_model.get_parameter(n), rtol=1e-4, atol=1e-6)
        if n in trainable:
            assert bits_equal(p.detach()[~trainable[n]], before[n][~trainable[n]]), n
    assert not torch.equal(model[4].bias, before["4.bias"])  # trained, under the term or not
    assert all(g["weight_decay"] == 0 for g in optimizer.param_groups)
    for p, state in optimizer.state.items():
        ref = ref_optimizer.state[ref_model.get_parameter(_name(model, p))]
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.isfinite(state[key]).all()
            torch.testing.assert_close(state[key], ref[key], rtol=1e-3, atol=1e-9)
            name = _name(model, p)
            if name in trainable:
                assert torch.count_nonzero(state[key][~trainable[name]]) == 0, (name, key)


def _name(model, param):
    return next(n for n, p in model.named_parameters() if p is param)


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


def test_adam_without_second_moment_decay_is_not_parked():
    """β2 = 0 would make β2·inf = NaN: such an Adam takes the zeroed-gradient path."""
    model = mlp()
    mask = prune(model, 0.8)
    before = snapshot(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.9, 0.0), fused=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with train_only(model, mask, optimizer) as session:
            train(model, optimizer, steps=5)
            assert session.parked == []
            assert torch.isfinite(model[0].weight).all()
    assert_frozen_unchanged(model, mask, before)


def test_loading_optimizer_state_that_moves_frozen_entries_switches_to_write_back():
    model = mlp()
    mask = prune(model, 0.8)
    earlier = torch.optim.Adam(model.parameters(), lr=0.01)
    train(model, earlier, steps=3)  # an unmasked run: moments at every entry
    state = earlier.state_dict()
    model = mlp()
    before = snapshot(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with train_only(model, mask, optimizer) as session:
            assert not session.restores
            optimizer.load_state_dict(state)
            assert session.restores and "nonzero at frozen entries" in session.reason
            train(model, optimizer, steps=3)
            assert_frozen_unchanged(model, mask, before)  # held during training too
    assert session.rescued == []


def test_write_back_path_puts_non_finite_frozen_values_back_on_exit():
    model = mlp()
    mask = prune(model, 0.8)
    before = snapshot(model)
    frozen = ~mask["2.weight"]
    optimizer = torch.optim.RMSprop(model.parameters(), lr=0.01)
    with (
        pytest.warns(RuntimeWarning, match="2.weight"),
        train_only(model, mask, optimizer) as session,
    ):
        assert session.restores
        hook = model[2].weight.register_hook(lambda g: g.masked_fill(frozen, float("nan")))
        train(model, optimizer, steps=1)
        hook.remove()
        assert torch.isnan(model[2].weight[frozen]).all()  # NaN·0 + f is NaN
    assert bits_equal(model[2].weight.detach()[frozen], before["2.weight"][frozen])


def test_unfused_adam_whose_eps_vanishes_in_float16_writes_frozen_entries_back():
    model = mlp().half()
    mask = prune(model, 0.8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True)  # eps 1e-8 -> 0
    with train_only(model, mask, optimizer) as session:
        assert session.restores and "eps" in session.reason


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


def test_parked_parameters_leave_no_gradient_at_frozen_entries():
    model = mlp()
    mask = prune(model, 0.8)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, fused=True)
    with train_only(model, mask, optimizer) as session:
        train(model, optimizer, steps=3)
        assert session.parked
        model(torch.randn(4, 5)).sum().backward()  # a gradient nobody steps with
    for n, m in mask.items():
        assert torch.count_nonzero(model.get_parameter(n).grad[~m]) == 0, n


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
