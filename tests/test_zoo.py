"""Every guarantee on many architectures: Hugging Face models (GPT-2 and BERT with tied
heads, BERT and GPT-2 classifiers, ViT, Llama), torch's TransformerEncoder, LSTM, GRU, an
embedding model, CNNs with BatchNorm, weight norm, spectral norm and transposed convolutions.

For each: the default mask covers the weights; Allocate → Calibrate (a new head where the
target's output differs) leaves the source bit-identical, also after the source view ran in
train mode; a checkpoint round-trip is bit-identical and keeps ties; ``train_only`` holds
frozen entries at every step under AdamW with weight decay and SGD with momentum and weight
decay, with gradient clipping and a learning-rate scheduler. Models called with keyword
inputs (BART and T5 with one embedding tied under four names, ALBERT's shared layers,
Whisper, ConvNeXt, Swin) are checked through task switches and checkpoints.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn
from zoo import CASES, EXPERT_CASES, KEYWORD_CASES, MORE_CASES, VOCAB, Case, loss_fn

import pacnet
from pacnet import Data, FitConfig, Tasks, allocate, calibrate, prune, train_only, zero_redundant
from pacnet.core.roles import aliases

ALL = CASES + MORE_CASES
pytestmark = [  # random-init layers of small magnitude; LSTM projections on oneDNN
    pytest.mark.filterwarnings("ignore:prune.*would keep no essential weight"),
    pytest.mark.filterwarnings("ignore:LSTM with projections"),
]
FIT = FitConfig(steps=4, batch_size=4, lr=1e-2)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).view(torch.uint8)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(bits(got[k]), bits(want[k])), k


@torch.no_grad()
def outputs(model: nn.Module, *args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
    training = model.training
    model.eval()
    out = model(*args, **kwargs)
    model.train(training)
    return out if isinstance(out, torch.Tensor) else out.logits


def data(case: Case, classes: int, salt: int, n: int = 3) -> Data:
    gen = torch.Generator().manual_seed(salt)
    x = torch.cat([case.inputs(gen) for _ in range(n)])
    return Data(x, case.labels(x, classes, salt))


def probe(case: Case) -> torch.Tensor:
    return case.inputs(torch.Generator().manual_seed(99))


@pytest.mark.parametrize("case", ALL + EXPERT_CASES, ids=lambda c: c.name)
def test_default_mask_covers_the_weights(case):
    model = case.build()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # ViT's position table is named as left out
        mask = prune(model, 0.8, case.scope)
    said = " ".join(str(w.message) for w in caught if "would keep no" in str(w.message))
    floored = [n for n in mask if n in said]  # tensors one global threshold would empty
    frozen = mask.plan.frozen  # only free-standing tensors (ViT's position table), named
    assert not [n for n in frozen if n.endswith(".weight")], frozen
    head = mask.plan.head + "."
    names: dict[int, list[str]] = {}  # every name of each tensor
    for n, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(n)
    weights = {  # tensors of two or more dimensions that live outside the head
        n: p.numel()
        for n, p in model.named_parameters()
        if p.dim() >= 2 and not all(a.startswith(head) for a in names[id(p)])
    }
    covered = sum(v for n, v in weights.items() if n in mask)
    assert covered / sum(weights.values()) >= 0.95, mask.plan.describe()
    assert "%" in mask.summary().splitlines()[-1]  # the coverage line
    counts = mask.counts()
    assert all(kept >= 1 for kept, _ in counts.values())  # no tensor left all zeros
    if case.scope == "global":  # exact counts: the global share, plus each floored
        # tensor's own share (see prune's scope)
        own = sum(max(1, t - round(0.8 * t)) for n, (_, t) in counts.items() if n in floored)
        assert mask.essential == mask.total - round(0.8 * mask.total) + own
    else:
        assert all(t - kept == round(0.8 * t) for kept, t in mask.counts().values())


@pytest.mark.parametrize("case", ALL + EXPERT_CASES, ids=lambda c: c.name)
def test_source_survives_calibration_train_mode_and_checkpoints(case, tmp_path):
    model = case.build()
    mask = prune(model, 0.8, case.scope)
    allocate(model, mask, data(case, case.source_out, 0), loss_fn, FIT, seed=1)
    after_allocate = state(model)
    x = probe(case)
    source_out = outputs(model, x)
    model.train()
    tasks, _ = calibrate(
        model, mask, data(case, case.target_out, 1), loss_fn, FIT, lam=0.01,
        init=case.new_head(),
    )  # fmt: skip
    assert model.training  # the caller's mode is kept
    target_out = outputs(model, x)
    assert target_out.shape[-1] == case.target_out
    with tasks.use(model, "source"):
        assert_same_state(state(model), after_allocate)
        assert torch.equal(outputs(model, x), source_out)
        model.train()
        model(x)  # train mode: BatchNorm statistics and the like would move
    for _ in range(2):
        with tasks.use(model, "source"):
            assert_same_state(state(model), after_allocate)
            assert torch.equal(outputs(model, x), source_out)
    assert torch.equal(outputs(model, x), target_out)  # the target is back in place
    path = tmp_path / "net.safetensors"
    pacnet.save(path, model, tasks)
    fresh = case.build()
    loaded = pacnet.load_tasks(path, fresh)
    assert loaded.plan.head == tasks.plan.head
    for task in ("source", "target"):
        with tasks.use(model, task), loaded.use(fresh, task):
            assert_same_state(state(fresh), state(model))
            assert torch.equal(outputs(fresh, x), outputs(model, x))
            for alias, canonical in tasks.plan.aliases.items():
                if alias in dict(model.named_parameters(remove_duplicate=False)):
                    assert fresh.get_parameter(alias) is fresh.get_parameter(canonical)
    assert torch.equal(outputs(pacnet.load(path, case.build(), task="source"), x), source_out)


def _frozen_state(model: nn.Module, trainable: dict) -> dict[str, torch.Tensor]:
    """Every entry that must not move: frozen entries of masked tensors, whole others."""
    params = dict(model.named_parameters())
    return {
        n: p.detach()[~trainable[n]].clone() if n in trainable else p.detach().clone()
        for n, p in params.items()
    }


def _assert_frozen(model: nn.Module, trainable: dict, before: dict, step: int) -> None:
    params = dict(model.named_parameters())
    for n, want in before.items():
        got = params[n].detach()
        got = got[~trainable[n]] if n in trainable else got
        assert torch.equal(bits(got), bits(want)), f"{n} moved at step {step}"


OPTIMIZERS = {
    "adamw_decay": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "sgd_momentum_decay": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, weight_decay=0.1),
}


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("case", ALL + EXPERT_CASES, ids=lambda c: c.name)
def test_train_only_holds_frozen_entries_at_every_step(case, optimizer):
    model = case.build()
    mask = prune(model, 0.8, case.scope)
    zero_redundant(model, mask)
    train = data(case, case.target_out, 2)
    tasks = Tasks(model, mask)
    tasks.add("target", case.new_head())
    tasks.activate(model, "target")
    for phase, trainable, others, classes in (
        ("allocate", mask, "trainable", case.source_out),
        ("calibrate", tasks.trainable(model), "frozen", case.target_out),
    ):
        opt = OPTIMIZERS[optimizer](model.parameters())
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 + s))
        moved = {n: model.get_parameter(n).detach()[t].clone() for n, t in trainable.items()}
        before = _frozen_state(model, trainable) if others == "frozen" else None
        with train_only(model, trainable, opt, others=others) as handle:
            for step in range(3):
                opt.zero_grad()
                loss_fn(model(train.x[:8]), train.y[:8] % classes).backward()
                handle.finish_grads()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
                opt.step()
                sched.step()
                if before is not None:
                    _assert_frozen(model, trainable, before, step)
                else:
                    for n, t in trainable.items():
                        w = model.get_parameter(n).detach()
                        assert not bool(w[~t].any()), f"{phase}: {n} redundant entries moved"
        changed = sum(
            int((model.get_parameter(n).detach()[t] != v).sum()) for n, (t, v) in
            ((n, (trainable[n], moved[n])) for n in trainable)
        )  # fmt: skip
        assert changed > 0, f"{phase}: nothing trained"


@pytest.mark.parametrize("name", list(KEYWORD_CASES))
def test_keyword_models_keep_the_source_through_task_switches_and_checkpoints(name, tmp_path):
    build, inputs = KEYWORD_CASES[name]
    model = build()
    kw = inputs(torch.Generator().manual_seed(0))
    mask = prune(model, 0.8, scope="layer")
    zero_redundant(model, mask)
    before = state(model)
    source_out = outputs(model, **kw)
    tasks = Tasks(model, mask)
    tasks.add("target")
    tasks.activate(model, "target")
    with torch.no_grad():  # what a calibration may do: every trainable entry moves
        for n, t in tasks.trainable(model).items():
            p = model.get_parameter(n)
            p.add_(torch.randn_like(p) * t * 0.05)
    model.train()
    model(**kw)
    target_out = outputs(model, **kw)
    assert not torch.equal(target_out, source_out)
    for _ in range(2):
        with tasks.use(model, "source"):
            assert_same_state(state(model), before)
            assert torch.equal(outputs(model, **kw), source_out)
            model.train()
            model(**kw)
    path = tmp_path / "net.safetensors"
    pacnet.save(path, model, tasks)
    fresh = build()
    loaded = pacnet.load_tasks(path, fresh)
    for task, want in (("source", source_out), ("target", target_out)):
        with loaded.use(fresh, task):
            assert torch.equal(outputs(fresh, **kw), want)
    links = aliases(fresh)
    assert links == tasks.plan.aliases  # every tie kept


def _towers(layers: int) -> dict[str, dict[str, int]]:
    """Text and vision configs of a tiny two-tower (contrastive) model."""
    shared = {"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": layers,
              "num_attention_heads": 2}  # fmt: skip
    return {
        "text_config": {**shared, "vocab_size": VOCAB, "max_position_embeddings": 16},
        "vision_config": {**shared, "image_size": 16, "patch_size": 4},
    }


def _clip():
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    return CLIPModel(CLIPConfig(**_towers(2), projection_dim=16))


def test_a_contrastive_model_keeps_every_table_and_allocates_with_a_finite_loss():
    """One global threshold would leave CLIP's token, position and patch embeddings without
    an essential entry (the text embedding all zeros, 0/0 in its normalisation): each such
    tensor keeps its own share, the guessed head is named, and Allocate's loss stays finite."""
    model = _clip()
    with pytest.warns(UserWarning) as caught:
        mask = prune(model, 0.8)
    messages = " ".join(str(w.message) for w in caught)
    assert "is a guess" in messages  # the last weight layer of a two-tower model
    assert all(bool(keep.any()) for keep in mask.values())
    gen = torch.Generator().manual_seed(0)
    batches = [
        {
            "input_ids": torch.randint(1, VOCAB, (4, 8), generator=gen),
            "pixel_values": torch.randn(4, 3, 16, 16, generator=gen),
            "return_loss": True,
        }
        for _ in range(3)
    ]
    result = allocate(model, mask, batches, None, FitConfig(steps=3, batch_size=4, lr=1e-3))
    assert math.isfinite(result.final_loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_head_guessed_inside_one_tower_warns():
    from transformers import SiglipConfig, SiglipModel

    model = SiglipModel(SiglipConfig(**_towers(1)))
    with pytest.warns(UserWarning, match="is a guess"):
        mask = prune(model, 0.8)
    assert mask.plan.head.startswith("vision_model.head")  # the guess, named in the warning
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*is a guess")  # a head given is not
        prune(model, 0.8, head=None)


@pytest.mark.parametrize(
    "case",
    [c for c in ALL + EXPERT_CASES if c.name in ("gpt2_lm", "lstm", "cnn_batchnorm", "mixtral",
     "transformer_encoder", "weight_norm_cnn")],
    ids=lambda c: c.name,
)  # fmt: skip
def test_activation_masks_cover_what_magnitude_masks_cover(case):
    """score="activation" ranks other entries but covers the same tensors, with exact counts
    (every covered layer kind: Conv1D, recurrent, convolutions, experts, attention)."""
    model = case.build()
    x = torch.cat([case.inputs(torch.Generator().manual_seed(s)) for s in range(3)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        by_size = prune(model, 0.8, "layer")
        by_use = prune(model, 0.8, "layer", score="activation", inputs=x)
    assert list(by_use) == list(by_size)
    assert by_use.counts() == by_size.counts()
    assert any(not torch.equal(by_use[n], by_size[n]) for n in by_use)
