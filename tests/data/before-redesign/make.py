"""Writes the files in this folder with whatever pacnet is importable; they were written by
pacnet as it stood before the package was redesigned (the same formats), and
tests/test_checkpoint.py loads them with the pacnet of today and compares the weights bit
for bit (weights.safetensors: what pacnet loaded then, for each task).

    python tests/data/before-redesign/make.py tests/data/before-redesign
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

import pacnet


class Net(nn.Module):
    """A small CNN with BatchNorm, an embedding and a weight tied between two layers."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(12, 6)
        self.conv = nn.Conv1d(6, 8, 3, padding=1)
        self.norm = nn.BatchNorm1d(8)
        self.mix = nn.Linear(8, 8)
        self.again = nn.Linear(8, 8)
        self.again.weight = self.mix.weight  # tied
        self.head = nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.conv(self.embed(ids).transpose(1, 2))).relu().mean(-1)
        return self.head(self.again(self.mix(h).relu()).relu())


def data(seed: int, n: int = 64) -> pacnet.Data:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 12, (n, 5), generator=gen)
    return pacnet.Data(ids, (ids.float().mean(1, keepdim=True) * (seed + 1)).sin().repeat(1, 3))


def probe() -> torch.Tensor:
    return torch.randint(0, 12, (7, 5), generator=torch.Generator().manual_seed(99))


def main(folder: Path) -> None:
    torch.manual_seed(0)
    loss = nn.functional.mse_loss
    cfg = pacnet.FitConfig(steps=30, batch_size=16, lr=3e-3)
    model = Net()
    pacnet.fit(model, loss, data(0), cfg)
    mask = pacnet.prune(model, 0.7, warn=False)
    mask.save(folder / "mask.safetensors")
    pacnet.allocate(model, mask, data(0), loss, cfg)
    single = copy.deepcopy(model)  # allocated, before any target
    tasks = pacnet.Tasks(model, mask)
    for i, name in enumerate(["a", "b"]):
        tasks, _ = pacnet.calibrate(
            model, mask, data(i + 1), loss, cfg, tasks=tasks, task=name, reserve=1 - 1 / (2 - i)
        )
    pacnet.save(folder / "tasks.safetensors", model, tasks, extra={"made_by": "make.py"})
    one, _ = pacnet.calibrate(single, mask, data(3), loss, cfg)
    pacnet.save(folder / "one-target.safetensors", single, one)
    network = Net()
    pacnet.fit(network, loss, data(4), cfg)
    pacnet.save_network(folder / "network.safetensors", network, "target", {"made_by": "make.py"})
    x = probe()
    expected = {}
    for task in tasks.order:
        with tasks.use(model, task):
            model.eval()
            expected[f"tasks/{task}"] = model(x).detach().clone()
    for task in one.order:
        with one.use(single, task):
            single.eval()
            expected[f"one-target/{task}"] = single(x).detach().clone()
    network.eval()
    expected["network/target"] = network(x).detach().clone()
    save_file(expected, folder / "expected.safetensors")
    weights = {}  # what pacnet loads for each task, bit for bit on any machine
    for name, names in [("tasks", tasks.order), ("one-target", one.order)]:
        for task in names:
            loaded = pacnet.load(folder / f"{name}.safetensors", Net(), task=task)
            for key, value in loaded.state_dict().items():
                weights[f"{name}/{task}/{key}"] = value.detach().clone().contiguous()
    for key, value in pacnet.load(folder / "network.safetensors", Net()).state_dict().items():
        weights[f"network/target/{key}"] = value.detach().clone().contiguous()
    save_file(weights, folder / "weights.safetensors")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
