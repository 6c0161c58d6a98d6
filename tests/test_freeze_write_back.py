"""Frozen entries written back after each step (pacnet.core.freeze.write_back): chosen
unless provably unneeded, switched to when the optimizer starts moving frozen entries, and
exact with non-finite values."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import mlp
from freezing import assert_frozen_unchanged, bits_equal, snapshot, train

from pacnet import prune, train_only


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
