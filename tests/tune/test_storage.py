"""Opening study storage: SQLite defaults, errors without passwords, workers that start together."""

from __future__ import annotations

import multiprocessing
import socket
from pathlib import Path
from typing import Any

import pytest

from pocketnas.errors import ConfigError
from pocketnas.tune.storage import (
    SQLITE_BUSY_TIMEOUT_S,
    default_storage_url,
    describe_url,
    open_storage,
)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_default_url_is_sqlite_in_out(tmp_path: Path) -> None:
    assert default_storage_url(tmp_path) == f"sqlite:///{tmp_path.resolve()}/tune.db"


def test_sqlite_waits_for_locks(tmp_path: Path) -> None:
    storage = open_storage(default_storage_url(tmp_path), 5, 20)
    assert storage.engine_kwargs["connect_args"]["timeout"] == SQLITE_BUSY_TIMEOUT_S
    assert storage.heartbeat_interval == 5
    assert storage.grace_period == 20
    assert storage.get_heartbeat_stale_trial_callback() is not None


def test_describe_url_hides_password() -> None:
    shown = describe_url("postgresql://tuner:s3cret@db.example:5432/studies")
    assert shown == "postgresql://tuner:***@db.example:5432/studies"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("not a url", "invalid storage URL"),
        ("nosuchdb://host/x", "unknown database kind"),
        ("sqlite:////nonexistent-folder/x/tune.db", "folder /nonexistent-folder/x does not exist"),
    ],
)
def test_bad_url_rejected(url: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        open_storage(url, 30, 120)


def test_damaged_sqlite_file_rejected(tmp_path: Path) -> None:
    damaged = tmp_path / "tune.db"
    damaged.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError, match="not an Optuna database"):
        open_storage(f"sqlite:///{damaged}", 30, 120)


def test_unreachable_server_message_hides_password() -> None:
    url = f"postgresql://tuner:s3cret@127.0.0.1:{_closed_port()}/studies"
    with pytest.raises(ConfigError) as caught:
        open_storage(url, 30, 120)
    message = str(caught.value)
    assert "cannot open" in message
    assert "tuner:***@127.0.0.1" in message
    assert "s3cret" not in message


def test_heartbeat_longer_than_grace_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="shorter than the grace period"):
        open_storage(default_storage_url(tmp_path), 60, 60)


def _open_and_report(rounds: list[tuple[str, Any]], queue: multiprocessing.Queue) -> None:
    queue.put(("ready", "ok"))
    for url, start in rounds:
        start.wait(timeout=60)
        try:
            open_storage(url, 30, 120)
            queue.put((url, "ok"))
        except Exception as exc:  # reported to the test process, which asserts on it
            queue.put((url, f"{type(exc).__name__}: {exc}"))


def test_workers_create_tables_together(tmp_path: Path) -> None:
    """Four processes open a new SQLite file at the same moment, three times; all succeed."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    rounds = [(f"sqlite:///{tmp_path / f'race-{n}.db'}", context.Event()) for n in range(3)]
    workers = [context.Process(target=_open_and_report, args=(rounds, queue)) for _ in range(4)]
    for worker in workers:
        worker.start()
    assert [queue.get(timeout=120) for _ in workers] == [("ready", "ok")] * 4
    for url, start in rounds:
        start.set()  # every process waits for it, having reported the round before
        results = [queue.get(timeout=120) for _ in workers]
        assert results == [(url, "ok")] * 4
    for worker in workers:
        worker.join(timeout=60)


def test_describe_unparsable_url_hides_password() -> None:
    assert describe_url("postgres//tuner:s3cret@host") == "postgres//tuner:***@host"
    assert describe_url("bad url://tuner:s3cret@host/x") == "bad url://tuner:***@host/x"
    assert describe_url("postgres:/oops") == "postgres:/oops"
