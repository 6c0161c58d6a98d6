"""What new users hit in the core library: activation scores on Hugging Face dict batches,
distillation that must not end further from its teacher than it started, every frozen
tensor named, seeds that cover dropout, and plain Python errors from API misuse."""

from __future__ import annotations

import copy
import random
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import pacnet
from pacnet import Data, FitConfig, PacnetError, allocate, fit, prune
from pacnet.core.scores import activation_scores

sys.path.insert(0, str(Path(__file__).parent))
import zoo

# -- activation scores on dict batches --------------------------------------------------------


def _ids(g: torch.Generator, n: int = 3, length: int = 8) -> torch.Tensor:
    return torch.randint(1, zoo.VOCAB, (n, length), generator=g)


HF_DICT_CASES = {
    "bert": (
        zoo._hf(zoo.bert_cls),
        lambda g: {"input_ids": _ids(g), "attention_mask": torch.ones(3, 8, dtype=torch.long)},
    ),
    "gpt2": (zoo._hf(zoo.gpt2_lm), lambda g: {"input_ids": _ids(g)}),
    "llama": (zoo._hf(zoo.llama_lm), lambda g: {"input_ids": _ids(g)}),
    "vit": (zoo._hf(zoo.vit), lambda g: {"pixel_values": torch.randn(3, 3, 16, 16, generator=g)}),
    "t5": (  # an encoder-decoder: the decoder's inputs ride in the batch
        zoo._hf(zoo.t5),
        lambda g: {"input_ids": _ids(g), "decoder_input_ids": _ids(g, length=5)},
    ),
}


def _first_linear(model: nn.Module, names: tuple[str, ...]) -> tuple[str, nn.Module]:
    """The first masked weight that belongs to an ``nn.Linear`` (or GPT-2's ``Conv1D``)."""
    for name in names:
        module = model.get_submodule(name.rpartition(".")[0])
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            return name, module
    raise AssertionError("no linear layer among the masked weights")


@pytest.mark.parametrize("case", sorted(HF_DICT_CASES))
def test_activation_scores_run_hugging_face_models_on_dict_batches(case):
    build, make_batch = HF_DICT_CASES[case]
    model = build()
    g = torch.Generator().manual_seed(0)
    batches = [make_batch(g), make_batch(g)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # frozen tables, small global shares: not the point
        mask = prune(model, 0.8, score="activation", inputs=batches)
        single = prune(model, 0.8, score="activation", inputs=batches[0])
        magnitude = prune(model, 0.8)
    assert any(not torch.equal(mask[n], magnitude[n]) for n in mask)
    assert single.total == mask.total and 0 < single.essential < single.total
    # one layer's score by hand: |W| times its input's norm over both batches, as the
    # model calls the layer inside its own forward(**batch)
    name, layer = _first_linear(model, mask.plan.masked)
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    with torch.no_grad():
        model.eval()
        for batch in batches:
            model(**batch)
    handle.remove()
    norm = torch.cat([s.reshape(-1, s.shape[-1]) for s in seen]).double().norm(dim=0)
    [score], _ = activation_scores(model, [name], batches)
    weight = dict(model.named_parameters())[name].detach().abs()
    want = weight * (norm[:, None] if type(layer).__name__ == "Conv1D" else norm[None, :])
    torch.testing.assert_close(score, want.float())
    _, unseen = activation_scores(model, list(mask.plan.masked), batches)
    embeddings = [n for n in unseen if "embed" in n or n.startswith("shared")]
    assert embeddings == []  # tied tables (T5's shared) are seen through every holder


def test_a_layer_called_with_keywords_or_without_a_tensor_is_scored_or_skipped():
    class Keyworded(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.body = nn.Linear(4, 4)
            self.head = nn.Linear(4, 1)

        def forward(self, input_ids, scale=None):
            h = self.emb(input=input_ids)
            return self.head(self.body(input=h)).squeeze(-1)

    torch.manual_seed(0)
    model = Keyworded()
    ids = torch.randint(0, 10, (6, 5))
    scores, unseen = activation_scores(model, ["emb.weight", "body.weight"], {"input_ids": ids})
    assert unseen == []
    h = model.emb(ids).detach()
    torch.testing.assert_close(
        scores[1], model.body.weight.detach().abs() * h.reshape(-1, 4).norm(dim=0)[None, :]
    )
    counts = torch.bincount(ids.flatten(), minlength=10).float()
    torch.testing.assert_close(scores[0], model.emb.weight.detach().abs() * counts.sqrt()[:, None])


def test_a_packed_sequence_reaches_the_first_recurrent_layer():
    class Packed(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(3, 8, batch_first=True)
            self.head = nn.Linear(8, 1)

        def forward(self, x):
            lengths = torch.full((len(x),), x.shape[1])
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True)
            return self.head(self.rnn(packed)[1][-1])

    torch.manual_seed(0)
    model = Packed()
    x = torch.randn(4, 5, 3) * torch.tensor([0.1, 1.0, 5.0])
    [score], unseen = activation_scores(model, ["rnn.weight_ih_l0"], x)
    assert unseen == []
    want = model.rnn.weight_ih_l0.detach().abs() * x.reshape(-1, 3).norm(dim=0)[None, :]
    torch.testing.assert_close(score, want)


# -- distillation never ends further from its teacher than it started -----------------------


def _regressor(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1)
    )


def test_distillation_that_cannot_improve_keeps_the_pruned_start_and_says_so():
    """The teacher differs from the pruned model only through input feature 0, which the
    check inputs do not use: the start is exact on them, and any step is a step away."""
    model = _regressor()
    mask = prune(model, 0.8)
    pacnet.core.pac.zero_redundant(model, mask)
    teacher = copy.deepcopy(model)
    with torch.no_grad():
        teacher[0].weight[:, 0] += 0.5
    start = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=gen)
    check = Data(torch.randn(16, 5, generator=gen) * torch.tensor([0.0, 1, 1, 1, 1]))
    cfg = FitConfig(steps=30, batch_size=8, lr=1e-2, eval_every=10)
    with pytest.warns(UserWarning, match="kept as it started"):
        result = allocate(model, mask, Data(x), None, cfg, teacher=teacher, val=check)
    assert result.best_step == 0 and result.best_val == result.start_val == 0.0
    for k, v in model.state_dict().items():
        assert torch.equal(v, start[k]), k  # bit for bit
    unchecked = copy.deepcopy(model)  # without a check, training moves it off the start
    allocate(unchecked, mask, Data(x), None, cfg, teacher=teacher, holdout=0)
    with torch.no_grad():
        assert F.mse_loss(unchecked(check.x), teacher(check.x)) > 0


def test_distillation_keeps_its_best_state_on_inputs_it_did_not_train_on():
    source = _regressor()
    x = torch.randn(300, 5)
    fit(source, F.mse_loss, Data(x, x.sum(1, keepdim=True).sin()), FitConfig(steps=200))
    model = copy.deepcopy(source)
    mask = prune(model, 0.8)
    cfg = FitConfig(steps=120, batch_size=32, eval_every=20)
    held = Data(torch.randn(64, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # it improves here: no warning
        result = allocate(model, mask, Data(x), None, cfg, teacher=source, val=held)
    assert result.start_val is not None and result.best_val < result.start_val
    curve = dict(result.val_curve)
    assert result.best_val == min(curve.values())
    with torch.no_grad():
        now = F.mse_loss(model(held.x), source(held.x)).item()
    assert now == pytest.approx(result.best_val, rel=1e-5)  # the best state is what is left


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


# -- every frozen tensor named -------------------------------------------------------------


class _Levit(nn.Module):
    """Per-head attention biases (LeViT's ``attention_biases``), a relative-position table
    (Swin's), learned latents (Perceiver's) and a router inside a module with children."""

    def __init__(self):
        super().__init__()
        self.attention_biases = nn.Parameter(torch.zeros(2, 9))
        self.relative_position_bias_table = nn.Parameter(torch.zeros(9, 2))
        self.latents = nn.Parameter(torch.randn(3, 4))
        self.router = nn.Module()
        self.router.weight = nn.Parameter(torch.randn(2, 4))
        self.router.stats = nn.Linear(1, 1)
        self.body = nn.Linear(4, 2000)
        self.head = nn.Linear(2000, 1)

    def forward(self, x):
        return self.head(self.body(x + self.latents.mean(0)))


def test_biases_are_per_task_and_every_frozen_tensor_is_named_however_small():
    model = _Levit()
    with pytest.warns(UserWarning, match="not covered by the mask") as record:
        mask = prune(model, 0.8)
    plan = mask.plan
    assert "attention_biases" in plan.per_task  # *biases, as *bias
    frozen = {"relative_position_bias_table", "latents", "router.weight"}
    assert set(plan.frozen) == frozen
    message = next(str(w.message) for w in record if "not covered" in str(w.message))
    share = sum(plan.sizes[n] for n in frozen) / sum(plan.sizes.values())
    assert share < 0.01  # each is small, and still named
    for name in frozen:
        assert re.search(rf"\b{re.escape(name)}\b", message), name
        assert name in plan.describe()


# -- seeds cover dropout and random masking --------------------------------------------------


class _Noisy(nn.Module):
    """Dropout, NumPy-drawn masking (as wav2vec2's) and Python's ``random`` in forward."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 32)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        h = self.drop(torch.relu(self.body(x)))
        if self.training:
            keep = np.random.rand(h.shape[-1]) > 0.2
            h = h * torch.as_tensor(keep, dtype=h.dtype) * random.choice([1.0, 0.9])
        return self.head(h)


def _train_noisy(seed: int, loader: bool = False) -> torch.Tensor:
    torch.manual_seed(0)
    model = _Noisy()
    x = torch.randn(64, 4)
    y = x.sum(1, keepdim=True)
    data = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True) if loader else Data(x, y)
    fit(model, F.mse_loss, data, FitConfig(steps=25, batch_size=16), seed=seed)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("loader", [False, True])
def test_one_seed_repeats_dropout_numpy_masking_and_shuffling(loader):
    torch.manual_seed(123)  # the caller's own state differs between the two runs
    first = _train_noisy(7, loader)
    torch.manual_seed(456)
    np.random.seed(1)
    assert torch.equal(first, _train_noisy(7, loader))
    assert not torch.equal(first, _train_noisy(8, loader))


def test_fit_leaves_the_callers_random_streams_where_they_were():
    model = _Noisy()
    data = Data(torch.randn(32, 4), torch.randn(32, 1))

    def draws() -> tuple:
        return torch.rand(2).tolist(), np.random.rand(2).tolist(), random.random()

    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    expected = draws()
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    fit(model, F.mse_loss, data, FitConfig(steps=5, batch_size=8), seed=3)
    assert draws() == expected


# -- API misuse is one line -------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda m, d: pacnet.prune("model", 0.8),
        lambda m, d: pacnet.fit("model", F.mse_loss, d, FitConfig(steps=1)),
        lambda m, d: pacnet.evaluate({"weight": torch.ones(1)}, d, F.mse_loss),
        lambda m, d: pacnet.allocate(None, pacnet.prune(m, 0.5), d, F.mse_loss, FitConfig()),
    ],
)
def test_something_other_than_a_module_is_refused_in_one_line(call):
    model = _regressor()
    data = Data(torch.randn(8, 5), torch.randn(8, 1))
    with pytest.raises(PacnetError, match=r"must be a torch.nn.Module, got") as info:
        call(model, data)
    assert "\n" not in str(info.value)


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


# -- the same classes, on cases found by trying more models and inputs -----------------------


def test_lookups_are_counted_where_they_happen_and_positions_are_not_token_ids():
    """BART's word embedding scales its lookups in a forward of its own and its learned
    positions look up positions, not the token ids they are called with; Whisper's decoder
    indexes its position table directly (unseen, not a crash)."""
    model = zoo._hf(zoo.bart)()
    ids = torch.full((2, 6), 7)
    batch = {"input_ids": ids, "decoder_input_ids": ids}
    names = ["model.shared.weight", "model.encoder.embed_positions.weight"]
    (words, positions), unseen = activation_scores(model, names, [batch, batch])
    assert unseen == []
    table = model.model.shared.weight.detach().abs()
    assert bool(words[7].any()) and not bool(words[torch.arange(len(table)) != 7].any())
    used = positions.abs().sum(1) > 0  # rows 2..7: six positions, after BART's offset of 2
    assert used.nonzero().flatten().tolist() == [2, 3, 4, 5, 6, 7]
    whisper = zoo._hf(zoo.whisper)()
    inputs = {
        "input_features": torch.randn(2, 8, 32),
        "decoder_input_ids": torch.tensor([[3, 4, 5, 6, 7, 30]] * 2),
    }
    with pytest.warns(UserWarning, match="no input of model.decoder.embed_positions.weight"):
        prune(whisper, 0.8, score="activation", inputs=[inputs, inputs])


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


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, k, d: pacnet.allocate(m, dict(k), d, F.mse_loss, FitConfig()), "mask must be"),
        (lambda m, k, d: pacnet.allocate(m, k, d, F.mse_loss, None), "cfg must be"),
        (lambda m, k, d: pacnet.calibrate(m, k, d, F.mse_loss, FitConfig(), tasks="x"), "tasks"),
        (lambda m, k, d: pacnet.Tasks(m, None), "mask must be"),
        (lambda m, k, d: pacnet.train_only(m, k, "adam").__enter__(), "optimizer must be"),
        (lambda m, k, d: pacnet.save("/tmp/never.safetensors", m, k), "tasks must be"),
        (lambda m, k, d: fit(m, lambda o, y: 1 / 0, d, FitConfig(steps=1)), "ZeroDivisionError"),
        (lambda m, k, d: fit(m, lambda o, y: torch.tensor(1.0), d, FitConfig()), "no gradient"),
        (lambda m, k, d: fit(m, F.mse_loss, d, FitConfig(), seed=None), "seed must be"),
        (lambda m, k, d: fit(m, F.mse_loss, d, FitConfig(), seed=2**70), "seed must be"),
        (lambda m, k, d: pacnet.load(Path(__file__).parent, m), "is a directory"),
    ],
)
def test_arguments_of_the_wrong_kind_are_one_line(call, message):
    model = _regressor()
    mask = prune(model, 0.5)
    data = Data(torch.randn(8, 5), torch.randn(8, 1))
    with pytest.raises(PacnetError, match=message) as info:
        call(model, mask, data)
    assert "\n" not in str(info.value)


def test_repeated_frozen_tensors_are_named_once_per_pattern():
    from pacnet.core.roles import compact_names

    layers = [f"backbone.layers.{i}.mixer.A_log" for i in range(24)]
    assert compact_names([*layers, "latents", "x.1.y", "x.3.y"]) == [
        "backbone.layers.{0-23}.mixer.A_log", "latents", "x.{1,3}.y",
    ]  # fmt: skip
    assert compact_names(["m.0.a.1", "m.1.a.0"]) == ["m.0.a.1", "m.1.a.0"]  # two indices vary


class _Experts(nn.Module):
    """Two stacks of expert matrices, routed by token: ``up`` (E, out, in) applied as
    ``F.linear(x, up[e])``, ``down`` (E, in, out) as ``x @ down[torch.tensor(e)]``; or both
    at once by a grouped matmul over the stack, as transformers' experts run."""

    def __init__(self, grouped: bool = False):
        super().__init__()
        self.up = nn.Parameter(torch.randn(3, 8, 4))  # 16-byte strides, as grouped_mm needs
        self.down = nn.Parameter(torch.randn(3, 8, 4))
        self.head = nn.Linear(4, 1)
        self.grouped = grouped

    def forward(self, x):
        route = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()  # experts 0..2 (2: rare)
        order = torch.argsort(route, stable=True)
        xs, counts = x[order], torch.bincount(route, minlength=3)
        if self.grouped:
            offs = counts.cumsum(0).to(torch.int32)
            h = torch._grouped_mm(xs, self.up.transpose(-2, -1), offs=offs)
            out = torch._grouped_mm(torch.relu(h), self.down, offs=offs)
        else:
            parts, start = [], 0
            for e, n in enumerate(counts.tolist()):
                h = torch.relu(F.linear(xs[start : start + n], self.up[e]))
                parts.append(h @ self.down[torch.tensor(e)])
                start += n
            out = torch.cat(parts)
        return self.head(out[torch.argsort(order)])


@pytest.mark.parametrize("grouped", [False, True])
def test_each_expert_is_scored_by_the_inputs_routed_to_it(grouped):
    torch.manual_seed(0)
    model = _Experts(grouped)
    x = torch.randn(40, 4) * torch.tensor([1.0, 2.0, 0.5, 3.0])
    (up, down), unseen = activation_scores(model, ["up", "down"], x)
    assert unseen == []
    route = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    for e in range(3):
        mine = x[route == e]
        want = model.up[e].detach().abs() * mine.norm(dim=0)[None, :]
        torch.testing.assert_close(up[e], want)
        hidden = torch.relu(mine @ model.up[e].detach().T)
        want = model.down[e].detach().abs() * hidden.norm(dim=0)[:, None]
        torch.testing.assert_close(down[e], want)
