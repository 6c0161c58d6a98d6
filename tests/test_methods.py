import pytest

from pacnet import PacnetError
from pacnet.experiments.run.runner import run
from pacnet.experiments.run.spec import RunSpec
from pacnet.methods import METHODS, get_method
from pacnet.methods.base import SEARCH_BUDGET, candidates

TINY = {
    "source_samples": 400,
    "source_steps": 60,
    "target_steps": 30,
    "target_test": 200,
    "hidden": (16, 16),
    "target_pool": 60,
}


def test_every_method_gets_the_same_search_budget():
    for name, cls in METHODS.items():
        grid = candidates(cls.Params)
        assert len(grid) == SEARCH_BUDGET, name
        for setting in grid:
            cls.Params(**setting)  # every candidate is a valid setting


@pytest.mark.parametrize("method", ["scratch", "linear_probe", "lora"])
def test_methods_that_keep_the_source_model_leave_it_exact(method):
    result = run(
        RunSpec("friedman", method, seed=0, target_size=20, quick=True, bench_settings=TINY)
    )
    assert result["source_test_after"] == result["source_test_before"]
    assert result["trainable_params"] < result["total_params"] or method == "scratch"


@pytest.mark.parametrize("method", ["finetune", "l2sp", "delta", "bss"])
def test_methods_that_share_one_network_change_the_source(method):
    result = run(
        RunSpec(
            "friedman",
            method,
            seed=0,
            target_size=20,
            quick=True,
            bench_settings={**TINY, "distance": 3.0},
        )
    )
    assert result["source_test_after"] != result["source_test_before"]
    assert result["trainable_params"] == result["total_params"]


def test_lora_reports_rank_and_trainable_count():
    result = run(
        RunSpec(
            "friedman",
            "lora",
            seed=0,
            target_size=20,
            quick=True,
            bench_settings=TINY,
            method_params={"rank": 2},
        )
    )
    # adapters on the two hidden layers (10->16, 16->16) with rank 2, plus a head copy (16+1)
    expected = 2 * (10 + 16) + 2 * (16 + 16) + 17
    assert result["trainable_params"] == expected
    assert result["details"]["rank"] == 2


@pytest.mark.parametrize(
    ("method", "params", "message"),
    [
        ("l2sp", {"alpha": -1}, "alpha must be >= 0"),
        ("bss", {"k": 0}, "k must be >= 1"),
        ("lora", {"rank": 0}, "rank must be >= 1"),
        ("delta", {"temperature": 0}, "temperature"),
        ("finetune", {"lr": 0}, "lr must be > 0"),
        ("pacnet", {"beta": 1}, "unknown setting"),
    ],
)
def test_bad_hyperparameters_give_one_line_errors(method, params, message):
    with pytest.raises(PacnetError, match=message):
        RunSpec("friedman", method, method_params=params).make_method()


def test_unknown_method_lists_the_choices():
    with pytest.raises(PacnetError, match="choose one of: scratch, finetune, linear_probe"):
        get_method("adapter")


def test_cross_validation_folds_partition_the_samples():
    import torch

    from pacnet import Data
    from pacnet.experiments.run.select import folds_of

    data = Data(torch.arange(10.0).unsqueeze(1), torch.arange(10.0).unsqueeze(1))
    splits = folds_of(data, 3)
    held = sorted(v for _, val in splits for v in val.x.flatten().tolist())
    assert held == list(range(10))
    for train, val in splits:
        assert set(train.x.flatten().tolist()).isdisjoint(val.x.flatten().tolist())
        assert len(train) + len(val) == 10


def test_selection_picks_the_best_validation_candidate_and_uses_it():
    result = run(
        RunSpec(
            "friedman",
            "l2sp",
            seed=1,
            target_size=12,
            quick=True,
            bench_settings=TINY,
            select="cv",
            folds=3,
        )
    )
    selection = result["selection"]
    assert len(selection["candidates"]) == SEARCH_BUDGET
    best = min(selection["candidates"], key=lambda c: c["val"])
    assert selection["chosen"] == best["params"]
    assert result["params_used"]["alpha"] == best["params"]["alpha"]
    assert result["config"]["select"] == {
        "mode": "cv",
        "folds": 3,
        "candidates": [c["params"] for c in selection["candidates"]],
    }
    assert result["config"]["method"]["alpha"] == 0.01  # the requested value, for the run id


def test_cross_validation_holds_out_whole_groups():
    import torch

    from pacnet import Data
    from pacnet.experiments.run.select import cv_splits

    groups = torch.arange(4).repeat_interleave(5)  # 4 trajectories of 5 points
    data = Data(torch.arange(20.0).unsqueeze(1), torch.zeros(20, 1), groups)
    splits = cv_splits(data, 3)
    assert len(splits) == 3
    for train, val in splits:
        assert set(train.groups.tolist()).isdisjoint(val.groups.tolist())
        assert len(val) % 5 == 0
    assert len(cv_splits(Data(data.x[:10], data.y[:10], groups[:10]), 3)) == 2  # 2 trajectories
