"""ResNet-18: torchvision's exact state-dict layout, scaled/small variants, pruning roles."""

from __future__ import annotations

import pytest
import torch

import pacnet
from pacnet.benchmarks.resnet import BasicBlock, ResNet18, resnet18
from pacnet.errors import PacnetError

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix: str, channels: int) -> list[tuple[str, tuple[int, ...]]]:
    return [
        (f"{prefix}.{leaf}", () if leaf == "num_batches_tracked" else (channels,)) for leaf in _BN
    ]


def _torchvision_resnet18_layout() -> list[tuple[str, tuple[int, ...]]]:
    """torchvision.models.resnet18().state_dict(): (key, shape) in order, written out by hand.

    Per torchvision's published architecture: a 7x7 stem of 64 channels, four stages of two
    BasicBlocks with 64, 128, 256, 512 channels; block 0 of stages 2-4 has stride 2 and a
    ``downsample`` = (1x1 conv, BatchNorm) after its ``bn2``; a 512 -> 1000 ``fc``.
    """
    layout: list[tuple[str, tuple[int, ...]]] = [("conv1.weight", (64, 3, 7, 7))]
    layout += _bn("bn1", 64)
    c_in = 64
    for stage, c_out in zip((1, 2, 3, 4), (64, 128, 256, 512), strict=True):
        for block in (0, 1):
            p = f"layer{stage}.{block}"
            first_in = c_in if block == 0 else c_out
            layout.append((f"{p}.conv1.weight", (c_out, first_in, 3, 3)))
            layout += _bn(f"{p}.bn1", c_out)
            layout.append((f"{p}.conv2.weight", (c_out, c_out, 3, 3)))
            layout += _bn(f"{p}.bn2", c_out)
            if block == 0 and stage > 1:
                layout.append((f"{p}.downsample.0.weight", (c_out, c_in, 1, 1)))
                layout += _bn(f"{p}.downsample.1", c_out)
        c_in = c_out
    layout += [("fc.weight", (1000, 512)), ("fc.bias", (1000,))]
    return layout


def test_layout_is_written_out_as_published():
    # guard on the hand-written reference itself: 122 tensors, 20 BatchNorms, 20 convs
    layout = _torchvision_resnet18_layout()
    assert len(layout) == 122
    assert sum(k.endswith("num_batches_tracked") for k, _ in layout) == 20
    assert sum(len(s) == 4 for _, s in layout) == 20
    assert layout[:7] == [
        ("conv1.weight", (64, 3, 7, 7)),
        ("bn1.weight", (64,)),
        ("bn1.bias", (64,)),
        ("bn1.running_mean", (64,)),
        ("bn1.running_var", (64,)),
        ("bn1.num_batches_tracked", ()),
        ("layer1.0.conv1.weight", (64, 64, 3, 3)),
    ]
    keys = [k for k, _ in layout]
    i = keys.index("layer2.0.downsample.0.weight")
    assert keys[i - 1] == "layer2.0.bn2.num_batches_tracked"
    assert keys[i + 6] == "layer2.1.conv1.weight"
    assert dict(layout)["layer4.0.downsample.0.weight"] == (512, 256, 1, 1)


def test_state_dict_matches_torchvision_keys_order_and_shapes():
    torch.manual_seed(0)
    model = resnet18()
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert got == _torchvision_resnet18_layout()
    assert sum(p.numel() for p in model.parameters()) == 11_689_512
    assert model.state_dict()["bn1.num_batches_tracked"].dtype == torch.long


def test_loads_torchvision_style_state_dict_strictly():
    torch.manual_seed(0)
    state = {
        k: torch.tensor(0, dtype=torch.long)
        if k.endswith("num_batches_tracked")
        else (torch.rand(s) + 0.5 if k.endswith("running_var") else torch.randn(s) * 0.05)
        for k, s in _torchvision_resnet18_layout()
    }
    model = resnet18()
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(model.fc.weight, state["fc.weight"])
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
        out_cl = model(torch.randn(2, 3, 64, 64).to(memory_format=torch.channels_last))
    assert out.shape == (2, 1000) and out_cl.shape == (2, 1000)
    assert torch.isfinite(out).all() and torch.isfinite(out_cl).all()


def test_initialisation_like_torchvision():
    torch.manual_seed(0)
    model = resnet18()
    assert torch.equal(model.bn1.weight, torch.ones(64))
    assert torch.equal(model.layer3[0].bn2.bias, torch.zeros(256))
    # kaiming fan_out: std = sqrt(2 / (out_channels * k * k)) = sqrt(2 / (256 * 9))
    w = model.layer3[1].conv1.weight
    assert w.std().item() == pytest.approx((2 / (256 * 9)) ** 0.5, rel=0.05)


def test_small_stem_scaled_width():
    torch.manual_seed(0)
    model = resnet18(num_classes=5, in_channels=1, width=0.25, stem="small")
    assert isinstance(model, ResNet18)
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert isinstance(model.layer1[0], BasicBlock)
    assert set(model.state_dict()) == {k for k, _ in _torchvision_resnet18_layout()}
    state = model.state_dict()
    assert state["conv1.weight"].shape == (16, 1, 3, 3)
    assert state["layer1.0.conv1.weight"].shape == (16, 16, 3, 3)
    assert state["layer4.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert state["fc.weight"].shape == (5, 128)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 5)
    assert torch.isfinite(out).all()


def test_tiny_width_keeps_at_least_one_channel():
    model = ResNet18(num_classes=2, width=0.001, stem="small")
    assert model.conv1.weight.shape[0] == 1
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 8, 8)).shape == (1, 2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"width": 0},
        {"width": -1.0},
        {"width": float("nan")},
        {"stem": "tiny"},
        {"num_classes": 0},
        {"in_channels": 0},
    ],
)
def test_bad_arguments_raise(kwargs):
    with pytest.raises(PacnetError) as info:
        resnet18(**kwargs)
    assert "\n" not in str(info.value)


def test_default_pacnet_roles():
    model = resnet18(num_classes=3, width=0.125, stem="small")
    convs = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 20
    assert "layer2.0.downsample.0.weight" in convs
    prunable = pacnet.prunable_names(model)
    assert set(prunable) == set(convs)
    assert "fc.weight" not in prunable

    per_task = set(pacnet.per_task_names(model))
    assert {"fc.weight", "fc.bias"} <= per_task
    bn_keys = {k for k, _ in _torchvision_resnet18_layout() if ".bn" in k or k.startswith("bn")}
    bn_keys |= {k for k, _ in _torchvision_resnet18_layout() if "downsample.1." in k}
    assert len(bn_keys) == 20 * 5
    assert bn_keys <= per_task
    assert not per_task & set(convs)
