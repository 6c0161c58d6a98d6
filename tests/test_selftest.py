"""``pacnet selftest``: the user's check that pacnet works on their hardware. The CPU run is
part of the test suite; the checks it makes fail where exactness breaks."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

from pacnet.cli import main
from pacnet.experiments.selftest import cases, exact, models, runs
from pacnet.experiments.selftest import main as selftest_main
from pacnet.methods import METHODS

RUN_SETTINGS = dict(runs.RUN_SETTINGS)


def test_selftest_on_the_cpu_passes_and_names_every_case(capsys):
    assert main(["selftest", "--device", "cpu", "--quick"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("pacnet ") and f"torch {torch.__version__}" in lines[0]
    assert lines[1].startswith("plan: ") and " on 2 CPU cores (the full selftest: " in lines[1]
    marks = [line.split()[:2] for line in lines[2:-1]]
    model_count, optimizer_count = len(models.CASE_MODELS), len(models.CASE_OPTIMIZERS)
    assert sum(m[1] == "exact" for m in marks) == model_count * optimizer_count * 3
    run_lines = [line for line in lines if line.split()[1:2] == ["runs"]]
    for benchmark in runs.RUN_SETTINGS:
        of = [line for line in run_lines if line.split()[2] == benchmark]
        if benchmark in runs.FULL_ONLY:  # quick: no run on an installed image data set
            assert len(of) == 1 and of[0].startswith(f"- runs  {benchmark} (every method) ")
        else:
            assert len(of) == 8, (benchmark, of)
    engines = [line for line in lines if line.split()[1:2] == ["engines"]]
    assert len(engines) == len(METHODS) and all(line.startswith(cases.PASS) for line in engines)
    assert [m for m in marks if m[0] == cases.FAIL] == []
    skipped = [line for line in lines if line.startswith(cases.SKIP)]
    reasons = ("capturable", "not installed", "the full selftest (without --quick) runs it")
    assert all(any(r in line for r in reasons) for line in skipped), skipped
    assert any("celeba pacnet" in line and line.startswith(cases.PASS) for line in run_lines)
    assert lines[-1].endswith(" s") and ", 0 failed," in lines[-1]


@pytest.fixture
def small(monkeypatch):
    """One model, two optimizers, no runs and no bench: the exactness cases alone."""
    monkeypatch.setattr(models, "CASE_MODELS", {"gru": models.CASE_MODELS["gru"]})
    chosen = {k: models.CASE_OPTIMIZERS[k] for k in ("adam-fused", "sgd-momentum-decay")}
    monkeypatch.setattr(models, "CASE_OPTIMIZERS", chosen)
    monkeypatch.setattr(runs, "RUN_SETTINGS", {})
    monkeypatch.setattr(selftest_main, "bench", lambda device, quick: iter(()))


def test_selftest_fails_where_frozen_entries_move(small, monkeypatch, capsys):
    monkeypatch.setattr(exact, "train_only", lambda *args, **kwargs: nullcontext())
    with pytest.raises(SystemExit) as exited:
        main(["selftest", "--quick"])
    assert exited.value.code == 1
    out = capsys.readouterr().out
    assert out.count(cases.FAIL) == 6 and "moved at Allocate step 1" in out


def test_selftest_names_benchmarks_without_data_as_skipped(small, monkeypatch, capsys):
    settings = {k: RUN_SETTINGS[k] for k in ("fashion", "digits")}
    monkeypatch.setattr(runs, "RUN_SETTINGS", settings)
    monkeypatch.setattr(runs, "DEFAULT_DIR", "/nonexistent/fashion-mnist")
    assert main(["selftest"]) == 0  # the full selftest: the one that runs them
    out = capsys.readouterr().out
    assert "runs of no benchmark (fashion, digits not installed)" in out.splitlines()[1]
    skipped = [line for line in out.splitlines() if line.startswith(cases.SKIP)]
    assert len(skipped) == 16 and all("is not installed" in line for line in skipped)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
def test_selftest_on_a_missing_gpu_is_one_line(capsys):
    assert main(["selftest", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CUDA is not available" in err
