"""Experiments, in rooms: ``run`` (one run: its spec, environment, source model, selection,
context, either engine's run, runner and saved folder), ``store`` (the results database: connection,
schema, claims, status, and the :class:`~pacnet.experiments.store.store.Store` over them),
``sweep`` (a grid of runs: the grid, its sweep, torchrun launches, progress lines, and
Optuna tuning), ``report`` (tables, reports and summaries from stored rows), ``bench``
(``pacnet bench``) and ``selftest`` (``pacnet selftest``). See docs/architecture.md."""
