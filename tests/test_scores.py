"""Activation scores (pacnet.core.scores, ``prune(score="activation")``): Wanda's
|W_ij|·‖X_j‖₂ checked against hand computations, on Hugging Face models' dict batches,
layers called with keywords, packed sequences, embedding lookups, and each expert of a
mixture scored by the inputs routed to it."""

import warnings

import pytest
import torch
import zoo
from torch import nn
from torch.nn import functional as F

from pacnet import Data, PacnetError, prune
from pacnet.core.scores import activation_scores


def test_the_linear_score_is_the_weight_times_its_input_norm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    x = torch.randn(50, 4) * torch.tensor([0.1, 1.0, 10.0, 3.0])
    [score], unseen = activation_scores(model, ["0.weight"], x, batch_size=16)
    want = model[0].weight.detach().abs() * x.norm(dim=0)[None, :]
    torch.testing.assert_close(score, want)
    assert unseen == []
    mask = prune(model, 0.5, scope="layer", score="activation", inputs=x, head="2")
    keep = mask["0.weight"]
    assert want[keep].min() >= want[~keep].max()  # the largest scores are kept
    assert not torch.equal(keep, prune(model, 0.5, scope="layer", head="2")["0.weight"])


@pytest.mark.parametrize("groups", [1, 2])
def test_the_conv_score_uses_each_input_channel_over_all_positions(groups):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=groups)
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(6 * 25, 2))
    x = torch.randn(8, 4, 5, 5) * torch.tensor([0.5, 2.0, 1.0, 4.0])[None, :, None, None]
    [score], _ = activation_scores(model, ["0.weight"], Data(x, torch.zeros(8)))
    channel = x.transpose(0, 1).reshape(4, -1).norm(dim=1)  # ‖X_c‖ over batch and positions
    per = 4 // groups
    want = torch.empty_like(conv.weight)
    for o in range(6):
        g = o // (6 // groups)
        want[o] = conv.weight[o].abs() * channel[g * per : (g + 1) * per][:, None, None]
    torch.testing.assert_close(score, want.detach())


def test_embedding_rows_score_by_use_and_attention_by_its_inputs():
    torch.manual_seed(0)
    emb = nn.Embedding(10, 4)
    ids = torch.tensor([[1, 1, 2, 3], [1, 2, 2, 9]])
    [score], _ = activation_scores(nn.Sequential(emb), ["0.weight"], ids)
    counts = torch.bincount(ids.flatten(), minlength=10).float()
    torch.testing.assert_close(score, emb.weight.detach().abs() * counts.sqrt()[:, None])
    assert not bool(score[[0, 4, 5, 6, 7, 8]].any())  # rows never looked up rank last

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(4, 2, batch_first=True)
            self.head = nn.Linear(4, 1)

        def forward(self, x):
            return self.head(self.mha(x, x * 2, x * 3)[0])

    model = Attn()
    x = torch.randn(3, 5, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (score, _), unseen = activation_scores(
            model, ["mha.in_proj_weight", "mha.out_proj.weight"], x
        )
    norm = x.reshape(-1, 4).norm(dim=0)
    want = model.mha.in_proj_weight.detach().abs() * torch.cat(
        [norm.expand(4, 4), (2 * norm).expand(4, 4), (3 * norm).expand(4, 4)]
    )
    torch.testing.assert_close(score, want)
    assert unseen == ["mha.out_proj.weight"]  # the fused forward never calls out_proj


def test_activation_scores_need_inputs_the_model_takes():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    with pytest.raises(PacnetError, match="pass inputs="):
        prune(model, 0.8, score="activation")
    with pytest.raises(PacnetError, match="cannot run on the inputs"):
        prune(model, 0.8, score="activation", inputs=torch.randn(5, 3))
    with pytest.raises(PacnetError, match="score must be one of"):
        prune(model, 0.8, score="wanda")


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
