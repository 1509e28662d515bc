"""storage against the local PostgreSQL: migrations and the SIP account API, each test in a fresh schema.

Each test creates its own schema, points the connection's search_path at it (so Alembic's version table
and sip_users land there) and drops it with CASCADE afterwards: repeated and parallel runs stay clean.
"""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from storage import (
    Base,
    DuplicateSipUserError,
    SipUserNotFoundError,
    Storage,
    compute_ha1,
    create_engine_from_url,
    current_revision,
    head_revision,
    migrate,
)
from web.cli import main

pytestmark = pytest.mark.integration

REALM = "pbx.example.com"


@pytest.fixture
def schema_url(postgres_url: str) -> Iterator[str]:
    """A URL whose connections use a brand-new schema; the schema is dropped after the test."""
    schema = f"callpath_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine_from_url(postgres_url)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(postgres_url).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def test_migrate_into_fresh_schema(schema_url: str) -> None:
    assert current_revision(schema_url) is None
    migrate(schema_url)
    migrate(schema_url)  # idempotent
    assert current_revision(schema_url) == head_revision()
    engine = create_engine_from_url(schema_url)
    try:
        with engine.connect() as conn:
            schema = conn.execute(text("SELECT current_schema()")).scalar()
            assert str(schema).startswith("callpath_test_")
            assert set(inspect(conn).get_table_names()) == {"alembic_version", "sip_users"}
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
            assert diff == []
            uniques = {u["name"] for u in inspect(conn).get_unique_constraints("sip_users")}
            assert uniques == {"uq_sip_users_username", "uq_sip_users_extension"}
    finally:
        engine.dispose()


async def test_sip_user_api_on_postgres(schema_url: str) -> None:
    migrate(schema_url)
    async with Storage(schema_url) as store:
        alice = await store.add_sip_user("alice", "pw", REALM, extension="1001", display_name="Alice")
        await store.add_sip_user("bob", "pw", REALM)
        got = await store.get_sip_user("alice")
        assert got is not None and got.id == alice.id and got.display_name == "Alice"
        assert got.ha1("MD5", REALM) == compute_ha1("alice", REALM, "pw")
        assert got.ha1("SHA-256", REALM) == compute_ha1("alice", REALM, "pw", "SHA-256")
        assert got.created_at.tzinfo is not None and got.enabled is True
        assert (await store.get_sip_user_by_extension("1001")).username == "alice"  # type: ignore[union-attr]
        assert [u.username for u in await store.list_sip_users()] == ["alice", "bob"]

        with pytest.raises(DuplicateSipUserError, match="already exists"):
            await store.add_sip_user("alice", "x", REALM)
        with pytest.raises(DuplicateSipUserError, match="extension 1001"):
            await store.add_sip_user("carol", "x", REALM, extension="1001")

        updated = await store.set_password("alice", "new", "other.example")
        assert updated.realm == "other.example" and updated.ha1_md5 == compute_ha1("alice", "other.example", "new")
        with pytest.raises(SipUserNotFoundError):
            await store.set_password("nobody", "x", REALM)

        assert await store.delete_sip_user("bob") is True
        assert await store.delete_sip_user("bob") is False
        assert [u.username for u in await store.list_sip_users()] == ["alice"]


async def test_concurrent_inserts_of_the_same_extension_leave_one_owner(schema_url: str) -> None:
    migrate(schema_url)
    async with Storage(schema_url, workers=4) as store:
        results = await asyncio.gather(
            *(store.add_sip_user(f"user{i}", "pw", REALM, extension="2000") for i in range(8)),
            return_exceptions=True,
        )
        created = [r for r in results if not isinstance(r, BaseException)]
        failures = [r for r in results if isinstance(r, BaseException)]
        assert len(created) == 1
        assert all(isinstance(f, DuplicateSipUserError) for f in failures)
        owner = await store.get_sip_user_by_extension("2000")
        assert owner is not None and owner.username == created[0].username


async def test_concurrent_lookups_on_postgres(schema_url: str) -> None:
    migrate(schema_url)
    async with Storage(schema_url) as store:
        for i in range(10):
            await store.add_sip_user(f"u{i}", "pw", REALM, extension=str(3000 + i))
        found = await asyncio.gather(*(store.get_sip_user_by_extension(str(3000 + i % 10)) for i in range(100)))
        assert [u.username for u in found] == [f"u{i % 10}" for i in range(100)]  # type: ignore[union-attr]


def test_cli_against_postgres(
    schema_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CALLPATH_CONFIG", raising=False)
    monkeypatch.setenv("CALLPATH_DATABASE_URL", schema_url)
    assert main(["user", "add", "alice", "--password", "pw", "--extension", "1001"]) == 0
    assert main(["user", "add", "bob", "--password", "pw", "--extension", "1001"]) == 1
    assert "extension 1001 is already assigned" in capsys.readouterr().err
    assert main(["user", "list"]) == 0
    assert "alice" in capsys.readouterr().out
    assert main(["user", "del", "alice"]) == 0
    assert current_revision(schema_url) == head_revision()
