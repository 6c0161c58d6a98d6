"""Data-parallel training with PyTorch's own engine: ``torchrun`` + DistributedDataParallel.

Outside ``torchrun`` (``WORLD_SIZE`` unset or 1) nothing here does anything. Under it:

* :func:`session` joins the process group (gloo on CPU, NCCL on CUDA with the device of
  ``LOCAL_RANK``) and leaves it at the end;
* :func:`pacnet.training.train.fit` wraps the model in ``DistributedDataParallel``; every rank draws
  the same global minibatch (same seeded generator) and trains on its own contiguous slice,
  its mean loss weighted by ``world · slice / batch`` so that DDP's gradient average is the
  gradient of the global batch mean: one process with the same batch takes the same steps
  up to float rounding (BatchNorm statistics are per rank unless the model uses
  ``SyncBatchNorm``);
* objects are broadcast from rank 0 (:func:`broadcast_object`; the pruning mask so, by
  :func:`pacnet.core.mask.shared_mask`) and checked equal on every rank by checksum
  (:func:`ranks_agree`); caches are decided on rank 0 (:func:`shared_state`) and only
  rank 0 writes files (:func:`is_main`);
* :func:`checksum` / :func:`ranks_agree` verify that every rank holds the same weights.
"""

from __future__ import annotations

import datetime
import gc
import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from pacnet.errors import PacnetError, check
from pacnet.io import tensor_digest
from pacnet.training.batches import size_of

TIMEOUT = datetime.timedelta(minutes=10)
"""How long a rank waits for the others in a collective before failing (not hanging)."""


def active() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, or the only process: the one that writes results, checkpoints and caches."""
    return rank() == 0


def launched() -> bool:
    """Whether ``torchrun`` started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextmanager
def session(device: str = "cpu") -> Iterator[str]:
    """Join the process group ``torchrun`` describes (if any); yields the device to use.

    CPU runs use gloo; CUDA runs use NCCL, each rank on ``cuda:LOCAL_RANK``.
    """
    if not launched() or active():
        yield device
        return
    check(dist.is_available(), "this torch build has no torch.distributed")
    cuda = torch.device(device).type == "cuda"
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        check(
            local < torch.cuda.device_count(),
            f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices",
        )
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    try:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    except (RuntimeError, ValueError) as exc:
        raise PacnetError(f"cannot join the torchrun process group: {exc}") from None
    try:
        yield device
        gc.collect()  # free DDP wrappers (their reducers hold the group) before it goes
        dist.barrier()  # nobody tears down while a peer still talks (gloo aborts otherwise)
    finally:
        dist.destroy_process_group()


def backend() -> str | None:
    return dist.get_backend() if active() else None


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    if not active():
        return value
    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def checksum(tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes (in name order)."""
    return tensor_digest(tensors)


def ranks_agree(digest: str) -> bool:
    """Whether every rank computed the same ``digest`` (True outside torchrun)."""
    if not active():
        return True
    digests: list[Any] = [None] * world_size()
    dist.all_gather_object(digests, digest)
    return len(set(digests)) == 1


def model_checksum(model: nn.Module) -> str:
    return hashlib.sha256(checksum(model.state_dict()).encode()).hexdigest()


def shared_state(
    lookup: Callable[[], Mapping[str, Tensor] | None],
    build: Callable[[], Mapping[str, Tensor]],
    store: Callable[[Mapping[str, Tensor]], None],
) -> Mapping[str, Tensor]:
    """A cached state with one decision for all ranks: rank 0 looks it up; on a hit every
    rank gets rank 0's copy, on a miss every rank builds it (in step, so DDP collectives
    line up) and rank 0 stores it."""
    if not active():
        state = lookup()
        if state is None:
            state = build()
            store(state)
        return state
    found = lookup() if is_main() else None
    if broadcast_object(found is not None):
        return broadcast_object({k: v.cpu() for k, v in found.items()} if found else None)
    state = build()
    if is_main():
        store(state)
    dist.barrier()
    return state


def shard(batch: Any) -> tuple[Any, float]:
    """This rank's contiguous slice of a global batch (every tensor of an ``(inputs,
    labels)`` or dict batch, along its first dimension) and the weight of its mean loss."""
    world = world_size()
    if world == 1:
        return batch, 1.0
    n = size_of(batch)
    check(n >= world, f"batch of {n} samples cannot be split over {world} processes")
    index = torch.tensor_split(torch.arange(n), world)[rank()]

    def part(value: Any) -> Any:
        if isinstance(value, Tensor) and value.dim() > 0 and len(value) == n:
            return value[index]
        if isinstance(value, Mapping):
            return {k: part(v) for k, v in value.items()}
        if isinstance(value, tuple | list):
            return type(value)(part(v) for v in value)
        return value

    return part(batch), world * len(index) / n


def wrap(model: nn.Module) -> nn.Module:
    """``model`` in DistributedDataParallel under torchrun (only if something trains)."""
    if not active() or not any(p.requires_grad for p in model.parameters()):
        return model
    device = next(model.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def mean(value: float) -> float:
    """The mean of ``value`` over ranks."""
    return total(value) / world_size()


def total(value: float) -> float:
    """The sum of ``value`` over ranks."""
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    if backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return float(t.item())
