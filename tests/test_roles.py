"""The roles of a model's tensors (pacnet.core.roles): masked, per-task or frozen, decided
once; every frozen tensor named, however small, and repeated names compacted."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations
from zoo import Bag, Recurrent, bert_mlm, gpt2_lm

import pacnet
from pacnet import Data, FitConfig, PacnetError, Tasks, allocate, calibrate, prune
from pacnet.core.roles import FROZEN, MASKED, PER_TASK, default_roles, find_head, make_plan


class Conv1D(nn.Module):
    """A layer pacnet does not know by type (GPT-2's: weight stored (in, out))."""

    def __init__(self, nf: int, nx: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.1)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight)


class Zoo(nn.Module):
    """One of everything, with a head at the end."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(10, 6)
        self.bag = nn.EmbeddingBag(10, 6)
        self.pos = nn.Parameter(torch.randn(5, 6) * 0.1)  # a free-standing table
        self.token = nn.Parameter(torch.zeros(1, 1, 6))  # a (1, 1, d) token: vector-like
        self.mix = nn.Parameter(torch.randn(6, 6) * 0.1)  # used as x @ self.mix
        self.conv1d = Conv1D(6, 6)
        self.attn = nn.MultiheadAttention(6, 2, add_bias_kv=True, kdim=4, vdim=4)
        self.packed = nn.MultiheadAttention(6, 2)
        self.lstm = nn.LSTM(6, 6, bidirectional=True, proj_size=3)
        self.convt = nn.ConvTranspose1d(6, 6, 1)
        self.bilinear = nn.Bilinear(6, 6, 6)
        self.ln = nn.LayerNorm((5, 6))  # a norm with two-dimensional affine parameters
        self.rms = nn.RMSNorm(6)
        self.bn = nn.BatchNorm1d(6)
        self.wn = parametrizations.weight_norm(nn.Linear(6, 6))
        self.sn = parametrizations.spectral_norm(nn.Linear(6, 6))
        self.old_wn = torch.nn.utils.weight_norm(nn.Linear(6, 6))
        self.register_buffer("scratch", torch.zeros(3), persistent=False)
        self.head = nn.Linear(6, 2)


def test_every_tensor_gets_its_role_by_what_it_does():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the older weight_norm is deprecated
        model = Zoo()
    roles = default_roles(model, head="head")
    masked = {n for n, r in roles.items() if r == MASKED}
    assert masked == {
        "embed.weight",
        "bag.weight",
        "conv1d.weight",
        "attn.q_proj_weight",
        "attn.k_proj_weight",
        "attn.v_proj_weight",
        "attn.out_proj.weight",
        "packed.in_proj_weight",
        "packed.out_proj.weight",
        *(f"lstm.weight_{k}_l0{d}" for k in ("ih", "hh", "hr") for d in ("", "_reverse")),
        "convt.weight",
        "bilinear.weight",
        "wn.parametrizations.weight.original1",  # weight norm's direction v
        "sn.parametrizations.weight.original",
        "old_wn.weight_v",
    }
    per_task = {n for n, r in roles.items() if r == PER_TASK}
    for name in (
        "token", "conv1d.bias", "attn.in_proj_bias", "attn.bias_k", "attn.bias_v",
        "packed.in_proj_bias", "lstm.bias_ih_l0", "lstm.bias_hh_l0_reverse", "ln.weight",
        "ln.bias", "rms.weight", "bn.weight", "bn.running_mean", "bn.num_batches_tracked",
        "wn.parametrizations.weight.original0", "old_wn.weight_g",
        "sn.parametrizations.weight.0._u", "head.weight", "head.bias", "scratch",
    ):  # fmt: skip
        assert name in per_task, name
    # free-standing tensors: what they do (and whether 0 means "off") is unknown
    assert {n for n, r in roles.items() if r == FROZEN} == {"pos", "mix"}
    frozen_tables = default_roles(model, head="head", embeddings=False)
    frozen = {n for n, r in frozen_tables.items() if r == FROZEN}
    assert frozen == {"embed.weight", "bag.weight", "pos", "mix"}


class ReadoutFirst(nn.Module):
    """Registers its output layer first, under a name no rule knows."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.readout = nn.Linear(8, 2)
        self.body = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh())

    def forward(self, x):
        return self.readout(self.body(x))


def test_find_head():
    assert find_head(bert_mlm()) == "cls.predictions.decoder"  # the output embeddings
    assert find_head(gpt2_lm()) == "lm_head"
    mlp = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    assert find_head(mlp) == "2"
    vgg_like = nn.Module()
    vgg_like.features = nn.Conv2d(1, 2, 3)
    vgg_like.classifier = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
    assert find_head(vgg_like) == "classifier.2"  # the last layer of a named head block
    assert find_head(ReadoutFirst()) == "body.2"  # a guess; prune(head=...) overrides it
    assert find_head(Recurrent(nn.LSTM)) == "head"


def test_the_head_chosen_at_prune_time_is_the_one_calibrate_uses(tmp_path):
    model = ReadoutFirst()
    mask = prune(model, 0.5, head="readout")
    assert "body.2.weight" in mask and "readout.weight" not in mask
    x, y = torch.randn(32, 3), torch.randn(32, 2)
    cfg = FitConfig(steps=5, batch_size=8)
    mse = nn.functional.mse_loss
    allocate(model, mask, Data(x, y), mse, cfg)
    new_head = {"readout.weight": torch.zeros(3, 8), "readout.bias": torch.zeros(3)}
    tasks, _ = calibrate(model, mask, Data(x, torch.randn(32, 3)), mse, cfg, init=new_head)
    assert tasks.plan.head == "readout" and "readout.weight" in tasks.names
    path = tmp_path / "net.safetensors"
    pacnet.save(path, model, tasks)
    assert pacnet.load_tasks(path, ReadoutFirst()).plan.head == "readout"
    mask.save(tmp_path / "mask.safetensors")
    assert pacnet.Mask.load(tmp_path / "mask.safetensors").plan == mask.plan


def test_a_hand_made_mask_gets_default_roles_around_its_names():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    mask = pacnet.Mask({"0.weight": torch.ones(4, 3, dtype=torch.bool)})
    tasks = Tasks(model, mask)
    assert tasks.plan.frozen == ("2.weight",)
    assert set(tasks.names) == {"0.bias", "2.bias", "4.weight", "4.bias"}


def test_tied_head_stays_tied_and_is_listed_once():
    model = gpt2_lm()
    mask = prune(model, 0.8)
    assert "transformer.wte.weight" in mask  # embedding and LM head: one masked tensor
    assert mask.plan.aliases["lm_head.weight"] == "transformer.wte.weight"
    tasks = Tasks(model, mask)
    assert not [n for n in tasks.names if n in mask.plan.aliases]
    bert = bert_mlm()
    tasks = Tasks(bert, prune(bert, 0.8))
    assert "cls.predictions.bias" in tasks.names  # the decoder's bias, tied: listed once
    assert tasks.slots["cls.predictions.bias"] == [
        "cls.predictions.bias",
        "cls.predictions.decoder.bias",
    ]
    tasks.add("target")
    tasks.activate(bert, "target")
    decoder = bert.cls.predictions.decoder
    assert decoder.bias is bert.cls.predictions.bias  # swapped under both names
    assert decoder.weight is bert.bert.embeddings.word_embeddings.weight
    frozen = prune(gpt2_lm(), 0.8, embeddings=False).plan
    assert "transformer.wte.weight" in frozen.frozen  # tied, and frozen with the tables


def test_a_tied_head_cannot_get_a_head_of_its_own():
    model = gpt2_lm()
    tasks = Tasks(model, prune(model, 0.8))
    with pytest.raises(PacnetError, match=r"'lm_head.weight' is tied to 'transformer.wte.weight'"):
        tasks.add("target", {"lm_head.weight": torch.zeros(3, 32)})
    with pytest.raises(PacnetError, match=r"tied to 'transformer\.wte\.weight'"):
        Tasks(model, prune(model, 0.8), names=["lm_head.weight"])


def test_rnn_runs_on_the_active_tasks_biases():
    model = Recurrent(nn.LSTM)
    tasks = Tasks(model, prune(model, 0.8))
    tasks.add("target", {"rnn.bias_ih_l0": torch.full((64,), 3.0)})
    x = torch.randn(2, 5, 4)
    with tasks.use(model, "source"):
        source = model(x)
    with tasks.use(model, "target"):
        target = model(x)
        reference = nn.LSTM(4, 16, num_layers=2, batch_first=True)
        reference.load_state_dict(model.rnn.state_dict())
        assert torch.equal(model.head(reference(x)[0][:, -1]), target)
    assert not torch.equal(source, target)


def test_prune_names_large_frozen_weights_and_empty_layers():
    model = Bag()
    with pytest.warns(UserWarning, match=r"embed.weight \(.*%.*\) are not covered"):
        prune(model, 0.8, prunable=["hidden.weight"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the caller chose to freeze the tables: no warning
        mask = prune(model, 0.8, embeddings=False, scope="layer")
    assert list(mask) == ["hidden.weight"]
    with pytest.warns(UserWarning, match=r"hidden.weight would keep no essential weight"):
        mask = prune(model, 0.8)  # N(0, 1) embeddings outweigh the small Linear weights
    hidden = model.hidden.weight.detach().abs()
    kept = mask["hidden.weight"]  # its own largest 20 %, as scope="layer" would keep
    assert torch.equal(kept, prune(model, 0.8, scope="layer")["hidden.weight"])
    assert int(kept.sum()) == hidden.numel() - round(0.8 * hidden.numel())
    assert hidden[kept].min() >= hidden[~kept].max()
    line = prune(model, 0.8, scope="layer").plan.describe()
    assert line.startswith("mask covers 2 of 7 parameter tensors") and "head: out" in line


def test_plan_errors_are_one_line():
    model = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(PacnetError, match="no prunable parameters"):
        prune(model, 0.8)
    with pytest.raises(PacnetError, match="head 'nope' is not a module"):
        make_plan(model, head="nope")
    assert list(prune(model, 0.8, head=None)) == ["0.weight"]


class RunningMean(nn.Module):
    """Keeps a statistic in a non-persistent buffer that its forward pass updates."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(4, 8)
        self.fc = nn.Linear(8, 2)
        self.register_buffer("ema", torch.zeros(8), persistent=False)

    def forward(self, x):
        h = self.body(x)
        if self.training:
            self.ema.mul_(0.9).add_(0.1 * h.detach().mean(0))
        return self.fc(h - self.ema)


def test_every_buffer_is_per_task_even_one_the_state_dict_leaves_out(tmp_path):
    model = RunningMean()
    x, y = torch.randn(32, 4), torch.randn(32, 2)
    cfg = FitConfig(steps=5, batch_size=8)
    mask = prune(model, 0.5)
    allocate(model, mask, Data(x, y), nn.functional.mse_loss, cfg)
    model.eval()
    source = model(x)
    tasks, _ = calibrate(model, mask, Data(x, y + 1), nn.functional.mse_loss, cfg)
    assert "ema" in tasks.names
    with tasks.use(model, "source"):
        assert torch.equal(model(x), source)
        model.train()
        model(x)
    model.eval()
    with tasks.use(model, "source"):
        assert torch.equal(model(x), source)
    pacnet.save(tmp_path / "n.safetensors", model, tasks)
    loaded = pacnet.load(tmp_path / "n.safetensors", RunningMean(), "source").eval()
    assert torch.equal(loaded(x), source)


def test_compiled_and_wrapped_models_use_the_plain_names(tmp_path):
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    compiled = torch.compile(model, backend="eager")
    mask = prune(compiled, 0.5)
    assert list(mask) == ["0.weight"]
    x, y = torch.randn(32, 4), torch.randn(32, 2)
    cfg = FitConfig(steps=3, batch_size=8)
    allocate(compiled, mask, Data(x, y), nn.functional.mse_loss, cfg)
    model.eval()
    source = model(x)
    tasks, _ = calibrate(compiled, mask, Data(x, y + 1), nn.functional.mse_loss, cfg)
    pacnet.save(tmp_path / "n.safetensors", nn.DataParallel(model), tasks)
    plain = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    assert torch.equal(pacnet.load(tmp_path / "n.safetensors", plain, "source").eval()(x), source)


def test_models_no_plan_can_serve_are_refused_in_one_line():
    lazy = nn.Sequential(nn.LazyLinear(4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(PacnetError, match=r"'0\.weight' is not initialised yet"):
        prune(lazy, 0.5)
    from peft import LoraConfig, get_peft_model

    base = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    wrapped = get_peft_model(base, LoraConfig(r=2, target_modules=["0"]))
    with pytest.raises(PacnetError, match="peft-wrapped model"):
        prune(wrapped, 0.5)


def test_a_head_that_is_only_a_guess_is_named_in_a_warning():
    from transformers import GPT2Config, GPT2Model

    backbone = GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=20, n_positions=8))
    with pytest.warns(UserWarning, match=r"automatic head 'h\.0\.mlp\.c_proj' is not where"):
        prune(backbone, 0.8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert prune(backbone, 0.8, head=None).plan.head is None
        prune(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), 0.5)  # ends in it


def test_init_is_checked_in_one_line():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    tasks = Tasks(model, prune(model, 0.5))
    with pytest.raises(PacnetError, match=r"init\['2\.weight'\] must be a tensor"):
        tasks.add("a", {"2.weight": [[0.0] * 4] * 2})
    with pytest.raises(PacnetError, match=r"new shape \(5, 4\) but not '2\.bias'"):
        tasks.add("a", {"2.weight": torch.zeros(5, 4)})
    tasks.add("a", {"2.weight": torch.zeros(5, 4, dtype=torch.float64), "2.bias": torch.ones(5)})
    assert tasks.tensors["a"]["2.weight"].dtype == torch.float32  # as the model holds it
    tasks.activate(model, "a")
    assert model(torch.randn(2, 3)).shape == (2, 5)


def test_names_and_heads_given_in_other_forms():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    assert list(prune(model, 0.5, prunable="0.weight")) == ["0.weight"]  # one name
    whole = prune(model, 0.5, prunable=["0.weight"], head="")
    assert "head: the whole model" in whole.plan.describe()
    assert "0.bias" in pacnet.per_task_names(model, head="")  # needs no mask


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


def test_repeated_frozen_tensors_are_named_once_per_pattern():
    from pacnet.core.roles import compact_names

    layers = [f"backbone.layers.{i}.mixer.A_log" for i in range(24)]
    assert compact_names([*layers, "latents", "x.1.y", "x.3.y"]) == [
        "backbone.layers.{0-23}.mixer.A_log", "latents", "x.{1,3}.y",
    ]  # fmt: skip
    assert compact_names(["m.0.a.1", "m.1.a.0"]) == ["m.0.a.1", "m.1.a.0"]  # two indices vary
