"""One run: ``spec`` (what it is), ``environment`` (versions, threads, determinism),
``source`` (the cached source model), ``select`` (choosing a method's strength),
``context`` (what every run does before and after training), ``alone`` (a run on the
sequential engine), ``batched`` (runs trained together on the batched engine), ``runner``
(the run itself, on its spec's engine) and ``saving`` (its folder)."""
