"""The commands' flags: errors name the flag that was given (not the field it sets), unknown
names list the choices, every value shows as a placeholder, and a flag several commands take
is spelled and shown the same way in each (old spellings still read, not shown)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from conftest import TINY_FLAGS, error_of
from torch import nn

import pacnet
from pacnet.benchmarks import BENCHMARKS
from pacnet.benchmarks.mlp import MLP
from pacnet.cli import build_parser, main
from pacnet.errors import PacnetError
from pacnet.experiments.sweep.grid import parse_params

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
