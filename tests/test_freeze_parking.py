"""Adam's second moment parked at +inf (pacnet.core.freeze.parking): it trains like zeroed
gradients, hands back clean state, leaves no gradient at frozen entries, and is used only
where it is exact."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import mlp
from freezing import assert_frozen_unchanged, bits_equal, snapshot, train

from pacnet import prune, train_only


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
