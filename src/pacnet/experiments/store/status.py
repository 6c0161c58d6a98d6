"""Where the grids of a results database stand: counts by state, who runs what since when,
failures, and the time left; as data (:class:`GridStatus`, from the queries of
:class:`StatusQueries`) and as the text of ``pacnet status``."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, func, select

from pacnet.experiments.store.schema import (
    grid_runs_table,
    grids_table,
    has_grids,
    runs_table,
    states_table,
)


@dataclass
class Progress:
    """How many runs of a grid are in each state."""

    total: int = 0
    pending: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0

    @property
    def open(self) -> int:
        """Runs that some worker still has to finish (pending or running)."""
        return self.pending + self.running


@dataclass
class RunState:
    """One run of a grid as :meth:`StatusQueries.status` reports it."""

    run_id: str
    method: str
    target_size: int
    seed: int
    state: str
    host: str | None
    pid: int | None
    claimed: float | None
    lease_left: float | None  # seconds until the lease ends (negative: it has expired)
    attempts: int
    error: str | None
    seconds: float | None  # a finished run's own duration

    def describe(self) -> str:
        return f"{self.method} N={self.target_size} seed {self.seed}"


@dataclass
class GridStatus:
    """Where a grid stands: its runs by state and the estimated time left."""

    grid_id: str
    benchmark: str
    label: str
    created: float
    now: float
    progress: Progress
    runs: list[RunState] = field(default_factory=list)  # every run of the grid, in order
    running: list[RunState] = field(default_factory=list)
    failed: list[RunState] = field(default_factory=list)
    mean_seconds: float | None = None  # over the grid's finished runs
    finished_runs: int = 0
    workers: int = 0  # distinct processes holding a live claim
    eta_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return {
            "grid_id": self.grid_id,
            "benchmark": self.benchmark,
            "label": self.label,
            "created": iso(self.created),
            "total": self.progress.total,
            "pending": self.progress.pending,
            "running": [
                {
                    "run_id": r.run_id,
                    "run": r.describe(),
                    "host": r.host,
                    "pid": r.pid,
                    "since": iso(r.claimed) if r.claimed is not None else None,
                    "seconds": None if r.claimed is None else round(self.now - r.claimed, 1),
                    "lease_left": None if r.lease_left is None else round(r.lease_left, 1),
                    "attempt": r.attempts,
                }
                for r in self.running
            ],
            "done": self.progress.done,
            "failed": [
                {
                    "run_id": r.run_id,
                    "run": r.describe(),
                    "error": r.error,
                    "attempts": r.attempts,
                    "host": r.host,
                    "pid": r.pid,
                }
                for r in self.failed
            ],
            "mean_seconds": self.mean_seconds,
            "workers": self.workers,
            "eta_seconds": self.eta_seconds,
        }


def iso(epoch: float) -> str:
    """An epoch time as ISO 8601 in UTC, e.g. ``2026-01-02T03:04:05Z``."""
    stamp = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return stamp.isoformat(timespec="seconds").replace("+00:00", "Z")


class StatusQueries:
    """What the grids' runs are doing: a part of :class:`~pacnet.experiments.store.store.Store`,
    run on the store's own :class:`~pacnet.experiments.store.database.Database`
    (``self.transaction``, ``self.now``)."""

    def progress(self, grid_id: str) -> Progress:
        """How many of the grid's runs are pending, running, done and failed (a run stored
        in ``runs`` counts as done whatever its state row says)."""
        s = states_table

        def body(conn: Connection) -> Progress:
            rows = conn.execute(
                select(s.c.state, runs_table.c.run_id.is_not(None), func.count())
                .select_from(grid_runs_table)
                .join(s, s.c.run_id == grid_runs_table.c.run_id)
                .outerjoin(runs_table, runs_table.c.run_id == grid_runs_table.c.run_id)
                .where(grid_runs_table.c.grid_id == grid_id)
                .group_by(s.c.state, runs_table.c.run_id.is_not(None))
            ).all()
            counts = Progress()
            for state, stored, n in rows:
                key = "done" if stored else state
                setattr(counts, key, getattr(counts, key) + n)
                counts.total += n
            return counts

        return self.transaction(body, write=False)

    def next_expiry(self, grid_id: str) -> float | None:
        """Seconds until the first lease of the grid's running runs ends (None: none runs)."""
        s = states_table

        def body(conn: Connection) -> float | None:
            row = conn.execute(
                select(func.min(s.c.lease_until), self.now)
                .select_from(grid_runs_table)
                .join(s, s.c.run_id == grid_runs_table.c.run_id)
                .where(grid_runs_table.c.grid_id == grid_id, s.c.state == "running")
            ).first()
            if row is None or row[0] is None:
                return None
            return max(float(row[0]) - float(row[1]), 0.0)

        return self.transaction(body, write=False)

    def done_ids(self, grid_id: str) -> set[str]:
        """Ids of the grid's runs that are stored."""

        def body(conn: Connection) -> set[str]:
            return set(
                conn.scalars(
                    select(runs_table.c.run_id)
                    .join(grid_runs_table, grid_runs_table.c.run_id == runs_table.c.run_id)
                    .where(grid_runs_table.c.grid_id == grid_id)
                )
            )

        return self.transaction(body, write=False)

    def state(self, run_id: str) -> RunState | None:
        """The state row of one run (None if no grid has it)."""
        found = self.states(states_table.c.run_id == run_id)
        return found[0][1] if found else None

    def states(self, where: Any) -> list[tuple[str | None, RunState]]:
        s = states_table

        def body(conn: Connection) -> list[tuple[str | None, RunState]]:
            now = conn.scalar(select(self.now))
            rows = conn.execute(
                select(
                    grid_runs_table.c.grid_id,
                    s.c.run_id,
                    s.c.method,
                    s.c.target_size,
                    s.c.seed,
                    s.c.state,
                    s.c.host,
                    s.c.pid,
                    s.c.claimed,
                    s.c.lease_until,
                    s.c.attempts,
                    s.c.error,
                    runs_table.c.seconds,
                )
                .select_from(s)
                .outerjoin(grid_runs_table, grid_runs_table.c.run_id == s.c.run_id)
                .outerjoin(runs_table, runs_table.c.run_id == s.c.run_id)
                .where(where)
                .order_by(grid_runs_table.c.grid_id, grid_runs_table.c.position)
            ).all()
            return [
                (
                    r.grid_id,
                    RunState(
                        run_id=r.run_id,
                        method=r.method,
                        target_size=r.target_size,
                        seed=r.seed,
                        state="done" if r.seconds is not None else r.state,
                        host=r.host,
                        pid=r.pid,
                        claimed=r.claimed,
                        lease_left=None if r.lease_until is None else r.lease_until - now,
                        attempts=r.attempts,
                        error=r.error,
                        seconds=r.seconds,
                    ),
                )
                for r in rows
            ]

        return self.transaction(body, write=False)

    def status(self, grid: str | None = None) -> list[GridStatus]:
        """Every registered grid (or those whose id starts with ``grid``), newest first: its
        runs by state, who runs what since when, and the estimated time left."""
        if not has_grids(self):
            return []
        g = grids_table
        query = select(g.c.grid_id, g.c.benchmark, g.c.label, g.c.created).order_by(
            g.c.created.desc()
        )
        if grid:
            query = query.where(g.c.grid_id.startswith(grid, autoescape=True))

        def body(conn: Connection) -> tuple[float, list[Any]]:
            return conn.scalar(select(self.now)), conn.execute(query).all()

        now, grids = self.transaction(body, write=False)
        out = []
        for row in grids:
            states = [st for _, st in self.states(grid_runs_table.c.grid_id == row.grid_id)]
            out.append(grid_status(row, states, now))
        return out


def grid_status(row: Any, states: list[RunState], now: float) -> GridStatus:
    """Counts, running and failed runs, and the time left (:func:`time_left`)."""
    progress = Progress(total=len(states))
    for st in states:
        setattr(progress, st.state, getattr(progress, st.state) + 1)
    status = GridStatus(row.grid_id, row.benchmark, row.label, row.created, now, progress, states)
    status.running = [st for st in states if st.state == "running"]
    status.failed = [st for st in states if st.state == "failed"]
    finished = [st for st in states if st.seconds is not None]
    status.finished_runs = len(finished)
    status.workers = len({(st.host, st.pid) for st in status.running if _live(st)})
    if finished:
        status.mean_seconds = sum(st.seconds or 0.0 for st in finished) / len(finished)
        status.eta_seconds = time_left(states, now)
    return status


def _live(st: RunState) -> bool:
    return st.state == "running" and (st.lease_left or 0) > 0


def expected_seconds(finished: Sequence[RunState]) -> Callable[[RunState], float]:
    """A run's expected duration: the mean of the finished runs of its method and target
    size, else of its method, else of all."""
    means: dict[Any, list[float]] = {}
    for st in finished:
        for key in ((st.method, st.target_size), st.method, None):
            means.setdefault(key, []).append(st.seconds or 0.0)
    mean = {k: sum(v) / len(v) for k, v in means.items()}

    def expected(st: RunState) -> float:
        return mean.get((st.method, st.target_size), mean.get(st.method, mean[None]))

    return expected


def time_left(states: Sequence[RunState], now: float) -> float | None:
    """Seconds until a grid's open runs are done, from its finished ones (None: none yet).

    A run is expected to take what the finished runs of its method and target size took
    (:func:`expected_seconds`). The batched engine records as a run's ``seconds`` its share
    of its group's time, and a worker holds a whole group while it trains: so what a live
    worker still has to do is the sum of its runs' expectations less the time since its
    first claim. A run whose lease expired is done again from the start. The rest, pending
    work, is shared by the processes now working (one if none works): the estimate is the
    larger of that share plus theirs and the longest of them."""
    finished = [st for st in states if st.seconds is not None]
    if not finished:
        return None
    expected = expected_seconds(finished)
    held: dict[tuple[Any, Any], list[RunState]] = {}
    pending = 0.0
    for st in states:
        if _live(st):
            held.setdefault((st.host, st.pid), []).append(st)
        elif st.state in ("pending", "running"):  # a running one here: its worker is gone
            pending += expected(st)
    in_flight = [
        max(sum(expected(st) for st in runs) - (now - min(st.claimed or now for st in runs)), 0)
        for runs in held.values()
    ]
    shared = (pending + sum(in_flight)) / max(len(held), 1)
    return max([shared, *in_flight])


def duration(seconds: float) -> str:
    """``seconds`` for a person: 42 s, 3 min 5 s, 2 h 10 min, 3 d 4 h."""
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def _clock(epoch: float) -> str:
    stamp = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return stamp.strftime("%Y-%m-%d %H:%M:%S UTC")


def grid_text(g: GridStatus) -> list[str]:
    """The lines of one grid: counts, each running run (where, since when), each failed
    run (its error's last line), and the estimated time left."""
    p = g.progress
    lines = [
        f"grid {g.grid_id}  {g.label}",
        f"  registered {_clock(g.created)}",
        f"  {p.total} runs: {p.done} done, {p.running} running, {p.pending} pending, "
        f"{p.failed} failed",
    ]
    width = max((len(r.describe()) for r in [*g.running, *g.failed]), default=0)
    for r in g.running:
        since = "" if r.claimed is None else f", since {_clock(r.claimed)}"
        took = "" if r.claimed is None else f" ({duration(g.now - r.claimed)})"
        if r.lease_left is not None and r.lease_left < 0:
            lease = f", lease expired {duration(-r.lease_left)} ago: claimed again next"
        else:
            lease = ""
        attempt = f", attempt {r.attempts}" if r.attempts > 1 else ""
        lines.append(
            f"  running  {r.describe():<{width}}  on {r.host}, process {r.pid}"
            f"{since}{took}{attempt}{lease}"
        )
    for r in g.failed:
        error = (r.error or "").strip().splitlines()[-1:] or ["no error text"]
        where = f" on {r.host}, process {r.pid}" if r.host else ""
        tries = f"{r.attempts} attempt{'s' * (r.attempts != 1)}"
        lines.append(f"  failed   {r.describe():<{width}}  {error[0]} ({tries}{where})")
    if p.open == 0:
        lines.append(
            "  complete"
            if not p.failed
            else "  finished but for the failed runs "
            "(pacnet reproduce ... --retry-failed runs them again)"
        )
    elif g.eta_seconds is None:
        lines.append("  time left: unknown until a run finishes")
    else:
        workers = f"{g.workers} worker{'s' * (g.workers != 1)}" if g.workers else "no worker"
        lines.append(
            f"  time left: about {duration(g.eta_seconds)} (mean run "
            f"{duration(g.mean_seconds or 0.0)} over {g.finished_runs} finished; "
            f"{workers} running now)"
        )
    return lines


def status_text(where: str, stored: int, grids: Sequence[GridStatus]) -> str:
    """The whole ``pacnet status`` report of a database."""
    lines = [f"results database {where}: {stored} finished run{'s' * (stored != 1)}"]
    if not grids:
        lines.append("no grid registered (pacnet reproduce registers one)")
    for g in grids:
        lines += ["", *grid_text(g)]
    return "\n".join(lines)
