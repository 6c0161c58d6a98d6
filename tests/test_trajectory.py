import pytest
import torch

from pacnet.benchmarks.ode import ODE, ODEConfig
from pacnet.benchmarks.pde import PDE, PDEConfig
from pacnet.experiments.run.runner import run
from pacnet.experiments.run.spec import RunSpec
from pacnet.methods import METHODS
from pacnet.training.cache import StateCache

SMALL = {
    "ode": {
        "source_trajectories": 40,
        "target_pool": 10,
        "target_test": 8,
        "hidden": (16, 16),
        "source_steps": 40,
        "target_steps": 20,
        "horizon": 2.0,
        "records": 10,
    },
    "pde": {
        "source_trajectories": 30,
        "target_pool": 10,
        "target_test": 6,
        "hidden": (16, 16),
        "source_steps": 40,
        "target_steps": 20,
        "grid": 16,
        "x_stride": 2,
        "records": 5,
    },
}
CLASSES = {"ode": (ODE, ODEConfig), "pde": (PDE, PDEConfig)}


@pytest.mark.parametrize("name", ["ode", "pde"])
def test_cached_data_is_identical_across_runs_and_regenerated_when_corrupt(name, tmp_path):
    cls, config = CLASSES[name]
    first = cls(config(**SMALL[name]), StateCache(tmp_path / "a"))
    fresh = cls(config(**SMALL[name]), StateCache(tmp_path / "b"))
    assert first.details()["data_sets_from_cache"] == 0
    cached = cls(config(**SMALL[name]), StateCache(tmp_path / "a"))
    assert cached.details()["data_sets_from_cache"] == 1
    for other in (fresh, cached):
        assert torch.equal(first.source().train.x, other.source().train.x)
        assert torch.equal(first.target(3, 4).test.y, other.target(3, 4).test.y)
    for path in (tmp_path / "a").glob("*.safetensors"):
        path.write_bytes(path.read_bytes()[:50])
    repaired = cls(config(**SMALL[name]), StateCache(tmp_path / "a"))
    assert repaired.details()["data_sets_from_cache"] == 0
    assert torch.equal(first.source().train.y, repaired.source().train.y)
    assert repaired.details()["data_throughput_trajectory_steps_per_s"] > 0


@pytest.mark.parametrize("name", ["ode", "pde"])
def test_targets_are_paired_nested_and_from_the_target_regime(name, tmp_path):
    cls, config = CLASSES[name]
    bench = cls(config(**SMALL[name]), StateCache(tmp_path))
    small, large = bench.target(1, 2), bench.target(1, 5)
    points = len(small.train) // 2
    assert len(large.train) == 5 * points
    assert torch.equal(large.train.x[: 2 * points], small.train.x)
    assert not torch.equal(bench.target(2, 2).train.x, small.train.x)
    raw = small.train.x * bench.in_std + bench.in_mean  # column 1 (ODE β) / 0 (PDE ν)
    column, regime = (
        (1, bench.config.target_nonlinearity)
        if name == "ode"
        else (0, bench.config.target_viscosity)
    )
    assert raw[:, column].min() >= regime[0] - 1e-4 and raw[:, column].max() <= regime[1] + 1e-4


@pytest.mark.parametrize("name", ["ode", "pde"])
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_runs_on_the_scientific_benchmarks(name, method, tmp_path):
    result = run(
        RunSpec(name, method, seed=0, target_size=3, bench_settings=SMALL[name]),
        tmp_path / "out",
        StateCache(tmp_path / "cache"),
    )
    assert result["metric"] == ("rmse" if name == "ode" else "rel_l2")
    assert set(result["target_metrics"]) == {"rmse", "rel_l2"}
    assert result["target_test"] == result["target_metrics"][result["metric"]]
    assert (tmp_path / "out" / "result.json").exists()


def test_invalid_physics_settings_are_rejected():
    from pacnet import PacnetError

    with pytest.raises(PacnetError, match="LOW,HIGH"):
        ODEConfig(target_nonlinearity=(2.0, 1.0))
    with pytest.raises(PacnetError, match="records"):
        ODEConfig(records=7)
    with pytest.raises(PacnetError, match="positive"):
        PDEConfig(target_viscosity=(0.0, 0.1))
