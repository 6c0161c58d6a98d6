"""Allocate without the source's labels: the pruned model learns to give what the unpruned
model (the *teacher*) gives on the same inputs.

:func:`pacnet.allocate` takes ``teacher=`` (a module with the model's architecture, or
``"copy"`` for a frozen copy of the model as it is before pruning). With ``loss_fn=None``
the loss is then the distillation loss, chosen by what the model outputs (``distill=``
overrides it):

* ``"mse"`` — regression outputs: the mean squared difference to the teacher's outputs;
* ``"kl"`` — class logits: ``T²·KL(teacher ‖ student)`` of the temperature-``T`` softened
  distributions (Hinton et al.), averaged over the batch;
* ``"token"`` — token logits (``.logits`` of shape ``(batch, length, vocabulary)``): the
  same per token, averaged over the tokens (those the batch's ``attention_mask`` marks,
  where it has one).

``"auto"`` picks ``"token"`` for 3-D logits, ``"kl"`` for a model output with ``.logits``
or for labels that are class indices, and ``"mse"`` otherwise. Where the batches carry
labels too, ``label_weight`` mixes in the task loss (``loss_fn`` given as ``task_loss``, or
the output's own ``.loss``). The teacher runs in eval mode without gradients; its
parameters are not trained, and a copy made for ``"copy"`` is freed afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pacnet.errors import PacnetError, check
from pacnet.training.batches import LossFn

DISTILL_KINDS = ("auto", "mse", "kl", "token")


class Outputs:
    """The student's and the teacher's outputs on one batch (what :class:`Taught` returns)."""

    __slots__ = ("student", "teacher")

    def __init__(self, student: Any, teacher: Any):
        self.student = student
        self.teacher = teacher


class Taught(nn.Module):
    """The student (registered, trained) next to its teacher (held outside the module tree,
    so it is neither trained, moved nor saved with the student): ``forward`` runs both on
    the same inputs, the teacher in eval mode without gradients."""

    def __init__(self, student: nn.Module, teacher: nn.Module):
        super().__init__()
        self.student = student
        self._teacher = (teacher,)

    def forward(self, *args: Any, **kwargs: Any) -> Outputs:
        teacher = self._teacher[0]
        with torch.no_grad():
            taught = teacher(*args, **kwargs)
        return Outputs(self.student(*args, **kwargs), taught)


def logits_of(output: Any) -> Tensor:
    """The tensor a model output carries: itself, or its ``logits``."""
    if isinstance(output, Tensor):
        return output
    logits = output.get("logits") if isinstance(output, Mapping) else None
    logits = logits if logits is not None else getattr(output, "logits", None)
    if not isinstance(logits, Tensor):
        raise PacnetError(
            f"distillation reads a tensor or an output's .logits; the model gives "
            f"{type(output).__name__}: pass loss_fn(output, labels) for your output"
        )
    return logits


def _has_logits(output: Any) -> bool:
    return not isinstance(output, Tensor)


class Distillation:
    """The loss :func:`pacnet.allocate` trains on with a teacher (see the module notes):
    ``loss(outputs, labels_or_batch)`` for the :class:`Outputs` of a :class:`Taught`."""

    takes_unlabelled = True
    """Batches without labels are fine: the teacher gives the targets."""

    def __init__(
        self,
        kind: str = "auto",
        temperature: float = 2.0,
        task_loss: LossFn | None = None,
        label_weight: float = 0.0,
    ):
        check(
            kind in DISTILL_KINDS,
            f"distill must be one of {', '.join(DISTILL_KINDS)}, got {kind!r}",
        )
        check(temperature > 0, f"temperature must be > 0, got {temperature}")
        check(label_weight >= 0, f"label_weight must be >= 0, got {label_weight}")
        self.kind = kind
        self.temperature = float(temperature)
        self.task_loss = task_loss
        self.label_weight = float(label_weight)

    def resolve(self, output: Any, labels: Any) -> str:
        """The loss ``"auto"`` stands for, given the student's output and the labels."""
        if self.kind != "auto":
            return self.kind
        logits = logits_of(output)
        if _has_logits(output):
            return "token" if logits.dim() >= 3 else "kl"
        if isinstance(labels, Tensor) and not labels.is_floating_point() and logits.dim() == 2:
            return "kl"
        return "mse"

    def __call__(self, outputs: Outputs, labels: Any) -> Tensor:
        check(
            isinstance(outputs, Outputs),
            "the distillation loss needs a teacher: pass teacher= to pacnet.allocate",
        )
        s, t = logits_of(outputs.student), logits_of(outputs.teacher)
        check(
            s.shape == t.shape,
            f"the teacher's output has shape {tuple(t.shape)}, the model's {tuple(s.shape)}: "
            "the teacher must be the model's own architecture",
        )
        kind = self.resolve(outputs.student, labels)
        if kind == "mse":
            loss = F.mse_loss(s.float(), t.float())
        else:
            loss = self._kl(s, t, labels if kind == "token" else None)
        if self.label_weight:
            loss = loss + self.label_weight * self._task(outputs.student, labels)
        return loss

    def _kl(self, s: Tensor, t: Tensor, batch: Any) -> Tensor:
        """``T²·KL(softmax(t/T) ‖ softmax(s/T))``, per sample (or token) and averaged."""
        temp = self.temperature
        s = F.log_softmax(s.float().reshape(-1, s.shape[-1]) / temp, dim=-1)
        t = F.log_softmax(t.float().reshape(-1, t.shape[-1]) / temp, dim=-1)
        per = F.kl_div(s, t, log_target=True, reduction="none").sum(-1)
        mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
        if isinstance(mask, Tensor) and mask.numel() == per.numel():
            keep = mask.reshape(-1).to(per.dtype)
            return (per * keep).sum() / keep.sum().clamp_min(1) * temp**2
        return per.mean() * temp**2

    def _task(self, output: Any, labels: Any) -> Tensor:
        if self.task_loss is not None:
            check(labels is not None, "label_weight > 0 needs labels in the batches")
            return self.task_loss(output, labels)
        loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
        check(
            isinstance(loss, Tensor),
            "label_weight > 0 needs the task loss: pass loss_fn, or dict batches with "
            "'labels' for a model that computes its own .loss",
        )
        return loss


def teacher_for(model: nn.Module, teacher: nn.Module | str) -> nn.Module:
    """The teacher ``teacher=`` names, checked against ``model`` (one line if it cannot
    teach it): ``"copy"`` gives a frozen copy of ``model`` as it is now."""
    import copy

    if isinstance(teacher, str):
        check(teacher == "copy", f"teacher must be a module or 'copy', got {teacher!r}")
        return copy.deepcopy(model)
    check(
        isinstance(teacher, nn.Module),
        f"teacher must be a module or 'copy', got {type(teacher).__name__}",
    )
    check(
        teacher is not model,
        "teacher= is the model itself, which Allocate prunes: pass teacher='copy' (a frozen "
        "copy of the model before pruning) or copy.deepcopy(model)",
    )
    ours = {n: p for n, p in model.named_parameters()}
    theirs = {n: p for n, p in teacher.named_parameters()}
    shared = {id(p) for p in ours.values()} & {id(p) for p in theirs.values()}
    check(not shared, "teacher= shares parameters with the model: pass a copy (teacher='copy')")
    missing = [n for n in ours if n not in theirs] + [n for n in theirs if n not in ours]
    differ = [n for n in ours if n in theirs and ours[n].shape != theirs[n].shape]
    if missing or differ:
        first = (missing or differ)[0]
        why = (
            f"{first!r} is in one and not the other"
            if missing
            else f"{first!r} has shape {tuple(theirs[first].shape)}, the model's "
            f"{tuple(ours[first].shape)}"
        )
        raise PacnetError(f"teacher= has a different architecture than the model ({why})")
    devices = {p.device for p in theirs.values()} - {p.device for p in ours.values()}
    check(
        not devices,
        f"teacher= is on {', '.join(map(str, devices))}, the model elsewhere: move it to the "
        "model's device",
    )
    return teacher
