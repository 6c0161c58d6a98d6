"""The results database's tables, its schema version, and opening (creating or upgrading) it.

Tables:

* ``runs``: one row per finished run holding its whole result.json, written in one
  transaction when the run ends, so an interrupted sweep leaves a complete row or none;
* ``grids`` and ``grid_runs``: the grids registered by ``pacnet reproduce`` (a grid's id is
  the hash of its run ids, so every worker that plans the same grid registers the same one,
  idempotently) and the runs in each, in plan order;
* ``run_states``: per run, ``pending``, ``running`` (a *claim*: host, process, token and a
  lease that the worker renews while the run works), ``done`` or ``failed`` (with the
  error text), and how many times it was started.

The schema carries a version; a database written by a newer pacnet is refused rather than
misread, before anything is written. A database of schema 1 (results only) is read as it
is and gains the grid tables the first time it is opened for writing.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    func,
    inspect,
    select,
    update,
)

from pacnet.errors import PacnetError, check
from pacnet.experiments.store.database import Database

SCHEMA_VERSION = 2
"""1: results only; 2: adds grids, grid_runs and run_states (claims, leases, failures)."""

metadata = MetaData()
meta_table = Table(
    "meta",
    metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
)
runs_table = Table(
    "runs",
    metadata,
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
    metadata,
    Column("grid_id", Text, primary_key=True),
    Column("benchmark", Text, nullable=False),
    Column("label", Text, nullable=False),
    Column("size", Integer, nullable=False),
    Column("created", Float, nullable=False),
)
grid_runs_table = Table(
    "grid_runs",
    metadata,
    Column("grid_id", Text, nullable=False),
    Column("run_id", Text, nullable=False),
    Column("position", Integer, nullable=False),
    PrimaryKeyConstraint("grid_id", "run_id"),
    Index("grid_runs_in_order", "grid_id", "position"),
)
states_table = Table(
    "run_states",
    metadata,
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
SCHEMA_LOCK = 7_311_602_529  # PostgreSQL advisory lock: one process changes the schema


def open_schema(db: Database, create: bool) -> int:
    """Check (and with ``create``: create or upgrade) the schema of ``db``; returns the
    version that is open (also set as ``db.version``). A newer schema is refused, and
    without ``create`` a database without one."""

    def opening(conn: Connection) -> None:
        if db.postgres and create:
            conn.execute(select(func.pg_advisory_xact_lock(SCHEMA_LOCK)))
        tables = set(inspect(conn).get_table_names())
        version = None
        if "meta" in tables:
            value = conn.scalar(select(meta_table.c.value).where(meta_table.c.key == "schema"))
            version = None if value is None else int(value)
        if version is not None and version > SCHEMA_VERSION:
            raise PacnetError(
                f"{db.display}: results schema version {version} is newer than this "
                f"pacnet reads ({SCHEMA_VERSION}); upgrade pacnet"
            )
        if not create:
            check(
                version is not None and "runs" in tables,
                f"{db.display}: no results database (run pacnet reproduce first, or --db)",
            )
            db.version = version or 0
            return
        metadata.create_all(conn, checkfirst=True)
        if version is None:
            conn.execute(meta_table.insert().values(key="schema", value=str(SCHEMA_VERSION)))
        elif version < SCHEMA_VERSION:
            conn.execute(
                update(meta_table)
                .where(meta_table.c.key == "schema")
                .values(value=str(SCHEMA_VERSION))
            )
        db.version = SCHEMA_VERSION

    db.transaction(opening, write=create, retries=0)
    if create and db.sqlite:  # readers never wait for the writer (outside a transaction)
        with db.engine.connect() as conn:
            conn.connection.driver_connection.execute("PRAGMA journal_mode=WAL")
    return db.version


def has_grids(db: Database) -> bool:
    """Whether the schema open in ``db`` holds grids and claims (version 2 on)."""
    return db.version >= 2


def row_of(result: dict[str, Any]) -> dict[str, Any]:
    """The ``runs`` row of a finished run's result."""
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
