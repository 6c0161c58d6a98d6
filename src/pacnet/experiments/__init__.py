"""Experiments: a run (``spec``, ``environment``, ``source``, ``select``, ``runner``,
``saving``), a grid of runs (``grid``, ``sweep``, ``launch``), the results database
(``database``, ``schema``, ``claims``, ``status``, ``store``), reading results (``table``,
``report``), ``tune`` (Optuna) and ``perf`` (``pacnet bench``). See docs/architecture.md."""
