"""RedisLocation against the local Redis (DB 15): each test uses its own key prefix and deletes only that."""
from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from sipcore.location import Binding, RedisLocation, open_location

pytestmark = pytest.mark.integration

AOR = "sip:alice@example.com"


class FakeClock:
    """Manually advanced clock for per-binding expiry tests."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def bind(contact: str, expires_at: float, q: float = 1.0, aor: str = AOR, **kw: object) -> Binding:
    return Binding(aor=aor, contact=contact, expires_at=expires_at, q=q, **kw)  # type: ignore[arg-type]


@pytest.fixture
def prefix() -> str:
    return f"callpath:test:loc:{uuid.uuid4().hex}:"


@pytest.fixture
async def client(redis_url: str, prefix: str) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.from_url(redis_url)
    yield r
    async for key in r.scan_iter(match=prefix + "*", count=500):
        await r.delete(key)
    await r.aclose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(time.time())


@pytest.fixture
async def loc(client: aioredis.Redis, prefix: str, clock: FakeClock) -> AsyncIterator[RedisLocation]:
    service = RedisLocation(client, prefix=prefix, clock=clock)
    yield service
    await service.close()


async def test_save_lookup_and_layout(loc: RedisLocation, client: aioredis.Redis, clock: FakeClock) -> None:
    b = bind("sip:alice@10.0.0.5:5062;transport=tcp", clock.now + 60, q=0.8, call_id="c1", cseq=7,
             path=("<sip:edge;lr>",), received="ws:conn-17", user_agent="JsSIP", instance="<urn:x>", reg_id=1)
    await loc.save(AOR, [b])
    assert await loc.lookup(AOR) == [b]
    key = loc.key(AOR)
    assert await client.type(key) == b"hash"
    fields = await client.hgetall(key)
    assert list(fields) == [b.contact.encode()]
    assert Binding.from_json(fields[b.contact.encode()]) == b
    assert await loc.lookup("sip:nobody@example.com") == []
    assert await loc.count() == 1


async def test_key_ttl_at_latest_expiry(client: aioredis.Redis, prefix: str) -> None:
    loc = RedisLocation(client, prefix=prefix)  # real clock: PEXPIREAT is the latest expiry + expiry_grace
    now = time.time()
    await loc.save(AOR, [bind("sip:a@1.1.1.1", now + 30), bind("sip:a@2.2.2.2", now + 90)])
    expire_ms = await client.pexpiretime(loc.key(AOR))
    assert abs(expire_ms - (now + 90 + loc.expiry_grace) * 1000) <= 1
    # the expiry index files the AOR at its earliest binding's expiry
    assert abs(await client.zscore(loc.index_key, AOR) - (now + 30)) < 0.001


async def test_key_ttl_follows_injected_clock(client: aioredis.Redis, prefix: str) -> None:
    fake = FakeClock(1000.0)  # far from wall time: the key TTL must still be "60 s from now", not 1970
    loc = RedisLocation(client, prefix=prefix, clock=fake, expiry_grace=0)
    await loc.save(AOR, [bind("sip:a@1.1.1.1", fake.now + 60)])
    ttl_ms = await client.pttl(loc.key(AOR))
    assert 59_000 <= ttl_ms <= 60_001
    assert [b.contact for b in await loc.lookup(AOR)] == ["sip:a@1.1.1.1"]


async def test_save_replaces_and_empty_removes(loc: RedisLocation, client: aioredis.Redis, clock: FakeClock) -> None:
    await loc.save(AOR, [bind("sip:a@1.1.1.1", clock.now + 60), bind("sip:a@2.2.2.2", clock.now + 60)])
    await loc.save(AOR, [bind("sip:a@3.3.3.3", clock.now + 60)])
    assert [b.contact for b in await loc.lookup(AOR)] == ["sip:a@3.3.3.3"]
    assert await client.hlen(loc.key(AOR)) == 1
    await loc.save(AOR, [])
    assert await loc.lookup(AOR) == []
    assert await client.exists(loc.key(AOR)) == 0


async def test_q_ordering(loc: RedisLocation, clock: FakeClock) -> None:
    await loc.save(AOR, [
        bind("sip:a@low", clock.now + 60, q=0.1),
        bind("sip:a@high", clock.now + 60, q=1.0),
        bind("sip:a@mid-old", clock.now + 30, q=0.5),
        bind("sip:a@mid-new", clock.now + 90, q=0.5),
    ])
    assert [b.contact for b in await loc.lookup(AOR)] == [
        "sip:a@high", "sip:a@mid-new", "sip:a@mid-old", "sip:a@low"
    ]


async def test_per_binding_expiry_on_read_and_purge(
    loc: RedisLocation, client: aioredis.Redis, clock: FakeClock
) -> None:
    other = "sip:bob@example.com"
    await loc.save(AOR, [bind("sip:a@1.1.1.1", clock.now + 30), bind("sip:a@2.2.2.2", clock.now + 60)])
    await loc.save(other, [bind("sip:b@1.1.1.1", clock.now + 30, aor=other)])
    clock.advance(30)  # fake time: the keys' real TTLs are far away, so only the read filter hides them
    assert [b.contact for b in await loc.lookup(AOR)] == ["sip:a@2.2.2.2"]
    assert await loc.lookup(other) == []
    assert await loc.count() == 1
    assert await client.hlen(loc.key(AOR)) == 2  # still stored until purged
    assert await loc.purge_expired() == 2
    assert await client.hlen(loc.key(AOR)) == 1
    assert await client.exists(loc.key(other)) == 0  # emptied hash is gone: memory really shrinks
    assert await loc.purge_expired() == 0
    clock.advance(30)
    assert await loc.purge_expired() == 1
    assert await client.exists(loc.key(AOR)) == 0
    assert await loc.count() == 0


async def test_purge_uses_scan_not_keys(loc: RedisLocation, client: aioredis.Redis, clock: FakeClock) -> None:
    def no_keys(*args: object, **kwargs: object) -> None:
        raise AssertionError("KEYS must not be used")

    client.keys = no_keys  # type: ignore[method-assign]
    for i in range(30):
        aor = f"sip:u{i}@example.com"
        await loc.save(aor, [bind(f"sip:u{i}@h", clock.now + 10 + (i % 2) * 100, aor=aor)])
    assert await loc.count() == 30
    clock.advance(50)
    assert await loc.purge_expired() == 15
    assert await loc.count() == 15


async def test_purge_ignores_other_prefixes_and_types(
    loc: RedisLocation, client: aioredis.Redis, prefix: str, clock: FakeClock
) -> None:
    foreign = prefix.rstrip(":") + "-other:" + AOR  # shares the text but not the prefix
    await client.hset(foreign, "sip:x@y", bind("sip:x@y", clock.now - 1).to_json())
    await client.set(prefix + "not-a-hash", "x")
    await loc.save(AOR, [bind("sip:a@1.1.1.1", clock.now + 5)])
    clock.advance(10)
    try:
        assert await loc.purge_expired() == 1
        assert await client.hlen(foreign) == 1
    finally:
        await client.delete(foreign)


async def test_real_ttl_expiry_without_purge(redis_url: str, client: aioredis.Redis, prefix: str) -> None:
    loc = RedisLocation(redis_url, prefix=prefix, expiry_grace=0)  # real clock, own connection pool
    try:
        start = time.time()
        await loc.save(AOR, [bind("sip:a@1.1.1.1", start + 1.0)])
        assert len(await loc.lookup(AOR)) == 1
        while await client.exists(loc.key(AOR)):
            assert time.time() - start < 3.0, "key did not expire"
            await asyncio.sleep(0.05)
        assert time.time() - start >= 0.95  # not before the binding's expiry
        assert await loc.lookup(AOR) == []
        assert await loc.purge_expired() == 0  # nothing left to purge: Redis did it
    finally:
        await loc.close()


async def test_second_instance_sees_bindings(redis_url: str, prefix: str, client: aioredis.Redis) -> None:
    now = time.time()
    b = bind("sip:alice@10.0.0.5:5062", now + 60, path=("<sip:p;lr>",), received="udp:203.0.113.5:5062")
    node1 = open_location(redis_url, prefix=prefix)
    assert isinstance(node1, RedisLocation)
    await node1.save(AOR, [b])
    await node1.close()  # the process that registered is gone
    node2 = RedisLocation(redis_url, prefix=prefix)
    try:
        assert await node2.lookup(AOR) == [b]
        assert await node2.count() == 1
    finally:
        await node2.close()


async def test_close_keeps_callers_client(client: aioredis.Redis, prefix: str) -> None:
    loc = RedisLocation(client, prefix=prefix)
    await loc.close()
    assert await client.ping()
