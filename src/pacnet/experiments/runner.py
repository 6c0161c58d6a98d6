"""One run: (benchmark, method, hyperparameters, seed, target size, budget) -> result.json.

The source model is trained once per benchmark configuration and cached; every method
then starts from the same source model and sees the same target data for a given seed.
"""

from __future__ import annotations

import datetime
import json
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pacnet.benchmarks import Benchmark, get_benchmark
from pacnet.benchmarks.mlp import spec_of
from pacnet.config import config_hash, make, to_dict
from pacnet.core.checkpoint import FORMAT as CHECKPOINT_FORMAT
from pacnet.core.checkpoint import NETWORK_FORMAT, save_network
from pacnet.core.checkpoint import save as save_checkpoint
from pacnet.core.roles import unwrap
from pacnet.core.tasks import Tasks
from pacnet.errors import PacnetError, check, pacnet_version
from pacnet.experiments.select import cross_validate
from pacnet.io import write_json
from pacnet.methods import Method, TransferContext, get_method
from pacnet.methods.base import candidates
from pacnet.training import distributed
from pacnet.training.cache import StateCache
from pacnet.training.train import AMP_DTYPES, fit

RESULT_FILE = "result.json"
NETWORK_FILE = "net.safetensors"
SELECT_MODES = ("none", "cv", "holdout")
SOURCE_COMPUTE = ("standard", "equal")


@dataclass
class RunSpec:
    """What identifies a run; settings not given take their defaults."""

    benchmark: str
    method: str
    seed: int = 0
    target_size: int = 50
    quick: bool = False
    bench_settings: dict[str, Any] = field(default_factory=dict)
    method_params: dict[str, Any] = field(default_factory=dict)
    select: str = "none"
    folds: int = 3
    candidates: tuple[dict[str, Any], ...] | None = None  # selection grid (None: Params.search)
    source_compute: str = "standard"  # "equal": baselines' source trained as long as PAC-Net's
    device: str = "cpu"
    amp: str = "none"
    targets: tuple[int, ...] = ()  # several targets in one network: their seeds, in order
    threads: int | None = None  # how to run, not what: not part of the run's identity
    deterministic: bool = False  # deterministic kernels (for CUDA; the CPU path already is)

    def __post_init__(self) -> None:
        check(
            self.select in SELECT_MODES,
            f"select must be one of {', '.join(SELECT_MODES)}, got {self.select!r}",
        )
        check(self.folds >= 2, f"folds must be >= 2, got {self.folds}")
        check(
            self.source_compute in SOURCE_COMPUTE,
            f"source_compute must be one of {', '.join(SOURCE_COMPUTE)}, "
            f"got {self.source_compute!r}",
        )
        if not get_method(self.method).starts_from_source:
            self.source_compute = "standard"  # PAC-Net is the reference; scratch has no source
        if self.candidates is not None:
            self.candidates = tuple(dict(c) for c in self.candidates)
            check(self.candidates, "the candidate grid is empty")
            check(self.select != "none", "a candidate grid needs --select cv or holdout")
        self.targets = tuple(self.targets)
        if self.targets:
            check(
                self.method == "pacnet",
                f"--targets serves several targets from one PAC-Net network; method "
                f"{self.method!r} cannot (use --method pacnet)",
            )
            check(
                self.select == "none", f"--targets cannot be combined with --select {self.select}"
            )
            check(len(set(self.targets)) == len(self.targets), "--targets repeats a target")
            check(all(0 <= t < 2**31 for t in self.targets), "--targets must lie in [0, 2**31)")
        check(self.amp in AMP_DTYPES, f"amp must be one of {', '.join(AMP_DTYPES)}")
        try:
            device = torch.device(self.device)
        except RuntimeError:
            raise PacnetError(f"unknown device {self.device!r} (cpu, cuda, cuda:1, ...)") from None
        check(
            device.type != "cuda" or torch.cuda.is_available(),
            f"device {self.device!r} requested but CUDA is not available on this machine",
        )

    def resolved(self) -> tuple[Any, Any]:
        """(benchmark settings, method hyperparameters) as validated dataclasses."""
        bench_cls, method_cls = get_benchmark(self.benchmark), get_method(self.method)
        settings = {**(bench_cls.quick if self.quick else {}), **self.bench_settings}
        params = make(method_cls.Params, self.method_params)
        for candidate in self.grid():
            make(method_cls.Params, {**self.method_params, **candidate})  # fails early if bad
        return make(bench_cls.Config, settings), params

    def grid(self) -> list[dict[str, Any]]:
        """The candidates a selection tries (empty without selection)."""
        if self.select == "none":
            return []
        if self.candidates is not None:
            return [dict(c) for c in self.candidates]
        return candidates(get_method(self.method).Params)

    def make_benchmark(self, cache: StateCache | None = None) -> Benchmark:
        return get_benchmark(self.benchmark)(self.resolved()[0], cache)

    def make_method(self) -> Method:
        return get_method(self.method)(self.resolved()[1])

    def config(self) -> dict[str, Any]:
        """The resolved configuration, defaults included: everything behind the result."""
        bench_config, params = self.resolved()
        config = {
            "benchmark": to_dict(bench_config),
            "method": to_dict(params),
            "quick": self.quick,
            "source_fit": to_dict(bench_config.source_fit()),
            "target_fit": to_dict(bench_config.target_fit()),
        }
        if self.select != "none":
            config["select"] = self.selection()
        if (self.device, self.amp) != ("cpu", "none"):
            config["device"], config["amp"] = self.device, self.amp
        if self.source_compute != "standard":
            config["source_compute"] = self.source_compute
        return config

    def selection(self) -> dict[str, Any]:
        """How hyperparameters are chosen: mode, folds and the candidates tried."""
        return {"mode": self.select, "folds": self.folds, "candidates": self.grid()}

    def run_id(self) -> str:
        """The run's identity: the hash of :meth:`identity`."""
        return config_hash(self.identity())

    def identity(self) -> dict[str, Any]:
        """What identifies the run: benchmark, method, seed, size and the settings that differ
        from their defaults (so a new option with a default keeps old ids)."""
        bench_config, params = self.resolved()
        key: dict[str, Any] = {
            "benchmark": self.benchmark,
            "method": self.method,
            "seed": self.seed,
            "target_size": self.target_size,
            "settings": non_default(bench_config),
            "params": non_default(params),
        }
        revision = get_method(self.method).revision
        if revision:
            key["revision"] = revision
        if self.select != "none":
            key["select"] = self.selection()
        if (self.device, self.amp) != ("cpu", "none"):
            key["device"], key["amp"] = torch.device(self.device).type, self.amp
        if self.source_compute != "standard":
            key["source_compute"] = self.source_compute
        if self.targets:
            key["targets"] = list(self.targets)
        return key


def non_default(obj: Any) -> dict[str, Any]:
    """The fields of a settings dataclass whose values differ from a default instance's."""
    values = to_dict(obj)
    defaults = {
        f.name: f.default if f.default is not MISSING else f.default_factory() for f in fields(obj)
    }
    defaults = json.loads(json.dumps(defaults))  # tuples as lists, as in ``values``
    return {k: v for k, v in values.items() if defaults.get(k) != v}


def versions() -> dict[str, str]:
    """Software versions and the machine a run ran on."""
    return {
        "pacnet": pacnet_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": machine(),
    }


def machine() -> str:
    """The CPU model and the cores this process may use, e.g. ``2 × AMD EPYC 7B13``."""
    import os

    model = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):  # noqa: SIM115 (short read)
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores} × {model}"


def source_model(
    bench: Benchmark,
    cache: StateCache,
    device: str = "cpu",
    amp: str = "none",
    extra_steps: int = 0,
) -> tuple[torch.nn.Module, str]:
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
    source = bench.source()
    cfg = replace(bench.source_fit(), amp=amp)

    def build() -> dict:
        fit(model, bench.loss_fn(), source.train, cfg, val=source.val, seed=0, desc="source")
        return model.state_dict()

    model.load_state_dict(cache(key, build))
    if extra_steps:
        key = {**key, "continued": extra_steps}

        def more() -> dict:
            fit(
                model,
                bench.loss_fn(),
                source.train,
                replace(cfg, steps=extra_steps),
                val=source.val,
                seed=0,
                desc="source, continued",
            )
            return model.state_dict()

        model.load_state_dict(cache(key, more))
    return model, config_hash(key)


def extra_source_steps(spec: RunSpec, bench: Benchmark) -> int:
    """Source steps a baseline's start gets on top of the source model's: PAC-Net's
    Allocate budget under equal source compute, else none."""
    return bench.source_fit().steps if spec.source_compute == "equal" else 0


@dataclass
class Trained:
    """A finished run: its result record and the network it trained."""

    result: dict[str, Any]
    model: torch.nn.Module
    """The target network (PAC-Net: the one network that holds every task)."""
    tasks: Tasks | None = None
    """PAC-Net: the per-task tensors of ``model``; None for one-network methods."""


def run(
    spec: RunSpec,
    out: str | Path | None = None,
    cache: StateCache | None = None,
    save: bool = False,
) -> dict[str, Any]:
    """Execute one run; write ``out/result.json`` (atomically) if ``out`` is given, and with
    ``save`` the trained network as ``out/net.safetensors`` (see :func:`run_trained`).

    Torch uses ``spec.threads`` CPU threads during the run (default: the benchmark's choice).
    """
    return run_trained(spec, out, cache, save).result


def run_trained(
    spec: RunSpec,
    out: str | Path | None = None,
    cache: StateCache | None = None,
    save: bool = False,
) -> Trained:
    """:func:`run`, also returning the network it trained.

    With ``save`` (which needs ``out``) the network is written to ``out/net.safetensors``
    before ``result.json``, which records it under ``network``: PAC-Net's network with all
    its tasks (the source and each target) as :func:`pacnet.save` writes it, every other
    method's target network as a one-network file (:func:`pacnet.save_network`; LoRA's with
    its adapters merged into the weights).
    """
    check(not save or out is not None, "saving the network needs an output folder (--out)")
    with using_threads(spec):
        return _run(spec, out, cache, save)


def save_trained(
    path: str | Path, spec: RunSpec, model: torch.nn.Module, tasks: Tasks | None
) -> dict[str, Any]:
    """Write a run's network to ``path``; returns what ``result.json`` records of it."""
    extra: dict[str, Any] = {
        "benchmark": spec.benchmark,
        "method": spec.method,
        "seed": spec.seed,
        "target_size": spec.target_size,
        "run_id": spec.run_id(),
    }
    if tasks is not None:
        if (model_spec := spec_of(unwrap(model))) is not None:
            extra["model"] = model_spec
        digest = save_checkpoint(path, model, tasks, extra)
        names, fmt = list(tasks.order), CHECKPOINT_FORMAT
    else:
        plain = merged(model)
        if (model_spec := spec_of(plain)) is not None:
            extra["model"] = model_spec
        digest = save_network(path, plain, "target", extra)
        names, fmt = ["target"], NETWORK_FORMAT
    return {"file": Path(path).name, "format": fmt, "tasks": names, "sha256": digest}


def merged(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` as one plain network: a peft model (LoRA) as a copy with its adapters
    merged into the weights (equal up to rounding); any other model as it is."""
    if hasattr(model, "merge_and_unload"):
        import copy

        return copy.deepcopy(model).merge_and_unload()
    return model


@contextmanager
def using_threads(spec: RunSpec) -> Iterator[None]:
    """Torch CPU threads as ``spec`` (or its benchmark) asks, restored afterwards."""
    threads = spec.threads or get_benchmark(spec.benchmark).threads
    check(threads is None or threads >= 1, f"threads must be >= 1, got {threads}")
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    if spec.deterministic:
        deterministic_kernels()
    try:
        yield
    finally:
        torch.set_num_threads(previous)
        torch.use_deterministic_algorithms(was_deterministic)


DETERMINISM_NOTE = (
    "Determinism: on the CPU the same configuration and seed give bit-identical results "
    "(tested). On CUDA, run with --deterministic (torch.use_deterministic_algorithms, cuDNN "
    "autotuning off, CUBLAS_WORKSPACE_CONFIG=:4096:8) and the same GPU model, driver and "
    "library versions; without it atomics-based kernels make runs differ in the last bits."
)


def deterministic_kernels() -> None:
    """Ask torch for deterministic kernels everywhere (needed for repeatable CUDA runs)."""
    import os

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def prepare(spec: RunSpec, cache: StateCache) -> TransferContext:
    """The benchmark, the (cached) source model and the target task of ``spec``."""
    bench = spec.make_benchmark(cache)
    check(spec.target_size >= 1, f"target size must be >= 1, got {spec.target_size}")
    check(0 <= spec.seed < 2**31, f"seed must lie in [0, 2**31), got {spec.seed}")
    check(
        spec.target_size <= bench.max_target_size,
        f"target size {spec.target_size} exceeds the pool of "
        f"{bench.max_target_size} target samples",
    )
    extra = extra_source_steps(spec, bench)
    model, source_key = source_model(bench, cache, spec.device, spec.amp, extra)
    target = bench.target(spec.seed, spec.target_size)
    return TransferContext(
        bench, model, bench.source(), target, spec.seed, source_key, cache, spec.amp
    )


def _run(spec: RunSpec, out: str | Path | None, cache: StateCache | None, save: bool) -> Trained:
    cache = cache or StateCache()
    method = spec.make_method()
    if out is not None and distributed.is_main():
        try:
            Path(out).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PacnetError(f"cannot create the output folder {out}: {exc.strerror}") from None
    start = time.perf_counter()
    ctx = prepare(spec, cache)
    bench, source, target = ctx.benchmark, ctx.source, ctx.target
    source_before = bench.score(ctx.source_model, source.test)
    if spec.targets:
        return _run_chain(spec, out, ctx, method, source_before, start, save)
    selection = None
    if spec.select != "none":
        selection = cross_validate(
            type(method),
            spec.method_params,
            ctx,
            bench,
            spec.folds,
            _seeded_transfer,
            mode=spec.select,
            grid=spec.grid(),
        )
        method = type(method)(
            make(type(method).Params, {**spec.method_params, **selection["chosen"]})
        )
    transfer = _seeded_transfer(method, ctx)
    result = _record(
        spec,
        bench,
        method,
        start,
        target_test=bench.score(transfer.target_model, target.test),
        source_test_before=source_before,
        source_test_after=bench.score(transfer.source_model, source.test),
        trainable_params=transfer.trainable,
        total_params=transfer.total,
        stored_params=transfer.stored,
        fit=transfer.fit.as_dict(),
        target_metrics=bench.metrics(transfer.target_model, target.test),
        details=transfer.details,
        benchmark_details=bench.details(),
        selection=selection,
    )
    return _finish(spec, Trained(result, transfer.target_model, transfer.tasks), out, save)


def _record(
    spec: RunSpec, bench: Benchmark, method: Method, start: float, **fields: Any
) -> dict[str, Any]:
    """A result.json record: what the run was, ``fields``, and how and when it ran."""
    return {
        "benchmark": spec.benchmark,
        "method": spec.method,
        "seed": spec.seed,
        "target_size": spec.target_size,
        "metric": bench.metric,
        **fields,
        "seconds": round(time.perf_counter() - start, 3),
        "run_id": spec.run_id(),
        "identity": spec.identity(),
        "config": spec.config(),
        "params_used": to_dict(method.params),
        "versions": versions(),
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _finish(spec: RunSpec, trained: Trained, out: str | Path | None, save: bool) -> Trained:
    """Record the process layout (and, under torchrun, that every rank holds the same
    weights); only rank 0 writes ``result.json`` (and, with ``save``, the network first)."""
    result, model = trained.result, trained.model
    if distributed.active():
        result["distributed"] = {
            "world_size": distributed.world_size(),
            "backend": distributed.backend(),
            "ranks_agree": distributed.ranks_agree(distributed.model_checksum(model)),
        }
        check(
            result["distributed"]["ranks_agree"],
            "the ranks ended with different weights (checksum mismatch); nothing written",
        )
    if out is not None and distributed.is_main():
        if save:
            network = save_trained(Path(out) / NETWORK_FILE, spec, model, trained.tasks)
            result["network"] = network
        write_json(Path(out) / RESULT_FILE, result)
    return trained


def _run_chain(
    spec: RunSpec,
    out: str | Path | None,
    ctx: TransferContext,
    method: Method,
    source_before: float,
    start: float,
    save: bool,
) -> Trained:
    """Several targets (the targets of seeds ``spec.targets``) in one PAC-Net network."""
    bench = ctx.benchmark
    targets = [(str(seed), bench.target(seed, spec.target_size)) for seed in spec.targets]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)
        chain = method.chain(ctx, targets, bench.score)  # type: ignore[attr-defined]
    final = chain["steps"][-1]["scores"]
    model, tasks = chain.pop("model"), chain.pop("tasks")
    result = _record(
        spec,
        bench,
        method,
        start,
        targets=list(spec.targets),
        target_test=final[str(spec.targets[-1])],
        source_test_before=source_before,
        source_test_after=final["source"],
        chain=chain,
    )
    return _finish(spec, Trained(result, model, tasks), out, save)


def _seeded_transfer(method: Method, ctx: TransferContext) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ctx.seed)
        return method.transfer(ctx)
