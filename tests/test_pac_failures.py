"""Allocate and Calibrate that fail part way: the model keeps what it had (the source task,
an earlier target, the free entries)."""

from __future__ import annotations

import pytest
import torch
from test_tasks import FIT, allocated, mse, state, xy

from pacnet import Data, FitConfig, PacnetError, calibrate


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and torch.equal(a[k].reshape(-1).view(torch.uint8),
                                                 b[k].reshape(-1).view(torch.uint8))
        for k in a
    )  # fmt: skip


def test_a_failed_calibration_leaves_the_source_in_the_model():
    model, mask, after = allocated()
    calls = [0]

    def interrupted(out, y):
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        return mse(out, y)

    with pytest.raises(KeyboardInterrupt):
        calibrate(model, mask, xy(1), interrupted, FIT)
    assert same(state(model), after)  # nothing of the half-trained target is left
    with pytest.raises(PacnetError, match="loss became"):
        calibrate(model, mask, Data(xy(1).x, xy(1).y * 1e3), mse,
                  FitConfig(steps=20, batch_size=4, lr=1e3, optimizer="sgd"))  # fmt: skip
    assert same(state(model), after)
    tasks, _ = calibrate(model, mask, xy(1), mse, FIT)  # the retry builds on the true source
    with tasks.use(model, "source"):
        assert same(state(model), after)


def test_a_failed_second_target_leaves_the_first_and_the_free_entries():
    model, mask, after = allocated()
    tasks, _ = calibrate(model, mask, xy(1), mse, FIT, task="t1", reserve=0.5)
    with tasks.use(model, "t1"):
        t1 = state(model)
    owners = {n: o.clone() for n, o in tasks.owners().items()}

    def broken(out, y):
        raise RuntimeError("boom")

    with pytest.raises(PacnetError, match="boom") as info:  # one line, the cause attached
        calibrate(model, mask, xy(2), broken, FIT, tasks=tasks, task="t2")
    assert isinstance(info.value.__cause__, RuntimeError)
    assert tasks.order == ["source", "t1"] and tasks.active == "t1"
    assert all(torch.equal(o, owners[n]) for n, o in tasks.owners().items())
    assert same(state(model), t1)
    tasks, _ = calibrate(model, mask, xy(2), mse, FIT, tasks=tasks, task="t2")
    with tasks.use(model, "source"):
        assert same(state(model), after)
    with tasks.use(model, "t1"):
        assert same(state(model), t1)
