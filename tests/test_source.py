"""The source model every run starts from (pacnet.experiments.run.source): with equal source
compute the baselines start from a source trained longer."""

from __future__ import annotations

import pytest
from test_methods import TINY

from pacnet import PacnetError
from pacnet.experiments.run.runner import run
from pacnet.experiments.run.spec import RunSpec
from pacnet.experiments.sweep.grid import expand


def test_equal_source_compute_starts_baselines_from_a_longer_trained_source(tmp_path):
    base = {"seed": 0, "target_size": 20, "quick": True, "bench_settings": TINY}
    standard = run(RunSpec("friedman", "finetune", **base))
    equal = run(RunSpec("friedman", "finetune", source_compute="equal", **base))
    again = run(RunSpec("friedman", "finetune", source_compute="equal", **base))
    assert equal["run_id"] != standard["run_id"]
    assert equal["source_test_before"] != standard["source_test_before"]
    assert equal["source_test_before"] == again["source_test_before"]  # cached, deterministic
    assert equal["config"]["source_compute"] == "equal"
    # PAC-Net's own source training + Allocate is the reference: "equal" is the same run
    pac = RunSpec("friedman", "pacnet", source_compute="equal", **base)
    assert pac.run_id() == RunSpec("friedman", "pacnet", **base).run_id()
    specs = expand(RunSpec("friedman", "finetune"), ["finetune", "pacnet"], [10], [0, 1], {}, {},
                 ["standard", "equal"])  # fmt: skip
    assert sorted((s.method, s.source_compute) for s in specs) == [
        ("finetune", "equal"),
        ("finetune", "equal"),
        ("finetune", "standard"),
        ("finetune", "standard"),
        ("pacnet", "standard"),
        ("pacnet", "standard"),
    ]
    with pytest.raises(PacnetError, match="source_compute must be one of"):
        RunSpec("friedman", "finetune", source_compute="more")
