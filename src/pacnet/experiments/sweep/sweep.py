"""A grid of runs (methods x target sizes x seeds): resumable, parallel, shared by machines.

:func:`sweep` registers the grid in the results :class:`~pacnet.experiments.store.store.Store`
(idempotent: every process that plans the same grid registers the same one), then its
workers claim the grid's runs one at a time until none is left. The workers are ``jobs``
processes on this machine and any number of others on other machines running the same
command against the same database (PostgreSQL for several machines, or one SQLite file).

A worker holds a claim under a lease that a background thread renews while the run works;
a worker that dies (SIGKILL, a lost machine) stops renewing, and once the lease has expired
the next worker that asks claims the run again (at once, without waiting for the lease, if
that worker runs on the same machine and sees that the holder's process is gone). A finished
run is stored in one transaction together with the end of its claim, only by the claim's
holder: it is stored exactly once, and a run killed half-way leaves no row. A run that
raises is marked failed with its traceback and is not retried unless asked
(``retry_failed``). Re-running a sweep that was stopped does only what is missing.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import random
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from tqdm.auto import tqdm

from pacnet.errors import PacnetError, Terminated, check, first_line
from pacnet.experiments.run.batched import group_key, run_group, stacks
from pacnet.experiments.run.environment import using_threads
from pacnet.experiments.run.runner import run
from pacnet.experiments.run.source import extra_source_steps, source_model
from pacnet.experiments.run.spec import RunSpec
from pacnet.experiments.store.claims import DEFAULT_LEASE, DEFAULT_MAX_ATTEMPTS, Claim, GridRun
from pacnet.experiments.store.store import Store
from pacnet.experiments.sweep.grid import default_label
from pacnet.experiments.sweep.progress import ProgressLines
from pacnet.training.cache import StateCache


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker holds its runs: lease length, attempts before a vanishing worker's
    run fails, processes per run (``torchrun`` when more than one), and how many runs it
    claims at a time to train together where their specs ask for the batched engine
    (:func:`pacnet.experiments.run.batched.stacks`)."""

    lease: float = DEFAULT_LEASE
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    nproc_per_run: int = 1
    group: int = 16

    def __post_init__(self) -> None:
        check(self.group >= 1, f"the group size must be >= 1, got {self.group}")
        check(self.lease >= 1, f"--lease must be at least 1 second, got {self.lease}")
        check(self.max_attempts >= 1, f"--max-attempts must be >= 1, got {self.max_attempts}")
        check(self.nproc_per_run >= 1, f"--nproc-per-run must be >= 1, got {self.nproc_per_run}")

    @property
    def poll(self) -> float:
        """Seconds between looks at the grid while every open run is held by someone."""
        return min(max(self.lease / 6, 0.1), 2.0)


def sweep(
    specs: Sequence[RunSpec],
    store: Store,
    jobs: int = 1,
    cache: StateCache | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    *,
    label: str | None = None,
    retry_failed: bool = False,
    options: WorkerOptions | None = None,
) -> list[dict[str, Any]]:
    """Run the grid of ``specs`` with ``jobs`` worker processes here (and whichever workers
    other machines add); return the stored results of the grid's runs, in ``specs`` order.

    Returns once no run of the grid is pending or running: all done, or failed (see
    ``store.status``). ``on_result`` is called with each run of the grid found finished
    while waiting, wherever it ran. The shared source model of each benchmark setting is
    built once on this machine before any worker starts.
    """
    check(specs, "the grid is empty")
    check(jobs >= 1, f"jobs must be >= 1, got {jobs}")
    options = options or WorkerOptions()
    cache = cache or StateCache()
    runs = [GridRun(s.run_id(), s.method, s.target_size, s.seed) for s in specs]
    by_id = {r.run_id: spec for r, spec in zip(runs, specs, strict=True)}
    grid_id = store.register(runs, specs[0].benchmark, label or default_label(specs), retry_failed)
    seen = store.done_ids(grid_id)
    open_ids = {r.run_id for r in runs} - seen
    failed = {st.run_id for g in store.status(grid_id) for st in g.failed}
    todo = [by_id[i] for i in open_ids - failed]
    phase = ["preparing the source model"]

    def describe() -> str:  # where the grid stands, for a line of progress
        p = store.progress(grid_id)
        failures = f", {p.failed} failed" if p.failed else ""
        doing = "".join(f" ({what})" for what in phase[:1])
        return f"{p.done}/{p.total} runs done, {p.running} running{failures}{doing}"

    with ProgressLines(describe) as lines:
        for base in {
            (s.benchmark, s.source_compute, json.dumps(s.identity()["settings"], sort_keys=True)): s
            for s in todo
        }.values():
            with using_threads(base.thread_count, base.deterministic):  # the source model,
                bench = base.make_benchmark(cache)  # once per benchmark setting
                extra = extra_source_steps(base.source_compute, bench)
                source_model(bench, cache, base.device, base.amp, extra)
        phase.clear()
        with tqdm(total=len(by_id), initial=len(seen), desc="sweep", disable=None) as bar:

            def tick() -> None:
                if on_result is None:  # counts are enough for the bar
                    done = store.progress(grid_id).done
                    bar.update(done - bar.n)
                    lines.update(done)
                    return
                new = store.done_ids(grid_id) - seen
                if new:
                    seen.update(new)
                    bar.update(len(new))
                    for result in store.results(ids=new):
                        on_result(result)
                lines.update(len(seen))

            workers = min(jobs, max(len(todo), 1))
            try:
                if workers <= 1:
                    work(store, grid_id, by_id, cache, options, tick)
                else:
                    device = specs[0].device
                    _run_workers(store, grid_id, by_id, cache, options, workers, device, tick)
            except KeyboardInterrupt:
                print(
                    "pacnet: the runs in flight were given back (pending again, not counted "
                    "as attempts); the same command goes on with them",
                    file=sys.stderr,
                )
                raise
            tick()
    position = {run_id: i for i, run_id in enumerate(by_id)}
    return sorted(store.results(ids=by_id), key=lambda r: position[r["run_id"]])


def work(
    store: Store,
    grid_id: str,
    specs: Mapping[str, RunSpec],
    cache: StateCache,
    options: WorkerOptions | None = None,
    tick: Callable[[], None] | None = None,
) -> int:
    """One worker: claim a run of the grid, run it, store it, until no run is pending or
    running; return how many runs it stored. While every open run is held by other
    workers it waits, and claims any whose lease expires."""
    options = options or WorkerOptions()
    with _watching_for_interrupts() as interrupted:
        return _work(store, grid_id, specs, cache, options, tick, interrupted)


@contextlib.contextmanager
def _watching_for_interrupts() -> Iterator[_Interrupted]:
    """An event set by Ctrl-C (SIGINT) or SIGTERM, which still raises KeyboardInterrupt: so a worker
    stops even where a library caught the interrupt inside a run and raised something else
    (a half-imported module, say) instead."""
    interrupted = _Interrupted()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return

    def on_sigint(signum: int, frame: Any) -> None:
        interrupted.set()
        if not interrupted.holding:
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_sigint) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield interrupted
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Interrupted(threading.Event):
    """Set by Ctrl-C. While ``holding`` (a claim is being taken) the interrupt waits: the
    claim is then recorded, so it can be given back, and :func:`_claim` raises."""

    holding = False


def _claim(
    store: Store,
    grid_id: str,
    options: WorkerOptions,
    interrupted: _Interrupted,
    held: list[Claim],
) -> Claim | None:
    """``store.claim`` of the grid's next run, shielded from Ctrl-C until the claim is in
    ``held`` (the claims the worker gives back if it stops); then raises KeyboardInterrupt
    if Ctrl-C came meanwhile."""
    interrupted.holding = True
    try:
        claim = store.claim(grid_id, options.lease, options.max_attempts)
        if claim is not None:
            held.append(claim)
    finally:
        interrupted.holding = False
    if interrupted.is_set():
        raise KeyboardInterrupt
    return claim


def _work(
    store: Store,
    grid_id: str,
    specs: Mapping[str, RunSpec],
    cache: StateCache,
    options: WorkerOptions,
    tick: Callable[[], None] | None,
    interrupted: _Interrupted,
) -> int:
    stored = 0
    held: list[Claim] = []  # claimed and not yet finished, failed or given back
    while True:
        if interrupted.is_set():
            raise KeyboardInterrupt
        held.clear()
        try:
            claim = _claim(store, grid_id, options, interrupted, held)
            if claim is None:
                counts = store.progress(grid_id)
                if counts.open == 0:
                    return stored
                if tick:
                    tick()
                if counts.pending:  # rows locked by workers claiming them right now
                    time.sleep(random.uniform(0.02, 0.2))
                    continue
                if store.reap(grid_id):  # runs of this machine's dead processes: at once
                    continue
                expiry = store.next_expiry(grid_id)
                time.sleep(options.poll if expiry is None else min(options.poll, expiry + 0.05))
                continue
            spec = specs.get(claim.run_id)
            if spec is None:  # cannot happen: a grid's id is the hash of its run ids
                raise PacnetError(f"run {claim.run_id} of grid {grid_id} is not in this grid")
            if not _stacks(spec, options):
                stored += _execute(store, claim, spec, cache, options, interrupted)
            else:
                _more_claims(store, grid_id, specs, group_key(spec), options, interrupted, held)
                stored += _execute_group(store, list(held), specs, cache, options, interrupted)
        except BaseException:  # give back what is still held (a stored run stays)
            _release(store, held)
            raise
        if tick:
            tick()


def _stacks(spec: RunSpec, options: WorkerOptions) -> bool:
    return options.nproc_per_run == 1 and stacks(spec)


def _more_claims(
    store: Store,
    grid_id: str,
    specs: Mapping[str, RunSpec],
    key: str,
    options: WorkerOptions,
    interrupted: _Interrupted,
    held: list[Claim],
) -> None:
    """Up to ``group − 1`` more of the grid's runs that stack with group ``key``, as many as
    are free now, added to ``held``; the first that does not is given back (claims go by
    grid position, so it is claimed next, on its own)."""
    while len(held) < options.group:
        claim = _claim(store, grid_id, options, interrupted, held)
        if claim is None:
            return
        spec = specs.get(claim.run_id)
        if spec is None or not _stacks(spec, options) or group_key(spec) != key:
            store.release(claim)
            held.remove(claim)
            return


def _release(store: Store, claims: Sequence[Claim]) -> None:
    """Give back the runs of ``claims`` this worker still holds (finished ones stay)."""
    for claim in claims:
        with contextlib.suppress(PacnetError):
            store.release(claim)


def _execute_group(
    store: Store,
    claims: list[Claim],
    specs: Mapping[str, RunSpec],
    cache: StateCache,
    options: WorkerOptions,
    interrupted: _Interrupted,
) -> int:
    """Run claimed specs that stack together, under renewed leases; store each. If the
    group fails, each of its runs runs alone, so that only a failing run fails."""
    group = [specs[c.run_id] for c in claims]
    with _Lease(store, claims, options.lease) as lease:
        try:
            trained = run_group(group, cache)
        except Exception:
            if interrupted.is_set():
                raise KeyboardInterrupt from None
            trained = None
    if trained is None:
        return sum(
            _execute(store, c, replace(s, engine="sequential"), cache, options, interrupted)
            for c, s in zip(claims, group, strict=True)
        )
    stored = 0
    for claim, spec, done in zip(claims, group, trained, strict=True):
        if store.finish(claim, done.result):
            stored += 1
            continue
        print(
            f"pacnet: run {spec.method} N={spec.target_size} seed {spec.seed} "
            f"({claim.run_id}): its lease expired{' and was taken over' if lease.lost else ''} "
            "before it finished; another worker runs it, this result is discarded",
            file=sys.stderr,
        )
    return stored


class _Lease:
    """Renews claims every third of their lease in a background thread while their runs
    work; ``lost`` tells whether another worker took one of them over meanwhile."""

    def __init__(self, store: Store, claims: Claim | list[Claim], lease: float):
        self.claims = claims if isinstance(claims, list) else [claims]
        self.store, self.lease = store, lease
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="pacnet-lease", daemon=True)

    def _renew(self) -> None:
        while not self._stop.wait(self.lease / 3):
            try:
                if not all([self.store.renew(c, self.lease) for c in self.claims]):
                    self.lost = True
                    return
            except PacnetError as exc:  # the database is unreachable: keep trying
                print(f"pacnet: cannot renew the lease: {exc}", file=sys.stderr)

    def __enter__(self) -> _Lease:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def _execute(
    store: Store,
    claim: Claim,
    spec: RunSpec,
    cache: StateCache,
    options: WorkerOptions,
    interrupted: _Interrupted,
) -> int:
    """Run a claimed spec under a renewed lease; store it (1) or record its failure (0)."""
    what = f"{spec.method} N={spec.target_size} seed {spec.seed} ({claim.run_id})"
    with _Lease(store, claim, options.lease) as lease:
        try:
            if options.nproc_per_run > 1:
                from pacnet.experiments.sweep.launch import run_under_torchrun

                result = run_under_torchrun(spec, cache, options.nproc_per_run)
            else:
                result = run(spec, None, cache)
        except BaseException as exc:
            if not isinstance(exc, Exception) or interrupted.is_set():  # give the run back
                with contextlib.suppress(PacnetError):  # else the lease expires instead
                    store.release(claim)
                if isinstance(exc, Exception):
                    raise KeyboardInterrupt from exc
                raise
            store.fail(claim, traceback.format_exc())
            print(
                f"pacnet: run {what} failed: {type(exc).__name__}: {first_line(exc)}",
                file=sys.stderr,
            )
            return 0
    if store.finish(claim, result):
        return 1
    print(
        f"pacnet: run {what}: its lease expired{' and was taken over' if lease.lost else ''} "
        "before it finished; another worker runs it, this result is discarded",
        file=sys.stderr,
    )
    return 0


def gpu_slots(workers: int, per_worker: int, visible: Sequence[str]) -> list[str | None]:
    """The ``CUDA_VISIBLE_DEVICES`` of each worker: ``per_worker`` devices of ``visible``
    each, round robin when there are fewer devices than workers need."""
    if not visible:
        return [None] * workers
    return [
        ",".join(visible[(w * per_worker + i) % len(visible)] for i in range(per_worker))
        for w in range(workers)
    ]


def _visible_gpus() -> list[str]:
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def _run_workers(
    store: Store,
    grid_id: str,
    specs: Mapping[str, RunSpec],
    cache: StateCache,
    options: WorkerOptions,
    workers: int,
    device: str,
    tick: Callable[[], None],
) -> None:
    """``workers`` worker processes; with ``--device cuda`` each sees its own GPU(s)."""
    slots: list[str | None] = [None] * workers
    if device == "cuda":
        slots = gpu_slots(workers, options.nproc_per_run, _visible_gpus())
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(store.target, grid_id, dict(specs), str(cache.root), options, slot),
            name=f"pacnet-worker-{i}",
        )
        for i, slot in enumerate(slots)
    ]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            tick()
            for p in procs:
                p.join(timeout=options.poll / max(len(procs), 1))
    except BaseException as exc:  # Ctrl-C reached the workers too; each gives its run back
        if isinstance(exc, Terminated):  # SIGTERM reached this process alone: pass it on
            for p in procs:
                if p.is_alive() and p.pid is not None:
                    os.kill(p.pid, signal.SIGTERM)
        deadline = time.time() + 5
        for p in procs:
            p.join(timeout=max(deadline - time.time(), 0.01))
        for p in procs:  # a signal for this process alone: pass it on
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGINT)
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
        with contextlib.suppress(PacnetError):  # what a worker could not give back
            store.reap(grid_id)
        raise
    broken = [p for p in procs if p.exitcode != 0]
    if broken and store.progress(grid_id).open:
        store.reap(grid_id)  # the runs the dead workers held: claimable at once
        if all(p.exitcode in (130, -signal.SIGINT) for p in broken):
            # Ctrl-C reached the workers but not this process (which ignores SIGINT, as a
            # command started in the background by a script does): the same interruption
            raise KeyboardInterrupt
        codes = ", ".join(str(p.exitcode) for p in broken)
        raise PacnetError(
            f"{len(broken)} of {len(procs)} worker processes ended abnormally (exit {codes}); "
            "the runs they held are free again (given back, or claimable at once): run the "
            "same command again to finish"
        )


def _worker_main(
    target: str,
    grid_id: str,
    specs: dict[str, RunSpec],
    cache_root: str,
    options: WorkerOptions,
    gpus: str | None,
) -> None:
    """A worker process: its own connection, one torch thread, its own GPU(s) if given."""
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus
    torch.set_num_threads(1)
    try:
        with Store(target) as store:
            work(store, grid_id, specs, StateCache(cache_root), options)
    except KeyboardInterrupt:
        sys.exit(130)
    except PacnetError as exc:
        print(
            f"pacnet: error: {exc} ({socket.gethostname()}, process {os.getpid()})",
            file=sys.stderr,
        )
        sys.exit(2)
