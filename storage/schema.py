"""Schema migrations, run programmatically: ``migrate(url)`` upgrades a database to the newest revision.

The Alembic configuration is built in code from the migrations directory that ships inside the
``storage`` package, so an installed callpath needs no alembic.ini and no working-directory layout;
the connection is handed to storage/migrations/env.py through ``Config.attributes``, which also keeps
URL passwords out of ConfigParser interpolation.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.engine import URL

from .engine import create_engine_from_url

if TYPE_CHECKING:  # alembic is imported lazily: only migrating needs it
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config() -> Config:
    """An Alembic Config pointing at the packaged migrations, independent of the working directory."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    return config


def migrate(url: str | URL | Engine, revision: str = "head") -> None:
    """Upgrade the database at ``url`` (or behind an Engine) to ``revision``, creating it if needed."""
    from alembic import command

    engine = url if isinstance(url, Engine) else create_engine_from_url(url, pool_size=1)
    try:
        with engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        if engine is not url:
            engine.dispose()


def head_revision() -> str | None:
    """The newest revision shipped with this callpath."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(url: str | URL | Engine) -> str | None:
    """The revision the database at ``url`` is at (None for a database never migrated)."""
    from alembic.runtime.migration import MigrationContext

    engine = url if isinstance(url, Engine) else create_engine_from_url(url, pool_size=1)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        if engine is not url:
            engine.dispose()
