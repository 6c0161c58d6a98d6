"""`pacnet bench` measures what it says: the masked modes run pacnet's own masking paths."""

import pytest

from pacnet.cli import main
from pacnet.experiments.perf import MODELS, _stepper, step_times


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
@pytest.mark.parametrize("model_name", ["friedman_mlp", "resnet18"])
def test_bench_modes_run_the_masking_path_the_optimizer_gets(optimizer, model_name):
    model, x, y = MODELS[model_name]()
    step, context = _stepper("calibrate", model, x, y, optimizer)
    with context() as session:
        for _ in range(2):
            step()
        assert session.l2 > 0 and not session.restores
        assert bool(session.parked) == (optimizer != "sgd")  # SGD zeroes gradients instead
        # fused Adam's weight decay carries the whole λ term (own tensors: −α·w₀ first)
        assert session.folding.on == (optimizer == "adam")
        assert bool(session.folding.offsets) == (optimizer == "adam")


def test_step_times_reports_paired_ratios():
    report = step_times("friedman_mlp", repeats=3, steps=2, optimizer="sgd")
    assert set(report["seconds_per_step"]) == {"plain", "allocate", "calibrate"}
    for mode in ("allocate", "calibrate"):
        low, high = report["ratio_quartiles"][mode]
        assert 0 < low <= high


def test_bench_profile_and_bad_optimizer(capsys):
    assert main(["bench", "--profile", "friedman_mlp", "--quick", "--optimizer", "sgd"]) == 0
    out = capsys.readouterr().out
    assert "calibrate:" in out and "aten::" in out
    assert main(["bench", "--optimizer", "lion"]) != 0
    assert "unknown optimizer 'lion'" in capsys.readouterr().err
