"""train_only when the optimizer changes under it (pacnet.core.freeze.optimizer_state and
the review in handle): groups and settings changed inside the context, optimizer state
cleared or replaced, an eps of 0; a steady loop reviews nothing."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import mlp
from freezing import Watch, run, tanh_mlp

from pacnet import prune, train_only, zero_redundant


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
