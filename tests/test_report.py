import re
import statistics

from conftest import TINY_FLAGS

from pacnet.cli import main
from pacnet.experiments.store.store import Store

TINY = TINY_FLAGS


def test_report_tables_match_the_stored_rows_and_plots_are_written(tmp_path, capsys):
    db = tmp_path / "runs.sqlite"
    base = [
        "reproduce",
        "friedman",
        "--methods",
        "finetune,pacnet",
        "--target-sizes",
        "10,20",
        "--seeds",
        "3",
        "--quick",
        "--db",
        str(db),
        "--out",
        str(tmp_path),
        *TINY,
    ]
    assert main(base) == 0
    assert main([*base, "--methods", "pacnet", "--param", "pacnet.lam=0.5", "--seeds", "2"]) == 0
    out = tmp_path / "report"
    assert main(["report", "--db", str(db), "--out", str(out)]) == 0
    assert "report of 16 runs" in capsys.readouterr().out
    text = (out / "report.md").read_text()
    for png in ("setting1-target.png", "setting1-source.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in text
    with Store(db) as store:
        rows = store.results()
    for variant, method, lam, n_seeds in (
        ("pacnet", "pacnet", None, 3),
        ("pacnet (lam=0.5)", "pacnet", 0.5, 2),
        ("finetune", "finetune", None, 3),
    ):
        line = next(
            ln for ln in text.splitlines() if ln.startswith(f"| {variant} | ") and "±" in ln
        )
        cells = line.split(" | ")[1:]
        for size, cell in zip((10, 20), cells, strict=False):
            params = {"lam": lam} if lam is not None else {}
            values = [
                r["target_test"]
                for r in rows
                if r["method"] == method
                and r["target_size"] == size
                and r["identity"]["params"] == params
            ]
            mean, std, n = re.search(r"([\d.]+) ± ([\d.]+) \((\d+)\)", cell).groups()
            assert int(n) == n_seeds == len(values)
            assert float(mean) == round(statistics.fmean(values), 3)
            assert float(std) == round(statistics.stdev(values), 3)


def test_report_without_results_is_a_clear_error(tmp_path, capsys):
    assert main(["report", "--db", str(tmp_path / "none.sqlite")]) == 2
    assert "no results database" in capsys.readouterr().err


def test_report_gives_chains_of_targets_a_table_of_their_own(tmp_path, capsys):
    import json

    results = tmp_path / "results"
    common = ["--method", "pacnet", "--quick", "--target-size", "20", *TINY]
    assert main(["run", "friedman", *common, "--targets", "1,2", "--out", str(results / "c")]) == 0
    for seed in (1, 2):
        out = str(results / f"s{seed}")
        assert main(["run", "friedman", *common, "--seed", str(seed), "--out", out]) == 0
    report = tmp_path / "report"
    assert main(["report", "--results", str(results), "--out", str(report)]) == 0
    assert "report of 3 runs" in capsys.readouterr().out
    text = (report / "report.md").read_text()
    chain = json.loads((results / "c" / "result.json").read_text())
    steps = chain["chain"]["steps"]
    second = next(ln for ln in text.splitlines() if ln.startswith("| T2 | "))
    expected = [steps[1]["scores"][t] for t in ("source", "1", "2")]
    assert re.findall(r"([\d.]+) ± 0\.000 \(1\)", second) == [f"{v:.3f}" for v in expected]
    single = next(ln for ln in text.splitlines() if ln.startswith("| pacnet, one network per"))
    singles = [json.loads((results / f"s{s}" / "result.json").read_text()) for s in (1, 2)]
    means = re.findall(r"([\d.]+) ± [\d.]+ \((\d)\)", single)
    assert means[1:] == [(f"{r['target_test']:.3f}", "1") for r in singles]
    assert "bit-identical after every addition: 1 of 1 chains" in text
    paired = next(ln for ln in text.splitlines() if ln.startswith("| chain − pacnet (paired)"))
    final = [steps[-1]["scores"][t] for t in ("1", "2")]
    diffs = [f"{f - r['target_test']:+.3f}" for f, r in zip(final, singles, strict=True)]
    assert re.findall(r"([+-][\d.]+) ± nan \(1\)", paired) == diffs


def test_source_fidelity_is_tabled_for_the_methods_that_record_it():
    from pacnet.experiments.report.table import fidelity_markdown

    def row(method, prune, alloc, agree_p, agree_a):
        details = {"source_fidelity": {
            "agreement": "top1", "metric_after_prune": prune, "metric_after_allocate": alloc,
            "agreement_after_prune": agree_p, "agreement_after_allocate": agree_a,
        }} if method == "pacnet" else {}  # fmt: skip
        return {"method": method, "details": details}

    rows = [row("pacnet", 0.5, 0.1, 0.6, 0.9), row("pacnet", 0.3, 0.2, 0.8, 0.95)]
    lines = fidelity_markdown([*rows, row("finetune", 0, 0, 0, 0)], "error")
    assert "top-1 agreement" in lines[1]
    assert lines[-1] == "| pacnet | 0.400 | 0.150 | 0.700 | 0.925 |"
    assert not any(line.startswith("| finetune") for line in lines)
    assert fidelity_markdown([row("finetune", 0, 0, 0, 0)], "error") == []
