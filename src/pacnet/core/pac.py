"""PAC-Net's three steps as plain functions: Prune (:mod:`pacnet.core.mask`), Allocate, Calibrate.

* :func:`allocate` — redundant weights are set to exactly 0 and held there; the essential
  weights (and the source's own per-task and other parameters) retrain on the source task.
* :func:`calibrate` — the target gets its own per-task tensors (head, biases, norms); the
  redundant weights start at 0 and train on the target data with the penalty
  ``λ·‖w − w_alloc‖²`` over the trainable entries; essential weights and frozen-shared
  parameters do not change, bit for bit.

Afterwards ``tasks.use(model, "source")`` (or :func:`pacnet.core.checkpoint.load` with
``task="source"``) gives the model exactly as it was after Allocate.

The penalty is a plain sum of squares (no ½, no mean) on top of the task loss; its right
strength depends on how the loss is scaled (see the README on standardised targets). It is
applied as its gradient ``2λ(w − w_alloc)`` by :func:`~pacnet.train_only` (no autograd
graph, no copy of the redundant weights' start, which is 0; with fused Adam it is the
kernel's own weight decay), so ``fit``'s reported loss is the task loss alone.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
from torch import Tensor, nn

from pacnet.core.distill import Distillation, Taught, teacher_for
from pacnet.core.freeze import train_only
from pacnet.core.mask import Mask
from pacnet.core.roles import unwrap
from pacnet.core.tasks import Tasks
from pacnet.errors import check, check_module, check_type
from pacnet.training.batches import as_source, loss_of, samples, size_of, split_off, to_device
from pacnet.training.train import (
    Data,
    FitConfig,
    FitResult,
    LossFn,
    Penalty,
    device_of,
    evaluate,
    fit,
    make_optimizer,
    modes_kept,
    seeded,
    sparse_grad_params,
)


def zero_redundant(model: nn.Module, mask: Mask) -> None:
    """Set every redundant (``False``) entry of the masked weights to +0.0."""
    zero_entries(model, ~mask)


def allocate(
    model: nn.Module,
    mask: Mask,
    train: Data | object,
    loss_fn: LossFn | None,
    cfg: FitConfig,
    *,
    val: Data | object | None = None,
    seed: int = 0,
    teacher: nn.Module | str | None = None,
    distill: str = "auto",
    temperature: float = 2.0,
    label_weight: float = 0.0,
    holdout: float = 0.2,
) -> FitResult:
    """Retrain the essential weights with redundant weights held at 0: on the source task,
    or, with a ``teacher``, to give what the unpruned model gives on the same inputs.

    ``train`` and ``loss_fn`` take every shape :func:`pacnet.fit` takes: :class:`Data`, a
    Dataset, a DataLoader or batches; ``(inputs, labels)`` or dict batches; ``loss_fn=None``
    for the model's own ``.loss``.

    Args:
        teacher: ``"copy"`` (a frozen copy of ``model`` as it is before pruning, freed
            afterwards) or a module of the same architecture (the unpruned source model):
            Allocate then distils (see :mod:`pacnet.core.distill`) and needs inputs only —
            ``Data(x)``, a Dataset of inputs, a DataLoader, or dict batches without labels.
        distill: the distillation loss: ``"auto"`` (by the output), ``"mse"``
            (regression), ``"kl"`` (class logits) or ``"token"`` (per-token logits).
        temperature: the softening ``T`` of ``"kl"`` and ``"token"``.
        label_weight: weight of the task loss (``loss_fn``, or the output's ``.loss``)
            added to the distillation loss, for batches that carry labels too.
        holdout: with a teacher and no ``val``, the share of the inputs (at most 512)
            held out to check the distillation loss on; 0 checks nothing. With ``val``
            or a held-out share, Allocate keeps its best state over the checks, the pruned
            start included, so it never ends further from the teacher than it started on
            inputs it did not train on; where no step beats the start it keeps the start
            and warns. (Inputs that cannot be split, a DataLoader, are checked on their
            first few hundred.)
    """
    _check_arguments(model, mask, cfg)
    if teacher is None:
        zero_redundant(model, mask)
        params = [p for p in model.parameters() if p.requires_grad]
        fitting = (train, loss_fn, cfg, val, seed, "allocate")
        return masked_fit(model, params, mask, "trainable", 0.0, *fitting)
    check(
        loss_fn is None or label_weight > 0,
        "with a teacher, loss_fn is the task loss mixed in by label_weight: give "
        "label_weight > 0, or loss_fn=None to distil only",
    )
    check(0 <= holdout < 1, f"holdout must lie in [0, 1), got {holdout}")
    taught = teacher_for(model, teacher)  # before pruning: "copy" copies the full model
    loss = Distillation(distill, temperature, loss_fn, label_weight)
    zero_redundant(model, mask)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [(p, p.requires_grad) for p in taught.parameters()]
    training = taught.training
    taught.eval().requires_grad_(False)
    try:
        net = Taught(model, taught)
        with seeded(seed, device_of(model)):  # a shuffled loader's check draws by the seed
            train, held, where = _fidelity_check(train, val, holdout, seed)
            if held is None:
                fitting = (train, loss, cfg, val, seed, "allocate")
                return masked_fit(model, params, mask, "trainable", 0.0, *fitting, net=net)
            return _distil_no_worse(model, net, params, mask, train, held, where, loss, cfg, seed)
    finally:
        taught.train(training)
        for p, flag in grads:
            p.requires_grad_(flag)
        del taught, grads  # a copy made here is freed with the last reference


def _fidelity_check(
    train: Data | object, val: Data | object | None, holdout: float, seed: int
) -> tuple[object, object | None, str]:
    """``(train, held, where)``: the inputs to train on and those the distillation loss is
    checked on: ``val`` where given; else ``holdout`` of the inputs split off
    (:func:`~pacnet.training.batches.split_off`); else, where they cannot be split, the
    first few hundred training inputs; ``held`` is None with ``holdout=0``."""
    if val is not None:
        return train, val, "the validation inputs"
    if not holdout:
        return train, None, ""
    parts = split_off(train, holdout, seed)
    if parts is not None:
        return parts[0], parts[1], "the held-out inputs"
    first: list[object] = []
    count = 0
    for batch in as_source(train, "the training data").chunks(256):
        first.append(batch)
        count += size_of(batch)
        if count >= 256:
            break
    return train, first, "the first training inputs (they could not be split)"


def _distil_no_worse(
    model: nn.Module,
    net: Taught,
    params: list[nn.Parameter],
    mask: Mask,
    train: object,
    held: object,
    where: str,
    loss: Distillation,
    cfg: FitConfig,
    seed: int,
) -> FitResult:
    """Distil, checking the loss on ``held`` every ``cfg.eval_every`` steps and keeping the
    best state; that state replaces the pruned start only where it is closer to the
    teacher on ``held`` beyond doubt (:func:`_clearly_better`). Otherwise the start is
    kept, bit for bit, and a warning says so."""
    start = evaluate(net, held, loss, desc="allocate")
    kept = {k: v.detach().clone() for k, v in model.state_dict().items()}
    before = _sample_losses(net, held, loss)
    if cfg.patience is None:  # keep the best state, train the whole budget
        cfg = replace(cfg, patience=cfg.steps // cfg.eval_every + 2)
    fitting = (train, loss, cfg, held, seed, "allocate")
    result = masked_fit(model, params, mask, "trainable", 0.0, *fitting, net=net)
    result.start_val = start
    best = result.best_val
    if (
        best is not None
        and best < start
        and _clearly_better(before, _sample_losses(net, held, loss))
    ):
        return result
    model.load_state_dict(kept)
    reached = "no lower" if best is None or best >= start else f"{best:.4g}, within the noise"
    warnings.warn(
        f"allocate: distillation did not bring the model closer to the teacher on {where} "
        f"({len(before)} samples: loss {start:.4g} after Prune, {reached} at best after "
        "training): the pruned model is kept as it started. Give more inputs (a few hundred "
        "or more), a lower lr or more steps",
        UserWarning,
        stacklevel=3,
    )
    result.best_step, result.best_val = 0, start
    return result


PAIRED_SAMPLES = 256
"""How many held-out samples (the first) the paired comparison of :func:`_clearly_better`
scores one by one."""


def _sample_losses(net: nn.Module, held: object, loss: Distillation) -> Tensor:
    """The distillation loss of each of the first :data:`PAIRED_SAMPLES` held-out samples,
    in eval mode."""
    device = device_of(net)
    with torch.no_grad(), modes_kept(net):
        net.eval()
        first = itertools.islice(samples(held), PAIRED_SAMPLES)
        losses = [float(loss_of(net, to_device(one, device), loss)) for one in first]
    return torch.tensor(losses, dtype=torch.float64)


def _clearly_better(before: Tensor, after: Tensor) -> bool:
    """Whether ``after`` is lower than ``before`` sample for sample beyond doubt: the mean
    paired improvement exceeds 1.645 times its standard error (a one-sided test at 5 %);
    fewer than three samples cannot tell."""
    if len(before) < 3:
        return False
    gain = before - after
    return bool(gain.mean() > 1.645 * gain.std() / len(gain) ** 0.5)


def calibrate(
    model: nn.Module,
    mask: Mask,
    train: Data | object,
    loss_fn: LossFn | None,
    cfg: FitConfig,
    *,
    lam: float = 0.01,
    tasks: Tasks | None = None,
    task: str = "target",
    init: Mapping[str, Tensor] | None = None,
    val: Data | object | None = None,
    seed: int = 0,
    reserve: float = 0.0,
    retrain: FitConfig | None = None,
) -> tuple[Tasks, FitResult]:
    """Train the free masked entries (from 0) and the new task's own tensors on its data.

    For the first target the free entries are the redundant weights. To serve several
    targets from one network, give ``reserve > 0``: after training, the task keeps the
    largest-magnitude ``1 − reserve`` of its entries, gives the rest back as free (+0.0)
    and retrains on what it kept (PackNet's prune-and-retrain, no penalty), so the next
    ``calibrate(..., tasks=tasks)`` call trains those. Every earlier task stays bit-exact.

    Args:
        model: the network after :func:`allocate` (and earlier calibrations, with ``tasks``).
        mask: essential entries (``True``) of the source; never trained here.
        train, loss_fn, cfg, val, seed: as in :func:`pacnet.fit` (any data shape it takes;
            ``loss_fn=None`` uses the model's own ``.loss``).
        lam: strength λ of ``λ‖w − w_alloc‖²`` on the trainable entries (paper: 0.01).
        tasks: an existing :class:`Tasks` (default: a new one with the model's current
            per-task tensors as the source's).
        task: the new task's name.
        init: fresh values for per-task tensors whose shape differs from the source's
            (e.g. a head with another output size); the rest start as copies.
        reserve: fraction of the task's trained entries given back for later targets,
            in [0, 1) (equal shares for T targets: ``1 − 1/(targets left)``).
        retrain: budget of the retraining after a release (default: ``cfg``).

    Returns:
        ``(tasks, fit_result)``; the model is left active as ``task``.
    """
    _check_arguments(model, mask, cfg)
    check_type(tasks, (Tasks, type(None)), "tasks", "the Tasks an earlier calibrate returned")
    check(lam >= 0, f"lam (λ) must be >= 0, got {lam}")
    check(0 <= reserve < 1, f"reserve must lie in [0, 1), got {reserve}")
    tasks = tasks if tasks is not None else Tasks(model, mask)
    check(tasks.mask == mask, "mask differs from the one these tasks were built with")
    previous = tasks.active
    open_task(model, tasks, task, init)
    try:
        result = _train_newest(model, tasks, train, loss_fn, cfg, lam, val, seed, "calibrate")
        if reserve:
            tasks.release(model, task, reserve)
            retrained = _train_newest(
                model, tasks, train, loss_fn, retrain or cfg, 0.0, val, seed, "retrain"
            )
            result.steps += retrained.steps
            result.final_loss = retrained.final_loss
    except BaseException:  # a failed or interrupted calibration leaves no half-made task:
        tasks.drop(model, task, then=previous)  # the model is as it was, the source intact
        raise
    return tasks, result


def open_task(
    model: nn.Module, tasks: Tasks, task: str, init: Mapping[str, Tensor] | None = None
) -> None:
    """Where Calibrate starts: ``task`` added to ``tasks`` (``init``: fresh values for its
    own tensors whose shape differs from the source's) and active, the masked entries it
    owns set to +0.0. On failure the task is dropped again."""
    previous = tasks.active
    tasks.add(task, init)
    try:
        tasks.activate(model, task)
        zero_entries(model, tasks.owned(task))
    except BaseException:
        tasks.drop(model, task, then=previous)
        raise


def _check_arguments(model: nn.Module, mask: Mask, cfg: FitConfig) -> None:
    """One line for a model, mask or budget of the wrong kind, or a mask of another model."""
    check_module(model)
    check_type(mask, Mask, "mask", "the pacnet.Mask that pacnet.prune returns")
    check_type(cfg, FitConfig, "cfg", "pacnet.FitConfig(steps=..., lr=...)")
    mask.check(model)


@torch.no_grad()
def zero_entries(model: nn.Module, entries: Mapping[str, Tensor]) -> None:
    """Set the ``True`` entries of the named weights to +0.0."""
    model = unwrap(model)
    params = dict(model.named_parameters())
    for name, where in entries.items():
        params[name].masked_fill_(where.to(params[name].device), 0)


def _train_newest(
    model: nn.Module,
    tasks: Tasks,
    train: Data | object,
    loss_fn: LossFn | None,
    cfg: FitConfig,
    lam: float,
    val: Data | object | None,
    seed: int,
    desc: str,
) -> FitResult:
    """Train what the newest task owns (masked entries and own tensors), nothing else."""
    trainable = tasks.trainable(model)
    groups = trainable_groups(model, tasks, trainable)
    fitting = (train, loss_fn, cfg, val, seed, desc)
    return masked_fit(model, groups, trainable, "frozen", lam, *fitting)


def masked_fit(
    model: nn.Module,
    params: list[nn.Parameter] | list[list[nn.Parameter]],
    trainable: Mapping[str, Tensor],
    others: str,
    l2: float,
    train: Data | object,
    loss_fn: LossFn | None,
    cfg: FitConfig,
    val: Data | object | None,
    seed: int,
    desc: str,
    net: nn.Module | None = None,
    penalties: Sequence[Penalty] = (),
) -> FitResult:
    """pacnet's loop (:func:`pacnet.fit`) over ``params`` (or groups of them) inside
    :func:`train_only` (``trainable``, ``others`` and ``l2`` as it takes them): how
    Allocate, Calibrate and the sequential engine train some entries of a model. The loop
    runs ``net`` (default: the model; a :class:`~pacnet.core.distill.Taught` to distil) and
    adds ``penalties`` to the loss."""
    optimizer = make_optimizer(params, cfg, sparse=sparse_grad_params(model))
    return fit(
        net if net is not None else model,
        loss_fn,
        train,
        cfg,
        optimizer=optimizer,
        val=val,
        penalties=penalties,
        seed=seed,
        desc=desc,
        wrap=lambda opt: train_only(model, trainable, opt, others=others, l2=l2),
    )


def trainable_groups(
    model: nn.Module, tasks: Tasks, trainable: Mapping[str, Tensor]
) -> list[list[nn.Parameter]]:
    """The parameters ``trainable`` names, as one optimizer group: the masked-shared weights
    (their trainable entries start at 0) and the task's own tensors (which start as copies).
    Fused Adam's weight decay then carries the whole λ term (see :func:`~pacnet.train_only`)
    and the step runs one kernel."""
    model = unwrap(model)
    params = dict(model.named_parameters())
    shared = [params[n] for n in trainable if n not in tasks.names]
    own = [params[n] for n in trainable if n in tasks.names]
    return [shared + own]


def parameter_report(model: nn.Module, tasks: Tasks) -> dict[str, int]:
    """Counts: essential, redundant, per-task (each task), frozen-shared, total per task."""
    model = unwrap(model)
    params = dict(model.named_parameters())
    per_task = sum(params[n].numel() for n in tasks.names if n in params)
    masked = tasks.mask.total
    frozen = sum(
        p.numel() for n, p in params.items() if n not in tasks.mask and n not in tasks.names
    )
    return {
        "essential": tasks.mask.essential,
        "redundant": tasks.mask.redundant,
        "per_task": per_task,
        "frozen_shared": frozen,
        "tasks": len(tasks.order),
        "total": masked + frozen + per_task,
    }


def print_trainable_parameters(model: nn.Module, tasks: Tasks) -> str:
    """One line like PEFT's: what each task trains and what the network stores."""
    r = parameter_report(model, tasks)
    target_trainable = r["redundant"] + r["per_task"]
    masked = r["essential"] + r["redundant"]
    line = (
        f"essential {r['essential']:,} | redundant {r['redundant']:,} "
        f"({r['redundant'] / masked:.1%} of the {masked:,} masked, which are "
        f"{masked / r['total']:.1%} of the model; head {tasks.plan.head or 'none'}) | "
        f"per-task {r['per_task']:,} x {r['tasks']} tasks | frozen-shared {r['frozen_shared']:,} | "
        f"target trains {target_trainable:,} of {r['total']:,} "
        f"({target_trainable / r['total']:.2%})"
    )
    print(line)
    return line
