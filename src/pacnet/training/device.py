"""Which device a run uses: a name checked once, with one-line errors for what this machine
cannot do. Moving data there is :func:`pacnet.training.batches.to_device`'s job."""

from __future__ import annotations

import torch

from pacnet.errors import PacnetError, check


def check_device(name: str, amp: str = "none") -> torch.device:
    """The device ``name`` names, if this machine has it (and, with ``amp="bf16"`` on a GPU,
    if the GPU computes in bfloat16); otherwise a one-line :class:`PacnetError`."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise PacnetError(f"unknown device {name!r} (cpu, cuda, cuda:1, ...)") from None
    if device.type != "cuda":
        return device
    check(
        torch.cuda.is_available(),
        f"device {name!r} requested but CUDA is not available on this machine",
    )
    count = torch.cuda.device_count()
    check(
        device.index is None or device.index < count,
        f"device {name!r} requested but this machine has {count} CUDA device"
        f"{'s' * (count != 1)} (cuda:0 to cuda:{count - 1})",
    )
    check(
        amp != "bf16" or torch.cuda.is_bf16_supported(),
        f"--amp bf16 requested but {torch.cuda.get_device_name(device)} does not compute in "
        "bfloat16; use --amp fp16 or none",
    )
    return device
