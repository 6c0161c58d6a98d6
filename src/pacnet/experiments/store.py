"""The results store: finished runs, and the grids that workers on one or many machines share.

A store is one database, reached through SQLAlchemy Core with one schema and one code path:
a SQLite file (the default, ``runs/pacnet.sqlite``; a plain path or ``sqlite:///FILE``) or a
PostgreSQL server (``postgresql://USER@HOST/DB``, driver: ``pip install 'pacnet[postgres]'``)
that the workers of many machines share.

Tables:

* ``runs``: one row per finished run holding its whole result.json, written in one
  transaction when the run ends, so an interrupted sweep leaves a complete row or none;
* ``grids`` and ``grid_runs``: the grids registered by ``pacnet reproduce`` (a grid's id is
  the hash of its run ids, so every worker that plans the same grid registers the same one,
  idempotently) and the runs in each, in plan order;
* ``run_states``: per run, ``pending``, ``running`` (a *claim*: host, process, token and a
  lease that the worker renews while the run works), ``done`` or ``failed`` (with the
  error text), and how many times it was started.

A worker :meth:`Store.claim` s a pending run atomically — on PostgreSQL a row lock taken
with ``FOR UPDATE SKIP LOCKED``, on SQLite a ``BEGIN IMMEDIATE`` transaction (one writer at
a time), and on both a conditional update that only succeeds on a run still claimable — so
two workers never hold the same run. A run whose lease expired (its worker died or lost the
database) is claimed again by the next worker that asks; :meth:`Store.finish` stores the
result only while the caller still holds the claim (same token), in the same transaction
that marks the run done, so a finished run is stored exactly once. Lease times come from
the database server's clock, so machines whose clocks differ agree on them.

The schema carries a version; a database written by a newer pacnet is refused rather than
misread, before anything is written. A database of schema 1 (results only) is read as it
is and gains the grid tables the first time it is opened for writing.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    and_,
    create_engine,
    event,
    func,
    inspect,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url

from pacnet.config import config_hash
from pacnet.errors import PacnetError, check, first_line

SCHEMA_VERSION = 2
"""1: results only; 2: adds grids, grid_runs and run_states (claims, leases, failures)."""
DEFAULT_DB = Path("runs/pacnet.sqlite")
DEFAULT_LEASE = 60.0
"""Seconds a claim lasts unless renewed; a worker renews it every third of that."""
DEFAULT_MAX_ATTEMPTS = 3
"""Starts of a run whose worker then vanished (lease expired, no result) before it fails."""
CONNECT_TIMEOUT = 10
"""Seconds to wait for a PostgreSQL server before giving up (``?connect_timeout=`` wins)."""

_metadata = MetaData()
meta_table = Table(
    "meta",
    _metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
)
runs_table = Table(
    "runs",
    _metadata,
    Column("run_id", Text, primary_key=True),
    Column("benchmark", Text, nullable=False),
    Column("method", Text, nullable=False),
    Column("seed", Integer, nullable=False),
    Column("target_size", Integer, nullable=False),
    Column("metric", Text, nullable=False),
    Column("target_test", Float, nullable=False),
    Column("source_test_before", Float, nullable=False),
    Column("source_test_after", Float, nullable=False),
    Column("seconds", Float, nullable=False),
    Column("finished", Text, nullable=False),
    Column("result", Text, nullable=False),
    Index("runs_by_benchmark", "benchmark", "method", "target_size"),
)
grids_table = Table(
    "grids",
    _metadata,
    Column("grid_id", Text, primary_key=True),
    Column("benchmark", Text, nullable=False),
    Column("label", Text, nullable=False),
    Column("size", Integer, nullable=False),
    Column("created", Float, nullable=False),
)
grid_runs_table = Table(
    "grid_runs",
    _metadata,
    Column("grid_id", Text, nullable=False),
    Column("run_id", Text, nullable=False),
    Column("position", Integer, nullable=False),
    PrimaryKeyConstraint("grid_id", "run_id"),
    Index("grid_runs_in_order", "grid_id", "position"),
)
states_table = Table(
    "run_states",
    _metadata,
    Column("run_id", Text, primary_key=True),
    Column("method", Text, nullable=False),
    Column("target_size", Integer, nullable=False),
    Column("seed", Integer, nullable=False),
    Column("state", Text, nullable=False),  # pending | running | done | failed
    Column("host", Text),  # the worker that holds (or last held) the run
    Column("pid", Integer),
    Column("token", Text),  # the claim's own id: only its holder may renew or finish it
    Column("process", Text),  # boot, pid namespace, pid and start time of the holder
    Column("claimed", Float),  # database clock, seconds since the epoch
    Column("lease_until", Float),
    Column("ended", Float),
    Column("attempts", Integer, nullable=False),  # times the run was started
    Column("lost", Integer, nullable=False),  # claims of it that expired since last reset
    Column("error", Text),  # the last failure's traceback
    Index("run_states_by_state", "state"),
)
_GRID_TABLES = ("grids", "grid_runs", "run_states")
_SCHEMA_LOCK = 7_311_602_529  # PostgreSQL advisory lock: one process changes the schema

T = TypeVar("T")


def process_key(pid: int | None = None) -> str | None:
    """What tells a process apart from every other on any machine, ever: the boot's id,
    the pid namespace, the pid and the process's start time (Linux; None elsewhere or if
    the process is gone). A killed process that its parent has not yet collected (a
    zombie) still counts as there."""
    pid = os.getpid() if pid is None else pid
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return f"{boot}|{namespace}|{pid}|{fields[19]}"


def _here(key: str) -> str:
    """The machine-and-namespace part of a :func:`process_key`."""
    return "|".join(key.split("|")[:2])


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
    """One run of a grid as :meth:`Store.status` reports it."""

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
            "created": _iso(self.created),
            "total": self.progress.total,
            "pending": self.progress.pending,
            "running": [
                {
                    "run_id": r.run_id,
                    "run": r.describe(),
                    "host": r.host,
                    "pid": r.pid,
                    "since": _iso(r.claimed) if r.claimed is not None else None,
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


def _iso(epoch: float) -> str:
    stamp = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return stamp.isoformat(timespec="seconds").replace("+00:00", "Z")


def hide_password(text: str) -> str:
    """``text`` with the password of any ``scheme://user:password@`` in it replaced by ***."""
    return re.sub(r"(://[^:/@\s]*:)[^/\s]*@", r"\1***@", text)


def password_filter(url: URL | str) -> Callable[[str], str]:
    """A function that replaces the password of ``url`` by *** wherever a text repeats it
    (a driver's error message, say); a password under 4 characters is left, as it would
    match by coincidence."""
    try:
        password = url.password if isinstance(url, URL) else make_url(url).password
    except Exception:  # not a URL SQLAlchemy reads: nothing to hide
        password = None
    if not isinstance(password, str) or len(password) < 4:
        return lambda text: text
    return lambda text: text.replace(password, "***")


def database_url(target: str | Path) -> URL:
    """The SQLAlchemy URL of a results database: a path (SQLite) or a URL.

    ``postgresql://`` and ``postgres://`` mean the psycopg (3) driver; ``sqlite:///FILE`` a
    file. Any other kind is refused with one line.
    """
    text = str(target)
    if isinstance(target, Path) or "://" not in text:
        check(text.strip(), "the results database path is empty")
        return URL.create("sqlite", database=text)
    try:
        url = make_url(text)
    except sa_exc.ArgumentError:
        raise PacnetError(f"{hide_password(text)}: not a database URL") from None
    if url.drivername in ("postgres", "postgresql"):
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise PacnetError(
            f"{hide_password(text)}: unknown kind of database {url.get_backend_name()!r}; "
            "use a file path, sqlite:///FILE or postgresql://USER@HOST[:PORT]/DATABASE"
        )
    if url.get_backend_name() == "sqlite":
        check(
            url.database not in (None, "", ":memory:"),
            f"{text}: a results database must be a file (sqlite:///FILE), not in memory",
        )
    return url


def grid_id(run_ids: Iterable[str]) -> str:
    """The id of the grid of these runs: the hash of their sorted ids."""
    return config_hash(sorted(set(run_ids)))


class Store:
    """Results of finished runs, and shared grids, in a SQLite file or a PostgreSQL database.

    ``target`` is a path or a URL (see :func:`database_url`). With ``create`` (the default)
    the file or the tables are created, and a schema-1 database gains the grid tables;
    without it a missing database is an error and nothing is written. Any failure to
    open is a one-line :class:`PacnetError` that never shows a password.
    """

    def __init__(self, target: str | Path = DEFAULT_DB, *, create: bool = True):
        self.target = str(target)
        self.url = database_url(target)
        self.display = (
            str(self.url.database)
            if self.sqlite and "://" not in self.target
            else hide_password(self.target)
        )
        self.path = Path(self.url.database) if self.sqlite else None  # type: ignore[arg-type]
        self._hide = password_filter(self.url)
        self.display = self._hide(self.display)
        self.version = 0
        self._engine = self._make_engine(create)
        try:
            self._open(create)
        except BaseException:
            self._engine.dispose()
            raise

    # -- opening --------------------------------------------------------------------------

    @property
    def sqlite(self) -> bool:
        """Whether this store is a SQLite file (else a PostgreSQL database)."""
        return self.url.get_backend_name() == "sqlite"

    def _make_engine(self, create: bool) -> Engine:
        if self.sqlite:
            assert self.path is not None
            if not create and not self.path.is_file():
                raise PacnetError(
                    f"{self.display}: no results database (run pacnet reproduce first, or --db)"
                )
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise PacnetError(f"{self.display}: cannot open ({exc.strerror})") from None
            engine = create_engine(self.url, connect_args={"timeout": 60})

            @event.listens_for(engine, "connect")
            def _no_implicit_begin(dbapi_connection: Any, _record: Any) -> None:
                dbapi_connection.isolation_level = None  # we say BEGIN ourselves

            @event.listens_for(engine, "begin")
            def _begin(conn: Connection) -> None:
                writes = conn.get_execution_options().get("pacnet_write", False)
                conn.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")

            return engine
        args: dict[str, Any] = {"application_name": "pacnet"}
        if "connect_timeout" not in self.url.query:
            args["connect_timeout"] = CONNECT_TIMEOUT
        try:
            return create_engine(self.url, pool_pre_ping=True, connect_args=args)
        except ImportError:
            raise PacnetError(
                "a PostgreSQL results database needs the psycopg driver: "
                "pip install 'pacnet[postgres]'"
            ) from None

    def _open(self, create: bool) -> None:
        def opening(conn: Connection) -> None:
            if self.postgres and create:
                conn.execute(select(func.pg_advisory_xact_lock(_SCHEMA_LOCK)))
            tables = set(inspect(conn).get_table_names())
            version = None
            if "meta" in tables:
                value = conn.scalar(select(meta_table.c.value).where(meta_table.c.key == "schema"))
                version = None if value is None else int(value)
            if version is not None and version > SCHEMA_VERSION:
                raise PacnetError(
                    f"{self.display}: results schema version {version} is newer than this "
                    f"pacnet reads ({SCHEMA_VERSION}); upgrade pacnet"
                )
            if not create:
                check(
                    version is not None and "runs" in tables,
                    f"{self.display}: no results database (run pacnet reproduce first, or --db)",
                )
                self.version = version or 0
                return
            _metadata.create_all(conn, checkfirst=True)
            if version is None:
                conn.execute(meta_table.insert().values(key="schema", value=str(SCHEMA_VERSION)))
            elif version < SCHEMA_VERSION:
                conn.execute(
                    update(meta_table)
                    .where(meta_table.c.key == "schema")
                    .values(value=str(SCHEMA_VERSION))
                )
            self.version = SCHEMA_VERSION

        self._transaction(opening, write=create, retries=0)
        if create and self.sqlite:  # readers never wait for the writer (outside a transaction)
            with self._engine.connect() as conn:
                conn.connection.driver_connection.execute("PRAGMA journal_mode=WAL")
        self._now = (
            literal_column("CAST(extract(epoch from clock_timestamp()) AS double precision)")
            if self.postgres
            else literal_column("((julianday('now') - 2440587.5) * 86400.0)")
        )

    @property
    def postgres(self) -> bool:
        """Whether this store is a PostgreSQL database."""
        return self.url.get_backend_name() == "postgresql"

    def close(self) -> None:
        """Close every connection of this store."""
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- transactions and errors ------------------------------------------------------------

    @contextmanager
    def _connection(self, write: bool) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            if write:
                conn.execution_options(pacnet_write=True)
            with conn.begin():
                yield conn

    def _transaction(self, body: Callable[[Connection], T], write: bool, retries: int = 4) -> T:
        """``body`` in one transaction; a lost connection, a lock time-out or a deadlock is
        retried ``retries`` times with growing pauses, then is one line."""
        for attempt in range(retries + 1):
            try:
                with self._connection(write) as conn:
                    return body(conn)
            except sa_exc.OperationalError as exc:
                if attempt == retries:
                    raise self._error(exc) from None
                time.sleep(min(0.5 * 2**attempt, 8.0) * random.uniform(0.5, 1.0))
            except sa_exc.DBAPIError as exc:
                raise self._error(exc) from None
        raise AssertionError("unreachable")

    def _error(self, exc: sa_exc.DBAPIError) -> PacnetError:
        text = first_line(exc.orig) if exc.orig is not None else first_line(exc)
        text = self._hide(text)
        if self.sqlite and isinstance(exc, sa_exc.DatabaseError) and "not a database" in text:
            return PacnetError(f"{self.display}: not a usable results database ({text})")
        if "does not exist" in text and "database" in text:
            text += " (create it first, e.g. createdb)"
        verb = "cannot use" if self.version else "cannot open"
        return PacnetError(f"{verb} the results database {self.display}: {text}")

    def _insert_ignore(self, table: Table) -> Any:
        if self.postgres:
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(table).on_conflict_do_nothing()

    def _has_grids(self) -> bool:
        return self.version >= 2

    # -- finished runs -------------------------------------------------------------------

    def ids(self) -> set[str]:
        """Run ids already stored."""
        return self._transaction(lambda c: set(c.scalars(select(runs_table.c.run_id))), write=False)

    def add(self, result: dict[str, Any]) -> bool:
        """Store a finished run (one transaction); False if its id was already there."""

        def body(conn: Connection) -> bool:
            insert = self._insert_ignore(runs_table).returning(runs_table.c.run_id)
            added = conn.execute(insert, _row(result)).first() is not None
            if self._has_grids():
                conn.execute(
                    update(states_table)
                    .where(
                        states_table.c.run_id == result["run_id"],
                        states_table.c.state.in_(("pending", "failed")),
                    )
                    .values(state="done", error=None)
                )
            return added

        return self._transaction(body, write=True)

    def results(self, benchmark: str | None = None, ids: Iterable[str] | None = None) -> list[dict]:
        """Stored results (whole result.json), optionally of one benchmark or some run ids."""
        query = select(runs_table.c.result)
        if benchmark is not None:
            query = query.where(runs_table.c.benchmark == benchmark)
        query = query.order_by(
            runs_table.c.benchmark,
            runs_table.c.method,
            runs_table.c.target_size,
            runs_table.c.seed,
            runs_table.c.run_id,
        )
        rows = [json.loads(r) for r in self._transaction(lambda c: c.scalars(query).all(), False)]
        if ids is not None:
            wanted = set(ids)
            rows = [r for r in rows if r["run_id"] in wanted]
        return rows

    # -- grids and claims ------------------------------------------------------------------

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
        check(self._has_grids(), f"{self.display}: opened read-only")
        order = list(dict.fromkeys(r.run_id for r in runs))
        check(order, "a grid needs at least one run")
        grid = grid_id(order)
        by_id = {r.run_id: r for r in runs}

        def body(conn: Connection) -> str:
            now = conn.scalar(select(self._now))
            conn.execute(
                self._insert_ignore(grids_table),
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
            for chunk in _chunks(sorted(order), 500):
                done.update(
                    conn.scalars(select(runs_table.c.run_id).where(runs_table.c.run_id.in_(chunk)))
                )
            position = {run_id: i for i, run_id in enumerate(order)}
            members = [
                {"grid_id": grid, "run_id": r, "position": position[r]} for r in sorted(order)
            ]
            conn.execute(self._insert_ignore(grid_runs_table), members)
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
            conn.execute(self._insert_ignore(states_table), states)
            in_grid = select(grid_runs_table.c.run_id).where(grid_runs_table.c.grid_id == grid)
            for chunk in _chunks(sorted(done), 500):  # stored by other means meanwhile
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

        return self._transaction(body, write=True)

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
            now = conn.scalar(select(self._now))
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
            found = self._transaction(body, write=True)
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
        here = _here(me)

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
            now = conn.scalar(select(self._now))
            for r in gone:
                conn.execute(
                    update(s)
                    .where(s.c.run_id == r.run_id, s.c.token == r.token, s.c.state == "running")
                    .values(lease_until=now)
                )
            return len(gone)

        return self._transaction(body, write=True)

    def renew(self, claim: Claim, lease: float = DEFAULT_LEASE) -> bool:
        """Extend the lease of a run this worker holds; False if the claim was lost (its
        lease expired and another worker claimed the run)."""
        s = states_table

        def body(conn: Connection) -> bool:
            now = conn.scalar(select(self._now))
            changed = conn.execute(
                update(s)
                .where(s.c.run_id == claim.run_id, s.c.token == claim.token, s.c.state == "running")
                .values(lease_until=now + lease)
            )
            return changed.rowcount == 1

        return self._transaction(body, write=True)

    def finish(self, claim: Claim, result: dict[str, Any]) -> bool:
        """Store the result of a claimed run and mark it done, in one transaction, if this
        worker still holds the claim; False (nothing written) if another worker took it."""
        check(result["run_id"] == claim.run_id, "the result is not the claimed run's")
        s = states_table

        def body(conn: Connection) -> bool:
            now = conn.scalar(select(self._now))
            mine = and_(s.c.run_id == claim.run_id, s.c.token == claim.token)
            changed = conn.execute(
                update(s)
                .where(mine, s.c.state == "running")
                .values(state="done", ended=now, lease_until=None, error=None, lost=0)
            )
            if changed.rowcount != 1:  # a retry after a lost acknowledgement finds it done
                return conn.scalar(select(s.c.state).where(mine)) == "done"
            conn.execute(self._insert_ignore(runs_table), _row(result))
            return True

        return self._transaction(body, write=True)

    def fail(self, claim: Claim, error: str) -> bool:
        """Mark a claimed run failed with its error text (kept until it succeeds); False if
        the claim had been lost."""
        s = states_table

        def body(conn: Connection) -> bool:
            now = conn.scalar(select(self._now))
            changed = conn.execute(
                update(s)
                .where(s.c.run_id == claim.run_id, s.c.token == claim.token, s.c.state == "running")
                .values(state="failed", ended=now, lease_until=None, error=error[-20000:])
            )
            return changed.rowcount == 1

        return self._transaction(body, write=True)

    def release(self, claim: Claim) -> None:
        """Give a claimed run back (pending again), e.g. when the worker is interrupted."""
        s = states_table

        def body(conn: Connection) -> None:
            conn.execute(
                update(s)
                .where(s.c.run_id == claim.run_id, s.c.token == claim.token, s.c.state == "running")
                .values(state="pending", token=None, lease_until=None)
            )

        self._transaction(body, write=True, retries=1)

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

        return self._transaction(body, write=False)

    def next_expiry(self, grid_id: str) -> float | None:
        """Seconds until the first lease of the grid's running runs ends (None: none runs)."""
        s = states_table

        def body(conn: Connection) -> float | None:
            row = conn.execute(
                select(func.min(s.c.lease_until), self._now)
                .select_from(grid_runs_table)
                .join(s, s.c.run_id == grid_runs_table.c.run_id)
                .where(grid_runs_table.c.grid_id == grid_id, s.c.state == "running")
            ).first()
            if row is None or row[0] is None:
                return None
            return max(float(row[0]) - float(row[1]), 0.0)

        return self._transaction(body, write=False)

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

        return self._transaction(body, write=False)

    def state(self, run_id: str) -> RunState | None:
        """The state row of one run (None if no grid has it)."""
        found = self._states(states_table.c.run_id == run_id)
        return found[0][1] if found else None

    def _states(self, where: Any) -> list[tuple[str | None, RunState]]:
        s = states_table

        def body(conn: Connection) -> list[tuple[str | None, RunState]]:
            now = conn.scalar(select(self._now))
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

        return self._transaction(body, write=False)

    def status(self, grid: str | None = None) -> list[GridStatus]:
        """Every registered grid (or those whose id starts with ``grid``), newest first: its
        runs by state, who runs what since when, and the estimated time left."""
        if not self._has_grids():
            return []
        g = grids_table
        query = select(g.c.grid_id, g.c.benchmark, g.c.label, g.c.created).order_by(
            g.c.created.desc()
        )
        if grid:
            query = query.where(g.c.grid_id.startswith(grid, autoescape=True))

        def body(conn: Connection) -> tuple[float, list[Any]]:
            return conn.scalar(select(self._now)), conn.execute(query).all()

        now, grids = self._transaction(body, write=False)
        out = []
        for row in grids:
            states = [st for _, st in self._states(grid_runs_table.c.grid_id == row.grid_id)]
            out.append(_grid_status(row, states, now))
        return out


def _grid_status(row: Any, states: list[RunState], now: float) -> GridStatus:
    """Counts, running and failed runs, and the time left: each open run is expected to
    take its method's mean finished duration (the grid's mean for a method not yet seen),
    a running one less what it has already run, spread over the processes now working."""
    progress = Progress(total=len(states))
    for st in states:
        setattr(progress, st.state, getattr(progress, st.state) + 1)
    status = GridStatus(row.grid_id, row.benchmark, row.label, row.created, now, progress, states)
    status.running = [st for st in states if st.state == "running"]
    status.failed = [st for st in states if st.state == "failed"]
    finished = [st for st in states if st.seconds is not None]
    status.finished_runs = len(finished)
    status.workers = len({(st.host, st.pid) for st in status.running if (st.lease_left or 0) > 0})
    if finished:
        status.mean_seconds = sum(st.seconds or 0.0 for st in finished) / len(finished)
        by_method: dict[str, list[float]] = {}
        for st in finished:
            by_method.setdefault(st.method, []).append(st.seconds or 0.0)
        mean = {m: sum(v) / len(v) for m, v in by_method.items()}
        left = 0.0
        for st in states:
            expected = mean.get(st.method, status.mean_seconds)
            if st.state == "pending":
                left += expected
            elif st.state == "running":
                left += max(expected - (now - (st.claimed or now)), 0.0)
        status.eta_seconds = left / max(status.workers, 1)
    return status


def _row(result: dict[str, Any]) -> dict[str, Any]:
    return {
        "run_id": result["run_id"],
        "benchmark": result["benchmark"],
        "method": result["method"],
        "seed": result["seed"],
        "target_size": result["target_size"],
        "metric": result["metric"],
        "target_test": result["target_test"],
        "source_test_before": result["source_test_before"],
        "source_test_after": result["source_test_after"],
        "seconds": result["seconds"],
        "finished": result["finished"],
        "result": json.dumps(result),
    }


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
