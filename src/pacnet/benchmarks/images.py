"""What the image benchmarks share: a ResNet-18, a fresh head per task, error-rate metrics.

Source and target are different label sets on images of the same kind (Fashion-MNIST
classes, CelebA attributes): the source task trains on all of its labelled images; the
target task gets ``--target-size`` labelled images and its own head (a fresh linear layer
of the target's output size, seeded, identical for every method), and its own BatchNorm
statistics and affine parameters under PAC-Net (per-task tensors), so the source model
survives calibration bit for bit. The metric is an error rate (lower is better).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pacnet.benchmarks.base import Benchmark, BudgetConfig
from pacnet.benchmarks.resnet import resnet18
from pacnet.errors import check
from pacnet.training.train import Data, outputs


@dataclass
class ImageConfig(BudgetConfig):
    """Settings every image benchmark shares."""

    data_dir: str = ""
    image_size: int = 16
    width: float = 0.125
    stem: str = "small"
    source_val: int = 1000
    target_test: int = 0
    source_steps: int = 1500
    source_batch: int = 128
    target_steps: int = 300
    target_batch: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.image_size >= 8, f"image_size must be >= 8, got {self.image_size}")
        check(self.width > 0, f"width must be > 0, got {self.width}")
        check(self.source_val >= 1, f"source_val must be >= 1, got {self.source_val}")
        check(self.target_test >= 0, "target_test must be >= 0 (0: all test images)")


class ImageBenchmark(Benchmark):
    """Base of the image benchmarks: model, heads and scoring; subclasses bring data."""

    channels: int = 1
    source_outputs: int = 1
    target_outputs: int = 1
    threads = None  # convolutions use both cores

    def make_model(self, seed: int) -> nn.Module:
        c = self.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return resnet18(self.source_outputs, self.channels, c.width, c.stem)

    def target_head(self, seed: int) -> dict[str, Tensor]:
        width = self.make_model(0).fc.in_features
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1_000_003 + seed)
            head = nn.Linear(width, self.target_outputs)
        return {"fc.weight": head.weight.detach(), "fc.bias": head.bias.detach()}

    @torch.no_grad()
    def predictions(
        self, model: nn.Module, data: Data, batch_size: int = 512
    ) -> tuple[Tensor, Tensor]:
        """(logits, labels) over ``data`` in eval mode, on the CPU."""
        outs, labels = [], []
        for out, y in outputs(model, data, batch_size):
            outs.append(out.float().cpu())
            labels.append(y.cpu())
        return torch.cat(outs), torch.cat(labels)
