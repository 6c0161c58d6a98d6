"""Same configuration and seed on the CPU: bit-identical results, run after run."""

import pytest

from pacnet.experiments.run.runner import run
from pacnet.experiments.run.spec import RunSpec
from pacnet.training.cache import StateCache

TINY = {
    "source_samples": 400,
    "source_steps": 60,
    "target_steps": 40,
    "target_test": 200,
    "hidden": (16, 16),
    "target_pool": 60,
}
KEYS = ("target_test", "source_test_before", "source_test_after", "trainable_params", "fit")


@pytest.mark.parametrize("method", ["pacnet", "delta", "lora"])
def test_two_runs_from_scratch_give_identical_results(method, tmp_path):
    spec = RunSpec("friedman", method, seed=3, target_size=20, bench_settings=TINY)
    first = run(spec, None, StateCache(tmp_path / "a"))  # separate caches: source retrained
    second = run(spec, None, StateCache(tmp_path / "b"))
    assert {k: first[k] for k in KEYS} == {k: second[k] for k in KEYS}
    assert first["run_id"] == second["run_id"]
    other_seed = run(
        RunSpec("friedman", method, seed=4, target_size=20, bench_settings=TINY),
        None,
        StateCache(tmp_path / "a"),
    )
    assert other_seed["target_test"] != first["target_test"]


def test_deterministic_flag_runs_and_changes_nothing_on_the_cpu(tmp_path):
    spec = RunSpec("friedman", "pacnet", seed=1, target_size=10, bench_settings=TINY)
    plain = run(spec, None, StateCache(tmp_path))
    strict = run(
        RunSpec(
            "friedman", "pacnet", seed=1, target_size=10, bench_settings=TINY, deterministic=True
        ),
        None,
        StateCache(tmp_path),
    )
    assert plain["target_test"] == strict["target_test"] and plain["run_id"] == strict["run_id"]
    import torch

    assert not torch.are_deterministic_algorithms_enabled()  # restored after the run
