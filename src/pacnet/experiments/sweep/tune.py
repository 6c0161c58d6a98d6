"""Hyperparameter search with Optuna: PAC-Net's ratio and λ, or a baseline's main strength.

Each trial scores a setting by K-fold cross-validation on the target *training* samples of
one run (the same protocol as ``--select cv``); the test split is never used. Trials live in
Optuna's RDB storage, by default the results database (``sqlite:///runs/pacnet.sqlite``); a
PostgreSQL URL lets many machines share one study. Re-running adds trials to the study.
The search space of a method is its ``Params.tune``: ``name -> (kind, low, high)`` with kind
``float``, ``log`` (float on a log scale) or ``int_log``.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from pacnet.errors import PacnetError, check, first_line
from pacnet.experiments.run.batched import engine_for
from pacnet.experiments.run.context import prepare
from pacnet.experiments.run.environment import using_threads
from pacnet.experiments.run.select import cv_splits, fold_scores
from pacnet.experiments.run.spec import RunSpec
from pacnet.experiments.sweep.progress import ProgressLines
from pacnet.training.cache import StateCache


def optuna_storage(target: str | Path, any_rdb: bool = False) -> str:
    """The Optuna storage URL of a results database (a path or URL, as ``--db`` takes);
    with ``any_rdb`` another RDB URL Optuna knows passes unchanged. A SQLite file's folder
    is created."""
    from pacnet.experiments.store.database import database_url

    text = str(target)
    scheme = text.split("://", 1)[0].split("+", 1)[0] if "://" in text else "sqlite"
    if any_rdb and scheme not in ("sqlite", "postgresql", "postgres"):
        return text
    url = database_url(target)
    if url.get_backend_name() == "sqlite":
        try:
            Path(str(url.database)).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PacnetError(f"{url.database}: cannot open ({exc.strerror})") from None
    return url.render_as_string(hide_password=False)


def suggest(trial: Any, name: str, kind: str, low: float, high: float) -> Any:
    """One Optuna suggestion of the given kind."""
    if kind == "float":
        return trial.suggest_float(name, low, high)
    if kind == "log":
        return trial.suggest_float(name, low, high, log=True)
    if kind == "int_log":
        return trial.suggest_int(name, int(low), int(high), log=True)
    raise PacnetError(f"unknown search kind {kind!r} for {name}")


def tune(
    spec: RunSpec,
    trials: int,
    storage: str,
    study_name: str | None = None,
    folds: int = 3,
    cache: StateCache | None = None,
) -> Any:
    """Run ``trials`` more trials for ``spec``'s method on its target task; return the study.
    On the spec's ``batched`` engine a trial's folds train stacked where the run allows."""
    import optuna

    check(trials >= 1, f"trials must be >= 1, got {trials}")
    method_cls = spec.resolved.method
    space: dict[str, tuple[str, float, float]] = getattr(method_cls.Params, "tune", {})
    check(space, f"method {spec.method!r} has no hyperparameter to tune")
    name = study_name or f"{spec.benchmark}-{spec.method}-n{spec.target_size}-s{spec.seed}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            load_if_exists=True,
            direction="minimize",
            sampler=optuna.samplers.TPESampler(seed=spec.seed),
        )
    except Exception as exc:  # SQLAlchemy and drivers raise many kinds; all mean the same here
        from pacnet.experiments.store.database import hide_password, password_filter

        first = password_filter(storage)(first_line(exc))
        raise PacnetError(
            f"cannot open the Optuna storage {hide_password(storage)}: {first}"
        ) from None
    cache = cache or StateCache()
    before = len(study.trials)
    ended: list[Any] = []  # this call's finished trials
    phase = ["preparing the source model"]

    def describe() -> str:  # where the search stands, for a line of progress
        done = len(ended)
        best = [t.value for t in ended if t.value is not None]
        best_text = f", best so far {min(best):.4g}" if best else ""
        doing = "".join(f" ({what})" for what in phase[:1])
        return f"{done}/{trials} trials done{best_text}, {before + done} in the study{doing}"

    with (
        ProgressLines(describe) as lines,
        using_threads(spec.thread_count, spec.deterministic),
    ):
        ctx = prepare(spec, cache)
        phase.clear()
        splits = cv_splits(ctx.target.train, folds)
        engine = engine_for(spec, ctx)

        def objective(trial: Any) -> float:
            values = {k: suggest(trial, k, *bounds) for k, bounds in space.items()}
            return statistics.fmean(fold_scores(spec.make_method(values), ctx, splits, engine))

        def finished(study: Any, trial: Any) -> None:
            ended.append(trial)
            lines.update(len(ended))

        study.optimize(objective, n_trials=trials, callbacks=[finished])
    return study
