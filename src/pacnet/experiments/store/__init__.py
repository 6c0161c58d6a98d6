"""The results store: ``database`` (which database, its engine, retried transactions),
``schema`` (tables and versions), ``claims`` (who runs which run of a grid), ``status``
(where the grids stand) and ``store`` (the :class:`~pacnet.experiments.store.store.Store`
over them)."""
