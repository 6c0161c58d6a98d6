"""The training modes ``pacnet bench`` puts side by side on one model and batch.

* ``plain``: fine-tuning every parameter, the reference;
* ``allocate``: :func:`pacnet.train_only` on the essential entries of a 0.8 mask;
* ``calibrate``: the redundant entries and the task's own tensors, with PAC-Net's λ term,
  in the optimizer groups :func:`pacnet.calibrate` uses;
* peers: ``torch_prune`` (``torch.nn.utils.prune.custom_from_mask`` on the same mask: the
  forward multiplies each weight by its mask), ``grad_hooks`` (a tensor hook multiplies each
  masked gradient by its mask) and ``lora`` (peft's LoRA, r = 8, on every linear and
  convolution layer but the head; needs peft).

Every mode uses the optimizer pacnet's own loop builds (fused where the device allows) and
the model's precision and memory format. A mode that cannot run on a model (``torch_prune``
on a channels_last model, ``lora`` without peft) gives its reason instead of a step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from pacnet.core.freeze import train_only
from pacnet.core.mask import prune
from pacnet.core.pac import trainable_groups, zero_redundant
from pacnet.core.tasks import Tasks
from pacnet.experiments.bench.models import MODELS
from pacnet.training.train import FitConfig, make_optimizer

OWN_MODES = ("plain", "allocate", "calibrate")
PEERS = ("torch_prune", "grad_hooks", "lora")
MODES = OWN_MODES + PEERS

Step = Callable[[], None]
Context = Callable[[], AbstractContextManager[Any]]


class Unavailable(Exception):
    """A mode that cannot run on this model or machine; the message says why."""


def _optimizer(params: Any, name: str) -> torch.optim.Optimizer:
    return make_optimizer(list(params), FitConfig(lr=1e-4, optimizer=name))


def _masked_modules(model: nn.Module, mask: dict) -> Iterator[tuple[nn.Module, str, Any]]:
    """(module, parameter name, keep) for each parameter the mask covers."""
    for name, keep in mask.items():
        owner, _, pname = name.rpartition(".")
        yield model.get_submodule(owner), pname, keep


def _torch_prune(model: nn.Module, mask: dict, optimizer: str) -> torch.optim.Optimizer:
    from torch.nn.utils import prune as torch_prune

    try:
        for module, pname, keep in _masked_modules(model, mask):
            torch_prune.custom_from_mask(module, pname, keep.to(getattr(module, pname).device))
    except Exception as exc:  # e.g. a channels_last weight: say so, do not fail the bench
        raise Unavailable(f"torch.nn.utils.prune failed: {str(exc).splitlines()[0]}") from None
    return _optimizer(model.parameters(), optimizer)


def _grad_hooks(model: nn.Module, mask: dict, optimizer: str) -> torch.optim.Optimizer:
    for module, pname, keep in _masked_modules(model, mask):
        param = getattr(module, pname)
        factor = keep.to(param.device, param.dtype)
        param.register_hook(lambda g, f=factor: g * f)
    return _optimizer(model.parameters(), optimizer)


def _lora(model: nn.Module, head: str | None, optimizer: str) -> tuple[nn.Module, Any]:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise Unavailable("peft is not installed (pip install 'pacnet[hf]')") from None
    layers = (nn.Linear, nn.Conv2d)
    targets = [n for n, m in model.named_modules() if isinstance(m, layers) and n != head]
    wrapped = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets))
    trainable = [p for p in wrapped.parameters() if p.requires_grad]
    return wrapped, _optimizer(trainable, optimizer)


def _head(model: nn.Module) -> str | None:
    for name in ("head", "fc"):
        try:
            model.get_submodule(name)
            return name
        except AttributeError:
            continue
    return None


def stepper(
    mode: str, name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: str
) -> tuple[Step, Context]:
    """(step function, context manager factory) of ``mode`` on model ``name``; raises
    :class:`Unavailable` where the mode cannot run."""
    spec = MODELS[name]
    context: Context = nullcontext
    if mode == "plain":
        opt = _optimizer(model.parameters(), optimizer)
    elif mode in ("allocate", "calibrate", "torch_prune", "grad_hooks"):
        mask = prune(model, 0.8)
        zero_redundant(model, mask)
        if mode == "allocate":
            opt = _optimizer(model.parameters(), optimizer)

            def context() -> AbstractContextManager[Any]:
                return train_only(model, mask, opt)
        elif mode == "calibrate":
            tasks = Tasks(model, mask)
            tasks.add("target")
            tasks.activate(model, "target")
            trainable = tasks.trainable(model)
            opt = _optimizer(trainable_groups(model, tasks, trainable)[0], optimizer)

            def context() -> AbstractContextManager[Any]:  # λ = 0.01, as pacnet.calibrate
                return train_only(model, trainable, opt, others="frozen", l2=0.01)
        elif mode == "torch_prune":
            opt = _torch_prune(model, dict(mask.items()), optimizer)
        else:
            opt = _grad_hooks(model, dict(mask.items()), optimizer)
    elif mode == "lora":
        model, opt = _lora(model, _head(model), optimizer)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    device_type = x.device.type
    amp = spec.amp

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=amp or torch.float32, enabled=amp is not None):
            out = model(x)
        spec.loss(out, y).backward()
        opt.step()

    return step, context
