"""What the commands leave behind (pacnet.cli.outputs): no empty folder after a failure, a
folder that holds a file stays, and a closed output pipe ends quietly."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import HANG_GUARD, TINY_FLAGS, error_of

from pacnet.cli.outputs import created_by
from pacnet.errors import PacnetError


def test_a_failed_run_leaves_no_empty_output_folder(tmp_path, capsys):
    out = tmp_path / "new" / "o53"
    argv = ["run", "friedman", "--method", "finetune", "--quick", *TINY_FLAGS]
    line = error_of([*argv, "--target-size", "100000", "--out", str(out)], capsys)
    assert "exceeds the pool" in line
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    error_of([*argv, "--target-size", "100000", "--out", str(existing)], capsys)
    assert existing.is_dir()  # it was there before: it stays


def test_a_new_folder_that_holds_a_file_stays(tmp_path):
    out = tmp_path / "a" / "b"
    with pytest.raises(KeyboardInterrupt), created_by(out):
        out.mkdir(parents=True)
        (out / "result.json").write_text("{}")
        raise KeyboardInterrupt
    assert (out / "result.json").is_file()
    with pytest.raises(PacnetError), created_by(tmp_path / "c" / "pred.csv"):
        (tmp_path / "c").mkdir()
        raise PacnetError("late")
    assert not (tmp_path / "c").exists()


def test_a_closed_output_pipe_ends_quietly_with_141(tmp_path):
    read, write = os.pipe()
    os.close(read)  # the reader is gone before pacnet writes anything
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pacnet.cli", "benchmarks"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=HANG_GUARD,
        )
    finally:
        os.close(write)
    assert proc.stderr == ""
    assert proc.returncode == 141
