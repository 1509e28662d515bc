"""SQLAlchemy 2 declarative models (typed ``Mapped[...]``) for callpath's relational data.

Only what exists so far lives here: SIP accounts. Every table goes on ``Base.metadata``, which the
Alembic environment (storage/migrations/env.py) compares against to autogenerate revisions.
"""
from __future__ import annotations

import hashlib
from datetime import datetime, timezone

from sqlalchemy import DateTime, MetaData, String, TypeDecorator, func, true
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Deterministic constraint names: Alembic (and SQLite batch mode in particular) needs named constraints
# to alter or drop them later, and the names must be identical on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

DIGEST_ALGORITHMS = ("MD5", "SHA-256")


class Base(DeclarativeBase):
    """Declarative base whose metadata carries the shared naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite hands back naive values; we re-attach UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Store aware datetimes converted to UTC; naive ones are taken to be UTC already."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc) if dialect.name != "sqlite" else value
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Return UTC-aware datetimes whatever the backend stored."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


def utcnow() -> datetime:
    """The current time as an aware UTC datetime (the models' Python-side default)."""
    return datetime.now(timezone.utc)


def compute_ha1(username: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    """Digest HA1 (RFC 7616): hex hash of ``username:realm:password`` with MD5 or SHA-256."""
    data = f"{username}:{realm}:{password}".encode("utf-8")
    algo = algorithm.upper().removesuffix("-SESS")
    if algo == "MD5":
        return hashlib.md5(data).hexdigest()
    if algo == "SHA-256":
        return hashlib.sha256(data).hexdigest()
    raise ValueError(f"unsupported digest algorithm {algorithm!r} (supported: {', '.join(DIGEST_ALGORITHMS)})")


class SipUser(Base):
    """A SIP account (AOR sip:username@domain) with digest credentials stored only as HA1 hashes.

    No password is kept in clear or reversibly encrypted: ``ha1_md5`` and ``ha1_sha256`` are computed for
    ``realm`` when the account is created or its password is set. As with Kamailio's ``subscriber`` table,
    changing the SIP domain/realm invalidates them: the account must get its password set again (``callpath
    user passwd``); until then ``ha1()`` returns None for the new realm and authentication fails.
    """

    __tablename__ = "sip_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    extension: Mapped[str | None] = mapped_column(String(32), unique=True)
    display_name: Mapped[str] = mapped_column(String(128), default="", server_default="")
    realm: Mapped[str] = mapped_column(String(255))
    ha1_md5: Mapped[str] = mapped_column(String(32))
    ha1_sha256: Mapped[str] = mapped_column(String(64))
    enabled: Mapped[bool] = mapped_column(default=True, server_default=true())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, server_default=func.now())

    def ha1(self, algorithm: str, realm: str | None = None) -> str | None:
        """The stored HA1 for ``algorithm`` (MD5, SHA-256, or their -sess forms); None if ``realm`` differs."""
        if realm is not None and realm != self.realm:
            return None
        algo = algorithm.upper().removesuffix("-SESS")
        if algo == "MD5":
            return self.ha1_md5
        if algo == "SHA-256":
            return self.ha1_sha256
        return None

    def set_credentials(self, password: str, realm: str) -> None:
        """Replace both HA1 hashes with ones computed for ``password`` in ``realm``."""
        self.realm = realm
        self.ha1_md5 = compute_ha1(self.username, realm, password, "MD5")
        self.ha1_sha256 = compute_ha1(self.username, realm, password, "SHA-256")

    def __repr__(self) -> str:
        """Identify the account without its credentials."""
        return f"SipUser(username={self.username!r}, extension={self.extension!r}, enabled={self.enabled})"
