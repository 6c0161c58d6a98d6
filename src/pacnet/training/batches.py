"""Training data in the shapes users hold it, and one way to run a model on a batch.

``fit``, ``evaluate``, ``allocate`` and ``calibrate`` take any of:

* :class:`pacnet.Data` — tensors in memory (the benchmarks' fast path);
* a map-style ``torch.utils.data.Dataset`` — pacnet draws seeded, shuffled batches of the
  configured size and collates them with ``default_collate``;
* a ``torch.utils.data.DataLoader`` — used as built (its batch size, workers, collate
  function and sampler; seed its sampler yourself for repeatable runs);
* any re-iterable of batches (a list of dicts, say) — iterated again for every epoch.

A batch is ``(inputs, labels)`` — the model is called as ``model(inputs)`` and the loss is
``loss_fn(output, labels)`` — or a dict in the Hugging Face style — ``model(**batch)``, and
the loss is ``loss_fn(output, batch)``, or the output's own ``.loss`` when ``loss_fn`` is
None (give the batch its ``labels``). Anything else fails with one line saying what was
expected.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, default_collate

from pacnet.errors import PacnetError, check, first_line

Batch = Any
LossFn = Callable[[Any, Any], Tensor]
"""``loss_fn(output, labels)`` for ``(inputs, labels)`` batches, ``loss_fn(output, batch)``
for dict batches."""


def epochs(n: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Endless epochs: each a fresh permutation of the ``n`` rows, drawn from
    ``generator``."""
    while True:
        yield torch.randperm(n, generator=generator)


def batch_rows(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """The rows of each training batch, endlessly: every epoch (:func:`epochs`) cut into
    full batches of ``min(batch_size, n)`` (the rest of the epoch is dropped). Both engines
    draw their batches from here; a Dataset's loader takes the same epochs."""
    size = min(batch_size, n)
    for order in epochs(n, generator):
        for start in range(0, n - size + 1, size):
            yield order[start : start + size]


@dataclass(frozen=True)
class Data:
    """Inputs and labels held in memory (the fast path for small tabular and PDE data).

    ``groups`` (optional) gives each sample the id of the unit it belongs to (e.g. its
    trajectory), so cross-validation holds out whole units.
    """

    x: Tensor
    y: Tensor | None = None
    """None: inputs without labels (enough for Allocate with a teacher)."""
    groups: Tensor | None = None

    def __post_init__(self) -> None:
        check(len(self.x) > 0, "empty data set: nothing to train or evaluate on")
        check(
            self.y is None or len(self.x) == len(self.y),
            f"inputs and labels differ in length ({len(self.x)} vs "
            f"{0 if self.y is None else len(self.y)})",
        )
        check(self.groups is None or len(self.groups) == len(self.x), "one group id per sample")
        for name, t in (("inputs", self.x), ("labels", self.y)):
            if t is not None and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise PacnetError(f"the {name} hold NaN or inf values; clean the data first")

    def __len__(self) -> int:
        return len(self.x)

    def batches(
        self, batch_size: int, generator: torch.Generator
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Endless shuffled minibatches, epoch after epoch."""
        for idx in batch_rows(len(self), batch_size, generator):
            idx = idx.to(self.x.device)
            yield self.x[idx], None if self.y is None else self.y[idx]

    def chunks(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The data in order, in chunks (for evaluation)."""
        for start in range(0, len(self), batch_size):
            chunk = slice(start, start + batch_size)
            yield self.x[chunk], None if self.y is None else self.y[chunk]

    def to(self, device: torch.device | str) -> Data:
        y = None if self.y is None else self.y.to(device)
        return Data(self.x.to(device), y, self.groups)


class BatchSource(Protocol):
    """What the training loop reads: endless seeded batches, and one ordered pass."""

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]: ...

    def chunks(self, batch_size: int) -> Iterator[Batch]: ...


class DatasetSource:
    """A map-style dataset: seeded shuffled batches (full ones only, as :class:`~pacnet.Data`
    gives), collated with ``default_collate``; ``workers`` loader processes decode them."""

    def __init__(self, dataset: Dataset, workers: int = 0):
        check(len(dataset) > 0, "empty data set: nothing to train or evaluate on")
        self.dataset, self.workers = dataset, workers

    def __len__(self) -> int:
        return len(self.dataset)

    def _loader(self, order: list[int], batch_size: int, drop_last: bool) -> DataLoader:
        return DataLoader(
            torch.utils.data.Subset(self.dataset, order),
            batch_size=batch_size,
            shuffle=False,
            num_workers=self.workers,
            drop_last=drop_last,
            collate_fn=_collate,
        )

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        size = min(batch_size, len(self))
        for order in epochs(len(self), generator):
            yield from self._loader(order.tolist(), size, drop_last=True)

    def chunks(self, batch_size: int) -> Iterator[Batch]:
        yield from self._loader(list(range(len(self))), batch_size, drop_last=False)


class IterableSource:
    """A DataLoader as built, or any re-iterable of batches: epoch after epoch."""

    def __init__(self, batches: Iterable[Batch], what: str):
        check(
            iter(batches) is not batches,
            f"{what} is a one-shot iterator, which cannot be repeated for several epochs: "
            "pass a list, a Dataset or a DataLoader",
        )
        self.source, self.what = batches, what
        self.per_rank = _per_rank(batches)
        """Whether the batches are already this process's own (a DistributedSampler):
        under torchrun they are not split again."""

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
        while True:
            empty = True
            for batch in self.source:
                empty = False
                yield batch
            check(not empty, f"{self.what} yields no batch")

    def chunks(self, batch_size: int) -> Iterator[Batch]:
        yield from self.source


def as_source(data: object, what: str = "the data") -> BatchSource:
    """``data`` as a :class:`BatchSource` (see the module notes); one line if it is none of
    the accepted shapes."""
    if hasattr(data, "batches") and hasattr(data, "chunks"):
        return data  # pacnet.Data and other sources
    if isinstance(data, DataLoader):
        return IterableSource(data, f"{what} (a DataLoader)")
    if isinstance(data, Tensor | str | bytes | Mapping):
        raise PacnetError(_expected(what, data))
    if isinstance(data, torch.utils.data.IterableDataset):
        raise PacnetError(
            f"{what} is an IterableDataset, which yields samples: wrap it in a "
            "DataLoader to make batches"
        )
    if isinstance(data, list | tuple):
        return IterableSource(data, what)  # batches
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return DatasetSource(data)  # samples: a torch or Hugging Face dataset
    if isinstance(data, Iterable):
        return IterableSource(data, what)
    raise PacnetError(_expected(what, data))


def _per_rank(data: object) -> bool:
    if not isinstance(data, DataLoader):
        return False
    samplers = (data.sampler, getattr(data.batch_sampler, "sampler", None))
    return any(isinstance(s, torch.utils.data.DistributedSampler) for s in samplers)


def _expected(what: str, data: object) -> str:
    return (
        f"{what} must be pacnet.Data, a map-style Dataset, a DataLoader or a re-iterable of "
        f"batches, got {type(data).__name__}"
    )


def _collate(items: list[Any]) -> Batch:
    try:
        if items and isinstance(items[0], Mapping):
            return {key: _column(key, [item[key] for item in items]) for key in items[0]}
        return default_collate(items)
    except (TypeError, RuntimeError, ValueError, KeyError) as exc:
        raise PacnetError(f"cannot batch the dataset's items: {str(exc).splitlines()[0]}") from None


def _column(key: str, values: list[Any]) -> Any:
    """One field of dict samples as a batch, as Hugging Face's ``default_data_collator``
    does: Python numbers and (equal-length) lists of them become one tensor (floats as
    float32), not ``default_collate``'s list of per-position tensors."""
    first = values[0]
    if _numbers(first):
        lengths = {len(v) for v in values} if isinstance(first, list | tuple) else set()
        if len(lengths) > 1:
            raise ValueError(
                f"field {key!r} has sequences of different lengths ({min(lengths)} to "
                f"{max(lengths)}): pad them, e.g. a DataLoader with collate_fn="
                "DataCollatorWithPadding(tokenizer)"
            )
        tensor = torch.tensor(values)
        return tensor.float() if tensor.is_floating_point() else tensor
    return default_collate(values)


def _numbers(value: Any) -> bool:
    """A Python number (not a bool) or a non-empty list of them (nested lists too)."""
    if isinstance(value, list | tuple):
        return bool(value) and all(_numbers(v) for v in value[:8])
    return isinstance(value, int | float) and not isinstance(value, bool)


def size_of(batch: Batch) -> int:
    """Number of samples in ``batch``: a tensor's length, a packed sequence's count of
    sequences, else the length of the first tensor it holds."""
    if isinstance(batch, Tensor) and batch.dim() > 0:
        return len(batch)
    if isinstance(batch, nn.utils.rnn.PackedSequence):
        return int(batch.batch_sizes[0])
    values = batch.values() if isinstance(batch, Mapping) else batch
    for value in values:
        if isinstance(value, Tensor) and value.dim() > 0:
            return len(value)
    raise PacnetError("a batch holds no tensor with a batch dimension")


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Move every tensor of ``batch`` to ``device`` (:func:`place`): the one way data reaches
    a model's device in pacnet (training, evaluation, every benchmark's metrics, the
    methods' own passes, predictions)."""
    if isinstance(batch, Tensor):
        return place(batch, device)
    if isinstance(batch, nn.utils.rnn.PackedSequence):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple | list):
        return _rebuilt(batch, [to_device(v, device) for v in batch])
    return batch


def _rebuilt(batch: tuple | list, values: list[Any]) -> tuple | list:
    """A tuple or list like ``batch`` holding ``values`` (a named tuple by its fields)."""
    if hasattr(batch, "_fields"):
        return type(batch)(*values)
    return type(batch)(values)


def place(tensor: Tensor, device: torch.device) -> Tensor:
    """``tensor`` on ``device`` (itself if already there); 4-D image batches go channels-last
    on CUDA."""
    if tensor.device == device:
        return tensor
    tensor = tensor.to(device, non_blocking=True)
    if device.type == "cuda" and tensor.dim() == 4 and tensor.is_floating_point():
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    return tensor


def forward(net: nn.Module, inputs: Batch) -> Any:
    """``net`` on a batch's inputs: ``net(**inputs)`` for a dict of model inputs (the
    Hugging Face style), ``net(inputs)`` for anything else. The one way pacnet calls a
    model on inputs (training, evaluation, scoring, predictions)."""
    if isinstance(inputs, Mapping):
        return net(**inputs)
    return net(inputs)


def loss_of(net: nn.Module, batch: Batch, loss_fn: LossFn | None) -> Tensor:
    """Run ``net`` on ``batch`` and return the scalar loss (see the module notes)."""
    if isinstance(batch, Mapping):
        output = net(**batch)
        if loss_fn is not None:
            return _user_loss(loss_fn, output, batch)
        loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
        if not isinstance(loss, Tensor):
            raise PacnetError(
                f"the model's output ({type(output).__name__}) has no loss although the batch "
                "has 'labels': pass a loss_fn(output, batch)"
                if "labels" in batch
                else "the model's output has no loss: a dict batch without 'labels' needs a "
                "loss_fn(output, batch)"
            )
        return loss
    if isinstance(batch, Tensor) and getattr(loss_fn, "takes_unlabelled", False):
        batch = (batch, None)  # inputs alone (a dataset of unlabelled samples)
    if isinstance(batch, tuple | list) and len(batch) == 1 and not hasattr(batch, "_fields"):
        batch = (batch[0], None)  # inputs alone: TensorDataset(x)'s samples, collated
    check(
        isinstance(batch, tuple | list) and len(batch) == 2,
        f"a batch must be (inputs, labels) or a dict of model inputs, got {_shape(batch)}",
    )
    check(
        loss_fn is not None,
        "an (inputs, labels) batch needs a loss_fn(output, labels); loss_fn=None takes the "
        "loss from the model's output, which needs dict batches with 'labels'",
    )
    x, y = batch
    check(
        y is not None or getattr(loss_fn, "takes_unlabelled", False),
        "the data has inputs without labels: training on the task needs labels (Allocate "
        "without them: pass teacher= to pacnet.allocate)",
    )
    return _user_loss(loss_fn, net(x), y)


def _user_loss(loss_fn: LossFn, output: Any, labels: Any) -> Tensor:
    """``loss_fn(output, labels)``, checked: an error the loss function raises on what it
    is given (a dict batch to a loss written for label tensors, say) becomes one line
    naming what it got; a PacnetError passes as it is."""
    try:
        loss = loss_fn(output, labels)
    except (PacnetError, torch.OutOfMemoryError):
        raise
    except Exception as exc:  # the user's function: whatever it raises becomes one line
        hint = (
            "; with dict batches pacnet calls loss_fn(output, batch): read the labels from "
            "the batch (e.g. batch['labels']), or pass loss_fn=None for the output's own .loss"
            if isinstance(labels, Mapping)
            else ""
        )
        given = "the batch (a dict)" if isinstance(labels, Mapping) else _what(labels)
        raise PacnetError(
            f"loss_fn(output, labels) failed on {_what(output)} and {given} "
            f"({type(exc).__name__}: {first_line(exc)}){hint}"
        ) from exc  # the user's own code: its traceback stays attached, for debugging
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        more = " (reduce it, e.g. with .mean())" if isinstance(loss, Tensor) else ""
        raise PacnetError(f"loss_fn must return a scalar tensor, got {_what(loss)}{more}")
    return loss


def _what(value: Any) -> str:
    """A short description of a value for an error message."""
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if value is None:
        return "None"
    return type(value).__name__


def _shape(batch: Batch) -> str:
    if isinstance(batch, tuple | list):
        return f"a {type(batch).__name__} of {len(batch)}"
    return type(batch).__name__


def split_off(
    data: object, share: float, seed: int = 0, most: int = 512
) -> tuple[object, object] | None:
    """``(rest, held)``: ``share`` of the samples of ``data`` (at least one, at most
    ``most``), drawn by ``seed``, held out from the rest; None where ``data`` cannot be
    split without reading it all (a DataLoader, a one-shot source) or has fewer than two
    samples.

    :class:`Data` and map-style Datasets are split by sample; a list of batches is split by
    whole batches where it has five or more, else inside each batch by rows (every tensor
    whose first dimension is the batch's length; other values are shared)."""
    generator = torch.Generator().manual_seed(seed)
    by_sample = isinstance(data, Data) or (
        isinstance(data, Dataset) and not isinstance(data, torch.utils.data.IterableDataset)
    )
    if by_sample:
        count = _held_count(len(data), share, most)
        if count is None:
            return None
        order = torch.randperm(len(data), generator=generator)
        return _samples_of(data, order[count:]), _samples_of(data, order[:count])
    if isinstance(data, list | tuple) and data and not isinstance(data, Mapping):
        if len(data) >= 5:
            count = _held_count(len(data), share, len(data))
            order = torch.randperm(len(data), generator=generator).tolist()
            held, rows = [], 0
            for i in order[:count]:  # whole batches, as many as ``most`` samples allow
                if held and rows + _rows_in(data[i]) > most:
                    break
                held.append(i)
                rows += _rows_in(data[i])
            chosen = set(held)
            return [data[i] for i in order if i not in chosen], [data[i] for i in held]
        parts = [_split_batch(b, share, generator) for b in data]
        if any(p is None for p in parts):
            return None
        return [p[0] for p in parts], [p[1] for p in parts]
    return None


def _samples_of(data: Data | Dataset, index: Tensor) -> Data | Dataset:
    """The samples ``index`` of :class:`Data` (as Data) or of a map-style Dataset."""
    if not isinstance(data, Data):
        return torch.utils.data.Subset(data, index.tolist())
    index = index.to(data.x.device)
    groups = None if data.groups is None else data.groups[index.to(data.groups.device)]
    return Data(data.x[index], None if data.y is None else data.y[index], groups)


def _rows_in(batch: Batch) -> int:
    """The samples in a batch (1 where it holds no batch dimension)."""
    try:
        return size_of(batch)
    except PacnetError:
        return 1


def _held_count(n: int, share: float, most: int) -> int | None:
    """How many of ``n`` samples to hold out (None: too few to split)."""
    if n < 2:
        return None
    return max(1, min(most, n - 1, math.ceil(share * n)))


def _split_batch(batch: Batch, share: float, generator: torch.Generator) -> tuple | None:
    """A batch's rows in two parts (see :func:`split_off`), or None for fewer than two."""
    try:
        n = size_of(batch)
    except PacnetError:
        return None
    count = _held_count(n, share, n)
    if count is None:
        return None
    order = torch.randperm(n, generator=generator)
    return _take(batch, order[count:], n), _take(batch, order[:count], n)


def _take(value: Any, index: Tensor, n: int) -> Any:
    """The rows ``index`` of every tensor in ``value`` whose first dimension is ``n``."""
    if isinstance(value, Tensor):
        return value[index.to(value.device)] if value.dim() and len(value) == n else value
    if isinstance(value, Mapping):
        return {k: _take(v, index, n) for k, v in value.items()}
    if isinstance(value, tuple | list) and not isinstance(value, nn.utils.rnn.PackedSequence):
        return _rebuilt(value, [_take(v, index, n) for v in value])
    return value


def samples(data: object) -> Iterator[Batch]:
    """Every sample of ``data`` (any shape :func:`as_source` takes) as a batch of one, in
    order: a batch's rows one by one (every tensor whose first dimension is the batch's
    length; other values are shared)."""
    for batch in as_source(data, "the data").chunks(1):
        n = size_of(batch)
        if n == 1:
            yield batch
            continue
        for i in range(n):
            yield _take(batch, torch.tensor([i]), n)
