"""Alembic environment for callpath: targets ``storage.models.Base.metadata``.

The connection (or URL) comes from the caller: ``storage.schema.migrate`` passes an open connection in
``config.attributes["connection"]``; a developer running the ``alembic`` command with
storage/migrations/alembic.ini passes ``-x url=...`` or sets CALLPATH_DATABASE_URL. Batch mode is on so
ALTERs also work on SQLite.
"""
from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection

from storage.engine import create_engine_from_url, normalize_url
from storage.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    """The database URL for command-line use: -x url=..., sqlalchemy.url, or CALLPATH_DATABASE_URL."""
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    url = url or os.environ.get("CALLPATH_DATABASE_URL", "")
    if not url:
        raise RuntimeError("no database URL: pass -x url=... or set CALLPATH_DATABASE_URL")
    return url


def _configure(**kwargs: object) -> None:
    """Configure the migration context with callpath's common options."""
    context.configure(target_metadata=target_metadata, render_as_batch=True, compare_type=True, **kwargs)


def run_migrations_offline() -> None:
    """Emit SQL for ``alembic upgrade --sql`` without connecting."""
    _configure(url=normalize_url(_url()), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run_on(connection: Connection) -> None:
    """Run the migrations on an open connection."""
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Migrate through the caller's connection, or one opened from the URL."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
        return
    engine = create_engine_from_url(_url(), pool_size=1)
    try:
        with engine.begin() as conn:
            _run_on(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
