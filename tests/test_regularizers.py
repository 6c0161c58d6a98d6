import math

import pytest
import torch
from torch import nn

from pacnet import Data, PacnetError
from pacnet.methods.delta import channel_attention
from pacnet.methods.regularizers import (
    L2,
    FeatureDistance,
    SpectralShrinkage,
    StartingPoint,
    shrinkage,
)


def test_l2sp_value_and_gradient_on_known_weights():
    w = nn.Parameter(torch.tensor([1.0, 2.0, -1.0]))
    term = StartingPoint([w])  # w0 is copied now
    with torch.no_grad():
        w.copy_(torch.tensor([2.0, 0.0, -1.0]))
    value = term()
    assert value.item() == pytest.approx(0.5 * (1.0 + 4.0 + 0.0))
    value.backward()
    assert torch.equal(w.grad, torch.tensor([1.0, -2.0, 0.0]))  # w - w0


def test_l2_value():
    a, b = nn.Parameter(torch.tensor([3.0, 4.0])), nn.Parameter(torch.tensor([[1.0]]))
    assert L2([a, b])().item() == pytest.approx(0.5 * (25 + 1))
    with pytest.raises(PacnetError):
        L2([])


@pytest.mark.parametrize("k", [1, 2, 5])
def test_bss_matches_svdvals(k):
    torch.manual_seed(0)
    features = torch.randn(8, 5, requires_grad=True)
    sigma = torch.linalg.svdvals(features.detach())
    expected = sigma.sort().values[:k].square().sum()
    value = shrinkage(features, k)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    value.backward()
    assert features.grad is not None and torch.isfinite(features.grad).all()


def test_bss_reads_the_features_entering_the_head():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    term = SpectralShrinkage(model, "2", k=2)
    x = torch.randn(10, 4)
    model(x)
    features = torch.relu(model[0](x))
    assert term().item() == pytest.approx(shrinkage(features, 2).item(), rel=1e-6)
    term.close()


class Maps(nn.Module):
    """Returns given feature maps from a named layer, so the distance can be hand-computed."""

    def __init__(self, maps):
        super().__init__()
        self.maps = maps
        self.layer = nn.Identity()

    def forward(self, x):
        return self.layer(self.maps + 0 * x.sum())


def test_delta_attention_weighted_distance_on_tiny_feature_maps():
    # B=2, C=2, H=W=2
    mine = torch.tensor(
        [
            [[[1.0, 1.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 2.0]]],
            [[[0.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]],
        ]
    )
    theirs = torch.zeros_like(mine)
    model, source = Maps(mine), Maps(theirs)
    attention = {"layer": torch.tensor([0.75, 0.25])}
    term = FeatureDistance(model, source, ["layer"], attention)
    model.train()
    model(torch.zeros(2))
    # per sample and channel ||diff||^2 / (H W): b0 = [4/4, 4/4], b1 = [0, 4/4]
    # weights C * a = [1.5, 0.5]: b0 -> 1.5 + 0.5 = 2.0, b1 -> 0.5; mean 1.25; half 0.625
    assert term().item() == pytest.approx(0.625)
    uniform = FeatureDistance(model, source, ["layer"])
    model(torch.zeros(2))
    assert uniform().item() == pytest.approx(0.5 * (2.0 + 1.0) / 2)
    term.close()
    uniform.close()


def test_delta_runs_the_source_on_the_same_batch_and_is_zero_at_the_start():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    source = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    source.load_state_dict(model.state_dict())
    term = FeatureDistance(model, source, ["0"])
    model.train()
    model(torch.randn(5, 3))
    assert term().item() == 0.0
    with torch.no_grad():
        model[0].weight.add_(1.0)
    x = torch.randn(5, 3)
    model(x)
    expected = 0.5 * (model[0](x) - source[0](x)).square().sum(1).mean()
    assert term().item() == pytest.approx(expected.item(), rel=1e-5)
    term.close()


def test_channel_attention_ranks_the_channel_that_matters():
    model = nn.Sequential(nn.Linear(2, 3, bias=False), nn.Linear(3, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(3, 2) + torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]]))
        model[1].weight.copy_(torch.tensor([[2.0, 0.0, 0.5]]))
    x = torch.randn(64, 2)
    data = Data(x, model(x).detach())
    attention = channel_attention(model, ["0"], data, nn.functional.mse_loss, temperature=5.0)["0"]
    with torch.no_grad():
        h = model[0](x)
        deltas = torch.tensor(
            [((model[1].weight[0, c] * h[:, c]) ** 2).mean() for c in range(3)], dtype=torch.float64
        )
    z = (deltas - deltas.mean()) / deltas.std(correction=0)  # NumPy's std, as TLlib
    assert torch.allclose(attention, torch.softmax(z / 5.0, 0).float(), atol=1e-5)
    assert attention[1] < attention[2] < attention[0]  # channel 1 is unused by the head
    assert math.isclose(float(attention.sum()), 1.0, rel_tol=1e-6)
