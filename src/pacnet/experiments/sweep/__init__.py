"""Grids of runs: ``grid`` (which runs, from a TOML file and flags), ``sweep`` (running them,
resumable and shared), ``launch`` (a run as a torchrun job), ``progress`` (progress lines)
and ``tune`` (hyperparameter search with Optuna)."""
