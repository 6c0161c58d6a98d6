import os
import re
import signal
import subprocess
import sys
import time

from conftest import HANG_GUARD, TINY_FLAGS

from pacnet.experiments.store.store import Store

TINY = [
    "--source-samples",
    "400",
    "--source-steps",
    "60",
    "--target-steps",
    "150",
    "--target-test",
    "200",
    "--hidden",
    "16,16",
    "--target-pool",
    "60",
]


def wait_for_rows(proc: subprocess.Popen, db, rows: int) -> None:
    """Wait until the sweep has stored ``rows`` runs or has ended (or seems hung)."""
    deadline = time.time() + HANG_GUARD
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            with Store(db) as store:
                if len(store.ids()) >= rows:
                    return
        time.sleep(0.02)  # a short window: the next group must not end unseen


def test_sigkill_midway_then_rerun_completes_without_loss_or_duplicates(tmp_path):
    db = tmp_path / "runs.sqlite"
    argv = [
        sys.executable,
        "-m",
        "pacnet",
        "reproduce",
        "friedman",
        "--methods",
        "finetune,pacnet",
        "--target-sizes",
        "10,20",
        "--seeds",
        "3",
        "--quick",
        "--db",
        str(db),
        "--out",
        str(tmp_path),
        "--cache",
        str(tmp_path / "cache"),
        *TINY,
    ]
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    wait_for_rows(proc, db, 3)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    with Store(db) as store:
        before = {r["run_id"]: r["finished"] for r in store.results()}
    assert 3 <= len(before) < 12

    done = subprocess.run(argv, capture_output=True, text=True, timeout=HANG_GUARD)
    assert done.returncode == 0, done.stderr
    with Store(db) as store:
        rows = store.results()
    ids = [r["run_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 12
    assert {(r["method"], r["target_size"], r["seed"]) for r in rows} == {
        (m, n, s) for m in ("finetune", "pacnet") for n in (10, 20) for s in range(3)
    }
    for run_id, finished in before.items():  # what was stored before the kill is untouched
        assert next(r for r in rows if r["run_id"] == run_id)["finished"] == finished


def test_sigint_stops_cleanly_keeping_what_finished(tmp_path):
    db = tmp_path / "runs.sqlite"
    argv = [
        sys.executable,
        "-m",
        "pacnet",
        "reproduce",
        "friedman",
        "--methods",
        "finetune",
        "--target-sizes",
        "10,20",
        "--seeds",
        "8",
        "--quick",
        "--db",
        str(db),
        "--out",
        str(tmp_path),
        "--cache",
        str(tmp_path / "cache"),
        *TINY,
        "--target-steps",
        "300",  # runs long enough that the sweep is still going when the signal comes
        "--engine",
        "sequential",  # one run at a time (the batched engine stores a group at once)
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_rows(proc, db, 2)
    assert proc.poll() is None, proc.communicate()[1]  # still running (else: why it ended)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == 130
    assert "interrupted; finished runs are saved" in err and "Traceback" not in err
    assert re.search(r"^pacnet: \d+/16 runs done, \d running, elapsed ", err, re.M)  # no bar
    with Store(db) as store:
        kept = len(store.ids())
    assert 2 <= kept < 16
    assert subprocess.run(argv, capture_output=True, timeout=HANG_GUARD).returncode == 0
    with Store(db) as store:
        assert len(store.ids()) == 16


def test_sigint_during_a_batched_group_gives_the_whole_group_back(tmp_path):
    """A group is stored when it ends, all of it: interrupted, its runs are pending again
    (none left running), and the groups finished before are kept."""
    db = tmp_path / "runs.sqlite"
    argv = [
        sys.executable, "-m", "pacnet", "reproduce", "friedman", "--methods",
        "finetune,scratch", "--target-sizes", "10,20", "--seeds", "8", "--quick",
        "--db", str(db), "--out", str(tmp_path), "--cache", str(tmp_path / "cache"),
        "--jobs", "1", *TINY, "--target-steps", "2000",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_rows(proc, db, 16)  # the first group of 16 (finetune) is stored
    assert proc.poll() is None, "the sweep ended before the second group could be cut"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == 130 and "Traceback" not in err
    with Store(db) as store:
        assert len(store.ids()) == 16
        states = [st for g in store.status() for st in g.running]
    assert states == []


def test_a_sweep_off_a_terminal_says_how_far_it_is(tmp_path, capsys, monkeypatch):
    """Where stderr is not a terminal (tqdm's bar is off) the sweep writes a line as runs
    finish; a run that a group claims and gives back (it does not stack) is no attempt."""
    from pacnet.cli import main
    from pacnet.experiments.sweep import progress

    monkeypatch.setattr(progress, "GAP", 0.0)  # a line for every change
    db = tmp_path / "runs.sqlite"
    argv = ["reproduce", "friedman", "--methods", "finetune,scratch", "--target-sizes", "10"]
    argv += ["--seeds", "2", "--quick", *TINY_FLAGS, "--db", str(db), "--out", str(tmp_path)]
    assert main(argv) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "runs done" in line]
    assert len(said) == 2, said  # a line per group; the end is said once
    assert said[0].startswith("pacnet: 2/4 runs done, 0 running, elapsed ")
    assert said[1].startswith("pacnet: 4/4 runs done, 0 running, elapsed ")
    with Store(db) as store:
        assert [st.attempts for st in store.status()[0].runs] == [1, 1, 1, 1]


def test_progress_lines_beat_while_nothing_finishes(capsys, monkeypatch):
    from pacnet.experiments.sweep import progress

    monkeypatch.setattr(progress, "HEARTBEAT", 0.05)
    err = ""
    with progress.ProgressLines(lambda: "0/40 runs done, 3 running", enabled=True) as lines:
        lines.update(0)  # the first change is said at once
        deadline = time.time() + HANG_GUARD
        while err.count("\n") < 3 and time.time() < deadline:
            time.sleep(0.01)
            err += capsys.readouterr().err
    beats = err.splitlines()
    assert len(beats) >= 3 and all(
        re.fullmatch(r"pacnet: 0/40 runs done, 3 running, elapsed [\d.]+ s", b) for b in beats
    ), beats
