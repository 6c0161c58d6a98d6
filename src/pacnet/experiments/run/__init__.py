"""One run: ``spec`` (what it is), ``environment`` (versions, threads, determinism),
``source`` (the cached source model), ``select`` (choosing a method's strength), ``runner``
(the run itself), ``batched`` (runs trained together) and ``saving`` (its folder)."""
