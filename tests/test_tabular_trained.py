"""pacnet transfer --cache: the source model trained from a table is kept and found again
for the same source rows, settings and seed, with how it was trained (the steps a small
table's cross-validation chose included); anything that changes the model trains anew."""

from __future__ import annotations

import json

from test_tabular_problem import noisy_tables

from pacnet.cli import main
from pacnet.tabular import pipeline
from pacnet.tabular.problem import TableConfig

FLAGS = ["--lam", "0.01", "--ratio", "0.8", "--source-steps", "200", "--target-steps", "20",
         "--hidden", "16,16"]  # fmt: skip


def _transfer(source, target, out, *extra):
    argv = ["transfer", "--source", str(source), "--target", str(target), "--outputs", "y",
            "--out", str(out), *FLAGS, *extra]  # fmt: skip
    assert main(argv) == 0
    return json.loads((out / "card.json").read_text())


def test_a_second_transfer_finds_the_source_model_and_how_it_was_trained(tmp_path, capsys):
    source, target = noisy_tables(tmp_path, 245)  # small: the steps by cross-validation
    cache = tmp_path / "cache"
    first = _transfer(source, target, tmp_path / "a", "--cache", str(cache))
    assert "training the source model" in capsys.readouterr().err
    assert len(list(cache.glob("*.safetensors"))) == 1
    second = _transfer(source, target, tmp_path / "b", "--cache", str(cache))
    err = capsys.readouterr().err
    assert "from the cache" in err and "training the source model" not in err
    assert second["training"] == first["training"]  # the CV's steps and the fit record
    assert second["training"]["source_steps"]["chosen_by"] == "cross-validation"
    assert second["metrics"] == first["metrics"]  # the same source, Allocate's steps alike
    assert second["network"]["sha256"] == first["network"]["sha256"]


def test_what_changes_the_source_model_trains_it_anew(tmp_path, capsys):
    source, target = noisy_tables(tmp_path, 245)
    cache = tmp_path / "cache"
    _transfer(source, target, tmp_path / "a", "--cache", str(cache))
    _transfer(source, target, tmp_path / "b", "--cache", str(cache), "--seed", "1")
    _transfer(source, target, tmp_path / "c", "--cache", str(cache), "--source-lr", "0.002")
    assert len(list(cache.glob("*.safetensors"))) == 3
    capsys.readouterr()
    _transfer(source, target, tmp_path / "d", "--cache", "none")
    assert "from the cache" not in capsys.readouterr().err
    assert len(list(cache.glob("*.safetensors"))) == 3


def test_options_without_a_cache_train_every_time(tmp_path):
    source, target = noisy_tables(tmp_path, 245)
    config = TableConfig(source_steps=100, target_steps=10, hidden=(8, 8))
    options = pipeline.TransferOptions(source, target, outputs=["y"], lam=0.01, ratio=0.8,
                                       config=config)  # fmt: skip
    assert options.cache is None
    outcome = pipeline.transfer(options)
    assert "cache" not in json.dumps(outcome.card["training"])


def test_target_settings_find_the_same_source_model(tmp_path, capsys):
    source, target = noisy_tables(tmp_path, 245)
    cache = tmp_path / "cache"
    _transfer(source, target, tmp_path / "a", "--cache", str(cache))
    capsys.readouterr()
    _transfer(source, target, tmp_path / "b", "--cache", str(cache), "--target-steps", "30",
              "--target-lr", "0.01", "--target-batch", "8")  # fmt: skip
    assert "from the cache" in capsys.readouterr().err
    assert len(list(cache.glob("*.safetensors"))) == 1


def test_no_source_steps_on_a_small_table_train_nothing_without_cross_validation(tmp_path):
    source, target = noisy_tables(tmp_path, 245)
    card = _transfer(source, target, tmp_path / "a", "--cache", "none", "--source-steps", "0")
    assert card["training"]["source"]["trained"]["steps"] == 0
    assert card["training"]["source_steps"]["chosen_by"] != "cross-validation"


def test_a_network_given_as_the_source_table_points_to_source_checkpoint(tmp_path, capsys):
    source, target = noisy_tables(tmp_path, 245)
    _transfer(source, target, tmp_path / "a", "--cache", "none")
    argv = ["transfer", "--source", str(tmp_path / "a" / "net.safetensors"), "--target",
            str(target), "--outputs", "y", "--out", str(tmp_path / "b")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "not a text table: a safetensors file" in err and "--source-checkpoint" in err
