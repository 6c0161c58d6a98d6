"""Many small MLP trainings as one: the members' weights stacked ``[M, …]``, one batched
matmul per layer, one Adam step for all.

A cross-validated comparison on the MLP benchmarks trains hundreds of small networks (6
candidates × 3 folds per run, and a run per seed and target size). One of them alone
spends most of a step in Python and in the optimizer's per-tensor overhead, not in
arithmetic; stacked, the overhead is paid once per step for every member.

Each :class:`Member` keeps what its own run would have:

* its data, batch size and seeded batch order (the very batches :meth:`Data.batches`
  draws with that seed, padded to the largest batch with zero-weight rows);
* its learning rate, and its pulls ``c·‖w − a‖²`` (L2-SP's α and β, PAC-Net's λ);
* its terms: DELTA's distance to the source's layer outputs on its own rows (the source
  is frozen, so those are computed once), BSS's smallest singular values of its own rows'
  features (padding rows left out);
* its low-rank factors (LoRA's ``A`` and ``B``, padded with frozen zeros to the largest
  rank of the stack) and their scale;
* which entries train: a frozen entry of member *i* gets a zero gradient, so its Adam
  state stays zero and its update is exactly ``−0.0`` — it never moves, whatever the other
  members do;
* its validation data and early stopping: a member that stops is frozen from then on (its
  step size is zero) and gets its best state back at the end.

The result matches what :func:`pacnet.fit` gives each member alone with the same seed up to
float rounding (sums in another order; Adam written out instead of the fused kernel):
:data:`TOLERANCE` states how close, and the tests hold it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from pacnet.errors import PacnetError, check
from pacnet.training.batches import batch_rows, to_device
from pacnet.training.stacked_model import (
    ACTIVATIONS,
    FeaturePull,
    Layer,
    Layout,
    Shrinkage,
    StackedNet,
    Term,
    Terms,
    as_stacked,
    padded_stack,
)
from pacnet.training.train import Data, FitConfig, FitResult, Stopping

TOLERANCE = {"weights_rtol": 1e-3, "weights_atol": 1e-4, "metric_rtol": 5e-3}
"""How close a stacked member ends to the same run trained alone, in float32: final weights
within ``weights_atol + weights_rtol·|w|`` entrywise and the benchmark metric within
``metric_rtol`` relative (held by the tests' runs of 40–200 steps; rounding differences grow
with the steps, and over 500-step Friedman runs the metrics differed by at most 1.2e-3
relative, ``pacnet bench --engines``; BSS at a strong weight, 10, whose smallest singular
directions swap under rounding, differed by up to 0.4 % there, and its cross-validation
choice flipped once in 48 runs). Frozen entries are identical, bit for bit."""


@dataclass
class Member:
    """One training run of an MLP, described for :func:`fit_stacked`.

    ``start`` holds every tensor the layout names, by name; ``trainable`` says per name
    which entries train (a bool tensor, or True/False for all/none; a name missing is
    frozen); ``pulls`` adds ``c·‖w − a‖²`` for tensor ``name`` as ``name: (c, a)`` (its
    gradient, ``2c(w − a)``, acts on the trainable entries); with ``pulls_in_loss`` the
    terms count in the reported loss, as they do when a method adds them to the loss
    (L2-SP) rather than to the gradient (PAC-Net's Calibrate). ``terms`` are added to the
    member's loss (DELTA's :class:`FeaturePull`, BSS's :class:`Shrinkage`); ``scales``
    gives the scale of each low-rank layer by its index. Members of different ranks train
    together: the factors are padded with frozen zeros.
    """

    start: Mapping[str, Tensor]
    train: Data
    cfg: FitConfig
    seed: int = 0
    trainable: Mapping[str, Tensor | bool] = field(default_factory=dict)
    pulls: Mapping[str, tuple[float, Tensor]] = field(default_factory=dict)
    pulls_in_loss: bool = False
    val: Data | None = None
    terms: Sequence[Term] = ()
    scales: Mapping[int, float] = field(default_factory=dict)


def supports(cfg: FitConfig) -> str | None:
    """Why training under ``cfg`` cannot be stacked (None: it can)."""
    if cfg.optimizer != "adam" or cfg.weight_decay:
        return f"optimizer {cfg.optimizer} with weight decay {cfg.weight_decay} (stacked: Adam)"
    if cfg.grad_clip is not None or cfg.amp != "none":
        return "gradient clipping or mixed precision"
    return None


class _Stack:
    """The members' tensors as stacked leaves (padded to the largest, for factors of
    several ranks), their masks, pulls and Adam state."""

    def __init__(self, members: Sequence[Member], names: list[str], device: torch.device):
        self.names = names
        self.shapes = [[tuple(as_stacked(m.start[n]).shape) for n in names] for m in members]
        self.params: list[Tensor] = []
        self.masks: list[Tensor | None] = []
        self.pulls: list[tuple[Tensor, Tensor, Tensor] | None] = []
        """Per tensor: ``2c`` (broadcast), the anchors ``a`` and ``2c·a``, or None."""
        self.trains: list[int] = []
        """The tensors some member trains (the others need no gradient)."""
        for k, name in enumerate(names):
            starts = [as_stacked(m.start[name].detach().float()) for m in members]
            start = padded_stack(starts, device)
            mask = padded_stack([as_stacked(_mask(m, name).float()) for m in members], device)
            trains = bool(mask.any())
            self.params.append(start.requires_grad_(trains))
            self.masks.append(None if bool((mask == 1).all()) else mask)
            if trains:
                self.trains.append(k)
            if any(name in m.pulls for m in members):
                coef = torch.tensor([2 * float(m.pulls.get(name, (0.0,))[0]) for m in members])
                anchors = [
                    as_stacked(m.pulls[name][1].detach().float()) if name in m.pulls else zero
                    for m, zero in zip(members, (torch.zeros_like(t) for t in starts), strict=True)
                ]
                anchor = padded_stack(anchors, device)
                coef = coef.to(device).view(-1, *[1] * (start.dim() - 1))
                self.pulls.append((coef, anchor, coef * anchor))
            else:
                self.pulls.append(None)
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.index = {n: k for k, n in enumerate(names)}
        self.vectors = {k for k, n in enumerate(names) if members[0].start[n].dim() == 1}

    def values(self, i: int) -> list[Tensor]:
        """Member ``i``'s tensors, laid out as the model holds them."""
        out = []
        for k, (p, shape) in enumerate(zip(self.params, self.shapes[i], strict=True)):
            part = p[i].detach()[tuple(slice(0, s) for s in shape)]
            out.append(part.squeeze(0) if k in self.vectors else part.t())
        return out


def _mask(member: Member, name: str) -> Tensor:
    where = member.trainable.get(name, False)
    if isinstance(where, bool):
        return torch.full_like(member.start[name], where, dtype=torch.bool)
    return where.to(torch.bool)


def _orders(members: Sequence[Member], steps: int, width: int) -> Tensor:
    """Each member's training rows per step, ``[steps, M, width]`` (padding: row 0), the very
    order :meth:`Data.batches` draws with the member's seed."""
    out = torch.zeros(steps, len(members), width, dtype=torch.long)
    drawn: dict[tuple[int, int, int, int], Tensor] = {}  # candidates share their folds' orders
    for i, m in enumerate(members):
        n = len(m.train)
        size = min(m.cfg.batch_size, n)
        key = (m.seed, n, size, m.cfg.steps)
        if key not in drawn:
            drawn[key] = _drawn(n, size, m.cfg.steps, m.seed)
        out[: m.cfg.steps, i, :size] = drawn[key]
    return out


def _drawn(n: int, size: int, steps: int, seed: int) -> Tensor:
    """``[steps, size]`` rows: the batches :meth:`Data.batches` gives with ``seed``."""
    rows = batch_rows(n, size, torch.Generator().manual_seed(seed))
    drawn = [next(rows) for _ in range(steps)]
    return torch.stack(drawn) if drawn else torch.zeros(0, size, dtype=torch.long)


def _padded(parts: Sequence[Tensor], device: torch.device) -> Tensor:
    """The members' data ``[M, rows, ...]``, padded with zero rows, on ``device`` through
    the one data path (:func:`~pacnet.training.batches.to_device`)."""
    width = max(len(p) for p in parts)
    out = torch.zeros(len(parts), width, *parts[0].shape[1:], dtype=parts[0].dtype)
    for i, p in enumerate(parts):
        out[i, : len(p)] = p
    return to_device(out, device)


def _counts(sizes: Sequence[int], width: int, device: torch.device) -> Tensor:
    """``[M, width]`` weights: 1 for a member's first ``sizes[i]`` rows, 0 after."""
    return (torch.arange(width)[None, :] < torch.tensor(sizes)[:, None]).float().to(device)


def fit_stacked(
    members: Sequence[Member],
    layout: Layout,
    device: torch.device | str = "cpu",
) -> list[tuple[dict[str, Tensor], FitResult]]:
    """Train every member (MLPs laid out as ``layout``, MSE loss, Adam) as one stacked
    model; return each member's final tensors by name (the best ones where it stopped
    early) and its :class:`FitResult`, as :func:`pacnet.fit` would for that member alone.
    Members whose terms or shapes differ train in separate stacks."""
    check(members, "nothing to train: no members")
    check(isinstance(layout, Layout), f"layout must be a stacked Layout, got {type(layout)}")
    out: list[tuple[dict[str, Tensor], FitResult] | None] = [None] * len(members)
    stacks: dict[tuple, list[int]] = {}
    for i, m in enumerate(members):
        stacks.setdefault(_kind(m, layout), []).append(i)
    for group in stacks.values():
        order = sorted(group, key=lambda i: members[i].cfg.lr)  # same lr: adjacent
        trained = _fit_sorted([members[i] for i in order], layout, torch.device(device))
        for position, i in enumerate(order):
            out[i] = trained[position]
    return [t for t in out if t is not None]


def _kind(member: Member, layout: Layout) -> tuple:
    """What members must share to train in one stack: their tensors' shapes (factors'
    ranks aside) and their terms' kinds and layers."""
    ranked = {n for layer in layout.layers for n in layer.low_rank or ()}
    shapes = tuple((n, t.dim() if n in ranked else tuple(t.shape)) for n, t in member.start.items())
    terms = tuple(
        (type(t).__name__, tuple(sorted(t.layers)) if isinstance(t, FeaturePull) else ())
        for t in member.terms
    )
    return shapes, terms


def _fit_sorted(
    members: Sequence[Member], layout: Layout, device: torch.device
) -> list[tuple[dict[str, Tensor], FitResult]]:
    names = layout.names()
    missing = [n for n in names if n not in members[0].start]
    check(not missing, f"stacked training: no starting values for {missing[:3]}")
    stack = _Stack(members, names, device)
    check(stack.trains, "nothing to train: no parameter is trainable")
    M = len(members)
    steps = max(m.cfg.steps for m in members)
    sizes = [min(m.cfg.batch_size, len(m.train)) for m in members]
    width = max(sizes)
    weights = _counts(sizes, width, device)
    check(all(m.train.y is not None for m in members), "stacked training needs labels")
    xs = _padded([m.train.x.float() for m in members], device)
    ys = _padded([m.train.y.float().reshape(len(m.train), -1) for m in members], device)
    denom = (torch.tensor(sizes, dtype=torch.float32) * ys.shape[-1]).to(device)
    orders = _orders(members, steps, width).to(device)
    scales = _scales(members, layout, device)
    terms = Terms([m.terms for m in members], layout, stack.index, xs, sizes, device)
    net = StackedNet(layout, stack.index, terms.taps)
    stop_at = [m.cfg.steps for m in members]
    live = [True] * M
    adam = _Adam(stack, [m.cfg.lr for m in members], device)
    adam.live(live)
    live_t = torch.ones(M, dtype=torch.bool, device=device)
    validation = _StackedValidation(
        members, stack, StackedNet(layout, stack.index, ()), scales, device
    )
    results = [FitResult() for _ in members]
    last_loss = torch.full((M,), math.nan, dtype=torch.float64, device=device)
    taken = torch.zeros(M, dtype=torch.long, device=device)
    diverged = torch.zeros(M, dtype=torch.bool, device=device)
    pulls_shown = any(m.pulls_in_loss for m in members) and any(stack.pulls)
    last_steps = _last_steps(members)  # where a member's loss may be its final one

    for step in range(1, steps + 1):
        ended = [i for i in range(M) if live[i] and stop_at[i] < step]
        if ended:
            _stop(ended, live, live_t, adam)
        if not any(live):
            break
        idx = orders[step - 1]
        x = torch.gather(xs, 1, idx.unsqueeze(-1).expand(-1, -1, xs.shape[-1]))
        y = torch.gather(ys, 1, idx.unsqueeze(-1).expand(-1, -1, ys.shape[-1]))
        for k in stack.trains:
            stack.params[k].grad = None
        out, taps, head_in = net(stack.params, x, scales)
        losses = ((out - y).square().sum(-1) * weights).sum(1) / denom
        losses = terms.added(losses, idx, taps, head_in, weights)
        losses.sum().backward()
        with torch.no_grad():
            shown = losses.detach()
            if pulls_shown and step in last_steps:
                shown = shown + _pull_values(stack, members)
            for k in stack.trains:
                p = stack.params[k]
                g = p.grad
                if stack.pulls[k] is not None:  # + 2c(w − a), in place
                    coef, _, offset = stack.pulls[k]
                    g.addcmul_(p, coef).sub_(offset)
                if stack.masks[k] is not None:
                    g.mul_(stack.masks[k])
            adam.step(step)
            last_loss = torch.where(live_t, shown.double(), last_loss)
            diverged |= live_t & ~torch.isfinite(shown)
            taken += live_t
        stopped = validation.after(step, live, results)
        if stopped:
            _stop(stopped, live, live_t, adam)
    _check_finite(diverged, members)
    states = validation.final_states()
    for r, n, loss in zip(results, taken.tolist(), last_loss.tolist(), strict=True):
        r.steps = n
        r.final_loss = loss if n else math.nan
    return list(zip(states, results, strict=True))


def _scales(members: Sequence[Member], layout: Layout, device: torch.device) -> Tensor | None:
    """``[M, layers]``: each member's scale of each low-rank layer (None: no such layer)."""
    if not any(layer.low_rank for layer in layout.layers):
        return None
    values = [[float(m.scales.get(i, 1.0)) for i in range(len(layout.layers))] for m in members]
    return torch.tensor(values, dtype=torch.float32, device=device)


def _check_finite(diverged: Tensor, members: Sequence[Member]) -> None:
    """Fail in one line, as :func:`pacnet.fit` does, where a member's loss became NaN or inf
    while it trained (nothing it trained is handed back)."""
    bad = diverged.nonzero().flatten().tolist()
    if bad:
        lrs = sorted({members[i].cfg.lr for i in bad})
        raise PacnetError(
            f"stacked training: the loss became NaN or inf for {len(bad)} of {len(members)} "
            f"trainings (learning rates {', '.join(f'{lr:g}' for lr in lrs)}); lower the "
            "learning rate or check the data for NaN/inf"
        )


def _last_steps(members: Sequence[Member]) -> set[int]:
    """The steps after which some member may stop: its last, and with early stopping its
    evaluations (the reported loss is the last step's)."""
    steps = {m.cfg.steps for m in members}
    for m in members:
        if m.val is not None and m.cfg.patience is not None:
            steps.update(range(m.cfg.eval_every, m.cfg.steps + 1, m.cfg.eval_every))
    return steps


def _stop(which: list[int], live: list[bool], live_t: Tensor, adam: _Adam) -> None:
    """Members ``which`` take no more steps: frozen from here on."""
    for i in which:
        live[i] = False
    live_t[torch.tensor(which, device=live_t.device)] = False
    adam.live(live)


class _Adam:
    """Adam (PyTorch's defaults) over the stacked parameters, each member with its own
    learning rate: PyTorch's fused kernel on each run of live members that share one (the
    members come sorted by learning rate), or the same update written out on devices
    without the kernel. A stopped member is left out, so it does not move."""

    BETAS, EPS = (0.9, 0.999), 1e-8

    def __init__(self, stack: _Stack, lrs: list[float], device: torch.device):
        self.stack, self.lrs, self.device = stack, lrs, device
        self.fused = device.type in ("cpu", "cuda")
        self.runs: list[tuple[float, int, int]] = []

    def live(self, live: list[bool]) -> None:
        """Recompute the runs ``(lr, start, end)`` of live members with one learning rate."""
        runs: list[tuple[float, int, int]] = []
        for i, alive in enumerate(live):
            if not alive:
                continue
            if runs and runs[-1][2] == i and runs[-1][0] == self.lrs[i]:
                runs[-1] = (runs[-1][0], runs[-1][1], i + 1)
            else:
                runs.append((self.lrs[i], i, i + 1))
        self.runs = runs

    def step(self, step: int) -> None:
        s = self.stack
        count = torch.tensor(float(step), device=self.device)
        trained = [(s.params[k], s.exp_avg[k], s.exp_avg_sq[k]) for k in s.trains]
        for lr, a, b in self.runs:
            part = [[t[a:b] for t in ts] for ts in zip(*trained, strict=True)]
            grads = [p.grad[a:b] for p, _, _ in trained]
            if self.fused:
                torch._fused_adam_(
                    part[0], grads, part[1], part[2], [], [count] * len(grads), lr=lr,
                    beta1=self.BETAS[0], beta2=self.BETAS[1], weight_decay=0.0, eps=self.EPS,
                    amsgrad=False, maximize=False,
                )  # fmt: skip
            else:
                self._by_hand(part, grads, lr, step)

    def _by_hand(self, part: list[list[Tensor]], grads: list[Tensor], lr: float, t: int) -> None:
        (beta1, beta2), eps = self.BETAS, self.EPS
        root = math.sqrt(1 - beta2**t)
        for p, m, v, g in zip(*part, grads, strict=True):
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            p.addcdiv_(m, (v.sqrt() / root).add_(eps), value=-lr / (1 - beta1**t))


def _pull_values(stack: _Stack, members: Sequence[Member]) -> Tensor:
    """Each member's pull terms ``Σ c·‖w − a‖²`` where they count in its loss."""
    total = torch.zeros(len(members), device=stack.params[0].device)
    for p, pull in zip(stack.params, stack.pulls, strict=True):
        if pull is not None:
            coef, anchor, _ = pull
            total += (coef / 2 * (p - anchor).square()).flatten(1).sum(1)
    counts = torch.tensor([m.pulls_in_loss for m in members], device=total.device)
    return torch.where(counts, total, torch.zeros_like(total))


class _StackedValidation:
    """Each member's evaluations and early stopping (:class:`~pacnet.training.train.Stopping`,
    as :func:`pacnet.fit` has them), and the best state of members with patience."""

    def __init__(
        self,
        members: Sequence[Member],
        stack: _Stack,
        net: StackedNet,
        scales: Tensor | None,
        device: torch.device,
    ):
        self.members, self.stack, self.net = members, stack, net
        self.with_val = [i for i, m in enumerate(members) if m.val is not None]
        self.best: dict[int, list[Tensor]] = {}
        self.rules: dict[int, Stopping] = {}
        if self.with_val:
            vals = [members[i].val for i in self.with_val]
            self.x = _padded([v.x.float() for v in vals], device)
            self.y = _padded([v.y.float().reshape(len(v), -1) for v in vals], device)
            sizes = [len(v) for v in vals]
            self.weights = _counts(sizes, self.x.shape[1], device)
            self.count = torch.tensor(sizes, dtype=torch.float64) * self.y.shape[-1]
            self.rows = torch.tensor(self.with_val, device=device)
            self.scales = None if scales is None else scales.index_select(0, self.rows)

    @torch.no_grad()
    def _scores(self) -> list[float]:
        params = [p.index_select(0, self.rows) for p in self.stack.params]
        out, _, _ = self.net(params, self.x, self.scales)
        err = ((out - self.y).square().sum(-1) * self.weights).sum(1).double().cpu()
        return (err / self.count).tolist()

    def after(self, step: int, live: list[bool], results: list[FitResult]) -> list[int]:
        """Evaluate the members due at ``step``; the members that stop here."""
        for i in self.with_val:
            if i not in self.rules:
                self.rules[i] = Stopping(self.members[i].cfg, results[i])
        due = [j for j, i in enumerate(self.with_val) if live[i] and self.rules[i].due(step)]
        if not due:
            return []
        scores = self._scores()
        stopped = []
        for j in due:
            i = self.with_val[j]
            verdict = self.rules[i].record(step, scores[j])
            if verdict == "best" and self.members[i].cfg.patience is not None:
                self.best[i] = [v.clone() for v in self.stack.values(i)]
            elif verdict == "stop":
                stopped.append(i)
        return stopped

    def final_states(self) -> list[dict[str, Tensor]]:
        names = self.stack.names
        out = []
        for i, member in enumerate(self.members):
            values = self.best.get(i) or self.stack.values(i)
            out.append(
                {
                    n: v.to(member.start[n].device, member.start[n].dtype).clone()
                    for n, v in zip(names, values, strict=True)
                }
            )
        return out


__all__ = [
    "ACTIVATIONS", "TOLERANCE", "FeaturePull", "Layer", "Layout", "Member", "Shrinkage",
    "fit_stacked", "supports",
]  # fmt: skip
