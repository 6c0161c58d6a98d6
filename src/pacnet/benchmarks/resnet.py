"""ResNet-18 and ResNet-50 in plain PyTorch, with torchvision's module and parameter names.

The image benchmarks need a ResNet-18 without depending on torchvision. This one keeps
torchvision's layout exactly (``conv1``, ``bn1``, ``layer1``..``layer4`` of two
:class:`BasicBlock` each, ``downsample.0``/``downsample.1``, ``fc``), so a torchvision
``resnet18`` state dict loads unchanged with ``strict=True``; :func:`resnet50` (3, 4, 6, 3
:class:`Bottleneck` blocks) does the same for ``resnet50``.

Two additions for small images and quick experiments: ``width`` scales every channel count
(names stay the same, only shapes change), and ``stem="small"`` replaces the 7x7/stride-2
stem and its max-pool with a 3x3/stride-1 convolution and an :class:`~torch.nn.Identity`
(for 28x28 to 64x64 inputs).
"""

from __future__ import annotations

import math
from numbers import Integral, Real

from torch import Tensor, nn

from pacnet.errors import check

_STEMS = ("imagenet", "small")


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection, as torchvision's ``BasicBlock``."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1, 3x3 (with the stride) and 1x1 convolutions with a residual connection, as
    torchvision's ``Bottleneck`` (ResNet-50 and deeper)."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet-18 with torchvision's names; ``forward`` returns logits ``(B, num_classes)``.

    Args:
        num_classes: outputs of the final ``fc`` layer.
        in_channels: channels of the input images.
        width: multiplier of the channel counts 64, 128, 256, 512 (rounded, at least 1).
        stem: ``"imagenet"`` (7x7 stride-2 conv and 3x3 stride-2 max-pool) or ``"small"``
            (3x3 stride-1 conv, no pooling; ``maxpool`` is an Identity).
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        width: float = 1.0,
        stem: str = "imagenet",
        *,
        block: type[BasicBlock] | type[Bottleneck] = BasicBlock,
        blocks: tuple[int, int, int, int] = (2, 2, 2, 2),
    ):
        super().__init__()
        self.block = block
        check(
            isinstance(width, Real) and math.isfinite(width) and width > 0,
            f"width must be a positive number, got {width!r}",
        )
        check(stem in _STEMS, f"stem must be one of {', '.join(_STEMS)}, got {stem!r}")
        check(
            isinstance(num_classes, Integral) and num_classes >= 1,
            f"num_classes must be an integer >= 1, got {num_classes!r}",
        )
        check(
            isinstance(in_channels, Integral) and in_channels >= 1,
            f"in_channels must be an integer >= 1, got {in_channels!r}",
        )
        num_classes, in_channels = int(num_classes), int(in_channels)
        widths = [max(1, round(c * width)) for c in (64, 128, 256, 512)]
        self.inplanes = widths[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        self.maxpool: nn.Module = (
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            if stem == "imagenet"
            else nn.Identity()
        )
        self.layer1 = self._make_layer(widths[0], blocks[0])
        self.layer2 = self._make_layer(widths[1], blocks[1], stride=2)
        self.layer3 = self._make_layer(widths[2], blocks[2], stride=2)
        self.layer4 = self._make_layer(widths[3], blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3] * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        block, out = self.block, planes * self.block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = out
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def resnet18(
    num_classes: int = 1000, in_channels: int = 3, width: float = 1.0, stem: str = "imagenet"
) -> ResNet18:
    """A :class:`ResNet18` (see there for the arguments)."""
    return ResNet18(num_classes=num_classes, in_channels=in_channels, width=width, stem=stem)


def resnet50(
    num_classes: int = 1000, in_channels: int = 3, width: float = 1.0, stem: str = "imagenet"
) -> ResNet18:
    """ResNet-50: torchvision's layout and names (3, 4, 6, 3 :class:`Bottleneck` blocks, 25.6 M
    parameters at width 1 with 1000 classes); the arguments are :class:`ResNet18`'s."""
    return ResNet18(num_classes, in_channels, width, stem, block=Bottleneck, blocks=(3, 4, 6, 3))
