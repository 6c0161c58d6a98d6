"""The results store on both engines (a SQLite file, a real PostgreSQL server): claims are
exclusive, leases expire and are taken over, a finished run is stored exactly once, failures
keep their text, schemas migrate forward and newer ones are refused, bad URLs are one line."""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
from types import SimpleNamespace

import pytest
from conftest import HANG_GUARD

from pacnet import PacnetError
from pacnet.experiments.store.claims import GridRun
from pacnet.experiments.store.database import database_url, hide_password
from pacnet.experiments.store.schema import SCHEMA_VERSION
from pacnet.experiments.store.status import RunState, grid_status, grid_text
from pacnet.experiments.store.store import Store


def grid(prefix: str, n: int) -> list[GridRun]:
    return [GridRun(f"{prefix}{i:02d}", "finetune", 10, i) for i in range(n)]


def result(run_id: str, seconds: float = 1.0) -> dict:
    return {
        "run_id": run_id,
        "benchmark": "friedman",
        "method": "finetune",
        "seed": 0,
        "target_size": 10,
        "metric": "rmse",
        "target_test": 1.0,
        "source_test_before": 1.0,
        "source_test_after": 1.0,
        "seconds": seconds,
        "finished": "2026-01-01T00:00:00+00:00",
    }


def test_claims_are_exclusive_in_plan_order_and_the_grid_is_registered_once(db_url):
    runs = grid("r", 3)
    with Store(db_url) as store:
        g = store.register(runs, "friedman", "three runs")
        assert store.register(list(reversed(runs)), "friedman", "again") == g  # idempotent
        claims = [store.claim(g, lease=30) for _ in range(3)]
        assert [c.run_id for c in claims] == ["r00", "r01", "r02"]
        assert store.claim(g, lease=30) is None
        p = store.progress(g)
        assert (p.total, p.running, p.pending, p.done) == (3, 3, 0, 0)
        assert all(store.finish(c, result(c.run_id)) for c in claims)
        assert store.progress(g).done == 3 and len(store.ids()) == 3
        assert [s.label for s in store.status()] == ["three runs"]


def test_two_workers_racing_for_the_last_pending_run_exactly_one_gets_it(db_url):
    with Store(db_url) as setup:
        grids = [setup.register(grid(f"race{k}-", 1), "friedman", f"race {k}") for k in range(15)]
    stores = [Store(db_url), Store(db_url)]  # two clients, each with its own connections
    won: list[list[str]] = [[], []]
    barrier = threading.Barrier(2)

    def worker(i: int) -> None:
        for g in grids:
            barrier.wait()
            claim = stores[i].claim(g, lease=30, pid=1000 + i)
            if claim is not None:
                won[i].append(g)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=HANG_GUARD)
    for s in stores:
        s.close()
    assert sorted(won[0] + won[1]) == sorted(grids)  # every run claimed by exactly one
    assert not set(won[0]) & set(won[1])


def test_an_expired_lease_is_taken_over_and_the_late_finisher_stores_nothing(db_url):
    with Store(db_url) as store:
        g = store.register(grid("x", 1), "friedman", "one run")
        first = store.claim(g, lease=600, host="a", pid=1)
        assert store.claim(g, lease=1.0, host="b", pid=2) is None  # held
        assert store.renew(first, lease=0.5)  # now short: it lapses while this test sleeps
        time.sleep(0.8)
        second = store.claim(g, lease=30, host="b", pid=2)
        assert second is not None and second.took_over and second.attempt == 2
        assert not store.renew(first)  # the first worker learns it lost the run
        assert not store.finish(first, result("x00", seconds=7.0))  # the late finisher
        assert store.ids() == set()  # ... wrote nothing
        assert not store.fail(first, "boom")
        state = store.state("x00")
        assert (state.state, state.host, state.pid, state.attempts) == ("running", "b", 2, 2)
        assert store.finish(second, result("x00", seconds=3.0))
        assert store.finish(second, result("x00", seconds=3.0))  # a retried finish: no-op
        assert [r["seconds"] for r in store.results()] == [3.0]
        assert store.progress(g).done == 1


def test_a_lapsed_lease_not_taken_over_still_lets_its_holder_finish(db_url):
    with Store(db_url) as store:
        g = store.register(grid("y", 1), "friedman", "one run")
        claim = store.claim(g, lease=0.5)
        time.sleep(0.8)
        assert store.finish(claim, result("y00"))
        assert len(store.results()) == 1 and store.claim(g) is None


def test_failed_runs_keep_their_error_and_run_again_only_when_asked(db_url):
    with Store(db_url) as store:
        runs = grid("f", 2)
        g = store.register(runs, "friedman", "two runs")
        bad = store.claim(g, lease=30)
        assert store.fail(bad, "Traceback (most recent call last):\nValueError: boom")
        good = store.claim(g, lease=30)
        assert good.run_id == "f01" and store.claim(g) is None
        store.finish(good, result("f01"))
        p = store.progress(g)
        assert (p.done, p.failed, p.open) == (1, 1, 0)
        [status] = store.status(g)
        [failed] = status.failed
        assert failed.error.endswith("ValueError: boom") and failed.attempts == 1
        assert store.register(runs, "friedman", "two runs") == g
        assert store.claim(g) is None  # not retried on its own
        store.register(runs, "friedman", "two runs", retry_failed=True)
        again = store.claim(g, lease=30)
        assert (again.run_id, again.attempt) == ("f00", 2)
        assert store.finish(again, result("f00"))
        assert store.state("f00").error is None and store.progress(g).failed == 0


def test_a_run_whose_workers_keep_vanishing_fails_after_max_attempts(db_url):
    with Store(db_url) as store:
        g = store.register(grid("v", 1), "friedman", "one run")
        assert store.claim(g, lease=0.3, max_attempts=2, host="h", pid=11) is not None
        time.sleep(0.5)
        assert store.claim(g, lease=0.3, max_attempts=2, host="h", pid=12).attempt == 2
        time.sleep(0.5)
        assert store.claim(g, lease=0.3, max_attempts=2) is None  # failed instead
        state = store.state("v00")
        assert state.state == "failed" and "WorkerLost" in state.error
        assert "process 12" in state.error and "--retry-failed" in state.error
        assert store.progress(g).open == 0


def test_a_run_stored_by_other_means_is_done_and_stored_once(db_url):
    with Store(db_url) as store:
        g = store.register(grid("o", 2), "friedman", "two runs")
        claim = store.claim(g, lease=30)
        assert store.add(result("o00"))
        assert not store.add(result("o00"))
        assert store.finish(claim, result("o00", seconds=9.0))
        assert [r["seconds"] for r in store.results()] == [1.0]
        assert store.add(result("o01"))  # a pending run stored directly counts as done
        assert store.progress(g).done == 2 and store.claim(g) is None


def test_status_estimates_the_time_left_from_finished_runs(db_url):
    with Store(db_url) as store:
        g = store.register(grid("e", 4), "friedman", "four runs")
        for _ in range(2):
            c = store.claim(g, lease=30, host="h", pid=1)
            store.finish(c, result(c.run_id, seconds=10.0))
        store.claim(g, lease=30, host="h", pid=2)
        [status] = store.status(g[:6])
        assert status.progress.done == 2 and status.workers == 1
        assert status.mean_seconds == 10.0
        [running] = status.running
        ran = status.now - running.claimed  # one pending (10 s) + what the running one has left
        assert status.eta_seconds == pytest.approx(20.0 - ran)
        assert (running.host, running.pid) == ("h", 2) and 0 < running.lease_left <= 30


def _state(n: int, method="finetune", size=10, state="pending", seconds=None, **held):
    """A run's state row as status reads it; ``held``: host, pid, claimed, lease_left."""
    return RunState(
        run_id=f"{method}{size}-{n}", method=method, target_size=size, seed=n, state=state,
        host=held.get("host"), pid=held.get("pid"), claimed=held.get("claimed"),
        lease_left=held.get("lease_left"), attempts=1 if held else 0, error=None,
        seconds=seconds,
    )  # fmt: skip


def _eta(states, now=1000.0):
    row = SimpleNamespace(grid_id="g", benchmark="friedman", label="constructed", created=0.0)
    return grid_status(row, states, now)


def _held(state: int, pid: int, since: float, **kwargs):
    return _state(state, state="running", host="h", pid=pid, claimed=since, lease_left=50, **kwargs)


def test_the_time_left_counts_a_batched_group_in_flight_as_its_runs_together():
    """The batched engine records each run's share of its group's time (2 s of a 32 s group
    of 16) and holds the whole group while it trains: 10 s into the second group, 22 s of it
    are left, then 32 s for the third."""
    done = [_state(i, state="done", seconds=2.0) for i in range(16)]
    flying = [_held(16 + i, pid=7, since=990.0) for i in range(16)]
    pending = [_state(32 + i) for i in range(16)]
    status = _eta([*done, *flying, *pending])
    assert status.workers == 1 and status.eta_seconds == pytest.approx(22.0 + 32.0)


def test_the_time_left_expects_each_target_size_to_take_what_it_took():
    """The small runs finish first; the large ones left take what the large ones took."""
    done = [_state(i, size=10, state="done", seconds=1.0) for i in range(6)]
    done += [_state(i, size=200, state="done", seconds=9.0) for i in range(2)]
    pending = [_state(10 + i, size=200) for i in range(4)]
    pending.append(_state(20, method="pacnet", size=200))  # no pacnet run yet: all runs' mean
    assert _eta([*done, *pending]).eta_seconds == pytest.approx(4 * 9.0 + 3.0)


def test_the_time_left_is_shared_by_the_workers_but_not_below_the_longest_of_them():
    done = [_state(i, state="done", seconds=10.0) for i in range(4)]
    two = [_held(4, pid=1, since=996.0), _held(5, pid=2, since=996.0)]  # 6 s left each
    pending = [_state(6 + i) for i in range(4)]
    status = _eta([*done, *two, *pending])
    assert status.workers == 2 and status.eta_seconds == pytest.approx((40 + 12) / 2)
    group = [_held(10 + i, pid=3, since=1000.0) for i in range(8)]  # 80 s for one worker
    status = _eta([*done, _held(4, pid=1, since=996.0), *group])
    assert status.eta_seconds == pytest.approx(80.0)  # not (80 + 6) / 2


def test_a_run_whose_worker_is_gone_is_expected_to_start_over():
    done = [_state(i, state="done", seconds=10.0) for i in range(2)]
    lapsed = _state(2, state="running", host="h", pid=9, claimed=995.0, lease_left=-3.0)
    status = _eta([*done, lapsed, _state(3)])
    assert status.workers == 0 and status.eta_seconds == pytest.approx(20.0)  # one process
    assert _eta([_state(0), _state(1)]).eta_seconds is None  # nothing finished: unknown


def test_a_run_given_back_does_not_count_as_an_attempt(db_url):
    with Store(db_url) as store:
        g = store.register(grid("b", 2), "friedman", "two runs")
        first = store.claim(g, lease=30)
        store.release(first)  # Ctrl-C, or a run that does not stack with a group
        assert store.state(first.run_id).attempts == 0
        again = store.claim(g, lease=30)
        assert (again.run_id, again.attempt) == (first.run_id, 1)
        [running] = [line for line in grid_text(store.status(g)[0]) if "  running " in line]
        assert "seed 0" in running and "attempt" not in running  # its first attempt
        assert store.finish(again, result(again.run_id))
        assert store.state(first.run_id).attempts == 1


def test_a_schema_1_database_is_read_as_is_and_migrated_when_written(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE runs (run_id TEXT PRIMARY KEY, benchmark TEXT NOT NULL,
            method TEXT NOT NULL, seed INTEGER NOT NULL, target_size INTEGER NOT NULL,
            metric TEXT NOT NULL, target_test REAL NOT NULL, source_test_before REAL NOT NULL,
            source_test_after REAL NOT NULL, seconds REAL NOT NULL, finished TEXT NOT NULL,
            result TEXT NOT NULL);
        CREATE INDEX runs_by_benchmark ON runs (benchmark, method, target_size);
        INSERT INTO meta VALUES ('schema', '1');
        """
    )
    import json

    row = result("m00")
    db.execute(
        "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        (*[row[k] for k in list(row)[:11]], json.dumps(row)),
    )
    db.commit()
    db.close()
    with Store(path, create=False) as store:  # report and status read it untouched
        assert store.version == 1 and store.status() == []
        assert [r["run_id"] for r in store.results()] == ["m00"]
    assert sqlite3.connect(path).execute("SELECT value FROM meta").fetchone() == ("1",)
    with Store(path) as store:
        assert store.version == SCHEMA_VERSION == 2
        g = store.register(grid("m", 2), "friedman", "two runs")
        assert store.progress(g).done == 1
        assert [r["run_id"] for r in store.results()] == ["m00"]
    assert sqlite3.connect(path).execute("SELECT value FROM meta").fetchone() == ("2",)


def _set_schema(db_url: str, version: int) -> None:
    from sqlalchemy import create_engine, text

    url = database_url(db_url)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS run_states"))
        conn.execute(text("UPDATE meta SET value = :v WHERE key = 'schema'"), {"v": str(version)})
    engine.dispose()


def _tables(db_url: str) -> set[str]:
    from sqlalchemy import create_engine, inspect

    engine = create_engine(database_url(db_url))
    names = set(inspect(engine).get_table_names())
    engine.dispose()
    return names


def test_a_newer_schema_is_refused_before_anything_is_written(db_url):
    Store(db_url).close()
    _set_schema(db_url, SCHEMA_VERSION + 1)
    before = _tables(db_url)
    for create in (True, False):
        with pytest.raises(PacnetError, match=r"schema version 3 is newer .* upgrade pacnet"):
            Store(db_url, create=create)
    assert _tables(db_url) == before and "run_states" not in before


def test_urls_and_paths():
    assert database_url("runs/x.sqlite").render_as_string() == "sqlite:///runs/x.sqlite"
    assert database_url("sqlite:////abs/x.db").database == "/abs/x.db"
    assert database_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert database_url("postgres://u@h:5433/db").port == 5433
    with pytest.raises(PacnetError, match="unknown kind of database 'mysql'"):
        database_url("mysql://u:secret@h/db")
    with pytest.raises(PacnetError, match="must be a file"):
        database_url("sqlite://")
    assert hide_password("postgresql://u:s3cr@t@h/db") == "postgresql://u:***@h/db"
    assert hide_password("postgresql://u@h/db") == "postgresql://u@h/db"


def test_a_missing_file_is_not_created_by_readers(tmp_path):
    with pytest.raises(PacnetError, match="no results database"):
        Store(tmp_path / "none.sqlite", create=False)
    assert not (tmp_path / "none.sqlite").exists()
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(PacnetError, match="not a usable results database"):
        Store(tmp_path / "junk.sqlite")


def test_postgres_errors_are_one_line_without_the_password(postgres_server, postgres_url):
    from postgres import free_port

    wrong = postgres_server.url("postgres", password="Wr0ngPassw0rd")
    with pytest.raises(PacnetError) as info:
        Store(wrong)
    message = str(info.value)
    assert "password authentication failed" in message and "\n" not in message
    assert "Wr0ngPassw0rd" not in message and "***" in message
    closed = f"postgresql://u:Secret99@127.0.0.1:{free_port()}/db"
    with pytest.raises(PacnetError, match="cannot open the results database") as info:
        Store(closed)
    assert "Secret99" not in str(info.value)
    with pytest.raises(PacnetError, match="does not exist"):
        Store(postgres_server.url("nosuchdb"))
    with pytest.raises(PacnetError, match="no results database"):
        Store(postgres_url, create=False)  # an empty database: nothing to read
    assert _tables(postgres_url) == set()


def test_a_missing_driver_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(PacnetError, match=r"pip install 'pacnet\[postgres\]'"):
        Store("postgresql://u@127.0.0.1:1/db")


def test_claims_of_dead_processes_of_this_machine_are_reaped_at_once(db_url):
    import subprocess

    from sqlalchemy import update

    from pacnet.experiments.store.database import process_key
    from pacnet.experiments.store.schema import states_table

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = process_key(child.pid)
    child.kill()
    child.wait()
    assert dead is not None and process_key(child.pid) is None
    with Store(db_url) as store:
        g = store.register(grid("k", 2), "friedman", "two runs")
        mine, theirs = store.claim(g, lease=60), store.claim(g, lease=60)
        assert store.reap(g) == 0  # both held by this live process
        with store.engine.begin() as conn:
            conn.execute(
                update(states_table)
                .where(states_table.c.run_id == theirs.run_id)
                .values(process=dead)
            )
        assert store.reap(g) == 1
        again = store.claim(g, lease=60)
        assert again.run_id == theirs.run_id and again.took_over
        assert store.renew(mine) and not store.renew(theirs)
