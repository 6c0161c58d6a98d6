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
from torch import Tensor, nn

from pacnet.errors import check
from pacnet.training.train import Data, FitConfig, FitResult

TOLERANCE = {"weights_rtol": 1e-3, "weights_atol": 1e-4, "metric_rtol": 5e-3}
"""How close a stacked member ends to the same run trained alone, in float32: final weights
within ``weights_atol + weights_rtol·|w|`` entrywise and the benchmark metric within
``metric_rtol`` relative (held by the tests' runs of 40–200 steps; rounding differences grow
with the steps, and over 500-step Friedman runs the metrics differed by at most 1.2e-3
relative, ``pacnet bench --engines``). Frozen entries are identical, bit for bit."""

_ACTIVATIONS = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "gelu": nn.functional.gelu,
    "silu": nn.functional.silu,
}


@dataclass
class Member:
    """One training run of an MLP, described for :func:`fit_stacked`.

    ``start`` holds every parameter's starting value by name (as ``model.state_dict()``
    names them); ``trainable`` says per parameter which entries train (a bool tensor, or
    True/False for all/none; a parameter missing is frozen); ``pulls`` adds
    ``c·‖w − a‖²`` for parameter ``name`` as ``name: (c, a)`` (its gradient, ``2c(w − a)``,
    acts on the trainable entries); with ``pulls_in_loss`` the terms count in the reported
    loss, as they do when a method adds them to the loss (L2-SP) rather than to the
    gradient (PAC-Net's Calibrate).
    """

    start: Mapping[str, Tensor]
    train: Data
    cfg: FitConfig
    seed: int = 0
    trainable: Mapping[str, Tensor | bool] = field(default_factory=dict)
    pulls: Mapping[str, tuple[float, Tensor]] = field(default_factory=dict)
    pulls_in_loss: bool = False
    val: Data | None = None


def layer_names(spec: Mapping[str, object]) -> list[tuple[str, str]]:
    """``(weight, bias)`` parameter names of the layers of an MLP of architecture ``spec``
    (:meth:`pacnet.benchmarks.mlp.MLP.spec`), input to output."""
    hidden = list(spec["hidden"])  # type: ignore[call-overload]
    names = [(f"body.{2 * i}.weight", f"body.{2 * i}.bias") for i in range(len(hidden))]
    return [*names, ("head.weight", "head.bias")]


def supports(cfg: FitConfig) -> str | None:
    """Why training under ``cfg`` cannot be stacked (None: it can)."""
    if cfg.optimizer != "adam" or cfg.weight_decay:
        return f"optimizer {cfg.optimizer} with weight decay {cfg.weight_decay} (stacked: Adam)"
    if cfg.grad_clip is not None or cfg.amp != "none":
        return "gradient clipping or mixed precision"
    return None


class _Stack:
    """The members' parameters as stacked leaves, their masks, pulls and Adam state."""

    def __init__(self, members: Sequence[Member], names: list[str], device: torch.device):
        def stacked(get) -> Tensor:
            return torch.stack([get(m, name) for m in members]).to(device)

        self.names = names
        self.params: list[Tensor] = []
        self.masks: list[Tensor | None] = []
        self.pulls: list[tuple[Tensor, Tensor, Tensor] | None] = []
        """Per parameter: ``2c`` (broadcast), the anchors ``a`` and ``2c·a``, or None."""
        self.trains: list[int] = []
        """The parameters some member trains (the others need no gradient)."""
        for k, name in enumerate(names):
            start = stacked(lambda m, n: _laid(n, m.start[n].detach().float()))
            mask = stacked(lambda m, n: _laid(n, _mask(m, n).float()))
            trains = bool(mask.any())
            self.params.append(start.requires_grad_(trains))
            self.masks.append(None if bool((mask == 1).all()) else mask)
            if trains:
                self.trains.append(k)
            if any(name in m.pulls for m in members):
                coef = stacked(lambda m, n: torch.tensor(2 * float(m.pulls.get(n, (0.0,))[0])))
                anchor = stacked(
                    lambda m, n: (
                        _laid(n, m.pulls[n][1].detach().float())
                        if n in m.pulls
                        else torch.zeros_like(_laid(n, m.start[n]), dtype=torch.float32)
                    )
                )
                coef = coef.view(-1, *[1] * (start.dim() - 1))
                self.pulls.append((coef, anchor, coef * anchor))
            else:
                self.pulls.append(None)
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    def values(self, i: int) -> list[Tensor]:
        """Member ``i``'s parameters, laid out as the model holds them."""
        return [
            _laid(n, p[i].detach(), back=True) for n, p in zip(self.names, self.params, strict=True)
        ]


def _laid(name: str, t: Tensor, back: bool = False) -> Tensor:
    """A parameter as the stack holds it: a weight ``[out, in]`` as ``[in, out]`` (so a
    layer is one ``x @ W`` and its gradient comes out contiguous), a bias as ``[1, out]``."""
    if name.endswith("weight"):
        return t.t().contiguous() if not back else t.t()
    return t.unsqueeze(0) if not back else t.squeeze(0)


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
    generator = torch.Generator().manual_seed(seed)
    rows: list[Tensor] = []
    need = steps
    while need > 0:
        order = torch.randperm(n, generator=generator)
        take = min(n // size, need)
        rows.append(order[: take * size].view(take, size))
        need -= take
    return torch.cat(rows) if rows else torch.zeros(0, size, dtype=torch.long)


def _padded(parts: Sequence[Tensor], device: torch.device) -> Tensor:
    width = max(len(p) for p in parts)
    out = torch.zeros(len(parts), width, *parts[0].shape[1:], dtype=parts[0].dtype)
    for i, p in enumerate(parts):
        out[i, : len(p)] = p
    return out.to(device)


def _counts(sizes: Sequence[int], width: int, device: torch.device) -> Tensor:
    """``[M, width]`` weights: 1 for a member's first ``sizes[i]`` rows, 0 after."""
    return (torch.arange(width)[None, :] < torch.tensor(sizes)[:, None]).float().to(device)


def fit_stacked(
    members: Sequence[Member],
    spec: Mapping[str, object],
    device: torch.device | str = "cpu",
) -> list[tuple[dict[str, Tensor], FitResult]]:
    """Train every member (MLPs of architecture ``spec``, MSE loss, Adam) as one stacked
    model; return each member's final state (the best one where it stopped early) and its
    :class:`FitResult`, as :func:`pacnet.fit` would for that member alone."""
    check(members, "nothing to train: no members")
    order = sorted(range(len(members)), key=lambda i: members[i].cfg.lr)  # same lr: adjacent
    trained = _fit_sorted([members[i] for i in order], spec, torch.device(device))
    out: list[tuple[dict[str, Tensor], FitResult]] = [trained[0]] * len(members)
    for position, i in enumerate(order):
        out[i] = trained[position]
    return out


def _fit_sorted(
    members: Sequence[Member], spec: Mapping[str, object], device: torch.device
) -> list[tuple[dict[str, Tensor], FitResult]]:
    layers = layer_names(spec)
    names = [n for pair in layers for n in pair]
    act = _ACTIVATIONS[str(spec.get("activation", "relu"))]
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
    stop_at = [m.cfg.steps for m in members]
    live = [True] * M
    adam = _Adam(stack, [m.cfg.lr for m in members], device)
    adam.live(live)
    live_t = torch.ones(M, dtype=torch.bool, device=device)
    validation = _StackedValidation(members, stack, layers, act, device)
    results = [FitResult() for _ in members]
    last_loss = torch.full((M,), math.nan, dtype=torch.float64, device=device)
    taken = torch.zeros(M, dtype=torch.long, device=device)
    pulls_shown = any(m.pulls_in_loss for m in members) and any(stack.pulls)
    last_steps = _last_steps(members)  # where a member's loss may be its final one

    def forward(x: Tensor) -> Tensor:
        h = x
        for i in range(len(layers)):
            h = torch.baddbmm(stack.params[2 * i + 1], h, stack.params[2 * i])
            if i < len(layers) - 1:
                h = act(h)
        return h

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
        losses = ((forward(x) - y).square().sum(-1) * weights).sum(1) / denom
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
            taken += live_t
        stopped = validation.after(step, live, results)
        if stopped:
            _stop(stopped, live, live_t, adam)
    states = validation.final_states()
    for r, n, loss in zip(results, taken.tolist(), last_loss.tolist(), strict=True):
        r.steps = n
        r.final_loss = loss if n else math.nan
    return list(zip(states, results, strict=True))


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
    """Validation every ``eval_every`` steps per member (as :func:`pacnet.fit` does), the
    best state of members with patience, and their stopping."""

    def __init__(
        self,
        members: Sequence[Member],
        stack: _Stack,
        layers: list[tuple[str, str]],
        act,
        device: torch.device,
    ):
        self.members, self.stack, self.layers, self.act = members, stack, layers, act
        self.with_val = [i for i, m in enumerate(members) if m.val is not None]
        self.best: dict[int, list[Tensor]] = {}
        self.stale = [0] * len(members)
        if self.with_val:
            vals = [members[i].val for i in self.with_val]
            self.x = _padded([v.x.float() for v in vals], device)
            self.y = _padded([v.y.float().reshape(len(v), -1) for v in vals], device)
            sizes = [len(v) for v in vals]
            self.weights = _counts(sizes, self.x.shape[1], device)
            self.count = torch.tensor(sizes, dtype=torch.float64) * self.y.shape[-1]
            self.rows = torch.tensor(self.with_val, device=device)

    @torch.no_grad()
    def _scores(self) -> list[float]:
        params = [p.index_select(0, self.rows) for p in self.stack.params]
        h = self.x
        for i in range(len(self.layers)):
            h = torch.baddbmm(params[2 * i + 1], h, params[2 * i])
            if i < len(self.layers) - 1:
                h = self.act(h)
        err = ((h - self.y).square().sum(-1) * self.weights).sum(1).double().cpu()
        return (err / self.count).tolist()

    def after(self, step: int, live: list[bool], results: list[FitResult]) -> list[int]:
        """Evaluate the members due at ``step``; the members that stop here."""
        due = [
            j
            for j, i in enumerate(self.with_val)
            if live[i]
            and (step % self.members[i].cfg.eval_every == 0 or step == self.members[i].cfg.steps)
        ]
        if not due:
            return []
        scores = self._scores()
        stopped = []
        for j in due:
            i = self.with_val[j]
            member, result, score = self.members[i], results[i], scores[j]
            result.val_curve.append((step, score))
            if result.best_val is None or score < result.best_val:
                result.best_val, result.best_step, self.stale[i] = score, step, 0
                if member.cfg.patience is not None:
                    self.best[i] = [v.clone() for v in self.stack.values(i)]
                continue
            self.stale[i] += 1
            if member.cfg.patience is not None and self.stale[i] >= member.cfg.patience:
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
