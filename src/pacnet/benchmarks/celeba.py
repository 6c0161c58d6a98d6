"""CelebA attribute transfer from a local folder (the data cannot be downloaded here).

``--data-dir`` must hold the official layout: ``img_align_celeba/`` (the aligned JPEGs),
``list_attr_celeba.txt`` (a count line, a line of 40 attribute names, then
``<file> <±1 × 40>`` per image) and ``list_eval_partition.txt`` (``<file> <0|1|2>``).
Images are decoded on the fly with Pillow (a DataLoader with ``workers`` processes),
center-cropped to a square and resized to ``image_size``.

Split: ``paper`` (default; the paper's half train / half test, in file order) or
``official`` (the partition file's train and test). Tasks are attribute groups: the target
is ``target_attributes`` (default: Smiling, Young, Wavy_Hair, Bangs, Eyeglasses) with
``--target-size`` labelled training images drawn by the seed; the source is every other
attribute (or ``source_attributes``) on all training images. Both are multi-label (one
logit per attribute, binary cross-entropy); the metric is the error rate averaged over the
task's attributes. Malformed files fail with one line naming the file and the line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from pacnet.benchmarks.base import TaskData
from pacnet.benchmarks.images import ImageBenchmark, ImageConfig
from pacnet.errors import PacnetError, check
from pacnet.training.batches import DatasetSource
from pacnet.training.cache import StateCache
from pacnet.training.train import Data, LossFn

ATTRIBUTES = "list_attr_celeba.txt"
PARTITION = "list_eval_partition.txt"
IMAGES = "img_align_celeba"


def read_attributes(path: Path) -> tuple[list[str], list[str], Tensor]:
    """(attribute names, file names, labels in {0, 1} as (N, A) uint8) from list_attr_celeba."""
    if not path.is_file():
        raise PacnetError(f"{path}: file not found (is --data-dir the CelebA folder?)")
    lines = path.read_text().splitlines()
    check(len(lines) >= 2, f"{path}: too short to be a CelebA attribute file")
    try:
        count = int(lines[0].strip())
    except ValueError:
        raise PacnetError(
            f"{path}, line 1: expected the number of images, got {lines[0]!r}"
        ) from None
    names = lines[1].split()
    check(names, f"{path}, line 2: no attribute names")
    rows = [line for line in lines[2:] if line.strip()]
    check(
        len(rows) == count,
        f"{path}: header announces {count} images but {len(rows)} lines follow (truncated file?)",
    )
    files, labels = [], []
    for number, line in enumerate(rows, start=3):
        fields = line.split()
        if len(fields) != len(names) + 1:
            raise PacnetError(
                f"{path}, line {number}: expected a file name and {len(names)} values, "
                f"got {len(fields)} fields"
            )
        if any(v not in ("1", "-1") for v in fields[1:]):
            raise PacnetError(f"{path}, line {number}: attribute values must be 1 or -1")
        files.append(fields[0])
        labels.append([v == "1" for v in fields[1:]])
    return names, files, torch.tensor(labels, dtype=torch.uint8)


def read_partition(path: Path, files: list[str]) -> Tensor:
    """Partition (0 train, 1 validation, 2 test) per file, in the attribute file's order."""
    if not path.is_file():
        raise PacnetError(f"{path}: file not found (is --data-dir the CelebA folder?)")
    table = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise PacnetError(f"{path}, line {number}: expected '<file> <0|1|2>', got {line!r}")
        table[fields[0]] = int(fields[1])
    missing = [f for f in files if f not in table]
    if missing:
        raise PacnetError(f"{path}: no partition for {missing[0]} ({len(missing)} files lack one)")
    return torch.tensor([table[f] for f in files])


class CelebAImages(Dataset):
    """Decodes, crops to a square, resizes and normalises CelebA images on demand."""

    def __init__(self, folder: Path, files: list[str], labels: Tensor, size: int):
        self.folder, self.files, self.labels, self.size = folder, files, labels, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        from PIL import Image, UnidentifiedImageError

        path = self.folder / self.files[i]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                side = min(img.size)
                left, top = (img.width - side) // 2, (img.height - side) // 2
                img = img.crop((left, top, left + side, top + side))
                img = img.resize((self.size, self.size), Image.Resampling.BILINEAR)
                data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
        except FileNotFoundError:
            raise PacnetError(f"{path}: image not found") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise PacnetError(f"{path}: cannot decode image ({exc})") from None
        x = data.reshape(self.size, self.size, 3).permute(2, 0, 1).float().div(127.5).sub(1)
        return x, self.labels[i].float()


class StreamingImages(DatasetSource):
    """Images read from disk batch by batch, by ``workers`` loader processes."""

    def load(self) -> Data:
        """All images decoded into memory (for the small target sets)."""
        xs, ys = zip(*self.chunks(256), strict=True)
        return Data(torch.cat(xs), torch.cat(ys))


@dataclass
class CelebAConfig(ImageConfig):
    """CelebA transfer settings (CPU-sized defaults; see the README for the paper scale)."""

    image_size: int = 64
    width: float = 0.25
    stem: str = "imagenet"
    split: str = "paper"
    target_attributes: tuple[str, ...] = ("Smiling", "Young", "Wavy_Hair", "Bangs", "Eyeglasses")
    source_attributes: tuple[str, ...] = ()
    target_pool: int = 5000
    workers: int = 2
    source_limit: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check(
            self.data_dir,
            "CelebA needs --data-dir: the folder with img_align_celeba/, "
            f"{ATTRIBUTES} and {PARTITION}",
        )
        check(
            self.split in ("paper", "official"),
            f"split must be 'paper' or 'official', got {self.split!r}",
        )
        check(self.target_attributes, "target_attributes must name at least one attribute")
        check(self.workers >= 0 and self.source_limit >= 0, "workers and source_limit must be >= 0")


class CelebA(ImageBenchmark):
    name = "celeba"
    metric = "error"
    summary = "CelebA attributes from a local folder: attribute groups, ResNet-18, mean error"
    Config = CelebAConfig
    channels = 3
    quick: ClassVar[dict[str, Any]] = {
        "source_steps": 100,
        "target_steps": 40,
        "target_test": 500,
        "source_val": 200,
        "source_limit": 5000,
        "image_size": 32,
    }
    source_fields = (
        "data_dir",
        "image_size",
        "width",
        "stem",
        "split",
        "source_attributes",
        "target_attributes",
        "source_val",
        "source_limit",
        "source_steps",
        "source_lr",
        "source_batch",
    )

    def __init__(self, config: CelebAConfig, cache: StateCache | None = None):
        super().__init__(config, cache)
        root = Path(config.data_dir)
        check(root.is_dir(), f"{root}: CelebA folder not found")
        check((root / IMAGES).is_dir(), f"{root / IMAGES}: image folder not found")
        names, files, labels = read_attributes(root / ATTRIBUTES)
        partition = read_partition(root / PARTITION, files)
        unknown = [
            a for a in (*config.target_attributes, *config.source_attributes) if a not in names
        ]
        check(
            not unknown, f"unknown attribute {unknown[:1]}; {ATTRIBUTES} names: {' '.join(names)}"
        )
        target = list(config.target_attributes)
        source = list(config.source_attributes) or [a for a in names if a not in target]
        check(not set(source) & set(target), "source and target attributes must not overlap")
        self.source_columns = [names.index(a) for a in source]
        self.target_columns = [names.index(a) for a in target]
        self.source_outputs, self.target_outputs = len(source), len(target)
        n = len(files)
        if config.split == "paper":
            train = torch.arange(n) < n // 2
            test = ~train
        else:
            train, test = partition == 0, partition == 2
        self.folder, self.files, self.labels = root / IMAGES, files, labels
        self.train_index = train.nonzero().flatten()
        self.test_index = test.nonzero().flatten()
        n_train, n_val = len(self.train_index), config.source_val
        check(
            n_train > n_val,
            f"too few training images for source_val: the {config.split} split has {n_train} "
            f"training images, source_val={n_val} needs at least {n_val + 1} (the validation "
            f"images plus one to train on); lower it with --source-val N "
            f"(--quick sets {self.quick['source_val']})",
        )
        self._source: TaskData | None = None

    def _images(self, index: Tensor, columns: list[int]) -> StreamingImages:
        files = [self.files[i] for i in index.tolist()]
        labels = self.labels[index][:, columns]
        images = CelebAImages(self.folder, files, labels, self.config.image_size)
        return StreamingImages(images, self.config.workers)

    def source(self) -> TaskData:
        if self._source is None:
            c = self.config
            train = self.train_index
            if c.source_limit:
                train = train[: c.source_val + c.source_limit]
            test = self.test_index[: c.target_test] if c.target_test else self.test_index
            self._source = TaskData(
                self._images(train[c.source_val :], self.source_columns),
                self._images(train[: c.source_val], self.source_columns).load(),
                self._images(test, self.source_columns),
            )
        return self._source

    @property
    def max_target_size(self) -> int:
        return min(self.config.target_pool, len(self.train_index))

    def target(self, seed: int, size: int) -> TaskData:
        c = self.config
        check(
            1 <= size <= self.max_target_size,
            f"target size {size} must lie in 1..{self.max_target_size}",
        )
        order = torch.randperm(len(self.train_index), generator=torch.Generator().manual_seed(seed))
        pool = self.train_index[order[: self.max_target_size]][:size]
        test = self.test_index[: c.target_test] if c.target_test else self.test_index
        labelled = self._images(pool, self.target_columns).load()
        test_data = self._images(test, self.target_columns)
        return self.labelled(
            size, "images", lambda s: Data(labelled.x[s], labelled.y[s]), test_data
        )

    def loss_fn(self) -> LossFn:
        return nn.functional.binary_cross_entropy_with_logits

    def score(self, model: nn.Module, data: Data) -> float:
        logits, labels = self.predictions(model, data)
        return float(((logits > 0).float() != labels).float().mean())


ATTRIBUTE_NAMES = [
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
]


def write_celeba(
    root: Path,
    images: int = 60,
    seed: int = 0,
    attributes: Sequence[str] = ATTRIBUTE_NAMES,
    size: tuple[int, int] = (44, 36),
    splits: tuple[float, float] = (0.7, 0.85),
) -> Path:
    """A folder in CelebA's official layout (``img_align_celeba/``, ``list_attr_celeba.txt``,
    ``list_eval_partition.txt``) with ``images`` generated JPEGs of ``size`` (height, width)
    and ``attributes`` (CelebA's 40 by default), the first of them visible in the red
    channel; the first ``splits[0]`` of the images are for training, up to ``splits[1]``
    for validation, the rest for testing."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / IMAGES).mkdir(parents=True)
    labels = rng.integers(0, 2, size=(images, len(attributes)))
    lines = [str(images), " ".join(attributes)]
    parts = []
    for i in range(images):
        name = f"{i + 1:06d}.jpg"
        pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
        pixels[:, :, 0] = 200 * labels[i, 0]  # something learnable
        Image.fromarray(pixels).save(root / IMAGES / name)
        lines.append(name + " " + " ".join("1" if v else "-1" for v in labels[i]))
        part = 0 if i < images * splits[0] else 1 if i < images * splits[1] else 2
        parts.append(f"{name} {part}")
    (root / ATTRIBUTES).write_text("\n".join(lines) + "\n")
    (root / PARTITION).write_text("\n".join(parts) + "\n")
    return root
