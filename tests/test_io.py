"""pacnet.io: atomic writes name the path given, never their temporary copy."""

from __future__ import annotations

import pytest
from torch import nn

import pacnet
from pacnet.errors import PacnetError
from pacnet.io import write_json
from pacnet.tabular import write_table


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
