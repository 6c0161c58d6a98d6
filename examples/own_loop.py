"""PAC-Net in your own training loop around a DataLoader.

A small regression network with BatchNorm learns a source function from many samples; a
shifted target function has few. Allocate and Calibrate run in plain PyTorch loops wrapped
in ``pacnet.train_only``; the source comes back bit for bit.

    python examples/own_loop.py
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import pacnet


def task(n: int, shift: float, seed: int) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 4, generator=gen) * 2 - 1
    y = torch.sin(3 * x[:, :1] + shift) + x[:, 1:2] * x[:, 2:3] + 0.05 * torch.randn(n, 1)
    return TensorDataset(x, y)


def run(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, epochs: int):
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()


@torch.no_grad()
def rmse(model: nn.Module, data: TensorDataset) -> float:
    model.eval()
    x, y = data.tensors
    return float((model(x) - y).square().mean().sqrt())


def main() -> None:
    torch.manual_seed(0)
    source, source_test = task(2000, 0.0, 1), task(500, 0.0, 2)
    target, target_test = task(40, 1.0, 3), task(500, 1.0, 4)
    loader = DataLoader(source, batch_size=64, shuffle=True)
    model = nn.Sequential(
        nn.Linear(4, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
        nn.Linear(64, 1),
    )  # fmt: skip
    run(model, loader, torch.optim.Adam(model.parameters(), lr=3e-3), epochs=15)
    print(f"source model: source RMSE {rmse(model, source_test):.4f}")

    mask = pacnet.prune(model, ratio=0.8)  # Prune: 20 % of the weights stay essential
    print(mask.plan.describe())
    pacnet.zero_redundant(model, mask)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with pacnet.train_only(model, mask, optimizer):  # Allocate: essential weights retrain
        run(model, loader, optimizer, epochs=10)
    after_allocate = rmse(model, source_test)
    before_target = rmse(model, target_test)
    x_test = source_test.tensors[0]
    model.eval()
    y_allocated = model(x_test)
    print(f"after Allocate: source RMSE {after_allocate:.4f}")

    tasks = pacnet.Tasks(model, mask)
    tasks.add("target")
    tasks.activate(model, "target")
    train = tasks.trainable(model)  # the redundant weights and the target's own tensors
    optimizer = torch.optim.Adam([p for n, p in model.named_parameters() if n in train], 3e-3)
    with pacnet.train_only(model, train, optimizer, others="frozen", l2=0.01):  # Calibrate
        run(model, DataLoader(target, batch_size=8, shuffle=True), optimizer, epochs=60)
    target_rmse = rmse(model, target_test)
    with tasks.use(model, "source"):
        source_after = rmse(model, source_test)
        exact = torch.equal(model(x_test), y_allocated)
    print(f"after Calibrate: source RMSE {source_after:.4f} (bit-identical: {exact})")
    print(f"target RMSE {target_rmse:.4f} (the source model on the target: {before_target:.4f})")
    assert exact and source_after == after_allocate and target_rmse < before_target


if __name__ == "__main__":
    main()
