"""pacnet.config: settings dataclasses, their flags, and the names they are stored under."""

from __future__ import annotations

import dataclasses

import pytest

from pacnet import PacnetError
from pacnet.benchmarks.friedman import FriedmanConfig
from pacnet.config import config_hash, make, stored_as, to_dict
from pacnet.tabular import TableConfig


def test_a_renamed_field_keeps_its_stored_name_in_files_and_hashes():
    """TableConfig's source_test_fraction and source_val_fraction were source_holdout and
    source_val: the card and the source cache's key still hold those, so a folder or a cache
    written before reads the same and hashes the same."""
    assert stored_as(TableConfig) == {
        "source_test_fraction": "source_holdout",
        "source_val_fraction": "source_val",
    }
    config = TableConfig(source_test_fraction=0.2, source_val_fraction=0.3)
    values = to_dict(config)
    assert values["source_holdout"] == 0.2 and values["source_val"] == 0.3
    assert "source_test_fraction" not in values and "source_val_fraction" not in values
    fields = [f.name for f in dataclasses.fields(TableConfig)]
    stored = {"source_test_fraction": "source_holdout", "source_val_fraction": "source_val"}
    assert list(values) == [stored.get(name, name) for name in fields]  # the same order
    assert make(TableConfig, values) == config
    assert config_hash(to_dict(make(TableConfig, values))) == config_hash(values)


def test_a_renamed_field_is_still_taken_under_its_stored_name():
    config = TableConfig(source_holdout=0.2, source_val=0.3)
    assert (config.source_test_fraction, config.source_val_fraction) == (0.2, 0.3)
    assert (config.source_holdout, config.source_val) == (0.2, 0.3)
    config.source_holdout = 0.25
    assert config.source_test_fraction == 0.25
    assert dataclasses.replace(config, hidden=(8,)).source_holdout == 0.25
    with pytest.raises(TypeError, match="source_test_fraction and source_holdout name one"):
        TableConfig(source_holdout=0.2, source_test_fraction=0.3)
    with pytest.raises(PacnetError, match="name one setting"):
        make(TableConfig, {"source_val": 0.2, "source_val_fraction": 0.3})
    with pytest.raises(PacnetError, match="source_test_fraction must lie in"):
        TableConfig(source_holdout=1.5)


def test_an_unknown_setting_lists_the_known_ones():
    with pytest.raises(PacnetError) as caught:
        make(FriedmanConfig, {"quick": True})
    assert "use --quick" in str(caught.value) and "source_steps" in str(caught.value)
