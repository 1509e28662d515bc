"""MemoryLocation and the Binding value object, driven by a fake clock (no sleeping)."""
from __future__ import annotations

import pytest

from sipcore.location import (
    Binding,
    LocationService,
    MemoryLocation,
    RedisLocation,
    open_location,
)

AOR = "sip:alice@example.com"


class FakeClock:
    """Manually advanced clock for expiry tests."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def bind(contact: str, expires_at: float, q: float = 1.0, aor: str = AOR, **kw: object) -> Binding:
    return Binding(aor=aor, contact=contact, expires_at=expires_at, q=q, **kw)  # type: ignore[arg-type]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def loc(clock: FakeClock) -> MemoryLocation:
    return MemoryLocation(clock=clock)


def test_binding_json_round_trip() -> None:
    b = Binding(
        aor=AOR,
        contact="sip:alice@10.0.0.5:5062;transport=tcp",
        expires_at=1234.5,
        q=0.7,
        call_id="abc@host",
        cseq=42,
        path=("<sip:edge1.example.com;lr>", "<sip:edge2.example.com;lr>"),
        received="udp:203.0.113.5:5062",
        user_agent="baresip 1.0",
        instance='"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"',
        reg_id=1,
    )
    back = Binding.from_json(b.to_json())
    assert back == b
    assert isinstance(back.path, tuple)
    assert Binding.from_json(b.to_json().encode()) == b


def test_binding_json_defaults_and_unknown_fields() -> None:
    b = Binding.from_json('{"aor":"sip:a@x","contact":"sip:a@1.2.3.4","expires_at":5,"future":1}')
    assert b == Binding(aor="sip:a@x", contact="sip:a@1.2.3.4", expires_at=5.0)
    with pytest.raises(ValueError):
        Binding.from_json("not json")
    with pytest.raises(ValueError):
        Binding.from_json('{"aor":"sip:a@x"}')


async def test_save_then_lookup(loc: MemoryLocation, clock: FakeClock) -> None:
    b = bind("sip:alice@10.0.0.5:5062", clock.now + 60, path=("<sip:p1;lr>",), received="udp:203.0.113.5:5062")
    await loc.save(AOR, [b])
    assert await loc.lookup(AOR) == [b]
    assert await loc.lookup("sip:bob@example.com") == []
    assert await loc.count() == 1


async def test_bindings_are_immutable_values(loc: MemoryLocation, clock: FakeClock) -> None:
    """The store hands out the values it holds: they are frozen, so nobody can change them behind its back."""
    import dataclasses

    b = bind("sip:alice@10.0.0.5", clock.now + 60)
    await loc.save(AOR, [b])
    got = (await loc.lookup(AOR))[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.expires_at = 0  # type: ignore[misc]
    assert (await loc.lookup(AOR))[0].expires_at == clock.now + 60


async def test_save_replaces_whole_set(loc: MemoryLocation, clock: FakeClock) -> None:
    await loc.save(AOR, [bind("sip:a@1.1.1.1", clock.now + 60), bind("sip:a@2.2.2.2", clock.now + 60)])
    await loc.save(AOR, [bind("sip:a@3.3.3.3", clock.now + 60)])
    assert [b.contact for b in await loc.lookup(AOR)] == ["sip:a@3.3.3.3"]
    assert await loc.count() == 1


async def test_save_empty_removes_aor(loc: MemoryLocation, clock: FakeClock) -> None:
    await loc.save(AOR, [bind("sip:a@1.1.1.1", clock.now + 60)])
    await loc.save(AOR, [])
    assert await loc.lookup(AOR) == []
    assert await loc.count() == 0
    assert loc.stored == 0


async def test_save_drops_already_expired_and_duplicate_contacts(loc: MemoryLocation, clock: FakeClock) -> None:
    await loc.save(
        AOR,
        [
            bind("sip:a@1.1.1.1", clock.now + 60, q=0.5),
            bind("sip:a@1.1.1.1", clock.now + 90, q=0.9),  # same contact: the last one wins
            bind("sip:a@2.2.2.2", clock.now),  # expires now: not stored
        ],
    )
    got = await loc.lookup(AOR)
    assert [(b.contact, b.q) for b in got] == [("sip:a@1.1.1.1", 0.9)]
    assert loc.stored == 1


async def test_save_rejects_foreign_aor(loc: MemoryLocation, clock: FakeClock) -> None:
    with pytest.raises(ValueError):
        await loc.save(AOR, [bind("sip:b@1.1.1.1", clock.now + 60, aor="sip:bob@example.com")])


async def test_expiry_on_time_without_purge(loc: MemoryLocation, clock: FakeClock) -> None:
    await loc.save(AOR, [bind("sip:a@1.1.1.1", clock.now + 30), bind("sip:a@2.2.2.2", clock.now + 60)])
    clock.advance(29.999)
    assert len(await loc.lookup(AOR)) == 2
    clock.advance(0.001)  # exactly at expiry: gone
    assert [b.contact for b in await loc.lookup(AOR)] == ["sip:a@2.2.2.2"]
    assert await loc.count() == 1
    clock.advance(30)
    assert await loc.lookup(AOR) == []
    assert await loc.count() == 0


async def test_q_ordering(loc: MemoryLocation, clock: FakeClock) -> None:
    await loc.save(
        AOR,
        [
            bind("sip:a@low", clock.now + 60, q=0.1),
            bind("sip:a@high", clock.now + 60, q=1.0),
            bind("sip:a@mid-old", clock.now + 30, q=0.5),
            bind("sip:a@mid-new", clock.now + 90, q=0.5),
        ],
    )
    # highest q first; equal q: the most recently refreshed (latest expiry) first
    assert [b.contact for b in await loc.lookup(AOR)] == [
        "sip:a@high", "sip:a@mid-new", "sip:a@mid-old", "sip:a@low"
    ]


async def test_purge_counts_and_memory_shrinks(loc: MemoryLocation, clock: FakeClock) -> None:
    for i in range(100):
        aor = f"sip:user{i}@example.com"
        await loc.save(aor, [bind(f"sip:u{i}@10.0.0.1", clock.now + 10, aor=aor),
                             bind(f"sip:u{i}@10.0.0.2", clock.now + 20 + i, aor=aor)])
    assert loc.stored == 200
    assert await loc.purge_expired() == 0
    clock.advance(10)
    assert await loc.purge_expired() == 100  # the first binding of every AOR
    assert loc.stored == 100
    assert await loc.purge_expired() == 0  # idempotent
    clock.advance(10 + 49)  # expiries now+20+i for i < 50 are due
    assert await loc.purge_expired() == 50
    assert loc.stored == 50
    assert len(loc._aors) == 50
    clock.advance(1000)
    assert await loc.purge_expired() == 50
    assert loc.stored == 0
    assert loc._aors == {}
    assert loc._heap == []
    assert await loc.count() == 0


async def test_reregistration_does_not_grow_heap(loc: MemoryLocation, clock: FakeClock) -> None:
    # A phone refreshing every 30 s with a 3600 s expiry would leave a stale heap entry per refresh.
    for _ in range(10_000):
        await loc.save(AOR, [bind("sip:a@1.1.1.1", clock.now + 3600)])
        clock.advance(0.01)
    assert loc.stored == 1
    assert len(loc._heap) <= 2 * 1 + 64 + 1
    clock.advance(3600)
    assert await loc.purge_expired() == 1
    assert loc._heap == [] and loc._aors == {}


async def test_purge_after_resave_counts_only_current(loc: MemoryLocation, clock: FakeClock) -> None:
    await loc.save(AOR, [bind("sip:a@1.1.1.1", clock.now + 10)])
    await loc.save(AOR, [bind("sip:a@2.2.2.2", clock.now + 100)])  # replaces: old heap entry is stale
    clock.advance(50)
    assert await loc.purge_expired() == 0
    assert [b.contact for b in await loc.lookup(AOR)] == ["sip:a@2.2.2.2"]


async def test_close_forgets(loc: MemoryLocation, clock: FakeClock) -> None:
    await loc.save(AOR, [bind("sip:a@1.1.1.1", clock.now + 10)])
    async with loc:
        pass
    assert loc.stored == 0


async def test_open_location() -> None:
    mem = open_location("memory")
    assert isinstance(mem, MemoryLocation) and isinstance(mem, LocationService)
    red = open_location("redis://127.0.0.1:6379/15")  # connects lazily: no server needed here
    assert isinstance(red, RedisLocation)
    await red.close()
    for bad in ("", "postgresql://x", "mem", "sqlite:///loc.db"):
        with pytest.raises(ValueError, match="memory"):
            open_location(bad)
