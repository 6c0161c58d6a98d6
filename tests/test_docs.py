"""The Python blocks of the README and of docs/ run as written, so the documented flow is
the tested flow. Each block names what it takes as given; the tests give it that."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import pacnet

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [
    (page, i, block)
    for page in PAGES
    for i, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S))
]


def build_model() -> nn.Module:
    """A small regression network with BatchNorm (its statistics must survive)."""
    return nn.Sequential(
        nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
        nn.Linear(16, 1),
    )  # fmt: skip


def regression() -> dict:
    """The names the blocks on your own model take as given."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    xs, xt = torch.randn(256, 4, generator=gen), torch.randn(32, 4, generator=gen)
    x = torch.randn(8, 4, generator=gen)
    ys, yt = xs.sum(1, keepdim=True).sin(), xt.sum(1, keepdim=True).cos()
    loss_fn = nn.functional.mse_loss
    model = build_model()
    pacnet.fit(model, loss_fn, pacnet.Data(xs, ys), pacnet.FitConfig(steps=100))
    targets = [pacnet.Data(xt, (xt * k).sum(1, keepdim=True).cos()) for k in (1, 2, 3)]
    return {
        "model": model, "build_model": build_model, "loss_fn": loss_fn, "xs": xs, "ys": ys,
        "xt": xt, "yt": yt, "x": x, "mask": pacnet.prune(model, 0.8),
        "cfg": pacnet.FitConfig(steps=40, batch_size=16),
        "source_loader": DataLoader(TensorDataset(xs, ys), batch_size=32, shuffle=True),
        "target_loader": DataLoader(TensorDataset(xt, yt), batch_size=8, shuffle=True),
        "data_a": targets[0], "data_b": targets[1], "data_c": targets[2],
    }  # fmt: skip


def records() -> dict:
    """A model that returns its own loss, and a Dataset of dict samples."""
    from test_batches import Records, Regressor, _data

    model = Regressor()
    return {"model": model, "mask": pacnet.prune(model, 0.8), "records": Records(*_data(0))}


def hugging_face() -> dict:
    from test_integrations import TokenTask, tiny_bert

    return {
        "model": tiny_bert(), "source_data": TokenTask(64, 0, 0),
        "target_data": TokenTask(32, 1, 1), "probe": TokenTask(4, 0, 5).ids, "steps": 3,
    }  # fmt: skip


def lightning_module() -> dict:
    from test_integrations import Images, images

    return {
        "module": Images(), "source_loader": images(64, 0, 0), "target_loader": images(32, 1, 1),
        "probe": torch.randn(4, 1, 8, 8), "steps": 3,
    }  # fmt: skip


def given(block: str) -> dict:
    if "records" in block:
        return records()
    if "source_data" in block:
        return hugging_face()
    if "LightningModule" in block:
        return lightning_module()
    namespace = regression()
    if "after pacnet.allocate" in block:
        data = pacnet.Data(namespace["xs"], namespace["ys"])
        pacnet.allocate(namespace["model"], namespace["mask"], data, nn.functional.mse_loss,
                        namespace["cfg"])  # fmt: skip
    return namespace


def test_the_pages_have_python_blocks():
    assert len(BLOCKS) >= 6
    assert {page.name for page, _, _ in BLOCKS} >= {
        "README.md", "own-model.md", "huggingface.md", "lightning.md", "several-targets.md",
    }  # fmt: skip


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("page,index,block", BLOCKS, ids=[f"{p.name}-{i}" for p, i, _ in BLOCKS])
def test_block_runs_as_written(page, index, block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = given(block)
    exec(compile(block, f"{page.name} python block {index + 1}", "exec"), namespace)
