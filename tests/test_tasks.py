"""The per-task tensors of one network (pacnet.core.tasks): switching tasks, buffers, tied
weights, export."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import pacnet
from pacnet import Data, FitConfig, PacnetError, Tasks, allocate, calibrate, prune

FIT = FitConfig(steps=3, batch_size=4, lr=1e-2)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out, y)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def xy(salt: int = 0) -> Data:
    gen = torch.Generator().manual_seed(salt)
    return Data(torch.randn(16, 8, generator=gen), torch.randn(16, 2, generator=gen))


def allocated() -> tuple[nn.Module, pacnet.Mask, dict]:
    model = mlp()
    mask = prune(model, 0.5)
    allocate(model, mask, xy(), mse, FIT)
    return model, mask, state(model)


class ReplacedBuffer(nn.Module):
    """A running mean assigned anew (not updated in place) in every training forward."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(8, 8)
        self.fc = nn.Linear(8, 2)
        self.register_buffer("ema", torch.zeros(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.hidden(x)
        if self.training:
            self.ema = 0.9 * self.ema + 0.1 * h.detach().mean(0)
        return self.fc(h - self.ema)


def test_the_active_task_keeps_buffers_its_forward_replaced(tmp_path):
    torch.manual_seed(0)
    model = ReplacedBuffer()
    mask = prune(model, 0.5)
    allocate(model, mask, xy(), mse, FIT)
    tasks, _ = calibrate(model, mask, xy(1), mse, FIT)
    model.eval()
    x = xy(3).x
    with torch.no_grad():
        want = model(x)
        with tasks.use(model, "target"):
            assert torch.equal(model(x), want)
        pacnet.save(tmp_path / "net.safetensors", model, tasks)
        assert torch.equal(model(x), want)  # saving does not put back a stale buffer
        with tasks.use(model, "source"):
            pass
        assert torch.equal(model(x), want)


def test_a_refused_task_switch_changes_nothing():
    model, mask, _ = allocated()
    tasks, _ = calibrate(model, mask, xy(1), mse, FIT)
    model[3].double()  # only the head: the first per-task tensors still match
    with pytest.raises(PacnetError, match=r"tasks\.to"), tasks.use(model, "source"):
        pass
    model[3].float()
    with tasks.use(model, "source"):
        pass
    for name in tasks.names:
        assert tasks.tensors["target"][name] is not tasks.tensors["source"][name], name


class Tied(nn.Module):
    def __init__(self, tie: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(10, 8)
        self.mid = nn.Linear(8, 8)
        self.lm_head = nn.Linear(8, 10, bias=False)
        if tie:
            self.lm_head.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(torch.relu(self.mid(self.emb(x))))


@pytest.mark.parametrize("tie", [True, False])
def test_a_mask_from_a_model_tied_otherwise_is_refused(tie, tmp_path):
    mask = prune(Tied(tie), 0.5)
    mask.save(tmp_path / "m.safetensors")
    loaded = pacnet.Mask.load(tmp_path / "m.safetensors")
    Tasks(Tied(tie), loaded)
    with pytest.raises(PacnetError, match="tie"):
        Tasks(Tied(not tie), loaded)


def test_export_of_hook_based_weight_norm_fails_in_one_line():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = nn.Sequential(nn.utils.weight_norm(nn.Linear(8, 8)), nn.ReLU(), nn.Linear(8, 2))
    mask = prune(model, 0.5)
    tasks, _ = calibrate(model, mask, xy(1), mse, FIT)
    with pytest.raises(PacnetError, match="parametrizations"):
        tasks.export(model, "source")
