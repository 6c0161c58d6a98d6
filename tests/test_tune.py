import re

import optuna
from conftest import TINY_FLAGS

from pacnet.cli import main
from pacnet.experiments.store.store import Store
from pacnet.methods.pacnet_method import PacNetParams

TINY = TINY_FLAGS


def test_tune_adds_trials_to_a_study_in_the_results_database(tmp_path, capsys):
    db = tmp_path / "runs.sqlite"
    Store(db).close()  # the results store and Optuna share one SQLite file
    argv = [
        "tune",
        "friedman",
        "--method",
        "pacnet",
        "--target-size",
        "12",
        "--quick",
        "--storage",
        f"sqlite:///{db}",
        "--study",
        "s1",
        *TINY,
    ]
    assert main([*argv, "--trials", "3"]) == 0
    err = capsys.readouterr().err  # not a terminal: lines instead of a bar
    said = [line for line in err.splitlines() if "trials done" in line]
    assert re.match(r"pacnet: 1/3 trials done, best so far [\d.e-]+, 1 in the study, ", said[0])
    assert re.match(r"pacnet: 3/3 trials done, best so far [\d.e-]+, 3 in the study, ", said[-1])
    assert main([*argv, "--trials", "2"]) == 0
    out = capsys.readouterr().out
    assert "5 trials" in out and "run it: pacnet run friedman --method pacnet" in out
    study = optuna.load_study(study_name="s1", storage=f"sqlite:///{db}")
    assert len(study.trials) == 5
    low, high = PacNetParams.tune["ratio"][1:]
    for trial in study.trials:
        assert low <= trial.params["ratio"] <= high
        assert 1e-4 <= trial.params["lam"] <= 10.0
        assert trial.value > 0
    with Store(db) as store:
        assert store.results() == []


def test_tune_rejects_a_bad_storage_url(tmp_path, capsys):
    base = ["tune", "friedman", "--target-size", "12", "--quick", *TINY, "--trials", "1"]
    assert main([*base, "--method", "pacnet", "--storage", "nosuchdb://x"]) == 2
    assert "cannot open the Optuna storage" in capsys.readouterr().err
