"""Fuzzing of the readers (slow set: ``pytest -m slow``): whatever the bytes, the checkpoint
and grid-config readers answer with a result or a one-line PacnetError, never a crash."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pacnet
from pacnet import PacnetError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from conftest import small_cnn

    model = small_cnn()
    tasks = pacnet.Tasks(model, pacnet.prune(model, 0.8))
    tasks.add("target")
    path = tmp_path_factory.mktemp("fuzz") / "good.safetensors"
    pacnet.save(path, model, tasks)
    return path.read_bytes()


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
    st.integers(0, 10**6),
)
def test_mutated_checkpoints_load_or_fail_cleanly(checkpoint, tmp_path, edits, cut):
    from conftest import small_cnn

    data = bytearray(checkpoint)
    for position, value in edits:
        data[position % len(data)] = value
    data = data[: max(1, len(data) - cut % 64)]
    path = tmp_path / "mutated.safetensors"
    path.write_bytes(bytes(data))
    try:
        pacnet.load(path, small_cnn(), task="source")
    except PacnetError as exc:
        assert "\n" not in str(exc)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=300))
def test_random_grid_configs_fail_cleanly(tmp_path, text):
    from pathlib import Path

    from pacnet.experiments.sweep.grid import Grid

    path = Path(tmp_path) / "grid.toml"
    path.write_text(text)
    try:  # reading, checking and expanding the grid fail only with one line
        grid = Grid.load(path)
        grid.check()
        grid.candidates(grid.method_names())
    except PacnetError as exc:
        assert "\n" not in str(exc)
