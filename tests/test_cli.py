"""The command line end to end (pacnet.cli): ``run`` writes result.json for every method and
keeps earlier tasks, bad input is one line, ``reproduce`` prints a table, resumes and reads
a TOML grid, the shipped configs are valid, and ``--version``."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_FLAGS

import pacnet
from pacnet.cli import main
from pacnet.experiments.sweep.grid import Grid
from pacnet.methods import METHODS

TINY = TINY_FLAGS
REQUIRED = {
    "benchmark",
    "method",
    "seed",
    "target_size",
    "metric",
    "target_test",
    "source_test_before",
    "source_test_after",
    "trainable_params",
    "total_params",
    "seconds",
    "config",
    "versions",
}


@pytest.mark.parametrize("method", list(METHODS))
def test_run_writes_result_json_for_every_method(method, tmp_path, capsys):
    out = tmp_path / method
    code = main(
        [
            "run",
            "friedman",
            "--method",
            method,
            "--seed",
            "1",
            "--target-size",
            "20",
            "--quick",
            "--out",
            str(out),
            *TINY,
        ]
    )
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    assert result.keys() >= REQUIRED
    assert (result["method"], result["seed"], result["target_size"]) == (method, 1, 20)
    assert result["target_test"] > 0 and result["total_params"] >= result["trainable_params"] > 0
    assert result["config"]["benchmark"]["hidden"] == [16, 16]
    assert "target rmse" in capsys.readouterr().out


def test_pacnet_keeps_the_source_and_finetune_forgets(tmp_path):
    results = {}
    for method in ("pacnet", "finetune"):
        main(
            [
                "run",
                "friedman",
                "--method",
                method,
                "--target-size",
                "50",
                "--quick",
                "--out",
                str(tmp_path / method),
                *TINY,
                "--distance",
                "3",
            ]
        )
        results[method] = json.loads((tmp_path / method / "result.json").read_text())
    ft, pac = results["finetune"], results["pacnet"]
    assert ft["source_test_after"] > ft["source_test_before"]
    assert pac["config"]["method"] == {
        "ratio": 0.8,
        "lam": 0.01,
        "scope": "global",
        "allocate_steps": None,
        "prune_score": "magnitude",
        "allocate_on": "labelled",
    }
    # PAC-Net's source model is the allocated one: run twice, identical source error
    main(
        [
            "run",
            "friedman",
            "--method",
            "pacnet",
            "--seed",
            "2",
            "--target-size",
            "10",
            "--quick",
            "--out",
            str(tmp_path / "again"),
            *TINY,
            "--distance",
            "3",
        ]
    )
    again = json.loads((tmp_path / "again" / "result.json").read_text())
    assert again["source_test_after"] == pac["source_test_after"]


BAD = [
    (["run", "friedman", "--method", "nope"], "unknown method 'nope'"),
    (["run", "nowhere", "--method", "pacnet"], "unknown benchmark 'nowhere'"),
    (
        ["run", "friedman", "--method", "pacnet", "--ratio", "1.2"],
        "ratio must lie strictly between 0 and 1",
    ),
    (
        ["run", "friedman", "--method", "pacnet", "--ratio", "0"],
        "ratio must lie strictly between 0 and 1",
    ),
    (["run", "friedman", "--method", "pacnet", "--lam", "-1"], "lam (λ) must be >= 0"),
    (["run", "friedman", "--method", "pacnet", "--target-size", "0"], "target size must be >= 1"),
    (["run", "friedman", "--method", "pacnet", "--target-size", "5000"], "exceeds the pool"),
    (["run", "friedman", "--method", "pacnet", "--protocol", "sometimes"], "protocol must be"),
    (["reproduce", "friedman", "--methods", "pacnet,zzz"], "unknown method 'zzz'"),
    (["reproduce", "friedman", "--param", "pacnet.gamma=1"], "no hyperparameter 'gamma'"),
    (["reproduce", "friedman", "--seeds", "0"], "number of seeds must be >= 1"),
    (["reproduce", "friedman", "--seeds", "1,-1"], "seeds must be >= 0"),
    (["reproduce", "friedman", "--methods", ","], "names no method"),
    (["run", "friedman", "--method", "pacnet", "--seed", "-1"], "seed must lie in"),
    (["run", "friedman", "--method", "pacnet", "--threads", "0"], "--threads must be >= 1"),
    (["run", "friedman", "--method", "pacnet", "--bogus", "1"], "unrecognized arguments: --bogus"),
    (["run", "friedman", "--method", "pacnet", "--hidden", "a,b"], "argument --hidden"),
    (["run", "friedman", "--method", "l2sp", "--targets", "1,2"], "use --method pacnet"),
    (["run", "friedman", "--method", "pacnet", "--targets", "1,x"], "argument --targets"),
    (
        ["run", "friedman", "--method", "pacnet", "--targets", "1,2", "--select", "cv"],
        "cannot be combined with --select cv",
    ),
]


def test_run_with_three_targets_keeps_every_earlier_task(tmp_path, capsys):
    out = tmp_path / "chain"
    argv = ["run", "friedman", "--method", "pacnet", "--targets", "1,2,3", "--out", str(out)]
    assert main([*argv, "--quick", "--target-size", "20", *TINY]) == 0
    assert "earlier tasks bit-identical: True" in capsys.readouterr().out
    result = json.loads((out / "result.json").read_text())
    chain = result["chain"]
    assert chain["earlier_tasks_bit_identical"] is True
    assert [s["added"] for s in chain["steps"]] == ["1", "2", "3"]
    for before, after in zip(chain["steps"], chain["steps"][1:], strict=False):
        for task, score in before["scores"].items():  # an earlier task scores exactly the same
            assert after["scores"][task] == score, task
    assert result["source_test_after"] == chain["steps"][0]["scores"]["source"]
    shares = [chain["owned"][t] for t in ("1", "2", "3")]
    assert max(shares) - min(shares) <= 1  # equal shares of the redundant weights
    assert result["identity"]["targets"] == [1, 2, 3]


@pytest.mark.parametrize(("argv", "message"), BAD)
def test_bad_input_gives_one_line_error(argv, message, tmp_path, capsys):
    code = main([*argv, "--out", str(tmp_path / "o"), "--quick", *TINY])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("pacnet: error: ")
    assert message in err


def test_options_may_come_before_the_benchmark(tmp_path):
    argv = ["run", "--quick", "friedman", "--method", "pacnet", "--ratio", "0.5", *TINY]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "result.json").read_text())["config"]["method"]["ratio"] == 0.5


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(
        ["run", "friedman", "--method", "scratch", "--quick", *TINY, "--out", str(blocker / "sub")]
    )
    assert code == 2
    assert "cannot create the output folder" in capsys.readouterr().err


def test_console_script_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pacnet",
            "run",
            "friedman",
            "--method",
            "pacnet",
            "--ratio",
            "2",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert (
        proc.stderr.strip() == "pacnet: error: --ratio must lie strictly between 0 and 1, got 2.0"
    )


def test_reproduce_prints_a_table_and_resumes(tmp_path, capsys):
    db = tmp_path / "runs.sqlite"
    argv = [
        "reproduce",
        "friedman",
        "--methods",
        "scratch,pacnet",
        "--target-sizes",
        "10,20",
        "--seeds",
        "2",
        "--quick",
        "--out",
        str(tmp_path),
        "--db",
        str(db),
        *TINY,
        "--param",
        "pacnet.lam=0.1",
        "--seeds-at",
        "10=3",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| pacnet (lam=0.1) |" in out and "N=20" in out and "Protocol: fixed budget of 30" in out
    from pacnet.experiments.store.store import Store

    with Store(db) as store:
        rows = store.results()
    assert len(rows) == 2 * (3 + 2)
    assert sorted(r["seed"] for r in rows if r["target_size"] == 10) == [0, 0, 1, 1, 2, 2]
    assert {r["config"]["method"].get("lam") for r in rows} == {None, 0.1}
    finished = sorted(r["finished"] + r["run_id"] for r in rows)
    assert main(argv) == 0  # everything finished: nothing reruns
    with Store(db) as store:
        assert sorted(r["finished"] + r["run_id"] for r in store.results()) == finished
    assert (tmp_path / "table.md").read_text().count("| scratch |") == 2


def test_reproduce_reads_a_toml_grid_and_flags_override_it(tmp_path, capsys):
    config = tmp_path / "grid.toml"
    config.write_text(
        'methods = ["finetune"]\ntarget_sizes = [10]\nseeds = 2\n'
        "[settings]\nsource_samples = 400\nsource_steps = 60\ntarget_steps = 30\n"
        "target_test = 200\nhidden = [16, 16]\ntarget_pool = 60\n"
    )
    db = tmp_path / "runs.sqlite"
    argv = [
        "reproduce",
        "friedman",
        "--config",
        str(config),
        "--db",
        str(db),
        "--quick",
        "--out",
        str(tmp_path),
    ]
    assert main([*argv, "--seeds", "1"]) == 0
    from pacnet.experiments.store.store import Store

    with Store(db) as store:
        rows = store.results()
    assert [(r["method"], r["target_size"], r["seed"]) for r in rows] == [("finetune", 10, 0)]
    assert rows[0]["config"]["benchmark"]["hidden"] == [16, 16]
    config.write_text("methods = [\n")
    assert main(argv) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_shipped_grid_configs_are_valid(tmp_path):
    """Every TOML grid under configs/ expands into checked runs of its benchmark: known
    methods, keys, settings, hyperparameters and candidates."""

    configs = sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.toml"))
    assert len(configs) >= 5
    for path in configs:
        grid = Grid.load(path)
        benchmark = path.stem.split("-")[0]
        if benchmark == "tables":  # one grid for every table of the family
            benchmark = "tables-diamonds"
        folder = {"data_dir": str(tmp_path)} if benchmark == "celeba" else {}  # named, not read
        specs = grid.specs(benchmark, settings=folder)
        assert {s.method for s in specs} == set(grid.methods), path
        assert {s.target_size for s in specs} == set(grid.target_sizes), path


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out == f"pacnet {pacnet.__version__}\n"
