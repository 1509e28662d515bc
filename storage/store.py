"""``Storage``: the asyncio-facing data access the SIP core and the web layer call.

Choice: a synchronous SQLAlchemy engine driven from a small dedicated thread pool, not SQLAlchemy's
asyncio extension. Reasons:
- SQLAlchemy 2.1 made greenlet (which its asyncio extension needs) an optional extra, and aiosqlite itself
  runs each connection on a thread: the async stack would add two dependencies and a greenlet switch per
  statement to end up on a thread anyway for the default SQLite install;
- one sync code path (``storage.users``) serves the asyncio server, the CLI and Alembic (which is sync),
  with the same drivers (stdlib sqlite3, psycopg 3) everywhere;
- the queries are single-row primary/unique-key lookups (digest auth, extension routing) that take tens of
  microseconds; the pool (``workers`` threads, one pooled connection each) bounds database concurrency
  and keeps the event loop free while a query waits on disk or network.
ORM objects returned by the async methods are detached snapshots: attribute reads are fine, writes are
not persisted (use the mutating methods).
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, sessionmaker

from . import users
from .engine import create_engine_from_url
from .models import SipUser

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_WORKERS = 4


class Storage:
    """Owns the engine and the database worker threads; async methods for the event loop, sync sessions for the rest."""

    def __init__(self, url: str | URL | None = None, *, engine: Engine | None = None, workers: int = DEFAULT_WORKERS):
        """Open ``url`` (or adopt ``engine``); no connection is made until the first query."""
        if (url is None) == (engine is None):
            raise ValueError("Storage needs exactly one of url or engine")
        self._owns_engine = engine is None
        self.engine: Engine = engine if engine is not None else create_engine_from_url(url, pool_size=workers)  # type: ignore[arg-type]
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="callpath-db")
        self._closed = False

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A Session in a transaction: committed on normal exit, rolled back on an exception."""
        with self._sessions() as session, session.begin():
            yield session

    def migrate(self) -> None:
        """Upgrade this database's schema to the newest Alembic revision (blocking)."""
        from .schema import migrate

        migrate(self.engine)

    async def run(self, fn: Callable[Concatenate[Session, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(session, *args, **kwargs)`` in one transaction on a worker thread and await its result."""
        if self._closed:
            raise RuntimeError("Storage is closed")

        def call() -> T:
            with self.session() as session:
                return fn(session, *args, **kwargs)

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    # SIP accounts ------------------------------------------------------------------------------------

    async def get_sip_user(self, username: str) -> SipUser | None:
        """The account with this username, or None (digest authentication, registrar)."""
        return await self.run(users.get_sip_user, username)

    async def get_sip_user_by_extension(self, extension: str) -> SipUser | None:
        """The account owning this extension, or None (routing a dialled number)."""
        return await self.run(users.get_sip_user_by_extension, extension)

    async def list_sip_users(self) -> list[SipUser]:
        """All accounts ordered by username."""
        return await self.run(users.list_sip_users)

    async def add_sip_user(
        self,
        username: str,
        password: str,
        realm: str,
        *,
        extension: str | None = None,
        display_name: str = "",
        enabled: bool = True,
    ) -> SipUser:
        """Create an account (HA1 for ``realm``); raises DuplicateSipUserError or InvalidSipUserError."""
        return await self.run(
            users.add_sip_user,
            username,
            password,
            realm,
            extension=extension,
            display_name=display_name,
            enabled=enabled,
        )

    async def delete_sip_user(self, username: str) -> bool:
        """Delete the account; True if it existed."""
        return await self.run(users.delete_sip_user, username)

    async def set_password(self, username: str, password: str, realm: str) -> SipUser:
        """Recompute the account's HA1 hashes; raises SipUserNotFoundError."""
        return await self.run(users.set_password, username, password, realm)

    async def set_enabled(self, username: str, enabled: bool) -> SipUser:
        """Enable or disable the account; raises SipUserNotFoundError."""
        return await self.run(users.set_enabled, username, enabled)

    # lifecycle ---------------------------------------------------------------------------------------

    def close(self) -> None:
        """Wait for queued queries, stop the worker threads and close pooled connections."""
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=True)
        if self._owns_engine:
            self.engine.dispose()

    async def aclose(self) -> None:
        """``close()`` without blocking the event loop."""
        await asyncio.to_thread(self.close)

    async def __aenter__(self) -> Storage:
        """Use as ``async with Storage(url) as storage:``."""
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        """Close on leaving the ``async with`` block."""
        await self.aclose()

    def __enter__(self) -> Storage:
        """Use as ``with Storage(url) as storage:`` from synchronous code (CLI, tests)."""
        return self

    def __exit__(self, *exc_info: Any) -> None:
        """Close on leaving the ``with`` block."""
        self.close()


