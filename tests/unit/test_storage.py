"""storage on SQLite: migrations, pragmas, HA1 credentials and the SIP account API (async and sync)."""
from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

import storage
from storage import (
    Base,
    DuplicateSipUserError,
    InvalidSipUserError,
    SipUser,
    SipUserNotFoundError,
    Storage,
    compute_ha1,
    create_engine_from_url,
    current_revision,
    head_revision,
    migrate,
    normalize_url,
    users,
)

REALM = "pbx.example.com"


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A migrated SQLite database in a not-yet-existing subdirectory of tmp_path."""
    url = f"sqlite:///{tmp_path / 'data' / 'callpath.db'}"
    migrate(url)
    return url


@pytest.fixture
async def store(db_url: str):
    """An open Storage on the migrated SQLite database."""
    async with Storage(db_url) as s:
        yield s


def test_ha1_known_vectors() -> None:
    # RFC 2617 section 3.5 example credentials.
    assert compute_ha1("Mufasa", "testrealm@host.com", "Circle Of Life") == "939e7578ed9e3c518a452acee763bce9"
    assert compute_ha1("Mufasa", "testrealm@host.com", "Circle Of Life", "md5-sess") == (
        "939e7578ed9e3c518a452acee763bce9"
    )
    assert compute_ha1("Mufasa", "http-auth@example.org", "Circle of Life", "SHA-256") == hashlib.sha256(
        b"Mufasa:http-auth@example.org:Circle of Life"
    ).hexdigest()
    with pytest.raises(ValueError, match="unsupported digest algorithm"):
        compute_ha1("a", "b", "c", "SHA-512-256")


def test_migrate_creates_directory_file_and_schema(tmp_path: Path, db_url: str) -> None:
    assert (tmp_path / "data" / "callpath.db").is_file()
    assert current_revision(db_url) == head_revision() == "0001"
    migrate(db_url)  # idempotent
    assert current_revision(db_url) == "0001"
    engine = create_engine_from_url(db_url)
    try:
        columns = {c["name"] for c in inspect(engine).get_columns("sip_users")}
        assert columns == {
            "id", "username", "extension", "display_name", "realm", "ha1_md5", "ha1_sha256", "enabled", "created_at"
        }
    finally:
        engine.dispose()


def test_current_revision_of_an_unmigrated_database(tmp_path: Path) -> None:
    assert current_revision(f"sqlite:///{tmp_path / 'empty.db'}") is None


def test_models_match_migrations(db_url: str) -> None:
    engine = create_engine_from_url(db_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert diff == []
    finally:
        engine.dispose()


def test_sqlite_pragmas(db_url: str) -> None:
    engine = create_engine_from_url(db_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 5000
    finally:
        engine.dispose()


def test_normalize_url_picks_psycopg() -> None:
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgresql+psycopg://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("sqlite:///x.db").drivername == "sqlite"


async def test_add_and_get(store: Storage) -> None:
    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    user = await store.add_sip_user("alice", "s3cret", REALM, extension="1001", display_name="Alice")
    assert isinstance(user, SipUser) and user.id is not None
    got = await store.get_sip_user("alice")
    assert got is not None
    assert (got.username, got.extension, got.display_name, got.enabled, got.realm) == (
        "alice", "1001", "Alice", True, REALM
    )
    assert got.ha1_md5 == hashlib.md5(f"alice:{REALM}:s3cret".encode()).hexdigest()
    assert got.ha1_sha256 == hashlib.sha256(f"alice:{REALM}:s3cret".encode()).hexdigest()
    assert got.created_at.tzinfo is not None and before <= got.created_at <= datetime.now(timezone.utc)
    by_ext = await store.get_sip_user_by_extension("1001")
    assert by_ext is not None and by_ext.username == "alice"
    assert await store.get_sip_user("nobody") is None
    assert await store.get_sip_user("ALICE") is None  # SIP user parts are case-sensitive
    assert await store.get_sip_user_by_extension("9999") is None


async def test_no_clear_password_is_stored(store: Storage, db_url: str) -> None:
    await store.add_sip_user("alice", "VerySecretPassword", REALM)
    raw = Path(db_url.removeprefix("sqlite:///"))
    with sqlite3.connect(raw) as conn:
        rows = conn.execute("SELECT * FROM sip_users").fetchall()
    assert rows and all("VerySecretPassword" not in str(value) for value in rows[0])


async def test_ha1_by_algorithm_and_realm(store: Storage) -> None:
    user = await store.add_sip_user("alice", "pw", REALM)
    assert user.ha1("MD5") == compute_ha1("alice", REALM, "pw", "MD5")
    assert user.ha1("MD5-sess", REALM) == user.ha1_md5
    assert user.ha1("SHA-256", REALM) == compute_ha1("alice", REALM, "pw", "SHA-256")
    assert user.ha1("sha-256-sess") == user.ha1_sha256
    assert user.ha1("MD5", "other.realm") is None  # realm changed since the password was set
    assert user.ha1("SHA-512-256") is None


async def test_extension_is_optional_and_nullable_unique(store: Storage) -> None:
    await store.add_sip_user("a", "pw", REALM)
    await store.add_sip_user("b", "pw", REALM, extension="")  # empty means none
    users_ = await store.list_sip_users()
    assert [(u.username, u.extension) for u in users_] == [("a", None), ("b", None)]


async def test_duplicates_are_reported_by_field(store: Storage) -> None:
    await store.add_sip_user("alice", "pw", REALM, extension="1001")
    with pytest.raises(DuplicateSipUserError, match="SIP user 'alice' already exists"):
        await store.add_sip_user("alice", "pw2", REALM, extension="1002")
    with pytest.raises(DuplicateSipUserError, match="extension 1001 is already assigned to 'alice'"):
        await store.add_sip_user("bob", "pw", REALM, extension="1001")
    assert [u.username for u in await store.list_sip_users()] == ["alice"]


async def test_unique_constraints_hold_without_the_precheck(store: Storage) -> None:
    await store.add_sip_user("alice", "pw", REALM, extension="1001")

    def insert_clash(session) -> None:
        user = SipUser(username="bob", extension="1001", display_name="")
        user.set_credentials("pw", REALM)
        session.add(user)
        session.flush()

    with pytest.raises(Exception) as info:
        await store.run(insert_clash)
    assert "UNIQUE" in str(info.value).upper()
    assert await store.get_sip_user("bob") is None  # the failed transaction was rolled back


@pytest.mark.parametrize(
    ("username", "extension", "password", "realm", "fragment"),
    [
        ("", None, "pw", REALM, "invalid username"),
        ("al:ice", None, "pw", REALM, "invalid username"),
        ("alice@x", None, "pw", REALM, "invalid username"),
        ("a" * 65, None, "pw", REALM, "invalid username"),
        ("alice", "10 01", "pw", REALM, "invalid extension"),
        ("alice", "abc", "pw", REALM, "invalid extension"),
        ("alice", None, "", REALM, "password must not be empty"),
        ("alice", None, "pw", "", "realm must not be empty"),
    ],
)
async def test_invalid_accounts_are_refused(
    store: Storage, username: str, extension: str | None, password: str, realm: str, fragment: str
) -> None:
    with pytest.raises(InvalidSipUserError, match=fragment):
        await store.add_sip_user(username, password, realm, extension=extension)
    assert await store.list_sip_users() == []


async def test_list_is_ordered_by_username(store: Storage) -> None:
    for name, ext in (("carol", "1003"), ("alice", "1001"), ("bob", None)):
        await store.add_sip_user(name, "pw", REALM, extension=ext)
    assert [u.username for u in await store.list_sip_users()] == ["alice", "bob", "carol"]


async def test_delete(store: Storage) -> None:
    await store.add_sip_user("alice", "pw", REALM, extension="1001")
    assert await store.delete_sip_user("alice") is True
    assert await store.delete_sip_user("alice") is False
    assert await store.get_sip_user("alice") is None
    await store.add_sip_user("bob", "pw", REALM, extension="1001")  # the extension is free again


async def test_set_password_recomputes_ha1_for_the_new_realm(store: Storage) -> None:
    old = await store.add_sip_user("alice", "old", REALM)
    new = await store.set_password("alice", "new", "new.example.com")
    assert new.realm == "new.example.com"
    assert new.ha1_md5 == compute_ha1("alice", "new.example.com", "new") != old.ha1_md5
    assert new.ha1_sha256 == compute_ha1("alice", "new.example.com", "new", "SHA-256")
    stored = await store.get_sip_user("alice")
    assert stored is not None and stored.ha1("MD5", "new.example.com") == new.ha1_md5
    with pytest.raises(SipUserNotFoundError):
        await store.set_password("nobody", "pw", REALM)
    with pytest.raises(InvalidSipUserError):
        await store.set_password("alice", "", REALM)


async def test_enable_disable(store: Storage) -> None:
    await store.add_sip_user("alice", "pw", REALM, enabled=False)
    assert (await store.get_sip_user("alice")).enabled is False  # type: ignore[union-attr]
    await store.set_enabled("alice", True)
    assert (await store.get_sip_user("alice")).enabled is True  # type: ignore[union-attr]
    with pytest.raises(SipUserNotFoundError):
        await store.set_enabled("nobody", True)


async def test_concurrent_lookups(store: Storage) -> None:
    for i in range(20):
        await store.add_sip_user(f"u{i}", "pw", REALM, extension=str(1000 + i))
    found = await asyncio.gather(*(store.get_sip_user(f"u{i % 20}") for i in range(200)))
    assert all(u is not None and u.username == f"u{i % 20}" for i, u in enumerate(found))


async def test_returned_objects_are_detached_snapshots(store: Storage) -> None:
    user = await store.add_sip_user("alice", "pw", REALM, display_name="A")
    user.display_name = "changed locally"
    assert (await store.get_sip_user("alice")).display_name == "A"  # type: ignore[union-attr]


def test_sync_session_api_rolls_back_on_error(db_url: str) -> None:
    with Storage(db_url) as store:
        with store.session() as session:
            users.add_sip_user(session, "alice", "pw", REALM, extension="1001")
        with pytest.raises(DuplicateSipUserError):
            with store.session() as session:
                users.add_sip_user(session, "bob", "pw", REALM)
                users.add_sip_user(session, "carol", "pw", REALM, extension="1001")
        with store.session() as session:
            assert [u.username for u in users.list_sip_users(session)] == ["alice"]


async def test_closed_storage_refuses_work(db_url: str) -> None:
    store = Storage(db_url)
    await store.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await store.get_sip_user("alice")


async def test_in_memory_sqlite_and_adopted_engine() -> None:
    engine = create_engine_from_url("sqlite://")
    try:
        migrate(engine)
        async with Storage(engine=engine) as store:
            await store.add_sip_user("alice", "pw", REALM)
            assert (await store.get_sip_user("alice")) is not None
        with engine.connect() as conn:  # Storage did not dispose an engine it does not own
            assert conn.execute(text("SELECT count(*) FROM sip_users")).scalar() == 1
    finally:
        engine.dispose()


def test_storage_needs_url_or_engine() -> None:
    with pytest.raises(ValueError):
        Storage()


def test_package_exports() -> None:
    for name in ("Storage", "SipUser", "migrate", "compute_ha1", "DuplicateSipUserError", "StorageError"):
        assert hasattr(storage, name)
