"""Engine creation from a database URL: SQLite (embedded default) or PostgreSQL through psycopg 3.

SQLite connections get WAL journaling (readers do not block the writer), foreign keys enforced (off by
default in SQLite) and a busy timeout, set on every new DBAPI connection. Short PostgreSQL URLs
(``postgresql://``, ``postgres://``) are mapped to the psycopg 3 driver, the one callpath depends on.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import StaticPool

SQLITE_BUSY_TIMEOUT_MS = 5000


def normalize_url(url: str | URL) -> URL:
    """Parse ``url`` and pick the psycopg 3 driver for bare postgresql:// and postgres:// URLs."""
    parsed = make_url(url) if isinstance(url, str) else url
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def is_sqlite_memory(url: URL) -> bool:
    """True for an in-memory SQLite URL (``sqlite://`` or ``sqlite:///:memory:``)."""
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def create_engine_from_url(url: str | URL, *, echo: bool = False, pool_size: int = 5) -> Engine:
    """A sync SQLAlchemy Engine for ``url``, SQLite tuned (WAL, foreign keys) and its directory created."""
    parsed = normalize_url(url)
    kwargs: dict[str, Any] = {"echo": echo}
    if parsed.get_backend_name() == "sqlite":
        # Connections are used from Storage's worker threads, not only the thread that opened them.
        kwargs["connect_args"] = {"check_same_thread": False}
        if is_sqlite_memory(parsed):
            kwargs["poolclass"] = StaticPool  # one shared connection, or every checkout sees an empty DB
        else:
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)  # type: ignore[arg-type]
            kwargs["pool_size"] = pool_size
        engine = create_engine(parsed, **kwargs)
        event.listen(engine, "connect", _sqlite_on_connect)
        return engine
    kwargs["pool_size"] = pool_size
    kwargs["pool_pre_ping"] = True  # survive a PostgreSQL restart without surfacing dead connections
    return create_engine(parsed, **kwargs)


def _sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    """Per-connection SQLite pragmas: WAL, foreign keys, busy timeout, fsync only at checkpoints."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode=WAL")  # a no-op ("memory") for in-memory databases
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable with WAL except for the last commits on power loss
    finally:
        cursor.close()
