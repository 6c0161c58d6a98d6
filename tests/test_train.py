import pytest
import torch
from conftest import mlp
from torch import nn

from pacnet import Data, FitConfig, PacnetError, evaluate, fit


def data(seed=0, n=64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    return Data(x, x.sum(1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g))


def test_same_seed_same_result_bit_for_bit():
    outs = []
    for _ in range(2):
        model = mlp(seed=1)
        fit(model, nn.functional.mse_loss, data(), FitConfig(steps=50, batch_size=8), seed=3)
        outs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(outs[0], outs[1])


def test_training_reduces_the_loss():
    model = mlp(seed=1)
    train = data()
    before = evaluate(model, train, nn.functional.mse_loss)
    fit(model, nn.functional.mse_loss, train, FitConfig(steps=200, batch_size=16, lr=1e-2))
    assert evaluate(model, train, nn.functional.mse_loss) < 0.5 * before


def test_early_stopping_restores_the_best_state():
    model = mlp(seed=1)
    val = data(seed=9, n=32)
    cfg = FitConfig(steps=400, batch_size=4, lr=5e-2, eval_every=5, patience=3)
    result = fit(model, nn.functional.mse_loss, data(n=8), cfg, val=val)
    assert result.steps < 400  # stopped early
    assert evaluate(model, val, nn.functional.mse_loss) == pytest.approx(result.best_val, rel=1e-5)
    assert result.best_val == min(v for _, v in result.val_curve)


def test_bad_inputs():
    with pytest.raises(PacnetError, match="empty"):
        Data(torch.zeros(0, 5), torch.zeros(0, 1))
    with pytest.raises(PacnetError, match="differ in length"):
        Data(torch.zeros(3, 5), torch.zeros(2, 1))
    with pytest.raises(PacnetError, match="optimizer"):
        FitConfig(optimizer="lbfgs2")
    with pytest.raises(PacnetError, match="validation"):
        fit(mlp(), nn.functional.mse_loss, data(), FitConfig(patience=2))
    with pytest.raises(PacnetError, match="inputs hold NaN or inf"):
        Data(torch.full((4, 5), float("nan")), torch.zeros(4, 1))
    with pytest.raises(PacnetError, match="labels hold NaN or inf"):
        Data(torch.zeros(4, 5), torch.full((4, 1), float("inf")))
    diverging = FitConfig(steps=50, lr=1e6, optimizer="sgd", momentum=0.0)
    big = Data(torch.full((4, 5), 1e3), torch.full((4, 1), 1e3))
    with pytest.raises(PacnetError, match="loss became"):
        fit(mlp(), nn.functional.mse_loss, big, diverging)


def test_fit_puts_back_every_modules_mode():
    model = nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.5), nn.Linear(8, 1))
    model.eval()
    model[1].train()  # a mixed state, as a frozen body with a training head leaves
    data = Data(torch.randn(16, 5), torch.randn(16, 1))
    fit(model, nn.functional.mse_loss, data, FitConfig(steps=2, batch_size=4))
    assert [m.training for m in model.modules()] == [False, False, True, False]
    model.train()
    with pytest.raises(PacnetError, match="loss became"):  # also when training fails
        bad = Data(torch.randn(16, 5), torch.full((16, 1), 1e30))
        fit(model, lambda o, y: (o - y).square().mean() * 1e30, bad, FitConfig(steps=2))
    assert all(m.training for m in model.modules())
