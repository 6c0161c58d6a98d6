"""The results store: finished runs, and the grids that workers on one or many machines share.

A store is one database (:mod:`pacnet.experiments.store.database`), reached through SQLAlchemy
Core with one schema (:mod:`pacnet.experiments.store.schema`) and one code path: a SQLite file
(the default, ``runs/pacnet.sqlite``; a plain path or ``sqlite:///FILE``) or a PostgreSQL
server (``postgresql://USER@HOST/DB``, driver: ``pip install 'pacnet[postgres]'``) that the
workers of many machines share. :class:`Store` is that one
:class:`~pacnet.experiments.store.database.Database`; it holds the finished runs itself and
takes the claims on a grid's runs from :class:`~pacnet.experiments.store.claims.Claims` and
what the grids are doing from :class:`~pacnet.experiments.store.status.StatusQueries`, two
sets of queries that run on it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, select, update

from pacnet.experiments.store.claims import Claims
from pacnet.experiments.store.database import Database, hide_password
from pacnet.experiments.store.schema import has_grids, open_schema, row_of, runs_table, states_table
from pacnet.experiments.store.status import StatusQueries

DEFAULT_DB = Path("runs/pacnet.sqlite")


class Store(Claims, StatusQueries, Database):
    """Results of finished runs, and shared grids, in a SQLite file or a PostgreSQL database.

    ``target`` is a path or a URL (see :func:`~pacnet.experiments.store.database.database_url`).
    With ``create`` (the default) the file or the tables are created, and a schema-1
    database gains the grid tables; without it a missing database is an error and nothing
    is written. Any failure to open is a one-line :class:`PacnetError` that never shows a
    password.
    """

    def __init__(self, target: str | Path = DEFAULT_DB, *, create: bool = True):
        super().__init__(target, create=create)
        try:
            self.version = open_schema(self, create)
        except BaseException:
            self.engine.dispose()
            raise

    # -- finished runs -------------------------------------------------------------------

    def ids(self) -> set[str]:
        """Run ids already stored."""
        return self.transaction(lambda c: set(c.scalars(select(runs_table.c.run_id))), write=False)

    def add(self, result: dict[str, Any]) -> bool:
        """Store a finished run (one transaction); False if its id was already there."""

        def body(conn: Connection) -> bool:
            insert = self.insert_ignore(runs_table).returning(runs_table.c.run_id)
            added = conn.execute(insert, row_of(result)).first() is not None
            if has_grids(self):
                conn.execute(
                    update(states_table)
                    .where(
                        states_table.c.run_id == result["run_id"],
                        states_table.c.state.in_(("pending", "failed")),
                    )
                    .values(state="done", error=None)
                )
            return added

        return self.transaction(body, write=True)

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
        rows = [json.loads(r) for r in self.transaction(lambda c: c.scalars(query).all(), False)]
        if ids is not None:
            wanted = set(ids)
            rows = [r for r in rows if r["run_id"] in wanted]
        return rows


__all__ = ["DEFAULT_DB", "Store", "hide_password"]
