"""The README's Python blocks run as written, so the documented flow is the tested flow."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import pacnet

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def build_model() -> nn.Module:
    """A small regression network with BatchNorm (its statistics must survive)."""
    return nn.Sequential(
        nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
        nn.Linear(16, 1),
    )  # fmt: skip


def given() -> dict:
    """The names the README's blocks take as given."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    xs, xt = torch.randn(256, 4, generator=gen), torch.randn(32, 4, generator=gen)
    x = torch.randn(8, 4, generator=gen)
    ys = xs.sum(1, keepdim=True).sin()
    yt = xt.sum(1, keepdim=True).cos()
    loss_fn = nn.functional.mse_loss
    model = build_model()
    pacnet.fit(model, loss_fn, pacnet.Data(xs, ys), pacnet.FitConfig(steps=100))
    mask = pacnet.prune(model, 0.8)
    cfg = pacnet.FitConfig(steps=40, batch_size=16)
    targets = [pacnet.Data(xt, (xt * k).sum(1, keepdim=True).cos()) for k in (1, 2, 3)]
    return {
        "model": model,
        "build_model": build_model,
        "loss_fn": loss_fn,
        "xs": xs,
        "ys": ys,
        "xt": xt,
        "yt": yt,
        "x": x,
        "source_loader": DataLoader(TensorDataset(xs, ys), batch_size=32, shuffle=True),
        "target_loader": DataLoader(TensorDataset(xt, yt), batch_size=8, shuffle=True),
        "mask": mask,
        "cfg": cfg,
        "data_a": targets[0],
        "data_b": targets[1],
        "data_c": targets[2],
    }


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = given()
    if "after pacnet.allocate" in BLOCKS[index]:
        pacnet.allocate(
            namespace["model"], namespace["mask"], pacnet.Data(namespace["xs"], namespace["ys"]),
            namespace["loss_fn"], namespace["cfg"],
        )  # fmt: skip
    exec(compile(BLOCKS[index], f"README.md python block {index + 1}", "exec"), namespace)
