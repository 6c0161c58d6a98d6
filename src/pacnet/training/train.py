"""The one training loop every step and every method uses, so all get the same budget.

:func:`fit` runs a fixed number of optimizer steps on shuffled minibatches, optionally
evaluates a validation set every ``eval_every`` steps, keeps the best state and stops early
after ``patience`` evaluations without improvement. Regularisers are plain callables added
to the loss with their weight. Seeded: the same seed gives the same batches and the same
random draws inside the model (dropout), without moving the caller's generators.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from pacnet.errors import PacnetError, check, check_module, check_type, first_line
from pacnet.training import distributed
from pacnet.training.batches import (
    Batch,
    BatchSource,
    Data,
    LossFn,
    as_source,
    forward,
    loss_of,
    size_of,
    to_device,
)
from pacnet.training.distributed import is_main

__all__ = ["Batch", "BatchSource", "Data", "FitConfig", "FitResult", "LossFn", "evaluate", "fit"]

Penalty = tuple[float, Callable[[], Tensor]]


@dataclass
class FitConfig:
    """Budget and optimiser of one training run.

    ``patience=None`` trains the full ``steps`` (fixed budget); an integer stops after that
    many evaluations without validation improvement and restores the best state.
    """

    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    eval_every: int = 50
    patience: int | None = None
    grad_clip: float | None = None
    amp: str = "none"

    def __post_init__(self) -> None:
        check(
            self.amp in AMP_DTYPES, f"amp must be one of {', '.join(AMP_DTYPES)}, got {self.amp!r}"
        )
        check(self.steps >= 0, f"steps must be >= 0, got {self.steps}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        check(self.eval_every >= 1, f"eval_every must be >= 1, got {self.eval_every}")
        check(
            self.optimizer in OPTIMIZERS,
            f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}",
        )


AMP_DTYPES: dict[str, torch.dtype | None] = {
    "none": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": lambda p, c, f: torch.optim.Adam(p, lr=c.lr, weight_decay=c.weight_decay, fused=f),
    "adamw": lambda p, c, f: torch.optim.AdamW(p, lr=c.lr, weight_decay=c.weight_decay, fused=f),
    "sgd": lambda p, c, f: torch.optim.SGD(
        p, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, fused=f
    ),
}
FUSED_DEVICES = ("cpu", "cuda")


def sparse_grad_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters of ``model`` that get sparse gradients, by name: the weights of its
    ``nn.Embedding`` and ``nn.EmbeddingBag`` modules built with ``sparse=True`` (for
    :func:`make_optimizer`'s ``sparse``)."""
    return {
        f"{name}.weight" if name else "weight": module.weight
        for name, module in model.named_modules()
        if isinstance(module, nn.Embedding | nn.EmbeddingBag) and module.sparse
    }


def make_optimizer(
    params: Sequence[nn.Parameter] | Sequence[Sequence[nn.Parameter]],
    cfg: FitConfig,
    *,
    sparse: Mapping[str, nn.Parameter] | None = None,
) -> torch.optim.Optimizer:
    """The optimizer ``cfg`` names, over ``params`` (parameters, or lists of parameters that
    become parameter groups with the same settings).

    It uses PyTorch's fused kernel where every parameter allows it (floating point, on CPU
    or CUDA): on CPU a fused Adam step over 10 M weights takes about a tenth of the default
    per-tensor implementation, whose ``sqrt`` also slows down several-fold on the zero
    optimizer state that frozen entries have. ``sparse`` names the parameters that get
    sparse gradients (:func:`sparse_grad_params` of the model): among
    ``params`` they need SGD without weight decay, unfused.
    """
    groups = [list(g) for g in params] if params and not torch.is_tensor(params[0]) else None
    flat = [p for g in groups for p in g] if groups is not None else list(params)
    check(flat, "nothing to train: no parameter is trainable")
    ids = {id(p) for p in flat}
    named = [name for name, p in (sparse or {}).items() if id(p) in ids]
    if named:
        gets = f"parameter {named[0]!r} gets sparse gradients (nn.Embedding(sparse=True))"
        check(
            cfg.optimizer == "sgd",
            f"{gets}; optimizer {cfg.optimizer!r} cannot use them: use optimizer='sgd' or "
            "sparse=False",
        )
        check(
            cfg.weight_decay == 0,
            f"{gets}; weight decay cannot use them: use weight_decay=0 or sparse=False",
        )
    fused = not named and all(
        p.is_floating_point() and p.device.type in FUSED_DEVICES for p in flat
    )
    arg = [{"params": g} for g in groups if g] if groups is not None else flat
    return OPTIMIZERS[cfg.optimizer](arg, cfg, fused or None)


@dataclass
class FitResult:
    """What a training run did: steps taken, losses, the validation curve, the best step."""

    steps: int = 0
    final_loss: float = math.nan
    best_step: int | None = None
    best_val: float | None = None
    val_curve: list[tuple[int, float]] = field(default_factory=list)
    start_val: float | None = None
    """The validation score before the first step, where it was measured (Allocate's
    distillation check)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "final_loss": self.final_loss,
            "best_step": self.best_step,
            "best_val": self.best_val,
        }


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without any)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Data | object,
    loss_fn: LossFn | None,
    batch_size: int = 4096,
    desc: str = "evaluate",
) -> float:
    """Mean loss over ``data`` (any shape :mod:`pacnet.training.batches` accepts; weighted by batch
    size), in eval mode, full precision; every module's mode is put back afterwards. A first
    batch the model cannot run on is one line (labelled ``desc``)."""
    check_module(model)
    source = as_source(data, "the evaluation data")
    device = device_of(model)
    total, count = 0.0, 0
    with modes_kept(model):
        model.eval()
        for batch in source.chunks(batch_size):
            batch = to_device(batch, device)
            n = size_of(batch)
            total += float(_checked_loss(count + 1, desc, model, batch, loss_fn)) * n
            count += n
    if getattr(source, "per_rank", False) and distributed.active():  # each rank its share:
        total, count = distributed.total(total), int(distributed.total(count))  # all ranks'
    check(count, "the evaluation data yields no batch")
    return total / count


@torch.no_grad()
def infer(model: nn.Module, inputs: Batch) -> Any:
    """The model on ``inputs`` (``model(**inputs)`` for a dict of model inputs,
    ``model(inputs)`` otherwise) in eval mode and without gradients, ``inputs`` moved to the
    model's device; every module's mode is put back afterwards. The output stays on that
    device."""
    with modes_kept(model):
        model.eval()
        return forward(model, to_device(inputs, device_of(model)))


def outputs(model: nn.Module, data: Data, batch_size: int = 4096) -> Iterator[tuple[Any, Tensor]]:
    """``(model(x), y)`` for the chunks ``(x, y)`` of ``data``, each as :func:`infer` gives
    it (``y`` as ``data`` holds it)."""
    for x, y in data.chunks(batch_size):
        yield infer(model, x), y


@contextmanager
def modes_kept(model: nn.Module) -> Iterator[None]:
    """Put every module's train/eval mode back on exit, as it was on entry."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def finish_grads(session: Any) -> None:
    """Let a masking context (e.g. :func:`~pacnet.train_only`) finish this step's gradients
    before they are clipped, so the clipping norm sees what the optimizer will see."""
    if hasattr(session, "finish_grads"):
        session.finish_grads()


def fit(
    model: nn.Module,
    loss_fn: LossFn | None,
    train: Data | object,
    cfg: FitConfig,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    val: Data | object | None = None,
    penalties: Sequence[Penalty] = (),
    seed: int = 0,
    desc: str = "train",
    wrap: Callable[[torch.optim.Optimizer], Any] | None = None,
) -> FitResult:
    """Train ``model`` for ``cfg.steps`` steps (fewer with early stopping), in train mode;
    afterwards every module is in the train/eval mode the caller left it in.

    Args:
        model: the module; trained in place.
        loss_fn: ``loss_fn(output, labels)`` for ``(inputs, labels)`` batches,
            ``loss_fn(output, batch)`` for dict batches, or None to use the output's own
            ``.loss`` (dict batches with ``labels``).
        train: training data: :class:`Data`, a map-style Dataset (batches of
            ``cfg.batch_size``), a DataLoader (as built) or a re-iterable of batches.
        cfg: budget and optimiser (``cfg.batch_size`` does not apply to a DataLoader or
            to ready-made batches).
        optimizer: an optimizer to use; default: ``cfg.optimizer`` over trainable parameters.
        val: validation data for early stopping (needed when ``cfg.patience`` is set).
        penalties: ``(weight, term)`` pairs; ``term()`` is added to the loss with ``weight``
            after each forward pass.
        seed: seeds the minibatch order and every random draw of the run (dropout,
            random masking, a DataLoader's shuffling; see :func:`seeded`); the caller's
            global generators are left as they were.
        desc: label of the progress bar.
        wrap: ``wrap(optimizer)`` returns a context manager entered around the loop (e.g.
            ``lambda opt: train_only(model, mask, opt)``); if what it yields has a
            ``finish_grads()`` method, that is called before gradient clipping.
    """
    check_module(model)
    check_type(cfg, FitConfig, "cfg", "pacnet.FitConfig(steps=..., lr=...)")
    check(
        isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**63,
        f"seed must be an integer in [0, 2**63), got {seed!r}",
    )
    check(
        cfg.patience is None or val is not None, "early stopping (patience) needs a validation set"
    )
    if optimizer is None:
        optimizer = make_optimizer(
            [p for p in model.parameters() if p.requires_grad],
            cfg,
            sparse=sparse_grad_params(model),
        )
    with seeded(seed, device_of(model)):
        return _fit(model, loss_fn, train, cfg, optimizer, val, penalties, seed, desc, wrap)


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Inside, the random generators a training run may draw from — torch's (CPU and the
    model's accelerator), NumPy's global one and Python's ``random`` — are seeded by
    ``seed``; on exit each is put back as the caller had it. So dropout, random masking
    in a model's forward pass (NumPy's too, as wav2vec2's) and a DataLoader's shuffling
    repeat with the seed, and the caller's own streams are not moved."""
    import random

    import numpy as np

    accelerator = device.type not in ("cpu", "meta")
    kind = device.type if accelerator else "cuda"
    index = device.index if device.index is not None else 0
    state_np, state_py = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[index] if accelerator else [], device_type=kind):
        torch.default_generator.manual_seed(seed)  # (torch.manual_seed would seed every GPU)
        if kind == "cuda" and accelerator:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        elif accelerator:
            torch.get_device_module(kind).manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(state_np)
            random.setstate(state_py)


def _fit(
    model: nn.Module,
    loss_fn: LossFn | None,
    train: Data | object,
    cfg: FitConfig,
    optimizer: torch.optim.Optimizer | None,
    val: Data | object | None,
    penalties: Sequence[Penalty],
    seed: int,
    desc: str,
    wrap: Callable[[torch.optim.Optimizer], Any] | None,
) -> FitResult:
    """:func:`fit`'s loop, inside :func:`seeded`."""
    generator = torch.Generator().manual_seed(seed)
    result = FitResult()
    validation = _Validation(model, val, loss_fn, cfg, result)
    source = as_source(train, "the training data")
    per_rank = getattr(source, "per_rank", False)  # a DistributedSampler's: not split again
    batches = source.batches(cfg.batch_size, generator)
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    device = device_of(model)
    amp_dtype = AMP_DTYPES[cfg.amp]
    scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None
    with (
        modes_kept(model),
        wrap(optimizer) if wrap else nullcontext() as session,
        tqdm(total=cfg.steps, desc=desc, disable=None if is_main() else True, leave=False) as bar,
    ):
        model.train()
        net = distributed.wrap(model)  # DDP under torchrun (after wrap set requires_grad)
        for step in range(1, cfg.steps + 1):
            batch, share = (next(batches), 1.0) if per_rank else distributed.shard(next(batches))
            batch = to_device(batch, device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = _checked_loss(step, desc, net, batch, loss_fn).float()
            if share != 1.0:  # DDP averages gradients: weight so the average is the global mean
                loss = loss * share
            for weight, term in penalties:
                loss = loss + weight * term()
            if not loss.requires_grad:
                raise PacnetError(
                    f"{desc}: the loss does not depend on any trainable parameter (it has no "
                    "gradient); compute it from the model's output"
                )
            if not torch.isfinite(loss):
                raise PacnetError(
                    f"{desc}: loss became {float(loss.detach())} at step {step}; "
                    "lower the learning rate or check the data for NaN/inf"
                )
            _backward_and_step(loss, optimizer, scaler, cfg.grad_clip, session, trainable)
            result.steps = step
            bar.update(1)
            if validation.stops_after(step):
                break
        result.final_loss = distributed.mean(float(loss.detach())) if cfg.steps else math.nan
    validation.restore_best()
    return result


class _Guarded(nn.Module):
    """``net`` whose forward turns an error from deep inside the model (inputs of a shape or
    type it rejects) into one line naming it; the loss function's own errors pass as they
    are. Used for the first step only."""

    def __init__(self, net: nn.Module, desc: str):
        super().__init__()
        self.net, self.desc = net, desc

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.net(*args, **kwargs)
        except PacnetError:
            raise
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise PacnetError(
                f"{self.desc}: the model cannot run on the first batch ({type(exc).__name__}: "
                f"{first_line(exc)}); check the inputs' shape and dtype against the model"
            ) from None


def _checked_loss(
    step: int, desc: str, net: nn.Module, batch: Any, loss_fn: LossFn | None
) -> Tensor:
    """:func:`loss_of` the batch, the first step's (or chunk's) forward guarded
    (:class:`_Guarded`)."""
    return loss_of(_Guarded(net, desc) if step == 1 else net, batch, loss_fn)


def _backward_and_step(
    loss: Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    grad_clip: float | None,
    session: Any,
    trainable: list[nn.Parameter],
) -> None:
    """One backward pass and optimizer step: gradients clipped to ``grad_clip`` after the
    masking context ``session`` finished them; with fp16's ``scaler`` a scaled backward,
    and a step with inf/NaN gradients skipped."""
    if scaler is None:
        loss.backward()
        if grad_clip is not None:
            finish_grads(session)
            torch.nn.utils.clip_grad_norm_(trainable, grad_clip)
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # so step hooks see true gradients (also when fused)
        if grad_clip is not None:
            finish_grads(session)
            torch.nn.utils.clip_grad_norm_(trainable, grad_clip)
        scaler.step(optimizer)
        scaler.update()


class Stopping:
    """When a run is evaluated and when it stops early, the rule both engines follow:
    an evaluation every ``eval_every`` steps and after the last step, each recorded in the
    result with the best one; with ``patience``, a stop after that many evaluations
    without improvement."""

    def __init__(self, cfg: FitConfig, result: FitResult):
        self.cfg, self.result, self.stale = cfg, result, 0

    def due(self, step: int) -> bool:
        """Whether ``step`` ends with an evaluation."""
        return step % self.cfg.eval_every == 0 or step == self.cfg.steps

    def record(self, step: int, score: float) -> str:
        """Record the evaluation ``score`` after ``step``: ``"best"`` (the best so far:
        keep this state where there is patience), ``"stop"`` (patience ran out) or
        ``"go"``."""
        result = self.result
        result.val_curve.append((step, score))
        if result.best_val is None or score < result.best_val:
            result.best_val, result.best_step, self.stale = score, step, 0
            return "best"
        self.stale += 1
        return "stop" if self.cfg.patience is not None and self.stale >= self.cfg.patience else "go"


class _Validation:
    """Evaluations on the validation data as :class:`Stopping` says; with ``patience`` the
    best state is kept and put back at the end."""

    def __init__(
        self,
        model: nn.Module,
        val: Data | object | None,
        loss_fn: LossFn | None,
        cfg: FitConfig,
        result: FitResult,
    ):
        self.model, self.val, self.loss_fn, self.cfg = model, val, loss_fn, cfg
        self.rule = Stopping(cfg, result)
        self.best_state: dict[str, Tensor] | None = None

    def stops_after(self, step: int) -> bool:
        """Evaluate if ``step`` is due; whether training stops here."""
        if self.val is None or not self.rule.due(step):
            return False
        verdict = self.rule.record(step, evaluate(self.model, self.val, self.loss_fn))
        if verdict == "best" and self.cfg.patience is not None:
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return verdict == "stop"

    def restore_best(self) -> None:
        """Load the best state into the model, where one was kept."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
