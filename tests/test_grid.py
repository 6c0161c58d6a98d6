"""A grid built in Python (experiments.sweep.grid) is the grid ``pacnet reproduce`` runs, a
config file's keys and target sizes read as documented, and a run spec is resolved once:
typed objects, checked at construction, not changed afterwards."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from conftest import TINY_FLAGS, error_of

from pacnet import PacnetError
from pacnet.benchmarks.friedman import FriedmanConfig
from pacnet.cli import build_parser, main
from pacnet.cli.reproduce import grid_of
from pacnet.experiments.run.spec import RunSpec
from pacnet.experiments.store.store import Store
from pacnet.experiments.sweep.grid import Grid, parse_params
from pacnet.methods.pacnet_method import PacNet, PacNetParams

TOML = """
methods = ["finetune", "pacnet"]
target_sizes = [10, 20]
seeds = 2
seeds_at = {"10" = 3}
select = "cv"
source_compute = ["standard", "equal"]
[search.pacnet]
ratio = [0.5, 0.8]
[params.finetune]
lr = 0.002
"""


def _settings() -> dict:
    names = TINY_FLAGS[::2]
    values = TINY_FLAGS[1::2]
    settings = {n.lstrip("-").replace("-", "_"): v for n, v in zip(names, values, strict=True)}
    return {k: [16, 16] if k == "hidden" else int(v) for k, v in settings.items()}


def test_a_grid_built_in_python_is_the_grid_the_command_line_runs(tmp_path):
    config = tmp_path / "grid.toml"
    config.write_text(TOML)
    grid = Grid.load(config).updated(target_sizes=[10], seeds_at={"10": 1}, select="holdout")
    specs = grid.specs("friedman", quick=True, settings=_settings(), params=parse_params(
        ["pacnet.lam=0.05"], grid.method_names()
    ))  # fmt: skip
    assert [(s.method, s.source_compute, s.seed) for s in specs] == [
        ("finetune", "standard", 0),
        ("finetune", "equal", 0),
        ("pacnet", "standard", 0),
    ]  # fmt: skip  (PAC-Net runs once whatever the source compute)
    pac = specs[-1]
    assert pac.resolved.params == PacNetParams(lam=0.05)
    assert pac.grid() == [{"ratio": 0.5}, {"ratio": 0.8}]
    assert specs[0].resolved.params.lr == 0.002
    db = tmp_path / "runs.sqlite"
    argv = ["reproduce", "friedman", "--config", str(config), "--target-sizes", "10",
            "--seeds-at", "10=1", "--select", "holdout", "--param", "pacnet.lam=0.05",
            "--quick", "--db", str(db), "--out", str(tmp_path / "out"), *TINY_FLAGS]  # fmt: skip
    assert main(argv) == 0
    with Store(db) as store:
        assert store.ids() == {s.run_id() for s in specs}


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        ('seeds = "many"', "seeds must be an integer or a list of integers, got 'many'"),
        ("target_sizes = [10, true]", "target_sizes must be a list of integers"),
        ('seeds_at = {"ten" = 2}', "seeds_at must be a table of target size = seed count"),
        ("params = {pacnet = 1}", "params must be a table of tables"),
        ("jobs = 1.5", "jobs must be an integer, got 1.5"),
        ("methods = [\n", "not valid TOML"),
        ("colour = 1", "unknown keys ['colour']"),
    ],
)
def test_a_grid_file_of_the_wrong_shape_is_one_line(tmp_path, toml, words):
    config = tmp_path / "grid.toml"
    config.write_text(toml)
    with pytest.raises(PacnetError) as caught:
        Grid.load(config)
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_grid_checks_name_the_problem():
    with pytest.raises(PacnetError, match="seeds_at 11: not one of the target sizes"):
        Grid(target_sizes=[10], seeds_at={"11": 2}).specs("friedman")
    with pytest.raises(PacnetError, match="unknown method 'nope'"):
        Grid(methods=["nope"]).check()
    with pytest.raises(PacnetError, match=r"\[search.l2sp\]: method 'l2sp' is not in this sweep"):
        Grid(methods=["pacnet"], search={"l2sp": {"alpha": [1.0]}}).specs("friedman")
    with pytest.raises(PacnetError, match="cannot read 'abc' as"):
        parse_params(["pacnet.lam=abc"], ["pacnet"])
    with pytest.raises(PacnetError, match="pacnet has no hyperparameter 'search'"):
        parse_params(["pacnet.search=1"], ["pacnet"])  # a class variable, not a setting
    assert parse_params(["pacnet.scope=layer", "pacnet.allocate_steps=none"], ["pacnet"]) == {
        "pacnet": {"scope": "layer", "allocate_steps": None}
    }


def test_a_run_spec_is_resolved_once_into_typed_objects():
    spec = RunSpec(
        "friedman", "pacnet", seed=2, target_size=12, quick=True,
        bench_settings={"distance": 3.0}, method_params={"ratio": 0.5},
        select="cv", candidates=({"lam": 0.1}, {"lam": 1.0}),
    )  # fmt: skip
    resolved = spec.resolved
    assert resolved.benchmark.name == "friedman" and resolved.method is PacNet
    assert isinstance(resolved.settings, FriedmanConfig) and resolved.settings.distance == 3.0
    assert resolved.settings == FriedmanConfig(**{**resolved.benchmark.quick, "distance": 3.0})
    assert resolved.params == PacNetParams(ratio=0.5)
    assert spec.make_method({"lam": 1.0}).params == PacNetParams(ratio=0.5, lam=1.0)
    assert spec.identity()["settings"] == {**resolved.benchmark.quick, "distance": 3.0}
    assert RunSpec(**spec.fields()) == spec and RunSpec(**spec.fields()).run_id() == spec.run_id()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.seed = 3  # type: ignore[misc]
    moved = dataclasses.replace(spec, seed=3)  # a new spec, resolved anew
    assert moved.run_id() != spec.run_id() and moved.identity()["seed"] == 3
    with pytest.raises(PacnetError, match="ratio must lie strictly between 0 and 1"):
        dataclasses.replace(spec, candidates=({"ratio": 1.5},))  # every candidate checked
    with pytest.raises(PacnetError, match="unknown setting"):
        RunSpec("friedman", "pacnet", bench_settings={"colour": 1})


ROOT = Path(__file__).parent.parent


FRIEDMAN_TOML = ROOT / "configs" / "friedman.toml"


def test_target_sizes_from_the_command_line_keep_the_config_seeds_of_those_sizes():
    parser = build_parser(["reproduce", "friedman"])
    for sizes, want in (("20", {20: 10}), ("50", {50: 5}), ("10,50", {10: 10, 50: 5})):
        args = parser.parse_args(
            ["reproduce", "friedman", "--config", str(FRIEDMAN_TOML), "--target-sizes", sizes]
        )
        seeds = grid_of(args).seeds_by_size()
        assert {n: len(s) for n, s in seeds.items()} == want
    # seeds_at given with the sizes still has to name sizes of the grid
    grid = Grid.load(FRIEDMAN_TOML).updated(target_sizes=[20], seeds_at={"10": 3})
    with pytest.raises(PacnetError, match="seeds_at 10: not one of the target sizes"):
        grid.seeds_by_size()


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        ("quick = true", "quick is a command-line flag: use --quick"),
        ("device = 'cuda'", "device is a command-line flag: use --device"),
        ("method = ['pacnet']", "did you mean 'methods' for 'method'?"),
        ("[settings]\nquick = true", "quick is a command-line flag: use --quick"),
        ("[settings]\nnosie = 0.1", "did you mean 'noise' for 'nosie'?"),
    ],
)
def test_an_unknown_config_key_says_what_to_use_instead(tmp_path, capsys, toml, words):
    config = tmp_path / "grid.toml"
    config.write_text(toml + "\n")
    line = error_of(["reproduce", "friedman", "--config", str(config), "--quick"], capsys)
    assert words in line and "known: " in line


def test_the_cli_docs_list_every_config_key():
    text = (ROOT / "docs" / "cli.md").read_text()
    section = text[text.index("**The config file.**") :]
    section = section[: section.index("\n\n**", 1)]
    rows = re.findall(r"^\| `(\w+)` \|", section, flags=re.M)
    assert sorted(rows) == sorted(Grid.keys())


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
