"""What a newcomer meets first on the command line: config files and their keys, the
version, output files and folders, closed pipes, binary tables, errors that name flags,
one label per method variant, and flags spelled the same way in every command."""

from __future__ import annotations

import argparse
import gzip
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HANG_GUARD, TINY_FLAGS
from torch import nn

import pacnet
from pacnet.benchmarks import BENCHMARKS
from pacnet.benchmarks.friedman import FriedmanConfig
from pacnet.benchmarks.mlp import MLP
from pacnet.cli import build_parser, main
from pacnet.cli.outputs import created_by
from pacnet.cli.reproduce import grid_of
from pacnet.config import make
from pacnet.errors import PacnetError
from pacnet.experiments.sweep.grid import Grid, parse_params
from pacnet.io import write_json
from pacnet.tabular import read_table, write_table

ROOT = Path(__file__).parent.parent
FRIEDMAN_TOML = ROOT / "configs" / "friedman.toml"


def error_of(argv: list[str], capsys) -> str:
    """The one error line of a command that must fail with exit status 2."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("pacnet: error: ") and err.count("\n") == 1, err
    return err.strip()


# -- a config file's target sizes and keys ----------------------------------------------


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


def test_an_unknown_setting_lists_the_known_ones():
    with pytest.raises(PacnetError) as caught:
        make(FriedmanConfig, {"quick": True})
    assert "use --quick" in str(caught.value) and "source_steps" in str(caught.value)


def test_the_cli_docs_list_every_config_key():
    text = (ROOT / "docs" / "cli.md").read_text()
    section = text[text.index("**The config file.**") :]
    section = section[: section.index("\n\n**", 1)]
    rows = re.findall(r"^\| `(\w+)` \|", section, flags=re.M)
    assert sorted(rows) == sorted(Grid.keys())


# -- --version ------------------------------------------------------------------------


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out == f"pacnet {pacnet.__version__}\n"


# -- files and folders to write -------------------------------------------------------


@pytest.mark.parametrize("name", ["pred.xlsx", "pred.json", "pred"])
def test_predict_refuses_an_output_name_it_does_not_write(tmp_path, capsys, name):
    table = tmp_path / "in.csv"
    table.write_text("x\n1\n")
    out = tmp_path / name
    argv = ["predict", str(tmp_path / "model"), "--input", str(table), "--out", str(out)]
    line = error_of(argv, capsys)
    assert str(out) in line and ".csv" in line and ".parquet" in line
    assert not out.exists()


@pytest.mark.parametrize("name", ["p.csv", "p.tsv", "p.csv.gz", "p.tsv.gz"])
def test_write_table_writes_what_the_name_says(tmp_path, name):
    path = tmp_path / name
    write_table(path, {"id": ["a", "b"], "y": [1.5, -2.0]})
    text = gzip.decompress(path.read_bytes()).decode() if name.endswith(".gz") else None
    text = text if text is not None else path.read_text()
    assert text.splitlines()[0] == ("id\ty" if ".tsv" in name else "id,y")
    assert read_table(path).numbers(["y"], "test")[:, 0].tolist() == [1.5, -2.0]


def test_predict_into_a_folder_names_the_folder(tmp_path, capsys):
    table = tmp_path / "in.csv"
    table.write_text("x\n1\n")
    folder = tmp_path / "preds"
    folder.mkdir()
    argv = ["predict", str(tmp_path / "model"), "--input", str(table), "--out", str(folder)]
    line = error_of(argv, capsys)
    assert f"{folder}: is a directory" in line and ".tmp" not in line


def test_atomic_writers_name_the_path_given_not_a_temporary_file(tmp_path):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    tasks = pacnet.Tasks(model, pacnet.prune(model, 0.5))
    tasks.add("target")
    writers = [
        lambda: pacnet.save(tmp_path, model, tasks),
        lambda: pacnet.save_network(tmp_path, model),
        lambda: write_json(tmp_path, {"a": 1}),
        lambda: write_table(tmp_path, {"y": [1.0]}),
    ]
    for write in writers:
        with pytest.raises(PacnetError) as caught:
            write()
        message = str(caught.value)
        assert message.startswith(f"{tmp_path}: is a directory") and ".tmp" not in message
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary file left either


def test_a_write_that_fails_names_the_file_not_its_temporary_copy(tmp_path):
    def fail(tmp: str) -> None:
        raise OSError(28, "No space left on device", tmp)

    from pacnet.io import write_bytes_atomic

    with pytest.raises(PacnetError, match=r"cannot write .*x\.json: No space left") as caught:
        write_bytes_atomic(tmp_path / "x.json", fail)
    assert ".tmp" not in str(caught.value) and list(tmp_path.iterdir()) == []


def test_a_failed_run_leaves_no_empty_output_folder(tmp_path, capsys):
    out = tmp_path / "new" / "o53"
    argv = ["run", "friedman", "--method", "finetune", "--quick", *TINY_FLAGS]
    line = error_of([*argv, "--target-size", "100000", "--out", str(out)], capsys)
    assert "exceeds the pool" in line
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    error_of([*argv, "--target-size", "100000", "--out", str(existing)], capsys)
    assert existing.is_dir()  # it was there before: it stays


def test_a_new_folder_that_holds_a_file_stays(tmp_path):
    out = tmp_path / "a" / "b"
    with pytest.raises(KeyboardInterrupt), created_by(out):
        out.mkdir(parents=True)
        (out / "result.json").write_text("{}")
        raise KeyboardInterrupt
    assert (out / "result.json").is_file()
    with pytest.raises(PacnetError), created_by(tmp_path / "c" / "pred.csv"):
        (tmp_path / "c").mkdir()
        raise PacnetError("late")
    assert not (tmp_path / "c").exists()


# -- a closed pipe ----------------------------------------------------------------------


def test_a_closed_output_pipe_ends_quietly_with_141(tmp_path):
    read, write = os.pipe()
    os.close(read)  # the reader is gone before pacnet writes anything
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pacnet.cli", "benchmarks"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=HANG_GUARD,
        )
    finally:
        os.close(write)
    assert proc.stderr == ""
    assert proc.returncode == 141


# -- binary files given as tables --------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"PAR1\x15\x04\x15\x10\x00\x00", "a Parquet file; name it .parquet"),
        (gzip.compress(b"x,y\n1,2\n"), "gzip-compressed"),
        (b"PK\x03\x04\x14\x00\x06\x00", "a zip archive"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not a text table (binary data)"),
    ],
)
def test_a_binary_file_is_not_read_as_a_table(tmp_path, data, words):
    path = tmp_path / "data.csv"
    path.write_bytes(data)
    with pytest.raises(PacnetError, match=re.escape(words)) as caught:
        read_table(path)
    assert str(path) in str(caught.value) and "cells" not in str(caught.value)


def test_transfer_says_a_binary_target_is_not_a_text_table(tmp_path, capsys):
    binary = tmp_path / "measured.csv"
    binary.write_bytes(bytes(range(256)) * 8)
    argv = ["transfer", "--source", str(binary), "--target", str(binary), "--outputs", "y"]
    line = error_of([*argv, "--out", str(tmp_path / "o")], capsys)
    assert "not a text table" in line and not (tmp_path / "o").exists()


def test_tables_custom_says_a_binary_data_file_is_not_a_text_table(tmp_path, capsys):
    data = tmp_path / "rows.csv"
    data.write_bytes(b"PAR1" + bytes(range(256)))
    argv = ["run", "tables-custom", "--method", "finetune", "--data", str(data), "--output",
            "y", "--split-by", "g", "--target-values", "a"]  # fmt: skip
    argv += ["--out", str(tmp_path / "o")]
    line = error_of(argv, capsys)
    assert line.endswith(f"{data}: not a text table: a Parquet file; save it as CSV")
    assert not (tmp_path / "o").exists()


# -- errors name the flags ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (["--source-steps", "-5"], "--source-steps must be >= 0, got -5"),
        (["--target-batch", "0"], "--target-batch must be >= 1, got 0"),
        (["--target-val-fraction", "2"], "--target-val-fraction must lie in (0, 1), got 2.0"),
        (["--lam", "-1"], "--lam (λ) must be >= 0, got -1.0"),
        (["--activation", "sigmoidx"], "--activation must be one of relu, tanh, gelu, silu"),
        (["--source-compute", "more"], "--source-compute must be one of standard, equal"),
    ],
)
@pytest.mark.parametrize("command", ["run", "tune"])
def test_a_bad_setting_names_its_flag(tmp_path, capsys, command, flags, line):
    argv = [command, "friedman", "--method", "pacnet", *flags]
    got = error_of([*argv, "--out", str(tmp_path / "o")] if command == "run" else argv, capsys)
    assert got.startswith(f"pacnet: error: {line}"), got
    assert not (tmp_path / "o").exists()


def test_reproduce_and_transfer_name_their_flags_too(tmp_path, capsys):
    line = error_of(["reproduce", "friedman", "--source-steps", "-5"], capsys)
    assert line == "pacnet: error: --source-steps must be >= 0, got -5"
    target = tmp_path / "t.csv"
    target.write_text("x,y\n1,2\n")
    common = ["transfer", "--target", str(target), "--outputs", "y", "--out", str(tmp_path / "o")]
    line = error_of([*common, "--source-val", "2"], capsys)  # the old spelling still reads
    assert line == "pacnet: error: --source-val-fraction must lie in (0, 1), got 2.0"
    line = error_of([*common, "--ratio", "1.5"], capsys)
    assert line.startswith("pacnet: error: --ratio must lie strictly between 0 and 1")


def test_a_settings_file_keeps_its_own_names(tmp_path, capsys):
    config = tmp_path / "grid.toml"
    config.write_text("[settings]\nsource_steps = -5\n")
    line = error_of(["reproduce", "friedman", "--config", str(config)], capsys)
    assert line == "pacnet: error: source_steps must be >= 0, got -5"  # a key, not a flag


def test_an_unknown_activation_lists_the_choices():
    with pytest.raises(PacnetError, match="one of relu, tanh, gelu, silu, got 'sigmoidx'"):
        MLP(3, (4,), 1, "sigmoidx")


def test_other_unknown_names_list_the_choices(tmp_path, capsys):
    with pytest.raises(PacnetError) as caught:
        parse_params(["pacnet.lamb=1"], ["pacnet"])
    assert "did you mean 'lam' for 'lamb'?" in str(caught.value)
    assert "its hyperparameters: ratio, lam," in str(caught.value)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    tasks = pacnet.Tasks(model, pacnet.prune(model, 0.5))
    tasks.add("target")
    with pytest.raises(PacnetError, match="unknown task 'tagret'; known: source, target"):
        tasks.add("second", copy_from="tagret")
    run = tmp_path / "run"
    argv = ["run", "friedman", "--method", "finetune", "--quick", *TINY_FLAGS, "--out", str(run)]
    assert main(argv) == 0
    line = error_of(["report", "--results", str(run), "--across", "widht"], capsys)
    assert "their settings: " in line and "hidden" in line


# -- one label per method variant ---------------------------------------------------------


def test_reproduce_and_report_label_a_hyperparameter_row_alike(tmp_path, capsys):
    db, table_dir, report_dir = tmp_path / "runs.sqlite", tmp_path / "t", tmp_path / "r"
    argv = ["reproduce", "friedman", "--methods", "pacnet", "--target-sizes", "10", "--seeds",
            "1", "--quick", *TINY_FLAGS, "--param", "pacnet.lam=0.1", "--db", str(db),
            "--out", str(table_dir)]  # fmt: skip
    assert main(argv) == 0
    assert main(["report", "--db", str(db), "--out", str(report_dir)]) == 0
    capsys.readouterr()
    assert "| pacnet (lam=0.1) |" in (table_dir / "table.md").read_text()
    assert "| pacnet (lam=0.1) |" in (report_dir / "report.md").read_text()
    assert "| pacnet |" not in (table_dir / "table.md").read_text()


# -- flags spelled the same way in every command --------------------------------------------


def subparsers(argv: list[str]) -> dict[str, argparse.ArgumentParser]:
    parser = build_parser(argv)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def every_parser() -> list[tuple[str, argparse.ArgumentParser]]:
    """Every command's parser, with each benchmark's settings and each method's
    hyperparameters as flags of run, reproduce and tune."""
    found = list(subparsers([]).items())
    for bench in BENCHMARKS:
        for command in ("run", "reproduce", "tune"):
            found.append((command, subparsers([command, bench, "--method", "pacnet"])[command]))
    found.append(("run", subparsers(["run", "friedman", "--method", "l2sp"])["run"]))
    return found


def valued(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The options and positionals that take a value, as the help shows them."""
    return [
        a
        for a in parser._actions
        if a.nargs != 0 and a.help != argparse.SUPPRESS and a.dest != "help"
    ]


def shown(action: argparse.Action) -> str:
    if action.choices is not None and action.metavar is None:
        return "{" + ",".join(map(str, action.choices)) + "}"
    return action.metavar or (action.dest.upper() if action.option_strings else action.dest)


PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*(,[A-Z][A-Z0-9_]*)*(,\.\.\.)?|[A-Z.]+=[A-Z.,]+")
LITERAL = re.compile(r"[a-z0-9]+")


def test_every_value_is_shown_as_an_uppercase_placeholder_or_its_literal_values():
    for command, parser in every_parser():
        for action in valued(parser):
            text = shown(action)
            if text.startswith("{"):
                continue  # argparse lists the choices
            parts = text.split("|")
            assert all(PLACEHOLDER.fullmatch(p) or LITERAL.fullmatch(p) for p in parts), (
                command,
                action.option_strings or action.dest,
                text,
            )
            assert any(PLACEHOLDER.fullmatch(p) for p in parts) or len(parts) > 1, (command, text)


def test_a_path_is_shown_as_dir_file_or_path():
    for command, parser in every_parser():
        for action in valued(parser):
            if action.type is Path:
                assert shown(action) in ("DIR", "FILE", "PATH"), (command, action.option_strings)


SAME_NAME_OTHER_MEANING = {
    ("predict", "--out"): "predict writes a table, the other commands a folder",
    ("status", "--grid"): "a grid of runs; the pde benchmark's --grid: its grid points",
    ("bench", "--modes"): "the modes timed; the pde benchmark's --modes: Fourier modes",
}


def test_a_flag_several_commands_take_looks_the_same_in_each():
    seen: dict[str, tuple[str, str]] = {}
    for command, parser in every_parser():
        for action in valued(parser):
            for option in action.option_strings:
                if (command, option) in SAME_NAME_OTHER_MEANING:
                    continue
                first = seen.setdefault(option, (command, shown(action)))
                assert first[1] == shown(action), (option, first, command, shown(action))


def test_a_share_of_rows_is_a_fraction_flag():
    for command, parser in every_parser():
        for action in valued(parser):
            if action.option_strings and "share of" in (action.help or ""):
                assert action.option_strings[0].endswith("-fraction"), (command, action.help)


def test_the_old_spellings_still_read_but_are_not_shown():
    parser = build_parser([])
    args = parser.parse_args(
        [
            "transfer",
            "--target",
            "t.csv",
            "--out",
            "o",
            "--source-holdout",
            "0.2",
            "--source-val",
            "0.3",
        ]
    )
    new = parser.parse_args(
        [
            "transfer",
            "--target",
            "t.csv",
            "--out",
            "o",
            "--source-test-fraction",
            "0.2",
            "--source-val-fraction",
            "0.3",
        ]
    )
    assert vars(args) == vars(new)
    text = subparsers([])["transfer"].format_help()
    assert "--source-holdout" not in text and "--source-val " not in text
    assert "--source-test-fraction" in text and "--source-val-fraction" in text


def test_the_commands_that_train_a_source_model_take_cache():
    parsers = subparsers([])
    with_cache = {c for c, p in parsers.items() if "--cache" in p._option_string_actions}
    assert {"run", "reproduce", "tune", "transfer"} <= with_cache


def test_positional_and_required_values_show_in_the_usage():
    parsers = subparsers([])
    assert "BENCHMARK" in parsers["run"].format_usage()
    usage = parsers["transfer"].format_usage()
    assert "--target FILE" in usage and "--out DIR" in usage
    # --outputs is needed with a source table; a checkpoint names the outputs itself
    assert "(--source FILE --outputs COLUMNS | --source-checkpoint PATH)" in usage
    assert "[--outputs" not in usage


def test_hyperparameters_for_an_unknown_method_are_refused(tmp_path, capsys):
    config = tmp_path / "grid.toml"
    config.write_text("[params.pacnett]\nlam = 0.1\n")
    argv = ["reproduce", "friedman", "--config", str(config), "--quick",
            "--db", str(tmp_path / "r.sqlite"), "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "[params.pacnett]: unknown method" in err and "did you mean 'pacnet'" in err


def test_hidden_widths_name_the_flag(tmp_path, capsys):
    argv = ["run", "friedman", "--method", "pacnet", "--quick", "--hidden", "0,4",
            "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(argv) == 2
    assert "--hidden must hold widths >= 1, got [0, 4]" in capsys.readouterr().err
