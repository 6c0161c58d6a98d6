"""Claims on the runs of a shared grid: which worker runs what, under a lease.

A worker :meth:`Claims.claim` s a pending run atomically — on PostgreSQL a row lock taken
with ``FOR UPDATE SKIP LOCKED``, on SQLite a ``BEGIN IMMEDIATE`` transaction (one writer at
a time), and on both a conditional update that only succeeds on a run still claimable — so
two workers never hold the same run. A run whose lease expired (its worker died or lost the
database) is claimed again by the next worker that asks; :meth:`Claims.finish` stores the
result only while the caller still holds the claim (same token), in the same transaction
that marks the run done, so a finished run is stored exactly once. Lease times come from
the database server's clock, so machines whose clocks differ agree on them.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import Connection, and_, or_, select, update

from pacnet.config import config_hash
from pacnet.errors import check
from pacnet.experiments.store.database import batched, process_key, same_host
from pacnet.experiments.store.schema import (
    grid_runs_table,
    grids_table,
    has_grids,
    row_of,
    runs_table,
    states_table,
)

DEFAULT_LEASE = 60.0
"""Seconds a claim lasts unless renewed; a worker renews it every third of that."""
DEFAULT_MAX_ATTEMPTS = 3
"""Starts of a run whose worker then vanished (lease expired, no result) before it fails."""


def grid_id(run_ids: Iterable[str]) -> str:
    """The id of the grid of these runs: the hash of their sorted ids."""
    return config_hash(sorted(set(run_ids)))


class GridRun(NamedTuple):
    """What a grid needs to know of one of its runs."""

    run_id: str
    method: str
    target_size: int
    seed: int


@dataclass(frozen=True)
class Claim:
    """A run held by this worker until it finishes, fails, releases it or the lease ends."""

    run_id: str
    token: str
    attempt: int
    took_over: bool = False  # the previous holder's lease had expired


class Claims:
    """Registering grids and claiming, renewing, finishing, failing and releasing their runs:
    a part of :class:`~pacnet.experiments.store.store.Store`, run on the store's own
    :class:`~pacnet.experiments.store.database.Database` (``self.transaction``,
    ``self.insert_ignore``, ``self.now``, ``self.display``)."""

    def register(
        self,
        runs: Sequence[GridRun],
        benchmark: str,
        label: str,
        retry_failed: bool = False,
    ) -> str:
        """Register a grid of runs (idempotent: the grid id is the hash of its run ids) and
        return its id. Runs already stored count as done; with ``retry_failed`` the grid's
        failed runs become pending again."""
        check(has_grids(self), f"{self.display}: opened read-only")
        order = list(dict.fromkeys(r.run_id for r in runs))
        check(order, "a grid needs at least one run")
        grid = grid_id(order)
        by_id = {r.run_id: r for r in runs}

        def body(conn: Connection) -> str:
            now = conn.scalar(select(self.now))
            conn.execute(
                self.insert_ignore(grids_table),
                [
                    {
                        "grid_id": grid,
                        "benchmark": benchmark,
                        "label": label,
                        "size": len(order),
                        "created": now,
                    }
                ],
            )
            done: set[str] = set()
            for chunk in batched(sorted(order), 500):
                done.update(
                    conn.scalars(select(runs_table.c.run_id).where(runs_table.c.run_id.in_(chunk)))
                )
            position = {run_id: i for i, run_id in enumerate(order)}
            members = [
                {"grid_id": grid, "run_id": r, "position": position[r]} for r in sorted(order)
            ]
            conn.execute(self.insert_ignore(grid_runs_table), members)
            states = [
                {
                    "run_id": r,
                    "method": by_id[r].method,
                    "target_size": by_id[r].target_size,
                    "seed": by_id[r].seed,
                    "state": "done" if r in done else "pending",
                    "attempts": 0,
                    "lost": 0,
                }
                for r in sorted(order)
            ]
            conn.execute(self.insert_ignore(states_table), states)
            in_grid = select(grid_runs_table.c.run_id).where(grid_runs_table.c.grid_id == grid)
            for chunk in batched(sorted(done), 500):  # stored by other means meanwhile
                conn.execute(
                    update(states_table)
                    .where(
                        states_table.c.run_id.in_(chunk),
                        states_table.c.state.in_(("pending", "failed")),
                    )
                    .values(state="done", error=None)
                )
            if retry_failed:
                conn.execute(
                    update(states_table)
                    .where(states_table.c.run_id.in_(in_grid), states_table.c.state == "failed")
                    .values(state="pending", lost=0, token=None, lease_until=None)
                )
            return grid

        return self.transaction(body, write=True)

    def claim(
        self,
        grid_id: str,
        lease: float = DEFAULT_LEASE,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        host: str | None = None,
        pid: int | None = None,
    ) -> Claim | None:
        """Claim the grid's first pending run, or a run whose lease has expired; None when
        no run is claimable now. A run whose claims expired ``max_attempts`` times (its
        workers kept vanishing) is marked failed instead of being claimed again."""
        check(lease > 0, f"the lease must be > 0 seconds, got {lease}")
        check(max_attempts >= 1, f"max_attempts must be >= 1, got {max_attempts}")
        host = host or socket.gethostname()
        pid = os.getpid() if pid is None else pid
        token = uuid.uuid4().hex
        me = process_key() if pid == os.getpid() else None
        s = states_table

        def claimable(now: float) -> Any:
            return or_(s.c.state == "pending", and_(s.c.state == "running", s.c.lease_until < now))

        def body(conn: Connection) -> Claim | bool | None:
            now = conn.scalar(select(self.now))
            row = conn.execute(
                select(s.c.run_id, s.c.state, s.c.lost, s.c.attempts, s.c.host, s.c.pid)
                .join(grid_runs_table, grid_runs_table.c.run_id == s.c.run_id)
                .where(grid_runs_table.c.grid_id == grid_id, claimable(now))
                .order_by(grid_runs_table.c.position)
                .limit(1)
                .with_for_update(of=s, skip_locked=True)
            ).first()
            if row is None:
                return None
            took_over = row.state == "running"
            if took_over and row.lost + 1 >= max_attempts:
                conn.execute(
                    update(s)
                    .where(s.c.run_id == row.run_id, claimable(now))
                    .values(
                        state="failed",
                        lost=row.lost + 1,
                        ended=now,
                        token=None,
                        lease_until=None,
                        error=(
                            f"WorkerLost: the run was started {row.lost + 1} times and each "
                            f"time its worker stopped renewing the lease (the last on "
                            f"{row.host}, process {row.pid}); --retry-failed starts it again"
                        ),
                    )
                )
                return True  # look again
            claimed = conn.execute(
                update(s)
                .where(s.c.run_id == row.run_id, claimable(now))
                .values(
                    state="running",
                    host=host,
                    pid=pid,
                    token=token,
                    process=me,
                    claimed=now,
                    lease_until=now + lease,
                    ended=None,
                    attempts=s.c.attempts + 1,
                    lost=s.c.lost + (1 if took_over else 0),
                )
            )
            if claimed.rowcount != 1:
                return True
            return Claim(row.run_id, token, row.attempts + 1, took_over)

        while True:
            found = self.transaction(body, write=True)
            if found is not True:
                return found  # type: ignore[return-value]

    def reap(self, grid_id: str) -> int:
        """End at once the leases of the grid's runs held by processes of this machine (and
        pid namespace) that no longer exist, so that they are claimed again without waiting
        for their leases; return how many. Processes elsewhere are left to their leases."""
        me = process_key()
        if me is None:
            return 0
        s = states_table
        here = same_host(me)

        def body(conn: Connection) -> int:
            rows = conn.execute(
                select(s.c.run_id, s.c.token, s.c.process)
                .join(grid_runs_table, grid_runs_table.c.run_id == s.c.run_id)
                .where(
                    grid_runs_table.c.grid_id == grid_id,
                    s.c.state == "running",
                    s.c.process.startswith(here + "|", autoescape=True),
                )
            ).all()
            gone = [r for r in rows if process_key(int(r.process.split("|")[2])) != r.process]
            if not gone:
                return 0
            now = conn.scalar(select(self.now))
            for r in gone:
                conn.execute(
                    update(s)
                    .where(s.c.run_id == r.run_id, s.c.token == r.token, s.c.state == "running")
                    .values(lease_until=now)
                )
            return len(gone)

        return self.transaction(body, write=True)

    def renew(self, claim: Claim, lease: float = DEFAULT_LEASE) -> bool:
        """Extend the lease of a run this worker holds; False if the claim was lost (its
        lease expired and another worker claimed the run)."""
        return self._change_held(claim, lease_until=lambda now: now + lease)

    def finish(self, claim: Claim, result: dict[str, Any]) -> bool:
        """Store the result of a claimed run and mark it done, in one transaction, if this
        worker still holds the claim; False (nothing written) if another worker took it."""
        check(result["run_id"] == claim.run_id, "the result is not the claimed run's")
        s = states_table

        def body(conn: Connection) -> bool:
            now = conn.scalar(select(self.now))
            mine = and_(s.c.run_id == claim.run_id, s.c.token == claim.token)
            changed = conn.execute(
                update(s)
                .where(mine, s.c.state == "running")
                .values(state="done", ended=now, lease_until=None, error=None, lost=0)
            )
            if changed.rowcount != 1:  # a retry after a lost acknowledgement finds it done
                return conn.scalar(select(s.c.state).where(mine)) == "done"
            conn.execute(self.insert_ignore(runs_table), row_of(result))
            return True

        return self.transaction(body, write=True)

    def fail(self, claim: Claim, error: str) -> bool:
        """Mark a claimed run failed with its error text (kept until it succeeds); False if
        the claim had been lost."""
        return self._change_held(
            claim, state="failed", ended=lambda now: now, lease_until=None, error=error[-20000:]
        )

    def release(self, claim: Claim) -> None:
        """Give a claimed run back (pending again), e.g. when the worker is interrupted; the
        claim does not count as an attempt."""
        self._change_held(
            claim,
            retries=1,
            state="pending",
            token=None,
            lease_until=None,
            attempts=states_table.c.attempts - 1,
        )

    def _change_held(self, claim: Claim, retries: int = 4, **values: Any) -> bool:
        """Set ``values`` in the state row of a run this worker still holds (same token,
        running), a callable value taking the database's clock; whether it did."""
        s = states_table
        held = (s.c.run_id == claim.run_id, s.c.token == claim.token, s.c.state == "running")

        def body(conn: Connection) -> bool:
            row = dict(values)
            if any(callable(v) for v in row.values()):
                now = conn.scalar(select(self.now))
                row = {k: v(now) if callable(v) else v for k, v in row.items()}
            return conn.execute(update(s).where(*held).values(**row)).rowcount == 1

        return self.transaction(body, write=True, retries=retries)
