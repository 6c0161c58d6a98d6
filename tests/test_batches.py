"""Data in the ecosystem's shapes (pacnet.training.batches): Datasets, DataLoaders,
re-iterables, dict batches, named tuples, packed sequences and bare tensors; ``split_off``
holds samples out, and a shuffled loader's check repeats with the seed."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F
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


def _regressor(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1)
    )


def test_split_off_holds_out_samples_the_training_part_does_not_see():
    from pacnet.training.batches import split_off

    x = torch.arange(40.0).reshape(20, 2)
    rest, held = split_off(Data(x), 0.2, seed=1)
    assert (len(rest), len(held)) == (16, 4)
    assert not set(rest.x[:, 0].tolist()) & set(held.x[:, 0].tolist())
    one = [{"input_ids": torch.arange(8)[:, None], "flag": 3}]  # one dict batch of 8 rows
    rest, held = split_off(one, 0.2)
    assert len(rest[0]["input_ids"]) == 6 and len(held[0]["input_ids"]) == 2
    assert held[0]["flag"] == 3
    assert not set(rest[0]["input_ids"].flatten().tolist()) & set(
        held[0]["input_ids"].flatten().tolist()
    )
    many = [(torch.randn(2, 2), torch.randn(2)) for _ in range(10)]
    rest, held = split_off(many, 0.2)
    assert (len(rest), len(held)) == (8, 2)
    dataset = TensorDataset(torch.randn(30, 2))
    rest, held = split_off(dataset, 0.1)
    assert (len(rest), len(held)) == (27, 3)
    assert split_off(DataLoader(dataset, batch_size=4), 0.2) is None
    assert split_off(Data(torch.randn(1, 2)), 0.2) is None


def test_a_loss_function_that_cannot_take_a_dict_batch_is_one_line():
    class Keyed(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(3, 1)

        def forward(self, x, labels=None):
            return self.body(x)

    batches = [{"x": torch.randn(4, 3), "labels": torch.randn(4, 1)}]
    with pytest.raises(PacnetError, match=r"loss_fn\(output, batch\).*batch\['labels'\]"):
        fit(Keyed(), F.mse_loss, batches, FitConfig(steps=2))
    with pytest.raises(PacnetError, match="must return a scalar tensor"):
        fit(Keyed(), lambda out, b: (out - b["labels"]) ** 2, batches, FitConfig(steps=2))
    loss = fit(Keyed(), lambda out, b: F.mse_loss(out, b["labels"]), batches, FitConfig(steps=2))
    assert loss.steps == 2


def test_named_tuples_and_packed_sequences_are_batches():
    from typing import NamedTuple

    class Sample(NamedTuple):
        x: torch.Tensor
        y: torch.Tensor

    model = _regressor()
    batches = [Sample(torch.randn(8, 5), torch.randn(8, 1)) for _ in range(2)]
    assert fit(model, F.mse_loss, batches, FitConfig(steps=3)).steps == 3

    class Packed(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(3, 8)
            self.head = nn.Linear(8, 1)

        def forward(self, packed):
            return self.head(self.rnn(packed)[1][-1])

    torch.manual_seed(0)
    seqs = [torch.randn(n, 3) for n in (5, 4, 2)]
    packed = nn.utils.rnn.pack_sequence(seqs)
    packed_model = Packed()
    mask = prune(packed_model, 0.5, score="activation", inputs=[packed])
    assert 0 < mask.essential < mask.total
    result = fit(packed_model, F.mse_loss, [(packed, torch.randn(3, 1))], FitConfig(steps=2))
    assert result.steps == 2


def test_unlabelled_tensor_datasets_are_inputs_for_distillation_and_scores():
    source = _regressor()
    x = torch.randn(64, 5)
    model = copy.deepcopy(source)
    mask = prune(model, 0.8, score="activation", inputs=TensorDataset(x))
    cfg = FitConfig(steps=10, batch_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # whether the start is kept is not the point here
        result = allocate(model, mask, TensorDataset(x), None, cfg, teacher=source)
    assert result.start_val is not None


def test_bare_tensor_batches_have_their_own_length_and_split_by_rows():
    from pacnet.training.batches import samples, size_of, split_off

    x = torch.randn(40, 5)
    assert size_of(x) == 40
    rest, held = split_off(list(x.split(10)), 0.2)  # four batches: split inside each
    assert [len(b) for b in rest] == [8] * 4 and [len(b) for b in held] == [2] * 4
    kept = {tuple(r.tolist()) for b in rest for r in b}
    assert not kept & {tuple(r.tolist()) for b in held for r in b}
    assert [tuple(s.shape) for s in samples([x[:3]])] == [(1, 5)] * 3
    many = [torch.randn(100, 2) for _ in range(20)]  # whole batches, at most 512 samples
    rest, held = split_off(many, 0.5)
    assert sum(len(b) for b in held) == 500 and len(rest) == 15


def test_a_shuffled_loaders_check_repeats_with_the_seed_and_leaves_the_callers_stream():
    source = _regressor()
    x = torch.randn(300, 5)
    loader = DataLoader(TensorDataset(x), batch_size=32, shuffle=True)
    cfg = FitConfig(steps=30, batch_size=32, eval_every=10)
    results = []
    for caller in (3, 8):
        model = copy.deepcopy(source)
        mask = prune(model, 0.8)
        torch.manual_seed(caller)
        expected = torch.rand(3)
        torch.manual_seed(caller)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = allocate(model, mask, loader, None, cfg, teacher=source, seed=7)
        assert torch.equal(torch.rand(3), expected)  # the caller's stream did not move
        results.append(
            (result.start_val, result.best_step, [p.clone() for p in model.parameters()])
        )
    (start_a, step_a, weights_a), (start_b, step_b, weights_b) = results
    assert start_a == start_b and step_a == step_b
    assert all(torch.equal(a, b) for a, b in zip(weights_a, weights_b, strict=True))
