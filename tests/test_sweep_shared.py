"""Grids shared by worker processes through one results database, on both engines (a SQLite
file; a real PostgreSQL server that the test session starts): a worker killed mid-run loses
nothing and duplicates nothing, racing workers run a run once, failures are kept and retried
when asked, and bad databases are one line with exit 2 and nothing written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import HANG_GUARD, TINY_FLAGS

from pacnet.cli import main
from pacnet.experiments.run.spec import RunSpec
from pacnet.experiments.store.claims import GridRun
from pacnet.experiments.store.store import Store
from pacnet.experiments.sweep.grid import expand
from pacnet.experiments.sweep.sweep import WorkerOptions, work
from pacnet.training.cache import StateCache

LEASE = 3
GRID = ["--methods", "finetune", "--target-sizes", "10,20", "--seeds", "12", "--quick"]


def reproduce(db: str, tmp_path: Path, name: str, *extra: str) -> list[str]:
    return [
        *("reproduce", "friedman", *GRID, "--db", db, "--out", str(tmp_path / name)),
        *("--cache", str(tmp_path / "cache"), *TINY_FLAGS, "--lease", str(LEASE), *extra),
    ]


def start(argv: list[str], log: Path, sigint=signal.SIG_DFL) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pacnet", *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            start_new_session=True,
            # as from a terminal: Ctrl-C acts, even if something in this test process
            # left SIGINT ignored (a disposition a child inherits)
            preexec_fn=lambda: signal.signal(signal.SIGINT, sigint),
        )


def until(condition, what: str, timeout: float = HANG_GUARD):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_three_workers_share_a_grid_and_a_worker_killed_mid_run_loses_nothing(
    db_url, tmp_path, capsys
):
    slow = ["--target-steps", "600", "--engine", "sequential"]  # runs of about half a
    # second, one at a time (the batched engine would hand the grid to two workers)
    _source_model(tmp_path / "cache", target_steps=600)  # so that the workers start together
    workers = [
        start(reproduce(db_url, tmp_path, name, *slow), tmp_path / f"{name}.log")
        for name in ("a", "b", "c")
    ]
    victim = workers[0]
    until(lambda: Path(db_url).exists() or "://" in db_url, "the database")
    store = until(lambda: _open(db_url), "the grid's registration")

    def working() -> set[int]:
        [grid] = store.status()
        assert grid.progress.open, (
            "the grid was done before its workers had all started: "
            f"{[w.pid for w in workers]} {sorted((st.pid, st.claimed) for st in grid.runs)}"
        )
        return {st.pid for st in grid.runs if st.pid}

    until(lambda: {w.pid for w in workers} <= working(), "all three workers at work")

    def victim_mid_run():
        victim.send_signal(signal.SIGSTOP)  # frozen, it cannot finish or claim meanwhile
        held = [(st, g.now) for g in store.status() for st in g.running if st.pid == victim.pid]
        if held:
            return held[0]
        victim.send_signal(signal.SIGCONT)  # between two runs: let it go on, look again
        time.sleep(0.02)
        return None

    held, seen_at = until(victim_mid_run, "the victim holding a run")
    lease_end = seen_at + held.lease_left  # on the database's clock, as claims are
    os.kill(victim.pid, signal.SIGKILL)
    # not collected (victim.wait()) until the end: a zombie keeps its pid, so the survivors
    # treat it as alive, as they would a worker on another machine, and wait for its lease
    assert held.run_id not in store.ids()  # the killed run's partial work left no row
    assert main(["status", "--db", db_url]) == 0
    during = capsys.readouterr().out
    assert f"process {victim.pid}" in during and "24 runs:" in during

    for w, name in zip(workers[1:], "bc", strict=True):
        assert w.wait(timeout=HANG_GUARD) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    assert victim.wait() == -signal.SIGKILL
    rows = store.results()
    ids = [r["run_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 24  # every run stored, exactly once
    assert {(r["target_size"], r["seed"]) for r in rows} == {
        (n, s) for n in (10, 20) for s in range(12)
    }
    redone = store.state(held.run_id)
    assert redone.state == "done" and redone.pid != victim.pid and redone.attempts == 2
    assert redone.claimed >= lease_end - 0.01  # taken over only once the lease had expired
    [grid] = store.status()
    assert grid.progress.done == 24 and not grid.failed and not grid.running
    assert main(["status", "--db", db_url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["grids"][0]["done"] == 24
    store.close()


def _open(db_url: str) -> Store | None:
    try:
        store = Store(db_url, create=False)
    except Exception:
        return None
    if not store.status():
        store.close()
        return None
    return store


def test_two_workers_racing_for_the_last_pending_run_run_it_once(db_url, tmp_path):
    base = RunSpec("friedman", "finetune", quick=True, bench_settings=_settings())
    [spec] = expand(base, ["finetune"], [10], [0])
    store = Store(db_url)
    g = store.register([GridRun(spec.run_id(), "finetune", 10, 0)], "friedman", "one run")
    barrier = threading.Barrier(2)
    stored = [0, 0]

    def worker(i: int) -> None:
        mine = Store(db_url)
        claim = mine.claim

        def racing(*args, **kwargs):
            barrier.wait(timeout=HANG_GUARD)  # both ask at the same moment
            mine.claim = claim
            return claim(*args, **kwargs)

        mine.claim = racing
        specs = {spec.run_id(): spec}
        stored[i] = work(mine, g, specs, StateCache(tmp_path / "cache"), WorkerOptions(lease=3))
        mine.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=HANG_GUARD)
    assert sorted(stored) == [0, 1]
    assert store.state(spec.run_id()).attempts == 1 and len(store.results()) == 1
    store.close()


def _source_model(cache: Path, **settings) -> None:
    from pacnet.experiments.run.runner import prepare

    spec = RunSpec("friedman", "finetune", quick=True, bench_settings=_settings(**settings))
    prepare(spec, StateCache(cache))


def _settings(**changes) -> dict:
    pairs = zip(TINY_FLAGS[::2], TINY_FLAGS[1::2], strict=True)
    values = {k.lstrip("-").replace("-", "_"): v for k, v in pairs}
    values["hidden"] = [int(h) for h in values["hidden"].split(",")]
    values = {k: v if k == "hidden" else int(v) for k, v in values.items()}
    return {**values, **changes}


def test_failed_runs_keep_their_error_and_run_again_with_retry_failed(tmp_path, capsys):
    db = str(tmp_path / "runs.sqlite")
    argv = [
        *("reproduce", "friedman", "--methods", "finetune", "--target-sizes", "10,5000"),
        *("--seeds", "1", "--quick", "--db", db, "--out", str(tmp_path / "t"), *TINY_FLAGS),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("pacnet: error: 1 of 2 runs failed (the first, finetune N=5000 seed 0")
    assert "exceeds the pool" in last and "--retry-failed" in last
    assert (tmp_path / "t" / "table.md").exists()  # the table of what finished
    assert main(["status", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "1 done, 0 running, 0 pending, 1 failed" in out
    assert "failed   finetune N=5000 seed 0" in out and "exceeds the pool" in out
    with Store(db) as store:
        [failed] = store.status()[0].failed
        assert "Traceback" in failed.error and failed.attempts == 1
    assert main(argv) == 2  # not retried on its own
    with Store(db) as store:
        assert store.state(failed.run_id).attempts == 1
    assert main([*argv, "--retry-failed"]) == 2
    with Store(db) as store:
        assert store.state(failed.run_id).attempts == 2 and len(store.results()) == 1


def test_a_dead_worker_process_of_jobs_is_reported_and_its_run_recovered(tmp_path):
    """``--jobs 2``: one worker process is killed; the other finishes the grid after the
    lease, and the command still completes."""
    db = str(tmp_path / "runs.sqlite")
    argv = reproduce(db, tmp_path, "t", "--target-steps", "300", "--jobs", "2")
    argv[argv.index("12")] = "3"  # 6 runs
    proc = start(argv, tmp_path / "log")
    store = until(lambda: _open(db), "the grid")
    child = until(
        lambda: next(
            (st.pid for g in store.status() for st in g.running if st.pid != proc.pid), None
        ),
        "a worker process holding a run",
    )
    os.kill(child, signal.SIGKILL)
    assert proc.wait(timeout=HANG_GUARD) == 0, (tmp_path / "log").read_text()[-3000:]
    assert len(store.results()) == 6 and store.status()[0].progress.done == 6
    store.close()


@pytest.fixture
def newer(db_url):
    """A database of a newer schema than this pacnet reads: its tables before."""
    from sqlalchemy import create_engine, inspect, text

    from pacnet.experiments.store.database import database_url

    Store(db_url).close()
    engine = create_engine(database_url(db_url))
    with engine.begin() as conn:
        conn.execute(text("UPDATE meta SET value = '99' WHERE key = 'schema'"))
        conn.execute(text("DROP TABLE run_states"))
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    return db_url, tables


def _one_line_error(capsys, *needles: str, absent: str = "") -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("pacnet: error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err
    if absent:
        assert absent not in err and absent not in captured.out
    return err


def test_bad_databases_are_one_line_exit_2_and_nothing_written(postgres_server, tmp_path, capsys):
    from postgres import free_port

    out, cache = tmp_path / "out", tmp_path / "cache"
    base = ["reproduce", "friedman", "--methods", "finetune", "--target-sizes", "10"]
    base += ["--seeds", "1", "--quick", *TINY_FLAGS, "--out", str(out), "--cache", str(cache)]
    closed = f"postgresql://pacnet:Secret99@127.0.0.1:{free_port()}/results"
    wrong = postgres_server.url("postgres", password="Wr0ngPassw0rd")
    cases = [
        ("mysql://u:Secret99@db/results", "unknown kind of database 'mysql'", "Secret99"),
        (closed, "cannot open the results database postgresql://pacnet:***@", "Secret99"),
        (wrong, "password authentication failed", "Wr0ngPassw0rd"),
    ]
    for url, needle, password in cases:
        assert main([*base, "--db", url]) == 2
        _one_line_error(capsys, needle, absent=password)
        for argv in (["status", "--db", url], ["report", "--db", url, "--out", str(out)]):
            assert main(argv) == 2
            _one_line_error(capsys, needle, absent=password)
    tune = ["tune", "friedman", "--method", "finetune", "--quick", *TINY_FLAGS, "--trials", "1"]
    assert main([*tune, "--db", "mysql://u:Secret99@db/results"]) == 2
    _one_line_error(capsys, "unknown kind of database", absent="Secret99")
    assert main([*tune, "--db", wrong, "--cache", str(cache)]) == 2
    _one_line_error(capsys, "password authentication failed", absent="Wr0ngPassw0rd")
    assert not out.exists() and not cache.exists()


def test_a_newer_schema_is_refused_with_nothing_written(newer, tmp_path, capsys):
    from sqlalchemy import create_engine, inspect

    from pacnet.experiments.store.database import database_url

    db, tables = newer
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = ["reproduce", "friedman", "--methods", "finetune", "--target-sizes", "10", "--seeds"]
    argv += ["1", "--quick", *TINY_FLAGS, "--db", db, "--out", str(out), "--cache", str(cache)]
    for command in (argv, ["status", "--db", db], ["report", "--db", db, "--out", str(out)]):
        assert main(command) == 2
        _one_line_error(capsys, "results schema version 99 is newer", "upgrade pacnet")
    engine = create_engine(database_url(db))
    assert set(inspect(engine).get_table_names()) == tables and "run_states" not in tables
    engine.dispose()
    assert not out.exists() and not cache.exists()


def test_tune_and_report_take_the_same_url(postgres_url, tmp_path, capsys):
    argv = ["reproduce", "friedman", "--methods", "finetune,pacnet", "--target-sizes", "10"]
    argv += ["--seeds", "1", "--quick", *TINY_FLAGS, "--db", postgres_url]
    assert main([*argv, "--out", str(tmp_path / "t")]) == 0
    assert "2 of 2 runs in postgresql://postgres:***@" in capsys.readouterr().out
    assert main(["report", "--db", postgres_url, "--out", str(tmp_path / "r")]) == 0
    assert "report of 2 runs" in capsys.readouterr().out
    tune = ["tune", "friedman", "--method", "pacnet", "--target-size", "12", "--quick"]
    assert main([*tune, *TINY_FLAGS, "--trials", "2", "--db", postgres_url]) == 0
    out = capsys.readouterr().out
    assert "2 trials" in out and "postgresql://postgres:***@" in out
    with Store(postgres_url) as store:  # the study lives beside the results
        assert len(store.results()) == 2


def test_options_are_checked_before_anything_runs(tmp_path, capsys):
    db = str(tmp_path / "runs.sqlite")
    base = ["reproduce", "friedman", "--methods", "finetune", "--quick", "--db", db]
    for flags, message in (
        (["--lease", "0.5"], "--lease must be at least 1 second"),
        (["--max-attempts", "0"], "--max-attempts must be >= 1"),
        (["--nproc-per-run", "0"], "--nproc-per-run must be >= 1"),
    ):
        assert main([*base, *flags]) == 2
        _one_line_error(capsys, message)
    assert not Path(db).exists()
    assert WorkerOptions(lease=6).poll == 1.0


def test_each_run_as_a_torchrun_job(tmp_path, capsys):
    db = str(tmp_path / "runs.sqlite")
    argv = ["reproduce", "friedman", "--methods", "pacnet", "--target-sizes", "10", "--seeds"]
    argv += ["1", "--quick", *TINY_FLAGS, "--db", db, "--out", str(tmp_path / "t")]
    assert main([*argv, "--nproc-per-run", "2"]) == 0
    with Store(db) as store:
        [row] = store.results()
    assert row["distributed"] == {"world_size": 2, "backend": "gloo", "ranks_agree": True}


def test_each_worker_of_a_gpu_machine_gets_its_own_devices():
    from pacnet.experiments.sweep.sweep import gpu_slots

    assert gpu_slots(2, 1, ["0", "1", "2", "3"]) == ["0", "1"]
    assert gpu_slots(2, 2, ["0", "1", "2", "3"]) == ["0,1", "2,3"]
    assert gpu_slots(3, 1, ["5", "7"]) == ["5", "7", "5"]  # fewer devices: shared in turn
    assert gpu_slots(2, 1, []) == [None, None]


def test_ctrl_c_gives_the_runs_in_flight_back(tmp_path):
    db = str(tmp_path / "runs.sqlite")
    # runs long enough (seconds each) that the interrupt lands with most of the grid to go
    argv = reproduce(db, tmp_path, "t", "--target-steps", "4000", "--jobs", "2")
    proc = start(argv, tmp_path / "log")
    store = until(lambda: _open(db), "the grid")
    until(lambda: store.status()[0].running, "a run in flight")
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole process group
    assert proc.wait(timeout=HANG_GUARD) == 130, (tmp_path / "log").read_text()[-3000:]
    assert "interrupted; finished runs are saved" in (tmp_path / "log").read_text()
    [grid] = store.status()
    assert not grid.running and grid.progress.pending >= 1  # given back, not left to expire
    assert all(st.attempts == 0 for st in grid.runs if st.state == "pending")  # not tries
    store.close()


def test_ctrl_c_that_only_the_workers_see_is_an_interruption_too(tmp_path):
    """A command a script starts in the background ignores SIGINT; its worker processes
    still stop on it and give their runs back. The command then says it was interrupted
    (exit 130), not that its workers died and their runs wait for their leases."""
    db = str(tmp_path / "runs.sqlite")
    argv = reproduce(db, tmp_path, "t", "--target-steps", "4000", "--jobs", "2")
    proc = start(argv, tmp_path / "log", sigint=signal.SIG_IGN)
    store = until(lambda: _open(db), "the grid")
    until(lambda: len({st.pid for st in store.status()[0].running}) == 2, "both workers at work")
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=HANG_GUARD) == 130, (tmp_path / "log").read_text()[-3000:]
    log = (tmp_path / "log").read_text()
    assert "interrupted; finished runs are saved" in log and "given back" in log
    assert "ended abnormally" not in log and "lease" not in log
    [grid] = store.status()
    assert not grid.running and grid.progress.pending >= 1
    assert all(st.attempts == 0 for st in grid.runs if st.state == "pending")
    store.close()


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_sigterm_to_the_command_alone_gives_the_runs_in_flight_back(tmp_path, jobs):
    """``kill`` or ``timeout`` sends SIGTERM to the command only (not its workers): it stops
    as Ctrl-C does, and no run is left held until its lease ends."""
    db = str(tmp_path / "runs.sqlite")
    argv = reproduce(db, tmp_path, "t", "--target-steps", "4000", "--jobs", jobs)
    proc = start(argv, tmp_path / "log")
    store = until(lambda: _open(db), "the grid")
    until(lambda: store.status()[0].running, "a run in flight")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=HANG_GUARD) == 130, (tmp_path / "log").read_text()[-3000:]
    [grid] = store.status()
    assert not grid.running and grid.progress.pending >= 1
    assert all(st.attempts == 0 for st in grid.runs if st.state == "pending")
    store.close()
