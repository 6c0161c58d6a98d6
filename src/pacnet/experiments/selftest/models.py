"""The exactness cases' small models (BatchNorm, a tied embedding, a GRU), their inputs and
losses, and the optimizers and precisions each model is trained under."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn


class BatchNormCNN(nn.Module):
    """Two convolutions with BatchNorm and a linear head, on 3×8×8 images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn1(self.conv1(x)).relu()
        return self.head(self.bn2(self.conv2(x)).relu().mean((2, 3)))


class TiedLM(nn.Module):
    """A next-token model whose output layer shares the embedding's weight."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(24, 16)
        self.mix = nn.Linear(16, 16)
        self.lm_head = nn.Linear(16, 24, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, ids: Tensor) -> Tensor:
        return self.lm_head(self.mix(self.embed(ids)).tanh())


class GRUNet(nn.Module):
    """An embedding, a GRU and a linear head over its last state."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(24, 12)
        self.rnn = nn.GRU(12, 16, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, ids: Tensor) -> Tensor:
        return self.head(self.rnn(self.embed(ids))[0][:, -1])


def _images(seed: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(16, 3, 8, 8, generator=gen), torch.randint(0, 4, (16,), generator=gen)


def _tokens(seed: int, classes: int | None = None) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 24, (16, 6), generator=gen)
    if classes is None:  # next tokens
        return ids, torch.roll(ids, -1, 1)
    return ids, ids.sum(1) % classes


def _lm_loss(out: Tensor, y: Tensor) -> Tensor:
    return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]).float(), y.reshape(-1))


CASE_MODELS: dict[
    str, tuple[Callable[[], nn.Module], Callable[[int], tuple[Tensor, Tensor]], Any]
] = {
    "batchnorm-cnn": (BatchNormCNN, _images, nn.functional.cross_entropy),
    "tied-embedding": (TiedLM, _tokens, _lm_loss),
    "gru": (GRUNet, lambda seed: _tokens(seed, 3), nn.functional.cross_entropy),
}

CASE_OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "adam-fused": lambda p: torch.optim.Adam(p, lr=1e-2, fused=True),
    "adam-foreach": lambda p: torch.optim.Adam(p, lr=1e-2, foreach=True),
    "adam-for-loop": lambda p: torch.optim.Adam(p, lr=1e-2, foreach=False),
    "adam-capturable": lambda p: torch.optim.Adam(p, lr=1e-2, capturable=True),
    "adamw-fused-decay": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, fused=True),
    "adamw-amsgrad": lambda p: torch.optim.AdamW(p, lr=1e-2, amsgrad=True),
    "sgd-momentum-decay": lambda p: torch.optim.SGD(
        p, lr=1e-2, momentum=0.9, weight_decay=1e-3, fused=True
    ),
    "sgd-nesterov": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, nesterov=True),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-3),
    "nadam": lambda p: torch.optim.NAdam(p, lr=1e-2),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=1e-2),
}
PRECISIONS = ("fp32", "bf16", "fp16")
