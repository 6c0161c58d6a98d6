"""Transfer methods by name: ``get_method("pacnet")``; ``METHODS`` lists them all."""

from __future__ import annotations

from pacnet.errors import PacnetError
from pacnet.methods.base import Method, Transfer, TransferContext
from pacnet.methods.baselines import FineTune, LinearProbe, Scratch
from pacnet.methods.delta import Delta
from pacnet.methods.lora import LoRA
from pacnet.methods.pacnet_method import PacNet
from pacnet.methods.regularized import BSS, L2SP

METHODS: dict[str, type[Method]] = {
    m.name: m for m in (Scratch, FineTune, LinearProbe, L2SP, Delta, BSS, LoRA, PacNet)
}


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name``; a one-line error lists the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise PacnetError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}") from None


__all__ = ["METHODS", "Method", "Transfer", "TransferContext", "get_method"]
