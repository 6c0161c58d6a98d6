"""PAC-Net inside the Hugging Face ``Trainer``, and Hugging Face-style directories.

``Trainer(..., callbacks=[PacNetCallback(model, trainable, l2=λ)])`` makes the Trainer's
own training exact masked training (:func:`pacnet.train_only`): its optimizer and
scheduler, gradient accumulation, gradient clipping (``max_grad_norm``; the frozen gradient
entries are zeroed at every backward, so the norm counts only trainable entries) and
bf16/fp16 autocast stay the Trainer's. ``trainable`` is what :func:`pacnet.train_only`
takes: the mask for Allocate, ``tasks.trainable(model)`` for Calibrate. The λ term is added
to the gradients just before each step, after clipping (as weight decay is).

The flow::

    mask = pacnet.prune(model, 0.8)
    pacnet.zero_redundant(model, mask)
    Trainer(model, args, train_dataset=source, callbacks=[PacNetCallback(model, mask)]).train()
    tasks = pacnet.Tasks(model, mask)
    tasks.add("target")
    tasks.activate(model, "target")
    Trainer(model, args, train_dataset=target,
            callbacks=[PacNetCallback(model, tasks.trainable(model), l2=0.01)]).train()
    save_pretrained("net", model, tasks)  # config.json + pacnet.safetensors

:func:`from_pretrained` builds the model from the directory's ``config.json`` (offline: the
architecture named there, random init) and loads a task into it. This module needs
``transformers`` (``pip install pacnet[hf]``); ``import pacnet`` does not import it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PretrainedConfig, TrainerCallback

from pacnet.core.checkpoint import load, load_tasks, save
from pacnet.core.freeze import MaskedTraining
from pacnet.core.roles import unwrap
from pacnet.core.tasks import Tasks
from pacnet.errors import PacnetError, check
from pacnet.integrations.session import Session
from pacnet.io import write_json

WEIGHTS = "pacnet.safetensors"
CONFIG = "config.json"
CARD = "pacnet.json"


class PacNetCallback(TrainerCallback):
    """Exact masked training inside a Hugging Face ``Trainer``.

    Args:
        model: the model the Trainer trains (the module the mask's names refer to).
        trainable: ``True`` = may change: the :class:`~pacnet.Mask` for Allocate,
            ``tasks.trainable(model)`` for Calibrate.
        l2: λ of ``λ‖w − w₀‖²`` on the trainable entries (Calibrate; the paper's 0.01).
        others: parameters ``trainable`` does not name: ``"trainable"`` or ``"frozen"``
            (default: trainable for a Mask, frozen otherwise).

    The masking starts when the Trainer's training starts and ends with it; call
    :meth:`close` if training stopped on an exception. :attr:`handle` is the
    :func:`~pacnet.train_only` handle while it runs.
    """

    def __init__(
        self,
        model: nn.Module,
        trainable: Mapping[str, Tensor],
        l2: float = 0.0,
        others: str | None = None,
    ):
        self.session = Session(model, trainable, l2, others)

    @property
    def handle(self) -> MaskedTraining | None:
        return self.session.handle

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        optimizer = kwargs.get("optimizer")
        check(optimizer is not None, "the Trainer has no optimizer at the start of training")
        self.session.open(optimizer).mask_each_backward()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.session.close()

    def close(self) -> None:
        """Leave the masked training (after an exception stopped ``trainer.train()``)."""
        self.session.close()


def save_pretrained(directory: str | Path, model: nn.Module, tasks: Tasks) -> Path:
    """Write a Hugging Face-style directory: the model's ``config.json``, every task in
    ``pacnet.safetensors`` (:func:`pacnet.save`) and ``pacnet.json`` (tasks, head)."""
    directory = Path(directory)
    model = unwrap(model)  # torch.compile's and DDP's wrappers: the architecture inside
    config = getattr(model, "config", None)
    check(
        isinstance(config, PretrainedConfig),
        "save_pretrained needs a Hugging Face model (one with a PretrainedConfig as .config)",
    )
    directory.mkdir(parents=True, exist_ok=True)
    settings = json.loads(config.to_json_string())
    settings["architectures"] = [type(model).__name__]  # what build() constructs
    write_json(directory / CONFIG, settings)
    save(directory / WEIGHTS, model, tasks)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    card = {"tasks": tasks.order, "head": tasks.plan.head}
    if dtype is not None:  # from_pretrained builds in it (a config alone builds float32)
        card["dtype"] = str(dtype).removeprefix("torch.")
    write_json(directory / CARD, card)
    return directory


def build(directory: str | Path) -> nn.Module:
    """A randomly initialised model of the architecture the directory's ``config.json``
    names (nothing is downloaded)."""
    import transformers

    path = Path(directory) / CONFIG
    check(path.is_file(), f"{path}: file not found (not a pacnet save_pretrained directory)")
    try:
        config = transformers.AutoConfig.from_pretrained(str(path.parent), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise PacnetError(f"{path}: not a readable Hugging Face config ({exc})") from None
    names = getattr(config, "architectures", None) or []
    check(names, f"{path}: the config names no architecture ('architectures' is empty)")
    cls = getattr(transformers, names[0], None)
    check(cls is not None, f"{path}: transformers has no model class {names[0]!r}")
    model = cls(config)
    card = Path(directory) / CARD
    dtype = json.loads(card.read_text()).get("dtype") if card.is_file() else None
    if dtype is not None:
        check(
            isinstance(getattr(torch, dtype, None), torch.dtype),
            f"{card}: unknown dtype {dtype!r}",
        )
        model.to(getattr(torch, dtype))
    return model


def tasks_from_pretrained(directory: str | Path) -> tuple[nn.Module, Tasks]:
    """The model built from the directory with every task loaded (the newest active)."""
    model = build(directory)
    return model, load_tasks(Path(directory) / WEIGHTS, model)


def from_pretrained(directory: str | Path, task: str = "target") -> nn.Module:
    """The model built from the directory as ``task`` (``"source"``: exactly as after
    Allocate), in eval mode."""
    return load(Path(directory) / WEIGHTS, build(directory), task=task).eval()
