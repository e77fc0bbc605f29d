"""Fixtures of the tuning tests: small synthetic faces, a tiny preset and a PostgreSQL server."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from postgres_server import PostgresServer
from tune_helpers import write_tiny_preset


@pytest.fixture(autouse=True)
def _one_thread(_two_threads: None) -> None:
    """Train the tiny networks on one thread, because on a busy 2-core machine two threads per
    process slowed them down several times."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tune_data(face_data: Path) -> Path:
    """The shared synthetic face set (24 identities of 8 images at 32x32, 100 pairs)."""
    return face_data


@pytest.fixture(scope="session")
def tiny_preset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_preset(tmp_path_factory.mktemp("tune-preset") / "tiny.yaml")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server of its own on 127.0.0.1, stopped when the session ends.

    Fails (never skips) when the server programs or the driver are missing.
    """
    server = PostgresServer.start()
    try:
        yield server
    finally:
        server.stop()


_database_numbers = itertools.count()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """URL of a new, empty database on the test server."""
    return postgres_server.create_database(f"tune_{next(_database_numbers)}")
