"""Optuna storage for tuning studies: SQLite by default, any database URL for many workers.

Workers share a study through the database. Three settings make that safe:

- SQLite waits up to `SQLITE_BUSY_TIMEOUT_S` seconds for another process's write lock instead of
  failing at once with "database is locked" (the sqlite3 `timeout` connect argument);
- opening the storage is retried, because workers that start together on a new database race to
  create its tables;
- every running trial records a heartbeat. When a worker dies, its trial stops beating. After the
  grace period, the next worker that requests a trial marks it failed and queues a retry with the
  same parameters (`RetryHeartbeatStaleTrialCallback`, the successor of Optuna's
  `RetryFailedTrialCallback`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import sqlite3
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
import sqlalchemy.exc
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from pocketnas.errors import ConfigError

logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_S = 60.0  # how long a SQLite connection waits for another worker's lock
CONNECT_TIMEOUT_S = 10  # how long a PostgreSQL or MySQL connection attempt may take
OPEN_ATTEMPTS = 5  # tries to open the storage while other workers create its tables
MAX_RETRIES = 3  # a trial whose worker died is retried at most this many times


def default_storage_url(out_dir: str | os.PathLike[str]) -> str:
    """Return the SQLite URL of `tune.db` in the output folder."""
    return f"sqlite:///{Path(out_dir).resolve() / 'tune.db'}"


def describe_url(url: str) -> str:
    """Return `url` with its password replaced by ***, for messages and logs."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        # Not a URL that SQLAlchemy reads, but it may still hold USER:PASSWORD@.
        return re.sub(r"([^:/@\s]+:)[^@/\s]*@", r"\1***@", url)


def _engine_kwargs(url: str) -> dict[str, Any]:
    backend = sqlalchemy.engine.make_url(url).get_backend_name()
    if backend == "sqlite":
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    if backend in ("postgresql", "mysql", "mariadb"):
        # Connections idle during a long trial may be closed by the server: test before use.
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}
    return {}


def _check_sqlite_file(url: str) -> None:
    """Check the folder of a SQLite database and, when the file exists, its content.

    Raises:
        ConfigError: the folder is missing, the file is not an SQLite database, fails SQLite's
            quick check (damaged pages), or contains tables but none of Optuna's.
    """
    parsed = sqlalchemy.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    path = Path(parsed.database)
    safe_url = describe_url(url)
    if not path.parent.is_dir():
        raise ConfigError(f"storage {safe_url}: folder {path.parent} does not exist")
    if not path.is_file() or path.stat().st_size == 0:
        return
    try:
        # Read-only, so that a file that is not a study is never written into.
        with contextlib.closing(
            sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=60)
        ) as connection:
            tables = {
                row[0]
                for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            problems = [row[0] for row in connection.execute("PRAGMA quick_check(3)")]
    except sqlite3.DatabaseError as exc:
        if "not a database" in str(exc):
            raise ConfigError(f"storage {safe_url}: not an Optuna database ({exc})") from None
        raise ConfigError(
            f"storage {safe_url}: damaged SQLite database ({exc}); restore it from a copy or "
            "start a new one"
        ) from None
    if problems != ["ok"]:
        # SQLite puts a "*** in database main ***" line before the first problem.
        lines = [line for line in problems[0].splitlines() if not line.startswith("***")]
        raise ConfigError(
            f"storage {safe_url}: damaged SQLite database (quick_check: "
            f"{lines[0] if lines else problems[0]}); restore it from a copy or start a new one"
        )
    if tables and "studies" not in tables:
        shown_tables = ", ".join(sorted(tables)[:5])
        raise ConfigError(
            f"storage {safe_url}: not an Optuna database (its tables: {shown_tables}); give "
            "another file"
        )


def describe_database_error(exc: BaseException) -> str:
    """Return the first line of the database's own error behind `exc`.

    Optuna wraps failed commits in StorageInternalError, whose message guesses at a cause; the
    error that it wraps names the real one.
    """
    cause = exc
    while isinstance(cause, optuna.exceptions.StorageInternalError) and cause.__cause__:
        cause = cause.__cause__
    return _first_line(cause)


def open_storage(
    url: str, heartbeat_interval: int | None = None, grace_period: int | None = None
) -> RDBStorage:
    """Open (and create if needed) the Optuna database at `url`, with heartbeats and retries.

    Without `heartbeat_interval` and `grace_period` the storage records no heartbeats and retries
    no trial, which suits a worker that only reads the study's settings.

    Raises:
        ConfigError: the URL is invalid, its driver is not installed, or the database cannot be
            reached, is damaged or is not an Optuna storage. The message shows the URL without
            its password.
    """
    heartbeat: dict[str, Any] = {}
    if heartbeat_interval is not None and grace_period is not None:
        if heartbeat_interval <= 0 or grace_period <= heartbeat_interval:
            raise ConfigError(
                f"the heartbeat interval must be positive and shorter than the grace period; got "
                f"{heartbeat_interval} s and {grace_period} s"
            )
        with warnings.catch_warnings():
            # Optuna marks the heartbeat experimental; pocketnas relies on it knowingly.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = RetryHeartbeatStaleTrialCallback(
                max_retry=MAX_RETRIES, inherit_intermediate_values=True
            )
        heartbeat = {
            "heartbeat_interval": heartbeat_interval,
            "grace_period": grace_period,
            "heartbeat_stale_trial_callback": retry,
        }
    safe_url = describe_url(url)
    try:
        kwargs = _engine_kwargs(url)
    except sqlalchemy.exc.ArgumentError as exc:
        raise ConfigError(
            f"invalid storage URL {safe_url!r} ({exc}); use sqlite:///PATH or "
            "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        ) from None
    _check_sqlite_file(url)
    for attempt in range(1, OPEN_ATTEMPTS + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, engine_kwargs=kwargs, **heartbeat)
        except sqlalchemy.exc.NoSuchModuleError as exc:
            raise ConfigError(f"storage {safe_url}: unknown database kind ({exc})") from None
        except sqlalchemy.exc.ArgumentError as exc:
            raise ConfigError(f"invalid storage URL {safe_url!r} ({exc})") from None
        except ImportError as exc:
            cause = exc.__cause__ or exc
            raise ConfigError(
                f"storage {safe_url}: the database driver is not installed ({cause}); for "
                "PostgreSQL write postgresql://..., which uses psycopg "
                "(pip install 'psycopg[binary]')"
            ) from None
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError) as exc:
            # Another worker may be creating the tables right now: wait and look again.
            if attempt == OPEN_ATTEMPTS or not _is_creation_race(exc):
                raise ConfigError(f"storage {safe_url}: cannot open ({_first_line(exc)})") from None
            delay = 0.2 * 2**attempt * (1 + random.random())
            logger.info(
                "storage %s: open attempt %d of %d failed (%s); retrying in %.1f s",
                safe_url,
                attempt,
                OPEN_ATTEMPTS,
                _first_line(exc),
                delay,
            )
            time.sleep(delay)
        except sqlalchemy.exc.DatabaseError as exc:
            raise ConfigError(
                f"storage {safe_url}: not an Optuna database ({_first_line(exc)})"
            ) from None
        except RuntimeError as exc:
            # Optuna raises RuntimeError for a database written by another schema version.
            raise ConfigError(f"storage {safe_url}: {_first_line(exc)}") from None
    raise AssertionError("unreachable")


def _is_creation_race(exc: sqlalchemy.exc.DBAPIError) -> bool:
    """Tell whether `exc` comes from another worker creating the same tables or rows."""
    if isinstance(exc, sqlalchemy.exc.IntegrityError):
        return True
    text = str(exc).lower()
    return "already exists" in text or "database is locked" in text


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
