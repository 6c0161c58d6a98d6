"""Fashion-MNIST transfer, fully offline: source = some classes, target = the others.

The images come from Debian's ``dataset-fashion-mnist`` package (MIT licence; the Makefile
installs it with ``apt-get install -y dataset-fashion-mnist`` when absent), read from its
gzipped idx files by :func:`read_idx`; ``--data-dir`` points elsewhere. By default the source
task is the 5-way classification of T-shirt/top, Trouser, Pullover, Dress, Coat (all 30,000
training images), the target task the 5-way classification of Sandal, Shirt, Sneaker, Bag,
Ankle boot with ``--target-size`` labelled images *per class* (a seed picks them). Images
are resized to ``image_size`` (16) and fed to a ResNet-18 of width ``width`` (1/8) with the
small-input stem, so it trains on 2 CPU cores. Metric: target test error rate.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from pacnet.benchmarks.base import TaskData
from pacnet.benchmarks.images import ImageBenchmark, ImageConfig
from pacnet.errors import PacnetError, check
from pacnet.training.cache import StateCache
from pacnet.training.train import Data, LossFn

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> Tensor:
    """An idx file (optionally gzipped) as a uint8 tensor; one-line errors when malformed."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path) as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except FileNotFoundError:
        raise PacnetError(
            f"{path}: file not found (install Debian's dataset-fashion-mnist or pass --data-dir)"
        ) from None
    except (OSError, EOFError) as exc:
        raise PacnetError(f"{path}: cannot read ({exc})") from None
    check(len(raw) >= 4 and raw[:2] == b"\0\0" and raw[2] == 0x08, f"{path}: not a uint8 idx file")
    dims = raw[3]
    header = 4 + 4 * dims
    check(len(raw) >= header, f"{path}: truncated idx header")
    shape = struct.unpack(f">{dims}I", raw[4:header])
    count = 1
    for s in shape:
        count *= s
    check(
        len(raw) - header == count, f"{path}: holds {len(raw) - header} bytes, header says {count}"
    )
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(shape)


def find_file(folder: Path, stem: str) -> Path:
    """The IDX file ``stem`` in ``folder``, gzipped (``.gz``, as Debian ships it) or not."""
    for name in (stem + ".gz", stem):
        if (folder / name).exists():
            return folder / name
    return folder / (stem + ".gz")


@dataclass
class FashionSourceConfig(ImageConfig):
    """Settings of the Fashion-MNIST source task."""

    source_classes: tuple[int, ...] = (0, 1, 2, 3, 4)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_classes("source_classes", self.source_classes)


def check_classes(name: str, values: tuple[int, ...]) -> None:
    """Class numbers 0..9, at least two, none repeated."""
    check(
        len(values) >= 2 and len(set(values)) == len(values), f"{name} needs >= 2 distinct classes"
    )
    check(all(0 <= v < 10 for v in values), f"{name} must be class numbers 0..9")


@dataclass
class FashionConfig(FashionSourceConfig):
    """Fashion-MNIST transfer settings."""

    target_classes: tuple[int, ...] = (5, 6, 7, 8, 9)
    target_pool: int = 500

    def __post_init__(self) -> None:
        super().__post_init__()
        check_classes("target_classes", self.target_classes)
        check(
            not set(self.source_classes) & set(self.target_classes),
            "source_classes and target_classes must not overlap",
        )
        check(self.target_pool >= 1, "target_pool must be >= 1")


class FashionSource(ImageBenchmark):
    """The Fashion-MNIST source task, images and scoring; subclasses bring the target."""

    metric = "error"
    quick: ClassVar[dict[str, Any]] = {
        "source_steps": 60,
        "source_batch": 64,
        "target_steps": 30,
        "target_batch": 32,
        "target_test": 500,
        "source_val": 500,
    }
    source_fields = (
        "data_dir",
        "image_size",
        "width",
        "stem",
        "source_val",
        "source_classes",
        "source_steps",
        "source_lr",
        "source_batch",
    )
    source_name = "fashion"  # every benchmark on this source shares its source model

    def __init__(self, config: FashionSourceConfig, cache: StateCache | None = None):
        super().__init__(config, cache)
        folder = Path(config.data_dir or DEFAULT_DIR)
        check(
            folder.is_dir(),
            f"{folder}: Fashion-MNIST folder not found "
            "(apt-get install -y dataset-fashion-mnist, or pass --data-dir)",
        )
        self._raw = {}
        for split, (images, labels) in FILES.items():
            x, y = read_idx(find_file(folder, images)), read_idx(find_file(folder, labels))
            check(len(x) == len(y), f"{folder}: {split} images and labels differ in number")
            self._raw[split] = (x, y.long())
        self.source_outputs = len(config.source_classes)
        x = self._resize(self._select("train", config.source_classes)[0][:2000])
        self.mean, self.std = float(x.mean()), float(x.std())
        self._source: TaskData | None = None

    def _select(self, split: str, classes: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        x, y = self._raw[split]
        keep = torch.isin(y, torch.tensor(classes))
        remap = torch.full((10,), -1, dtype=torch.long)
        remap[torch.tensor(classes)] = torch.arange(len(classes))
        return x[keep], remap[y[keep]]

    def _resize(self, x: Tensor) -> Tensor:
        x = x.float().div(255).unsqueeze(1)
        size = self.config.image_size
        if size != x.shape[-1]:
            x = nn.functional.interpolate(
                x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        return x

    def _data(self, x: Tensor, y: Tensor) -> Data:
        return Data((self._resize(x) - self.mean) / self.std, y)

    def source(self) -> TaskData:
        if self._source is None:
            c = self.config
            x, y = self._select("train", c.source_classes)
            order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
            x, y = x[order], y[order]
            tx, ty = self._select("test", c.source_classes)
            self._source = TaskData(
                self._data(x[c.source_val :], y[c.source_val :]),
                self._data(x[: c.source_val], y[: c.source_val]),
                self._data(tx, ty),
            )
        return self._source

    def loss_fn(self) -> LossFn:
        return nn.functional.cross_entropy

    def score(self, model: nn.Module, data: Data) -> float:
        logits, labels = self.predictions(model, data)
        return float((logits.argmax(1) != labels).float().mean())

    def labelled_images(
        self, x: Tensor, y: Tensor, classes: int, seed: int, size: int, test: Data
    ) -> TaskData:
        """The target task of ``seed``: ``size`` images per class from ``(x, y)`` (a seed
        picks them; the classes interleave, so a smaller size is a prefix)."""
        gen = torch.Generator().manual_seed(7919 * (seed + 1))
        picked = []
        for label in range(classes):
            members = (y == label).nonzero().flatten()
            picked.append(members[torch.randperm(len(members), generator=gen)[:size]])
        index = torch.stack(picked, dim=1).flatten()  # interleaved: class 0, 1, ..., 0, 1, ...
        return self.labelled(
            len(index), "images", lambda s: self._data(x[index[s]], y[index[s]]), test
        )

    def test_subset(self, x: Tensor, y: Tensor) -> Data:
        """The target test images, the first ``target_test`` of a fixed shuffle if set."""
        if self.config.target_test:
            keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(5))
            keep = keep[: self.config.target_test]
            x, y = x[keep], y[keep]
        return self._data(x, y)


class Fashion(FashionSource):
    name = "fashion"
    summary = "Fashion-MNIST, 5 source classes -> 5 target classes, ResNet-18 (offline), error"
    Config = FashionConfig

    def __init__(self, config: FashionConfig, cache: StateCache | None = None):
        super().__init__(config, cache)
        self.target_outputs = len(config.target_classes)

    @property
    def max_target_size(self) -> int:
        return self.config.target_pool

    def target(self, seed: int, size: int) -> TaskData:
        c = self.config
        check(
            1 <= size <= c.target_pool,
            f"target size {size} (per class) must lie in 1..{c.target_pool}",
        )
        x, y = self._select("train", c.target_classes)
        test = self.test_subset(*self._select("test", c.target_classes))
        return self.labelled_images(x, y, len(c.target_classes), seed, size, test)
