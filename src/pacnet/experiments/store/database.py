"""The database layer under the results store: which database a path or URL names, its
engine (SQLite or PostgreSQL through SQLAlchemy Core), transactions retried over lost
connections and lock time-outs, errors in one line that never show a password, and which
process holds what (a process's identity across machines).

:class:`Database` knows no table; :class:`~pacnet.experiments.store.store.Store` adds the
schema, the results, the claims and the status on top of it.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Table, create_engine, event, literal_column
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url

from pacnet.errors import PacnetError, check, first_line

CONNECT_TIMEOUT = 10
"""Seconds to wait for a PostgreSQL server before giving up (``?connect_timeout=`` wins)."""

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


def same_host(key: str) -> str:
    """The machine-and-namespace part of a :func:`process_key` (what tells whether a
    process runs on this machine and in this pid namespace)."""
    return "|".join(key.split("|")[:2])


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


def batched(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size`` (a SQL ``IN`` list each)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Database:
    """A SQLite file or a PostgreSQL database, reached through SQLAlchemy Core.

    ``target`` is a path or a URL (see :func:`database_url`). With ``create`` a SQLite
    file's folder is made; without it a missing file is an error. Any failure to open is a
    one-line :class:`PacnetError` that never shows a password.
    """

    def __init__(self, target: str | Path, *, create: bool = True):
        self.target = str(target)
        self.url = database_url(target)
        self.display = (
            str(self.url.database)
            if self.sqlite and "://" not in self.target
            else hide_password(self.target)
        )
        self.path = Path(self.url.database) if self.sqlite else None  # type: ignore[arg-type]
        self.hide = password_filter(self.url)
        """Replaces the database's password by *** in a text."""
        self.display = self.hide(self.display)
        self.version = 0
        """The schema version of what is open (0 until a schema says)."""
        self.engine = self._make_engine(create)
        self.now = (
            literal_column("CAST(extract(epoch from clock_timestamp()) AS double precision)")
            if self.postgres
            else literal_column("((julianday('now') - 2440587.5) * 86400.0)")
        )
        """The database server's clock, seconds since the epoch (a SQL expression)."""

    @property
    def sqlite(self) -> bool:
        """Whether this is a SQLite file (else a PostgreSQL database)."""
        return self.url.get_backend_name() == "sqlite"

    @property
    def postgres(self) -> bool:
        """Whether this is a PostgreSQL database."""
        return self.url.get_backend_name() == "postgresql"

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

    def close(self) -> None:
        """Close every connection of this database."""
        self.engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- transactions and errors ------------------------------------------------------------

    @contextmanager
    def connection(self, write: bool) -> Iterator[Connection]:
        """A connection inside one transaction (on SQLite ``BEGIN IMMEDIATE`` when it
        ``write`` s: one writer at a time)."""
        with self.engine.connect() as conn:
            if write:
                conn.execution_options(pacnet_write=True)
            with conn.begin():
                yield conn

    def transaction(self, body: Callable[[Connection], T], write: bool, retries: int = 4) -> T:
        """``body`` in one transaction; a lost connection, a lock time-out or a deadlock is
        retried ``retries`` times with growing pauses, then is one line."""
        for attempt in range(retries + 1):
            try:
                with self.connection(write) as conn:
                    return body(conn)
            except sa_exc.OperationalError as exc:
                if attempt == retries:
                    raise self.error(exc) from None
                time.sleep(min(0.5 * 2**attempt, 8.0) * random.uniform(0.5, 1.0))
            except sa_exc.DBAPIError as exc:
                raise self.error(exc) from None
        raise AssertionError("unreachable")

    def error(self, exc: sa_exc.DBAPIError) -> PacnetError:
        """A driver's error as one line naming the database (its password hidden)."""
        text = first_line(exc.orig) if exc.orig is not None else first_line(exc)
        text = self.hide(text)
        if self.sqlite and isinstance(exc, sa_exc.DatabaseError) and "not a database" in text:
            return PacnetError(f"{self.display}: not a usable results database ({text})")
        if "does not exist" in text and "database" in text:
            text += " (create it first, e.g. createdb)"
        verb = "cannot use" if self.version else "cannot open"
        return PacnetError(f"{verb} the results database {self.display}: {text}")

    def insert_ignore(self, table: Table) -> Any:
        """``INSERT`` into ``table`` that skips rows whose key is already there."""
        if self.postgres:
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(table).on_conflict_do_nothing()
