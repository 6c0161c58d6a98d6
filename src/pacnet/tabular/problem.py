"""Two tables as a benchmark: standardisation, the source split, the MLP, loss and metric.

:class:`TableBenchmark` turns the source and target rows into the :class:`TaskData` objects every
transfer method and the cross-validation already use, so PAC-Net and the baselines run on
the user's data unchanged.

* Inputs and outputs are standardised with the **source** table's mean and standard
  deviation (population, in float64), stored in the card so predictions come back in
  the original units. A column with no spread in the source (a constant) is scaled by its
  spread in the target table if it has one there, else by 1 (centred only), so nothing is
  divided by zero.
* The source rows are split once (seeded by ``--seed``): ``source_test_fraction`` of them
  (default 10 %) are held out to measure the source error before and after transfer;
  ``source_val_fraction`` of the rest (10 %) are held out to stop the source training and Allocate
  early (after ``source_patience`` evaluations without gain, keeping the best state); the
  rest train the source model and PAC-Net's Allocate.
* A small source table: when that early-stopping split would hold fewer than
  ``SOURCE_CV_BELOW`` rows (a stopping point chosen on a few tens of rows is mostly noise)
  and the source model is trained here, nothing is split off for stopping. Instead
  ``SOURCE_CV_FOLDS``-fold cross-validation on the source training rows (row i of them in
  fold i mod K) trains the full budget on the other folds, scores the held-out fold every
  ``eval_every`` steps, and the step with the lowest mean error over the folds becomes the
  budget: the source model then trains on all those rows for that many steps, and
  Allocate takes as many (:meth:`TableBenchmark.choose_source_steps`).
* The target task trains on every target row; its "test" data are the same rows, so the
  target error after training is an in-sample fit. The honest estimate of the target error
  is the cross-validation score.
* Loss: mean squared error on the standardised outputs. Metric: RMSE in the output's own
  units when there is one output; with several, the RMSE over all standardised outputs
  (each output divided by its source standard deviation), and per output in its units.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pacnet.benchmarks.base import SOURCE_STEPS, TARGET_STEPS, Benchmark, BudgetConfig, TaskData
from pacnet.benchmarks.mlp import MLP
from pacnet.config import stored_names
from pacnet.errors import PacnetError, check
from pacnet.training.stacked import Member, fit_stacked
from pacnet.training.train import Data, FitConfig, LossFn, device_of, evaluate, infer

SOURCE_CV_BELOW = 100
"""An early-stopping split of fewer source rows than this is too small to stop on: the
source training's step count is chosen by cross-validation instead."""
SOURCE_CV_FOLDS = 5
"""Folds of that cross-validation (fewer if there are fewer rows)."""


@dataclass(frozen=True)
class Scaling:
    """Per-column mean and scale: ``z = (x − mean) / scale``; ``constant`` names the
    columns without spread in the source table."""

    names: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    constant: tuple[str, ...] = ()

    @classmethod
    def fit(
        cls, names: Sequence[str], values: np.ndarray, fallback: np.ndarray | None = None
    ) -> Scaling:
        """Statistics of ``values`` (rows × columns); a constant column takes its spread
        in ``fallback`` (the target rows) when it has one there, else 1."""
        mean = values.mean(axis=0)
        std = values.std(axis=0)
        scale, constant = [], []
        for j, name in enumerate(names):
            s = float(std[j])
            if not s > 1e-12 * max(abs(float(mean[j])), 1e-300):
                constant.append(name)
                other = float(fallback[:, j].std()) if fallback is not None else 0.0
                s = other if other > 1e-12 * max(abs(float(mean[j])), 1e-300) else 1.0
            scale.append(s)
        return cls(tuple(names), tuple(float(m) for m in mean), tuple(scale), tuple(constant))

    def apply(self, values: np.ndarray) -> Tensor:
        """Standardised float32 tensor of raw ``values`` (rows × columns, in ``names`` order)."""
        z = (values - np.asarray(self.mean)) / np.asarray(self.scale)
        return torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32))

    def invert(self, z: Tensor | np.ndarray) -> np.ndarray:
        """Raw float64 values of standardised ``z``."""
        if isinstance(z, Tensor):
            z = z.detach().cpu().double().numpy()
        return np.asarray(z, dtype=np.float64) * np.asarray(self.scale) + np.asarray(self.mean)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (as the card stores them)."""
        return {
            "names": list(self.names),
            "mean": list(self.mean),
            "scale": list(self.scale),
            "constant": list(self.constant),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Scaling:
        """The scaling :meth:`to_dict` wrote; a one-line error if it is malformed."""
        try:
            scaling = cls(
                tuple(str(n) for n in data["names"]),
                tuple(float(v) for v in data["mean"]),
                tuple(float(v) for v in data["scale"]),
                tuple(str(n) for n in data.get("constant", ())),
            )
        except (KeyError, TypeError, ValueError):
            raise PacnetError("malformed standardisation statistics") from None
        check(
            len(scaling.names) == len(scaling.mean) == len(scaling.scale)
            and all(s > 0 and math.isfinite(s) for s in scaling.scale),
            "malformed standardisation statistics",
        )
        return scaling


@stored_names
@dataclass
class TableConfig(BudgetConfig):
    """Model and budgets of ``pacnet transfer``; the defaults suit a few thousand source
    rows and tens of target rows (seconds to a minute on 2 CPU cores).

    ``source_test_fraction`` and ``source_val_fraction`` are stored (in the card, in the
    source cache's key) and still taken as ``source_holdout`` and ``source_val``."""

    source_steps: int = field(default=2000, metadata={"help": SOURCE_STEPS})
    source_batch: int = field(default=64, metadata={"help": "source batch size"})
    target_steps: int = field(default=300, metadata={"help": TARGET_STEPS})
    hidden: tuple[int, ...] = field(default=(64, 64), metadata={"help": "hidden layer widths"})
    activation: str = field(default="relu", metadata={"help": "relu, tanh, gelu or silu"})
    source_test_fraction: float = field(
        default=0.1,
        metadata={
            "help": "share of the source rows held out to measure the source error",
            "aliases": ("source_holdout",),
            "stored": "source_holdout",
        },
    )
    source_patience: int = field(
        default=10,
        metadata={
            "help": "stop the source training and Allocate after this many evaluations "
            "without gain on held-out source rows, keeping the best state (0: train every step)"
        },
    )
    source_val_fraction: float = field(
        default=0.1,
        metadata={
            "aliases": ("source_val",),
            "stored": "source_val",
            "help": "share of the source training rows held out for that stopping (if that is "
            "fewer than 100 rows, 5-fold cross-validation chooses the steps instead)",
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("source_test_fraction", "source_val_fraction"):
            value = getattr(self, name)
            check(0 < value < 1, f"{name} must lie in (0, 1), got {value}")
        check(
            self.source_patience >= 0, f"source_patience must be >= 0, got {self.source_patience}"
        )
        check(self.hidden and all(h >= 1 for h in self.hidden), "--hidden needs widths >= 1")

    def source_fit(self) -> FitConfig:
        """The source budget, stopping early on held-out source rows unless patience is 0."""
        cfg = super().source_fit()
        return replace(cfg, patience=self.source_patience or None)


@dataclass
class Problem:
    """The rows of both tables (raw float64) with their column names and scalings."""

    inputs: list[str]
    outputs: list[str]
    source_x: np.ndarray
    source_y: np.ndarray
    target_x: np.ndarray
    target_y: np.ndarray
    x_scale: Scaling
    y_scale: Scaling

    @classmethod
    def build(
        cls,
        inputs: Sequence[str],
        outputs: Sequence[str],
        source: tuple[np.ndarray, np.ndarray],
        target: tuple[np.ndarray, np.ndarray],
        scaling: tuple[Scaling, Scaling] | None = None,
    ) -> Problem:
        """The problem with scalings fitted on the source rows (or the given ones)."""
        if scaling is None:
            scaling = (
                Scaling.fit(inputs, source[0], target[0]),
                Scaling.fit(outputs, source[1], target[1]),
            )
        return cls(list(inputs), list(outputs), *source, *target, *scaling)


class TableBenchmark(Benchmark):
    """The user's source and target tables as a benchmark (not registered by name)."""

    name = "table"
    metric = "rmse"
    summary = "your own tables: an MLP from the source rows, transferred to the target rows"
    Config = TableConfig
    threads = 1

    def __init__(
        self,
        config: TableConfig,
        problem: Problem,
        spec: Mapping[str, Any],
        seed: int,
        *,
        trains_source: bool = True,
    ):
        """``trains_source``: the source model is trained here (False: it comes from a
        checkpoint, and only Allocate uses the source budget)."""
        super().__init__(config)
        self.problem = problem
        self.spec = dict(spec)
        n = len(problem.source_x)
        held = max(1, round(n * config.source_test_fraction))
        val = round((n - held) * config.source_val_fraction)
        val = max(1, val) if config.source_patience else 0
        check(
            n - held - val >= 1,
            f"the source table has {n} rows: too few to hold out {held + val} (to measure the "
            "source error and to stop training early) and train on the rest",
        )
        self.source_split_val = val
        """The rows the early-stopping split holds, or would hold under cross-validation."""
        self.source_cv_folds = 0
        """Folds of the cross-validation that chooses the source steps (0: not used)."""
        if trains_source and 0 < val < SOURCE_CV_BELOW and config.source_steps > 0:
            self.source_cv_folds, val = min(SOURCE_CV_FOLDS, n - held), 0
        self.source_steps: int | None = None
        """The source budget chosen by :meth:`choose_source_steps` (None: not yet)."""
        order = np.random.default_rng(seed).permutation(n)
        self.source_test_rows = np.sort(order[:held])
        self.source_val_rows = np.sort(order[held : held + val])
        self.source_train_rows = np.sort(order[held + val :])
        if len(problem.outputs) > 1:
            self.metric = "rmse (standardised)"
        self._source: TaskData | None = None

    def source_fit(self) -> FitConfig:
        """The source budget (source training and Allocate): stopping early on the held-out
        source rows, or, for a small source table, the steps cross-validation chose."""
        cfg = self.config.source_fit()
        if not self.source_cv_folds:
            return cfg
        return replace(cfg, patience=None, steps=self.source_steps or cfg.steps)

    def choose_source_steps(self, model: nn.Module, seed: int) -> dict[str, Any]:
        """Choose the source budget by K-fold cross-validation on the source training rows
        (small source tables): from ``model``'s weights (left as they are), each fold's model
        trains the full budget on the other folds with minibatch seed ``seed`` (all folds
        together, as one stacked model) and is scored on its fold every ``eval_every``
        steps; the step with the lowest mean score becomes the budget (the earlier on a tie).
        Returns the record the card keeps."""
        check(self.source_cv_folds >= 2, "the source table is not cross-validated")
        train, k = self.source().train, self.source_cv_folds
        cfg = replace(self.config.source_fit(), patience=None)
        fold = torch.arange(len(train)) % k
        start = {name: t.detach() for name, t in model.state_dict().items()}
        trains = dict.fromkeys((n for n, _ in model.named_parameters()), True)
        members = [
            Member(
                start,
                Data(train.x[fold != i], train.y[fold != i]),
                cfg,
                seed,
                trains,
                val=Data(train.x[fold == i], train.y[fold == i]),
            )
            for i in range(k)
        ]
        results = [result for _, result in fit_stacked(members, model.layout(), device_of(model))]
        steps = [step for step, _ in results[0].val_curve]
        curve = [
            (step, statistics.fmean(dict(r.val_curve)[step] for r in results)) for step in steps
        ]
        best_step, best = min(curve, key=lambda point: point[1])
        self.source_steps = best_step
        return {
            "chosen_by": "cross-validation",
            "steps": best_step,
            "budget": cfg.steps,
            "folds": k,
            "rows": len(train),
            "fold_of_row": "source training row i (in file order) is held out in fold i mod K",
            "cv_loss": best,
            "fold_best_steps": [r.best_step for r in results],
            "curve": [[step, score] for step, score in curve],
            "why": f"an early-stopping split would hold {self.source_split_val} rows, fewer "
            f"than {SOURCE_CV_BELOW}",
        }

    def source_steps_record(self) -> dict[str, Any]:
        """How the source budget is set when it is not cross-validated (for the card)."""
        if not len(self.source_val_rows):
            return {"chosen_by": "fixed", "steps": self.config.source_steps}
        record = {
            "chosen_by": "early stopping",
            "budget": self.config.source_steps,
            "rows": len(self.source_val_rows),
            "patience": self.config.source_patience,
        }
        if len(self.source_val_rows) < SOURCE_CV_BELOW:
            record["note"] = (
                f"Allocate stops early on only {len(self.source_val_rows)} held-out source "
                f"rows (fewer than {SOURCE_CV_BELOW}): a noisy stopping point"
            )
        return record

    def data(self, x: np.ndarray, y: np.ndarray) -> Data:
        """Standardised :class:`Data` of raw rows."""
        return Data(self.problem.x_scale.apply(x), self.problem.y_scale.apply(y))

    def source(self) -> TaskData:
        if self._source is None:
            p, train, test = self.problem, self.source_train_rows, self.source_test_rows
            val = self.source_val_rows
            self._source = TaskData(
                train=self.data(p.source_x[train], p.source_y[train]),
                val=self.data(p.source_x[val], p.source_y[val]) if len(val) else None,
                test=self.data(p.source_x[test], p.source_y[test]),
            )
        return self._source

    def target(self, seed: int, size: int) -> TaskData:
        p = self.problem
        every = self.data(p.target_x, p.target_y)
        return self.labelled(
            len(p.target_x), "rows", lambda s: self.data(p.target_x[s], p.target_y[s]), every
        )

    @property
    def max_target_size(self) -> int:
        return len(self.problem.target_x)

    def make_model(self, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return MLP.from_spec(self.spec)

    def loss_fn(self) -> LossFn:
        return nn.functional.mse_loss

    def score(self, model: nn.Module, data: Data) -> float:
        """RMSE in the output's units (one output) or over the standardised outputs."""
        rmse = math.sqrt(evaluate(model, data, nn.functional.mse_loss))
        return rmse * self.problem.y_scale.scale[0] if len(self.problem.outputs) == 1 else rmse

    def metrics(self, model: nn.Module, data: Data) -> dict[str, float]:
        """The main score and, per output, RMSE and MAE in the output's own units."""
        out = {self.metric: self.score(model, data)}
        predicted = self.problem.y_scale.invert(predict(model, data.x))
        actual = self.problem.y_scale.invert(data.y)
        for j, name in enumerate(self.problem.outputs):
            error = predicted[:, j] - actual[:, j]
            out[f"rmse[{name}]"] = float(np.sqrt(np.mean(error**2)))
            out[f"mae[{name}]"] = float(np.mean(np.abs(error)))
        return out


def predict(model: nn.Module, x: Tensor) -> Tensor:
    """``model(x)`` in eval mode (its modes put back afterwards), on the model's device,
    returned on the CPU."""
    return infer(model, x).cpu()
