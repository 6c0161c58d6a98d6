"""The source model every run starts from: trained once per benchmark setting and cached.

:func:`train_source` is the one way pacnet trains a source model (the benchmarks' and
``pacnet transfer``'s); :func:`source_model` adds the cache, the device and the extra
steps of equal source compute.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from pacnet.benchmarks import Benchmark
from pacnet.config import config_hash
from pacnet.training.cache import StateCache
from pacnet.training.train import FitResult, fit


def train_source(
    bench: Benchmark,
    model: nn.Module,
    *,
    seed: int = 0,
    amp: str = "none",
    steps: int | None = None,
    desc: str = "source",
) -> FitResult:
    """Train ``model`` on the benchmark's source task with its source budget (``steps``
    instead of the budget's steps if given), stopping early on the source validation data
    where the budget says so; ``seed`` seeds the minibatch order."""
    source = bench.source()
    cfg = replace(bench.source_fit(), amp=amp)
    if steps is not None:
        cfg = replace(cfg, steps=steps)
    return fit(model, bench.loss_fn(), source.train, cfg, val=source.val, seed=seed, desc=desc)


def source_model(
    bench: Benchmark,
    cache: StateCache,
    device: str = "cpu",
    amp: str = "none",
    extra_steps: int = 0,
) -> tuple[nn.Module, str]:
    """The benchmark's trained source model (cached, on ``device``) and its cache key hash.

    ``extra_steps > 0`` continues training every weight of it for that many more steps with
    a fresh optimizer and the source budget otherwise unchanged, as PAC-Net's Allocate
    continues training the essential weights: the baselines' start under equal source
    compute.
    """
    key: dict[str, Any] = {
        "step": "source",
        "benchmark": bench.source_name or bench.name,
        "config": bench.source_settings(),
    }
    if (device, amp) != ("cpu", "none"):
        key["device"], key["amp"] = torch.device(device).type, amp
    model = bench.make_model(seed=0).to(device)
    if torch.device(device).type == "cuda":
        model = model.to(memory_format=torch.channels_last)

    def build() -> dict:
        train_source(bench, model, amp=amp)
        return model.state_dict()

    model.load_state_dict(cache(key, build))
    if extra_steps:
        key = {**key, "continued": extra_steps}

        def more() -> dict:
            train_source(bench, model, amp=amp, steps=extra_steps, desc="source, continued")
            return model.state_dict()

        model.load_state_dict(cache(key, more))
    return model, config_hash(key)


def extra_source_steps(source_compute: str, bench: Benchmark) -> int:
    """Source steps a baseline's start gets on top of the source model's: PAC-Net's
    Allocate budget under equal source compute (``source_compute == "equal"``), else none."""
    return bench.source_fit().steps if source_compute == "equal" else 0
