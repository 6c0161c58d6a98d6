"""Data in the ecosystem's shapes: Datasets, DataLoaders, re-iterables, dict batches."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from pacnet import Data, FitConfig, PacnetError, allocate, calibrate, evaluate, fit, prune


class Regressor(nn.Module):
    """Takes keyword inputs and returns its own loss, as Hugging Face models do."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.head = nn.Linear(16, 1)

    def forward(self, inputs, labels=None, weight=None):
        out = self.head(self.body(inputs))
        loss = None if labels is None else nn.functional.mse_loss(out, labels)
        return {"loss": loss, "logits": out}


class Records(Dataset):
    """A map-style dataset of dict samples."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"inputs": self.x[i], "labels": self.y[i]}


def _data(seed, n=64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen)
    return x, x.sum(1, keepdim=True).sin() + seed


def _mse(output, batch):
    return nn.functional.mse_loss(output["logits"], batch["labels"])


def _run(source, target, loss_fn):
    """Allocate and calibrate on the given data; the source outputs before and after."""
    model = Regressor()
    mask = prune(model, 0.8)
    cfg = FitConfig(steps=8, batch_size=16)
    allocate(model, mask, source, loss_fn, cfg)
    model.eval()
    probe = torch.randn(8, 4, generator=torch.Generator().manual_seed(9))
    before = model(probe)["logits"]
    tasks, _ = calibrate(model, mask, target, loss_fn, cfg, lam=0.01)
    with tasks.use(model, "source"):
        after = model(probe)["logits"]
    return model, tasks, before, after


def test_a_dataloader_of_dict_batches_with_the_models_own_loss():
    xs, ys = _data(0)
    xt, yt = _data(1, 24)
    loaders = [
        DataLoader(Records(x, y), batch_size=16, shuffle=True,
                   generator=torch.Generator().manual_seed(0))
        for x, y in ((xs, ys), (xt, yt))
    ]  # fmt: skip
    model, tasks, before, after = _run(loaders[0], loaders[1], None)
    assert torch.equal(before, after)  # the source, exactly
    reference, ref_tasks, _, _ = _run(
        Data(xs, ys), Data(xt, yt), lambda out, y: nn.functional.mse_loss(out["logits"], y)
    )
    assert tasks.names == ref_tasks.names
    assert {n: t.sum() for n, t in tasks.trainable(model).items()} == {
        n: t.sum() for n, t in ref_tasks.trainable(reference).items()
    }


@pytest.mark.parametrize("shape", ["dataset", "list", "tensor_dataset"])
def test_datasets_and_lists_of_batches(shape):
    xs, ys = _data(0)
    xt, yt = _data(1, 24)
    if shape == "dataset":  # pacnet draws seeded batches of cfg.batch_size
        source, target, loss = Records(xs, ys), Records(xt, yt), _mse
    elif shape == "list":
        source = [{"inputs": xs[i : i + 16], "labels": ys[i : i + 16]} for i in range(0, 64, 16)]
        target = [{"inputs": xt[:12], "labels": yt[:12]}, {"inputs": xt[12:], "labels": yt[12:]}]
        loss = None
    else:  # (inputs, labels) samples
        source, target = TensorDataset(xs, ys), TensorDataset(xt, yt)

        def loss(out, y):
            return nn.functional.mse_loss(out["logits"], y)

    _, _, before, after = _run(source, target, loss)
    assert torch.equal(before, after)


def test_seeded_dataset_batches_repeat_and_evaluate_takes_any_shape():
    xs, ys = _data(0)
    results = []
    for _ in range(2):
        model = Regressor()
        fit(model, None, Records(xs, ys), FitConfig(steps=5, batch_size=16), seed=3)
        results.append(model.head.weight.detach().clone())
    assert torch.equal(*results)
    loader = DataLoader(Records(xs, ys), batch_size=10)
    by_loader = evaluate(model, loader, None)
    by_data = evaluate(model, Data(xs, ys), lambda out, y: nn.functional.mse_loss(out["logits"], y))
    assert by_loader == pytest.approx(by_data, rel=1e-5)


class Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield {"inputs": torch.zeros(4), "labels": torch.zeros(1)}


def test_what_does_not_fit_says_what_was_expected():
    xs, ys = _data(0)
    model = Regressor()
    cfg = FitConfig(steps=1, batch_size=8)
    cases = [
        (xs, None, "must be pacnet.Data, a map-style Dataset, a DataLoader"),
        ({"inputs": xs}, None, "got dict"),
        (iter([{"inputs": xs, "labels": ys}]), None, "one-shot iterator"),
        ([{"inputs": xs}], None, "a dict batch without 'labels' needs a loss_fn"),
        ([(xs, ys)], None, r"\(inputs, labels\) batch needs a loss_fn"),
        ([(xs, ys, ys)], _mse, r"a batch must be \(inputs, labels\) or a dict.*tuple of 3"),
        ([], _mse, "yields no batch"),
        (Stream(), _mse, "IterableDataset, which yields samples"),
    ]
    for data, loss, message in cases:
        with pytest.raises(PacnetError, match=message):
            fit(model, loss, data, cfg)
    tuples = nn.Sequential(nn.Linear(4, 1))
    tuples.forward = lambda inputs, labels=None: (tuples[0](inputs),)  # no .loss to use
    with pytest.raises(PacnetError, match=r"output \(tuple\) has no loss although the batch"):
        fit(tuples, None, [{"inputs": xs, "labels": ys}], cfg)


class TokenLists:
    """Like a Hugging Face ``datasets.Dataset`` without ``set_format``: dict samples of
    Python ints and lists."""

    def __init__(self, n, ragged=False):
        self.n, self.ragged = n, ragged

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        length = 3 + i % 4 if self.ragged else 5
        return {"input_ids": [(i + j) % 30 for j in range(length)], "labels": i % 2}


class Bag(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.fc = nn.Embedding(30, 8), nn.Linear(8, 2)

    def forward(self, input_ids, labels=None):
        logits = self.fc(self.emb(input_ids).mean(1))
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


def test_dict_samples_of_python_lists_batch_as_hugging_face_collates_them():
    cfg = FitConfig(steps=3, batch_size=8)
    weights = []
    for _ in range(2):
        model = Bag()
        fit(model, None, TokenLists(32), cfg, seed=1)
        weights.append(model.fc.weight.detach().clone())
    assert torch.equal(*weights)
    assert evaluate(model, TokenLists(32), None) > 0
    with pytest.raises(PacnetError, match="'input_ids' has sequences of different lengths"):
        fit(Bag(), None, TokenLists(32, ragged=True), cfg)
