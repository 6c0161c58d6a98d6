"""The exactness group: every model of :mod:`~pacnet.experiments.selftest.models` under every
optimizer and precision is allocated and calibrated in a loop of its own, and the frozen
entries are checked bit for bit after every step, the source view after Calibrate and both
tasks after a save and load."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pacnet.core.checkpoint import load, save
from pacnet.core.entries import bits
from pacnet.core.freeze import train_only
from pacnet.core.mask import prune
from pacnet.core.pac import trainable_groups, zero_redundant
from pacnet.core.tasks import Tasks
from pacnet.errors import first_line
from pacnet.experiments.selftest import models
from pacnet.experiments.selftest.cases import FAIL, PASS, SKIP, Case
from pacnet.training.train import infer


class Mismatch(Exception):
    """An exactness check failed."""


def _stepper(
    model: nn.Module, batch: tuple[Tensor, Tensor], loss_fn: Any, precision: str, device: Any
) -> Callable[[torch.optim.Optimizer], None]:
    """One training step of ``model`` on ``batch`` in ``precision`` (fp16 with a scaler)."""
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    x, y = batch

    def step(optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = loss_fn(model(x), y)
        if scaler is None:
            loss.float().backward()
            optimizer.step()
        else:
            scaler.scale(loss.float()).backward()
            scaler.step(optimizer)
            scaler.update()

    return step


def _frozen_at(model: nn.Module, keep: dict[str, Tensor]) -> dict[str, Tensor]:
    """The bit patterns of the entries ``keep`` marks False (the frozen ones)."""
    params = dict(model.named_parameters())
    return {n: bits(params[n].detach())[~k].clone() for n, k in keep.items()}


def _exact_case(model_name: str, optimizer: str, precision: str, device: Any, steps: int) -> str:
    """Allocate and calibrate one model under one optimizer and precision; '' when exact,
    else raises :class:`Mismatch` (or the error the device gave)."""
    build, data, loss_fn = models.CASE_MODELS[model_name]
    torch.manual_seed(0)
    model = build().to(device)
    source, target = ([t.to(device) for t in data(s)] for s in (0, 1))
    step = _stepper(model, source, loss_fn, precision, device)
    mask = prune(model, 0.7, warn=False)
    zero_redundant(model, mask)
    allocating = models.CASE_OPTIMIZERS[optimizer](model.parameters())
    frozen = _frozen_at(model, dict(mask))
    with train_only(model, mask, allocating):
        for i in range(steps):
            step(allocating)
            now = _frozen_at(model, dict(mask))
            if any(not torch.equal(v, frozen[n]) for n, v in now.items()):
                raise Mismatch(f"a redundant entry moved at Allocate step {i + 1}")
    probe = source[0][:4]
    reference = infer(model, probe).clone()
    tasks = Tasks(model, mask)
    tasks.add("target")
    tasks.activate(model, "target")
    trainable = tasks.trainable(model)
    groups = trainable_groups(model, tasks, trainable)  # as pacnet.calibrate groups them
    calibrating = models.CASE_OPTIMIZERS[optimizer]([{"params": g} for g in groups if g])
    redundant = dict(~mask)  # False where essential: the entries Calibrate freezes
    essential = _frozen_at(model, redundant)
    step = _stepper(model, target, loss_fn, precision, device)
    with train_only(model, trainable, calibrating, others="frozen", l2=0.01):
        for i in range(steps):
            step(calibrating)
            now = _frozen_at(model, redundant)
            if any(not torch.equal(v, essential[n]) for n, v in now.items()):
                raise Mismatch(f"an essential entry moved at Calibrate step {i + 1}")
    target_out = infer(model, probe).clone()
    with tasks.use(model, "source"):
        if not torch.equal(infer(model, probe), reference):
            raise Mismatch("the source view after Calibrate differs from Allocate's model")
    with tempfile.TemporaryDirectory(prefix="pacnet-selftest-") as folder:
        path = Path(folder) / "net.safetensors"
        save(path, model, tasks)
        for task, expected in (("source", reference), ("target", target_out)):
            loaded = load(path, build().to(device), task=task)
            if not torch.equal(infer(loaded, probe), expected):
                raise Mismatch(f"the {task} task differs after save and load")
    return ""


def _plain_works(model_name: str, optimizer: str, precision: str, device: Any) -> str | None:
    """Why the device cannot train the plain model this way (None: it can)."""
    build, data, loss_fn = models.CASE_MODELS[model_name]
    try:
        model = build().to(device)
        opt = models.CASE_OPTIMIZERS[optimizer](model.parameters())
        _stepper(model, [t.to(device) for t in data(0)], loss_fn, precision, device)(opt)
    except Exception as exc:  # the platform's limit, not pacnet's
        return f"{type(exc).__name__}: {first_line(exc)}"[:160]
    return None


def exactness(device: torch.device, quick: bool) -> Iterator[Case]:
    """The exactness matrix: every model × optimizer × precision."""
    steps = 3 if quick else 8
    for model_name in models.CASE_MODELS:
        for optimizer in models.CASE_OPTIMIZERS:
            for precision in models.PRECISIONS:
                name = f"{model_name} {optimizer} {precision}"
                start = time.perf_counter()
                limit = _plain_works(model_name, optimizer, precision, device)
                if limit is not None:
                    yield Case("exact", name, SKIP, f"the plain model cannot: {limit}")
                    continue
                try:
                    detail, mark = (
                        _exact_case(model_name, optimizer, precision, device, steps),
                        PASS,
                    )
                except Exception as exc:
                    mark, detail = FAIL, f"{type(exc).__name__}: {first_line(exc)}"
                yield Case("exact", name, mark, detail, time.perf_counter() - start)
