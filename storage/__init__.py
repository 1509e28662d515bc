"""storage: SQLAlchemy models, Alembic migrations and the data access the rest of callpath calls.

``Storage(url)`` is the entry point for asyncio code (``await storage.get_sip_user(name)``);
``storage.migrate(url)`` brings a database to the newest schema; ``storage.users`` holds the same
operations as plain functions on a Session for synchronous callers (CLI, tests).
"""
from .engine import create_engine_from_url, normalize_url
from .models import Base, SipUser, compute_ha1
from .schema import current_revision, head_revision, migrate
from .store import Storage
from .users import (
    DuplicateSipUserError,
    InvalidSipUserError,
    SipUserNotFoundError,
    StorageError,
)

__all__ = [
    "Base",
    "DuplicateSipUserError",
    "InvalidSipUserError",
    "SipUser",
    "SipUserNotFoundError",
    "Storage",
    "StorageError",
    "compute_ha1",
    "create_engine_from_url",
    "current_revision",
    "head_revision",
    "migrate",
    "normalize_url",
]
