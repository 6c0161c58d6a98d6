"""Shared test helpers: tiny models and data, and a private cache folder per test session."""

from __future__ import annotations

import pytest
import torch
from torch import nn

torch.set_num_threads(1)  # tiny models: one thread is faster and avoids oversubscription

TINY_FLAGS = [
    "--source-samples", "400", "--source-steps", "60", "--target-steps", "30",
    "--target-test", "200", "--hidden", "16,16", "--target-pool", "60",
]  # fmt: skip
"""A Friedman benchmark small enough for a test (command-line flags)."""

HANG_GUARD = 1800.0
"""Seconds a test waits for a subprocess, a thread or a condition before it calls it hung:
a guard against hangs, never a time limit (a test passes on a machine many times slower)."""


def error_of(argv: list[str], capsys) -> str:
    """The one error line of a ``pacnet`` command that must fail with exit status 2."""
    from pacnet.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("pacnet: error: ") and err.count("\n") == 1, err
    return err.strip()


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PACNET_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def mlp(seed: int = 0, out: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, out)
    )


class SmallCNN(nn.Module):
    """Conv + BatchNorm body and a linear head, like a miniature ResNet stem."""

    def __init__(self, out: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.head = nn.Linear(8 * 6 * 6, out)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(x.flatten(1))


def small_cnn(seed: int = 0, out: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return SmallCNN(out)


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server of its own for the test session (see tests/postgres.py); the
    tests that use it fail, never skip, where the server binaries or the driver are
    missing."""
    from postgres import PostgresServer

    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.fail("the PostgreSQL tests need the psycopg driver: pip install -e '.[dev]'")
    try:
        server = PostgresServer()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        server.start()
    except RuntimeError as exc:
        server.stop()
        pytest.fail(str(exc))
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server):
    """The URL of a new, empty database on the session's PostgreSQL server."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A new results database of each engine: a SQLite file's path, a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "runs.sqlite")
    return request.getfixturevalue("postgres_url")
