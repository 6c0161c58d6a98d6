"""The report's paired-difference plot, from hand-made rows."""

import math

import pytest

from pacnet.experiments.report.report import report
from pacnet.experiments.report.table import paired

PNG = b"\x89PNG\r\n\x1a\n"
ERRORS = {  # (method, size) -> target error per seed 0, 1, 2
    ("finetune", 10): (0.50, 0.40, 0.60),
    ("finetune", 100): (0.30, 0.20, 0.25),
    ("pacnet", 10): (0.40, 0.35, 0.62),
    ("pacnet", 100): (0.28, 0.21, 0.20),
    ("l2sp", 10): (0.45, 0.41, 0.55),
    ("l2sp", 100): (0.31, 0.19),  # seed 2 missing: paired on seeds 0 and 1 only
}


def _row(method, size, seed, error):
    return {
        "benchmark": "friedman",
        "method": method,
        "target_size": size,
        "seed": seed,
        "metric": "rmse",
        "target_test": error,
        "source_test_before": 1.0,
        "source_test_after": 1.0 if method == "pacnet" else 1.2,
        "trainable_params": 100,
        "stored_params": 200,
        "seconds": 1.0,
        "identity": {"settings": {"quick": True}, "params": {}},
        "config": {
            "target_fit": {
                "steps": 10,
                "optimizer": "adam",
                "lr": 0.001,
                "batch_size": 32,
                "patience": None,
            }
        },
    }


def _rows(methods):
    return [
        _row(m, n, seed, e)
        for (m, n), errors in ERRORS.items()
        if m in methods
        for seed, e in enumerate(errors)
    ]


def test_the_paired_plot_is_written_linked_and_plots_the_paired_table_values(tmp_path):
    rows = _rows({"finetune", "pacnet", "l2sp"})
    path = report(rows, tmp_path)
    text = path.read_text()
    assert (tmp_path / "setting1-paired.png").read_bytes()[:8] == PNG
    assert "](setting1-paired.png)" in text
    stats = paired(rows, "finetune")
    assert set(stats) == {(m, n) for m in ("pacnet", "l2sp") for n in (10, 100)}
    for (method, size), s in stats.items():
        mine, reference = ERRORS[(method, size)], ERRORS[("finetune", size)]
        d = [mine[seed] - reference[seed] for seed in range(len(mine))]
        k = len(d)
        assert s["n"] == k == (2 if (method, size) == ("l2sp", 100) else 3)
        assert s["mean"] == pytest.approx(sum(d) / k)
        centred = [v - sum(d) / k for v in d]
        sem = math.sqrt(sum(c * c for c in centred) / (k - 1)) / math.sqrt(k)
        assert s["sem"] == pytest.approx(sem)
        assert s["wins"] == sum(v < 0 for v in d)


def test_no_paired_plot_without_fine_tuning_runs(tmp_path):
    text = report(_rows({"pacnet", "l2sp"}), tmp_path).read_text()
    assert (tmp_path / "setting1-target.png").exists()
    assert not (tmp_path / "setting1-paired.png").exists()
    assert "paired.png" not in text


def test_a_series_far_beyond_the_others_is_named_off_scale_and_the_rest_are_kept():
    from pacnet.experiments.report.report import off_scale

    series = {
        "scratch": ([2, 5], [0.17, 0.11], [0.01, 0.01]),
        "pacnet": ([2, 5], [-0.04, 0.01], [0.01, 0.01]),
        "l2sp": ([2, 5], [-0.02, 0.0], [0.01, 0.01]),
        "linear_probe": ([2, 5], [0.02, 0.05], [0.01, 0.01]),
    }
    assert off_scale(series) == {"scratch": (0.11, 0.17)}
    del series["scratch"]
    assert off_scale(series) == {}  # 0.05 is within 3x the median extent 0.04
    assert off_scale({"a": ([1], [1.0], [0.0]), "b": ([1], [100.0], [0.0])}) == {}


def test_wall_time_leaves_out_pauses_but_not_the_gaps_between_runs():
    from pacnet.experiments.report.report import wall_time

    assert wall_time([]) == (0.0, 0.0)
    # two workers overlapping, 5 s gaps between runs, then a 1000 s pause (a resumed sweep)
    runs = [(0.0, 100.0), (50.0, 120.0), (125.0, 200.0), (1200.0, 1300.0)]
    assert wall_time(runs) == (1300.0, 300.0)
    assert wall_time([(0.0, 10.0), (5.0, 8.0)]) == (10.0, 10.0)  # one inside another


def test_a_report_with_a_far_off_variant_still_writes_its_paired_plot_and_table(tmp_path):
    rows = _rows({"finetune", "pacnet", "l2sp"})
    rows += [
        {**_row("scratch", n, seed, e + 5.0), "source_test_after": 1.0}
        for (m, n), errors in ERRORS.items()
        if m == "finetune"
        for seed, e in enumerate(errors)
    ]
    text = report(rows, tmp_path).read_text()
    assert (tmp_path / "setting1-paired.png").read_bytes()[:8] == PNG
    assert "| scratch | +5.000 ± 0.000 (0/3) | +5.000 ± 0.000 (0/3) |" in text


def test_off_scale_leaves_out_every_series_of_a_far_group():
    from pacnet.experiments.report.report import off_scale

    series = {
        "scratch": ([2], [0.9], [0.0]),
        "scratch [equal source compute]": ([2], [0.01], [0.0]),
        "pacnet": ([2], [-0.04], [0.0]),
        "l2sp": ([2], [0.03], [0.0]),
    }
    base = lambda k: k.removesuffix(" [equal source compute]")  # noqa: E731
    assert set(off_scale(series)) == {"scratch"}
    assert off_scale(series, base) == {
        "scratch": (0.9, 0.9),
        "scratch [equal source compute]": (0.01, 0.01),
    }
