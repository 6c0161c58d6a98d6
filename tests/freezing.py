"""Helpers of the train_only tests (tests/test_freeze*.py): a short training loop, snapshots
of a model's parameters, and checks that frozen entries kept their bits."""

from __future__ import annotations

import torch
from torch import nn


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


def tanh_mlp(seed=0):
    """No dead units: every trainable entry gets a nonzero gradient (Adam with eps 0)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)
    )


def bits(t):
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
            assert torch.equal(bits(now)[~t], bits(self.before[n])[~t]), n
        for n in self.whole:
            assert torch.equal(bits(self.model.get_parameter(n)), bits(self.before[n])), n
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
