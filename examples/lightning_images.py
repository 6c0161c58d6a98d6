"""PAC-Net with lightning.Trainer on images.

Source: five Fashion-MNIST classes (T-shirt, trouser, pullover, dress, coat); target: the
five others (sandal, shirt, sneaker, bag, ankle boot) with 20 labelled images each. The
data come from Debian's ``dataset-fashion-mnist`` package when it is installed; otherwise
generated images of ten classes (oriented stripes) stand in. Allocate and Calibrate run in
``lightning.Trainer`` (AdamW, a step schedule, gradient clipping, bf16 autocast);
``PacNetCallback`` keeps the masking exact.

    pip install 'pacnet[lightning]'
    python examples/lightning_images.py [--generated]
"""

from __future__ import annotations

import logging
import math
import sys
import warnings
from pathlib import Path

import lightning
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import pacnet
from pacnet.integrations.lightning import PacNetCallback

FASHION = Path("/usr/share/datasets/fashion-mnist")


def fashion() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from pacnet.benchmarks.fashion import FILES, find_file, read_idx

    def split(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = (read_idx(find_file(FASHION, stem)) for stem in FILES[name])
        return images.float().div(255).unsqueeze(1), labels.long()

    return *split("train"), *split("test")


def stripes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten classes of 28×28 images: stripes at one of ten angles, with noise."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=gen)
    angle = labels.float() * math.pi / 10
    grid = torch.linspace(-1, 1, 28)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    phase = torch.rand(n, 1, 1, generator=gen) * 6.3
    wave = torch.cos(angle)[:, None, None] * xx + torch.sin(angle)[:, None, None] * yy
    images = 0.5 + 0.5 * torch.sin(8 * wave + phase) + 1.5 * torch.randn(n, 28, 28, generator=gen)
    return images.unsqueeze(1), labels


class Classifier(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 5),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=3e-3, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=100, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": schedule}


def fit(module: Classifier, data: TensorDataset, steps: int, callbacks: list) -> None:
    trainer = lightning.Trainer(
        max_steps=steps, accelerator="cpu", devices=1, precision="bf16-mixed",
        gradient_clip_val=1.0, callbacks=callbacks, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    loader = DataLoader(
        data, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    module.train()  # Lightning trains each layer in the mode it finds it in (accuracy: eval)
    trainer.fit(module, loader)


@torch.no_grad()
def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    return float((net(x).argmax(-1) == y).float().mean())


def main(generated: bool = False) -> None:
    torch.manual_seed(0)
    if not generated and (FASHION / "train-labels-idx1-ubyte.gz").exists():
        x, y, x_test, y_test = fashion()
        print("data: Fashion-MNIST")
    else:
        (x, y), (x_test, y_test) = stripes(12000, 1), stripes(2000, 2)
        print("data: generated stripes")
    source = y < 5
    x_source, y_source = x[source][:8000], y[source][:8000]
    source_test = (x_test[y_test < 5], y_test[y_test < 5])
    few = torch.cat([torch.nonzero(y == c).flatten()[:20] for c in range(5, 10)])
    x_target, y_target = x[few], y[few] - 5
    target_test = (x_test[y_test >= 5], y_test[y_test >= 5] - 5)

    module = Classifier()
    fit(module, TensorDataset(x_source, y_source), 200, [])
    net = module.net
    print(f"source model: source accuracy {accuracy(net, *source_test):.3f}")

    mask = pacnet.prune(net, ratio=0.8)
    pacnet.zero_redundant(net, mask)
    fit(module, TensorDataset(x_source, y_source), 150, [PacNetCallback(net, mask)])  # Allocate
    source_after_allocate = accuracy(net, *source_test)
    before_target = accuracy(net, *target_test)
    logits = net(source_test[0])
    print(f"after Allocate: source accuracy {source_after_allocate:.3f}")

    tasks = pacnet.Tasks(net, mask)
    tasks.add("target")
    tasks.activate(net, "target")
    calibrate = PacNetCallback(net, tasks.trainable(net), l2=0.01)
    fit(module, TensorDataset(x_target, y_target), 150, [calibrate])  # Calibrate: 100 images
    target_accuracy = accuracy(net, *target_test)
    with tasks.use(net, "source"):
        source_after = accuracy(net, *source_test)
        exact = torch.equal(net(source_test[0]), logits)
    print(f"after Calibrate: source accuracy {source_after:.3f} (bit-identical: {exact})")
    print(
        f"target accuracy {target_accuracy:.3f} from 20 images per class "
        f"(the source model, its head unchanged, on the target: {before_target:.3f})"
    )
    assert exact and source_after == source_after_allocate
    assert target_accuracy > before_target + 0.2


if __name__ == "__main__":
    warnings.filterwarnings("ignore", module="lightning")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    main(generated="--generated" in sys.argv)
