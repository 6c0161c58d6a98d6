"""DELTA as TLlib publishes it: the default α, TLlib's layers, and the method's revision."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pacnet import Data, PacnetError
from pacnet.benchmarks.resnet import resnet18
from pacnet.cli import main
from pacnet.experiments.run.runner import run
from pacnet.experiments.run.spec import RunSpec
from pacnet.methods.delta import (
    TLLIB_TRADE_OFF,
    Delta,
    DeltaParams,
    delta_alpha,
    tllib_layers,
)
from pacnet.methods.regularizers import FeatureDistance
from pacnet.training.train import FitConfig


class TwoMaps(nn.Module):
    """Returns fixed feature maps from two named layers, so the term can be hand-computed."""

    def __init__(self, first, second):
        super().__init__()
        self.first_maps, self.second_maps = first, second
        self.a, self.b = nn.Identity(), nn.Identity()

    def forward(self, x):
        zero = 0 * x.sum()
        return self.a(self.first_maps + zero).sum() + self.b(self.second_maps + zero).sum()


def tllib_attention_behavioral(source_maps, target_maps, attention):
    """TLlib's ``AttentionBehavioralRegularization.forward``, written out: summed over the
    batch, ``½ Σ c · a · ‖F − S‖² / (h·w)`` per layer."""
    output = 0.0
    for fm_src, fm_tgt, att in zip(source_maps, target_maps, attention, strict=True):
        b, c, h, w = fm_src.shape
        distance = torch.norm(fm_tgt.reshape(b, c, h * w) - fm_src.reshape(b, c, h * w), 2, 2)
        output += 0.5 * torch.sum(c * att * distance**2 / (h * w))
    return output


def test_our_term_at_the_default_alpha_equals_tllibs_at_its_trade_off():
    g = torch.Generator().manual_seed(0)
    batch = 3
    mine = [torch.randn(batch, 2, 3, 3, generator=g), torch.randn(batch, 4, 2, 2, generator=g)]
    theirs = [torch.randn(batch, 2, 3, 3, generator=g), torch.randn(batch, 4, 2, 2, generator=g)]
    attention = [
        torch.softmax(torch.randn(2, generator=g), 0),
        torch.softmax(torch.randn(4, generator=g), 0),
    ]
    model, source = TwoMaps(*mine), TwoMaps(*theirs)
    term = FeatureDistance(model, source, ["a", "b"], dict(zip("ab", attention, strict=True)))
    model.train()
    model(torch.zeros(batch))
    ours = term()
    term.close()
    tllib = tllib_attention_behavioral(theirs, mine, attention)
    assert float(ours * batch) == pytest.approx(float(tllib), rel=1e-6)
    alpha = delta_alpha(None, _ctx(Data(torch.zeros(10, 1), torch.zeros(10)), batch))
    assert alpha == pytest.approx(TLLIB_TRADE_OFF * batch)
    assert float(alpha * ours) == pytest.approx(float(TLLIB_TRADE_OFF * tllib), rel=1e-6)


def _ctx(train, batch_size):
    return SimpleNamespace(
        target_fit=FitConfig(batch_size=batch_size), target=SimpleNamespace(train=train)
    )


def test_the_default_alpha_is_the_trade_off_times_the_batch_drawn():
    data = Data(torch.zeros(100, 2), torch.zeros(100))
    assert delta_alpha(None, _ctx(data, 48)) == pytest.approx(0.48)
    small = Data(torch.zeros(20, 2), torch.zeros(20))  # the loop draws all 20 at once
    assert delta_alpha(None, _ctx(small, 48)) == pytest.approx(0.20)
    loader = DataLoader(TensorDataset(torch.zeros(100, 2), torch.zeros(100)), batch_size=16)
    assert delta_alpha(None, _ctx(loader, 48)) == pytest.approx(0.16)
    assert delta_alpha(0.05, _ctx(data, 48)) == 0.05  # explicit values are used as given
    batches = [(torch.zeros(4, 2), torch.zeros(4))]
    with pytest.raises(PacnetError, match="give alpha"):
        delta_alpha(None, _ctx(batches, 48))
    assert DeltaParams().alpha is None
    with pytest.raises(PacnetError, match="alpha must be >= 0"):
        DeltaParams(alpha=-1.0)


def test_a_run_records_the_alpha_it_used():
    tiny = {
        "source_samples": 200,
        "source_steps": 10,
        "target_steps": 5,
        "target_test": 50,
        "hidden": (8,),
        "target_pool": 40,
        "target_batch": 16,
    }
    spec = RunSpec("friedman", "delta", seed=0, target_size=20, quick=True, bench_settings=tiny)
    assert run(spec)["details"]["alpha_used"] == pytest.approx(TLLIB_TRADE_OFF * 16)
    explicit = RunSpec(
        "friedman",
        "delta",
        seed=0,
        target_size=20,
        quick=True,
        bench_settings=tiny,
        method_params={"alpha": 0.3},
    )
    assert run(explicit)["details"]["alpha_used"] == 0.3


def test_tllib_layers_are_each_stages_last_convolution():
    model = resnet18(num_classes=3, width=0.125, stem="small")
    expected = ["layer1.1.conv2", "layer2.1.conv2", "layer3.1.conv2", "layer4.1.conv2"]
    assert tllib_layers(model) == expected
    modules = dict(model.named_modules())
    assert all(isinstance(modules[n], nn.Conv2d) for n in expected)


def test_tllib_layers_on_a_bottleneck_layout_and_a_non_resnet():
    def bottleneck(downsample=False):
        block = nn.Module()
        for name in ("conv1", "conv2", "conv3"):
            setattr(block, name, nn.Conv2d(1, 1, 1))
        if downsample:
            block.downsample = nn.Sequential(nn.Conv2d(1, 1, 1))
        return block

    model = nn.Module()
    for i, depth in enumerate((3, 4, 6, 3), start=1):
        blocks = [bottleneck(downsample=True), *(bottleneck() for _ in range(depth - 1))]
        setattr(model, f"layer{i}", nn.Sequential(*blocks))
    assert tllib_layers(model) == [
        "layer1.2.conv3",
        "layer2.3.conv3",
        "layer3.5.conv3",
        "layer4.2.conv3",
    ]
    with pytest.raises(PacnetError, match="layers='tllib' needs a ResNet"):
        tllib_layers(nn.Sequential(nn.Linear(2, 2)))


def test_the_revision_changes_delta_run_ids(monkeypatch):
    assert Delta.revision == 1
    new = RunSpec("friedman", "delta").run_id()
    monkeypatch.setattr(Delta, "revision", 0)
    assert RunSpec("friedman", "delta").run_id() != new


def test_help_words_the_default_alpha(capsys):
    with pytest.raises(SystemExit):
        main(["run", "friedman", "--method", "delta", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "0.01 × target batch size" in out


def test_delta_with_tllibs_layers_runs_on_a_resnet(tmp_path):
    from test_images import make_fashion

    from pacnet.training.cache import StateCache

    root = make_fashion(tmp_path / "fmnist", n_train=200, n_test=50)
    settings = {
        "data_dir": str(root),
        "source_val": 10,
        "source_steps": 4,
        "target_steps": 3,
        "target_pool": 10,
        "width": 0.0625,
        "source_batch": 16,
        "target_batch": 8,
        "image_size": 8,
    }
    spec = RunSpec(
        "fashion",
        "delta",
        seed=0,
        target_size=2,
        bench_settings=settings,
        method_params={"layers": "tllib"},
    )
    details = run(spec, None, StateCache(tmp_path / "cache"))["details"]
    assert details["layers"] == [f"layer{i}.1.conv2" for i in range(1, 5)]
    assert details["alpha_used"] == pytest.approx(TLLIB_TRADE_OFF * 8)
