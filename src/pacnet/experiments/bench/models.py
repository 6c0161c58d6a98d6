"""The models ``pacnet bench`` times: small ones for the CPU and GPU-sized ones, each with
its batch, loss, precision and memory format.

Every model has a ``tiny`` form of the same architecture (a few thousand to a few hundred
thousand weights), so the tests run each path, precision and memory format on the CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pacnet.benchmarks.mlp import MLP
from pacnet.benchmarks.resnet import resnet18, resnet50


class Block(nn.Module):
    """A GPT-2 block: pre-norm causal self-attention and a GELU MLP, each with a residual,
    in ``nn.Linear`` layers (``qkv``, ``proj``, ``fc``, ``out``) as adapters expect."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.fc = nn.Linear(width, 4 * width)
        self.out = nn.Linear(4 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, t, w = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, w // self.heads).unbind(2)
        a = nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, w))
        return x + self.out(nn.functional.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    """A GPT-2-style causal language model in plain PyTorch: token and position embeddings,
    :class:`Block` s, a final LayerNorm and an output head tied to the token embedding
    (GPT-2 small: 12 layers, width 768, 12 heads, 50,257 tokens, 124 M parameters).
    ``forward`` returns logits ``(B, T, vocab)``."""

    def __init__(self, vocab: int, width: int, layers: int, heads: int, context: int):
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(context, width)
        self.blocks = nn.Sequential(*(Block(width, heads) for _ in range(layers)))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.wte.weight
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                scale = math.sqrt(2 * layers) if name.endswith(("proj.weight", "out.weight")) else 1
                nn.init.normal_(p, std=0.02 / scale)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.wte(tokens) + self.wpe(torch.arange(tokens.shape[1], device=tokens.device))
        return self.head(self.ln_f(self.blocks(x)))


def _token_loss(logits: Tensor, tokens: Tensor) -> Tensor:
    """Next-token cross-entropy."""
    return nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), tokens[:, 1:].reshape(-1)
    )


def _mse(out: Tensor, y: Tensor) -> Tensor:
    return nn.functional.mse_loss(out.float(), y)


def _class_loss(out: Tensor, y: Tensor) -> Tensor:
    return nn.functional.cross_entropy(out.float(), y)


@dataclass(frozen=True)
class BenchModel:
    """A model as the bench times it."""

    build: Callable[[bool], tuple[nn.Module, Tensor, Tensor]]
    """``tiny`` -> (model, input batch, target batch), on the CPU."""
    loss: Callable[[Tensor, Tensor], Tensor]
    amp: torch.dtype | None = None
    """Autocast dtype of the forward (None: the parameters' dtype)."""
    channels_last: bool = False

    def describe(self, x: Tensor) -> str:
        """How the model runs on batch ``x``, in words (for the report)."""
        precision = "bf16 autocast" if self.amp is torch.bfloat16 else "fp32"
        layout = ", channels_last" if self.channels_last else ""
        return f"{precision}{layout}, batch {'x'.join(map(str, x.shape))}"


def _gpt(tiny: bool) -> tuple[nn.Module, Tensor, Tensor]:
    vocab, width, layers, heads, context, batch = (
        (512, 64, 2, 4, 64, 4) if tiny else (50257, 768, 12, 12, 1024, 8)
    )
    tokens = torch.randint(vocab, (batch, context // 2 if tiny else 512))
    return GPT(vocab, width, layers, heads, context), tokens, tokens


def _resnet50(tiny: bool) -> tuple[nn.Module, Tensor, Tensor]:
    batch, size, width = (4, 32, 0.125) if tiny else (64, 224, 1.0)
    x = torch.randn(batch, 3, size, size)
    return resnet50(1000, 3, width), x, torch.randint(1000, (batch,))


def _wide_mlp(tiny: bool) -> tuple[nn.Module, Tensor, Tensor]:
    d, h = (64, 128) if tiny else (1024, 2048)
    return MLP(d, (h, h, h), 10), torch.randn(64, d), torch.randn(64, 10)


MODELS: dict[str, BenchModel] = {
    "friedman_mlp": BenchModel(
        lambda tiny: (MLP(10, (128, 128), 1), torch.randn(32, 10), torch.randn(32, 1)),
        _mse,
    ),
    "wide_mlp": BenchModel(_wide_mlp, _mse),
    "resnet18": BenchModel(
        lambda tiny: (
            resnet18(10, 3, 0.25 if tiny else 1.0, "small"),
            torch.randn(8, 3, 32, 32),
            torch.randn(8, 10),
        ),
        _mse,
    ),
    "gpt2_small": BenchModel(_gpt, _token_loss, amp=torch.bfloat16),
    "resnet50": BenchModel(
        _resnet50,
        _class_loss,
        amp=torch.bfloat16,
        channels_last=True,
    ),
}
"""Every model the bench knows, by name."""

CPU_MODELS = ("friedman_mlp", "wide_mlp", "resnet18")
"""What ``pacnet bench`` times on the CPU by default."""
GPU_MODELS = ("gpt2_small", "resnet50", "wide_mlp")
"""What ``pacnet bench --device cuda`` times by default."""


def placed(
    name: str, device: torch.device | str, tiny: bool = False
) -> tuple[nn.Module, Tensor, Tensor]:
    """Model ``name`` with its batch on ``device`` (channels_last where it runs so); the
    same weights and batch for the same seed state."""
    spec = MODELS[name]
    model, x, y = spec.build(tiny)
    fmt = torch.channels_last if spec.channels_last else torch.preserve_format
    model = model.to(device, memory_format=fmt)
    return model, x.to(device, memory_format=fmt) if x.dim() == 4 else x.to(device), y.to(device)
