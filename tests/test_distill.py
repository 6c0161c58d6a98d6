"""Allocate without the source's labels: distillation from the unpruned model on inputs
alone (regression MLP, a ResNet classifier, a tiny BERT with dict batches); it never ends
further from its teacher than it started, and keeps its best state."""

import copy
import warnings
import weakref

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import pacnet
from pacnet import Data, FitConfig, PacnetError, allocate, calibrate, fit, prune
from pacnet.benchmarks.mlp import MLP
from pacnet.benchmarks.resnet import resnet18
from pacnet.core.distill import Distillation, Outputs

CFG = FitConfig(steps=60, batch_size=32, lr=3e-3)


def trained_mlp(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    x = torch.rand(256, 5)
    y = (x[:, :1] * 3).sin() + x[:, 1:2] ** 2
    model = MLP(5, (64, 64), 1)
    pacnet.fit(model, F.mse_loss, Data(x, y), FitConfig(steps=300, batch_size=32, lr=3e-3))
    return model, x


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).square().mean().sqrt())


def test_distillation_on_inputs_alone_brings_the_pruned_mlp_back_to_its_teacher(tmp_path):
    model, x = trained_mlp()
    with torch.no_grad():
        full = model(x).clone()
    mask = prune(model, 0.8)
    pruned = MLP(5, (64, 64), 1)
    pruned.load_state_dict(model.state_dict())
    pacnet.zero_redundant(pruned, mask)
    with torch.no_grad():
        before = rmse(pruned(x), full)
    result = allocate(model, mask, Data(x), None, CFG, teacher="copy")
    with torch.no_grad():
        after = rmse(model(x), full)
    assert result.steps == CFG.steps and after < 0.5 * before, (before, after)
    assert all(not bool(model.get_parameter(n).detach()[~k].any()) for n, k in mask.items())
    with torch.no_grad():
        source = model(x).clone()
    gen = torch.Generator().manual_seed(1)
    xt = torch.rand(24, 5, generator=gen)
    tasks, _ = calibrate(model, mask, Data(xt, xt[:, :1]), F.mse_loss, CFG)
    with tasks.use(model, "source"), torch.no_grad():
        assert torch.equal(model(x), source)
    pacnet.save(tmp_path / "net.safetensors", model, tasks)
    loaded = pacnet.load(tmp_path / "net.safetensors", MLP(5, (64, 64), 1), task="source")
    with torch.no_grad():
        assert torch.equal(loaded(x), source)


def test_the_teacher_is_left_as_it_was_and_a_copy_is_freed():
    model, x = trained_mlp()
    teacher = MLP(5, (64, 64), 1)
    teacher.load_state_dict(model.state_dict())
    teacher.train()
    snapshot = {k: v.clone() for k, v in teacher.state_dict().items()}
    mask = prune(model, 0.8)
    allocate(model, mask, Data(x), None, FitConfig(steps=5, batch_size=32), teacher=teacher)
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, snapshot[k]) for k, v in teacher.state_dict().items())

    from pacnet.core import distill

    made = []
    real = distill.teacher_for

    def spy(model, teacher):
        out = real(model, teacher)
        made.append(weakref.ref(out))
        return out

    import pacnet.core.pac as pac

    pac.teacher_for = spy
    try:
        allocate(model, mask, Data(x), None, FitConfig(steps=2, batch_size=32), teacher="copy")
    finally:
        pac.teacher_for = real
    assert made and made[0]() is None  # the copy is gone once Allocate returns


def test_a_resnet_classifier_distils_from_unlabelled_images():
    torch.manual_seed(0)
    model = resnet18(4, 3, 0.25, "small")
    images = torch.randn(64, 3, 16, 16)
    labels = (images.mean((1, 2, 3)) > 0).long() + 2 * (images[:, 0].mean((1, 2)) > 0).long()
    pacnet.fit(model, F.cross_entropy, Data(images, labels), FitConfig(steps=40, batch_size=16))
    model.eval()
    with torch.no_grad():
        full = model(images).argmax(1)
    mask = prune(model, 0.8)
    dataset = torch.utils.data.TensorDataset(images)  # samples are 1-tuples of inputs
    unlabelled = [b[0] for b in torch.utils.data.DataLoader(dataset, batch_size=16)]
    allocate(model, mask, unlabelled, None, FitConfig(steps=40, batch_size=16), teacher="copy",
             distill="kl")  # fmt: skip
    model.eval()
    with torch.no_grad():
        agree = float((model(images).argmax(1) == full).float().mean())
    assert agree >= 0.7, agree
    tasks = pacnet.Tasks(model, mask)
    model.eval()
    with torch.no_grad():
        source = model(images)
    tasks, _ = calibrate(model, mask, Data(images[:16], labels[:16]), F.cross_entropy,
                         FitConfig(steps=5, batch_size=8), tasks=tasks)  # fmt: skip
    with tasks.use(model, "source"), torch.no_grad():
        model.eval()
        assert torch.equal(model(images), source)


def _bert():
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    cfg = BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                     intermediate_size=64, vocab_size=50, max_position_embeddings=16)  # fmt: skip
    return BertForMaskedLM(cfg)


def test_a_tiny_bert_distils_per_token_from_dict_batches_without_labels(tmp_path):
    model = _bert()
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(4):
        ids = torch.randint(1, 50, (8, 12), generator=gen)
        attention = torch.ones_like(ids)
        attention[:, 9:] = 0  # padding the loss must not count
        batches.append({"input_ids": ids, "attention_mask": attention})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mask = prune(model, 0.8)
    loss = Distillation()
    with torch.no_grad():
        out = model(**batches[0])
        assert loss.resolve(out, batches[0]) == "token"
    result = allocate(model, mask, batches, None, FitConfig(steps=6, lr=1e-3), teacher="copy")
    assert torch.isfinite(torch.tensor(result.final_loss))
    model.eval()
    with torch.no_grad():
        source = model(**batches[0]).logits
    labelled = [{**b, "labels": b["input_ids"]} for b in batches]
    tasks, _ = calibrate(model, mask, labelled, None, FitConfig(steps=3, lr=1e-3))
    with tasks.use(model, "source"), torch.no_grad():
        model.eval()
        assert torch.equal(model(**batches[0]).logits, source)
    pacnet.save(tmp_path / "bert.safetensors", model, tasks)
    loaded = pacnet.load(tmp_path / "bert.safetensors", _bert(), task="source").eval()
    with torch.no_grad():
        assert torch.equal(loaded(**batches[0]).logits, source)


def test_the_losses_equal_their_definitions():
    torch.manual_seed(0)
    s, t = torch.randn(6, 5), torch.randn(6, 5)
    temp = 3.0
    p, q = (t / temp).softmax(-1), (s / temp).softmax(-1)
    want = (p * (p.log() - q.log())).sum(-1).mean() * temp**2
    got = Distillation("kl", temperature=temp)(Outputs(s, t), None)
    torch.testing.assert_close(got, want)
    assert torch.equal(Distillation("mse")(Outputs(s, t), None), F.mse_loss(s, t))
    tokens_s, tokens_t = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    keep = torch.tensor([[1, 1, 0], [1, 0, 0]])
    kl = Distillation("kl", temperature=temp)
    per = [
        kl(Outputs(tokens_s[i, j : j + 1], tokens_t[i, j : j + 1]), None)
        for i in range(2) for j in range(3) if keep[i, j]
    ]  # fmt: skip
    got = Distillation("token", temperature=temp)(
        Outputs(tokens_s, tokens_t), {"attention_mask": keep}
    )
    torch.testing.assert_close(got, torch.stack(per).mean())
    # labels mixed in: distillation + weight · task loss
    y = torch.randint(0, 5, (6,))
    mixed = Distillation("kl", temperature=temp, task_loss=F.cross_entropy, label_weight=0.5)
    want = Distillation("kl", temperature=temp)(Outputs(s, t), y) + 0.5 * F.cross_entropy(s, y)
    torch.testing.assert_close(mixed(Outputs(s, t), y), want)
    assert Distillation().resolve(s, y) == "kl" and Distillation().resolve(s, None) == "mse"


def test_bad_teachers_and_inputs_are_one_line():
    model, x = trained_mlp()
    mask = prune(model, 0.8)
    cfg = FitConfig(steps=2, batch_size=16)
    with pytest.raises(PacnetError, match=r"different architecture .*'body.0.weight' has shape"):
        allocate(model, mask, Data(x), None, cfg, teacher=MLP(5, (32, 64), 1))
    with pytest.raises(PacnetError, match="is the model itself"):
        allocate(model, mask, Data(x), None, cfg, teacher=model)
    with pytest.raises(PacnetError, match="the model cannot run on the first batch"):
        allocate(model, mask, Data(torch.rand(32, 7)), None, cfg, teacher="copy")
    with pytest.raises(PacnetError, match="inputs without labels"):
        allocate(model, mask, Data(x), F.mse_loss, cfg)
    with pytest.raises(PacnetError, match="label_weight"):
        allocate(model, mask, Data(x), F.mse_loss, cfg, teacher="copy")
    with pytest.raises(PacnetError, match="distill must be one of"):
        allocate(model, mask, Data(x), None, cfg, teacher="copy", distill="l1")


def test_benchmark_runs_allocate_on_what_they_are_told(tmp_path, capsys):
    """--allocate-on source-inputs distils (source fidelity recorded), none skips Allocate,
    generated is refused for a benchmark in one line."""
    import json

    from conftest import TINY_FLAGS

    from pacnet.cli import main

    base = ["run", "friedman", "--method", "pacnet", "--quick", *TINY_FLAGS,
            "--cache", str(tmp_path / "cache")]  # fmt: skip
    fidelity = {}
    for on in ("labelled", "source-inputs", "none"):
        assert main([*base, "--allocate-on", on, "--out", str(tmp_path / on)]) == 0
        result = json.loads((tmp_path / on / "result.json").read_text())
        fidelity[on] = result["details"]["source_fidelity"]
    none = fidelity["none"]
    assert none["metric_after_allocate"] == none["metric_after_prune"]
    for on in ("labelled", "source-inputs"):  # Allocate brings the source back
        assert fidelity[on]["agreement_after_allocate"] < none["agreement_after_allocate"]
    assert main([*base, "--allocate-on", "generated", "--out", str(tmp_path / "g")]) == 2
    assert "friedman is not a table" in capsys.readouterr().err


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
