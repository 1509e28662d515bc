"""Registration events (sipcore/regevents.py) published by both location backends, with an injected clock.

Every event is checked on MemoryLocation and on RedisLocation (the local Redis, DB 15, a key prefix of the
test's own, deleted afterwards): register, refresh, unregister, expiry (by the purge, not a lookup), flow lost,
and that a failing subscriber never breaks a registration.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from sipcore.location import Binding, LocationService, MemoryLocation, RedisLocation
from sipcore.regevents import (
    BindingEvent, Expired, FlowLost, Refreshed, Registered, RegistrationEvents, Unregistered,
)

AOR = "sip:alice@example.com"
WS_FLOW = "ws~192.0.2.7~50123~7"
TCP_FLOW = "tcp~192.0.2.8~40000~9"


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def bind(contact: str, expires_at: float, aor: str = AOR, **kw: Any) -> Binding:
    return Binding(aor=aor, contact=contact, expires_at=expires_at, **kw)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.integration)])
async def make_loc(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[Callable[..., LocationService]]:
    """make_loc(node="") -> a location service of the parametrised backend; Redis ones share one prefix."""
    made: list[LocationService] = []
    client: aioredis.Redis | None = None
    prefix = f"callpath:test:regevents:{uuid.uuid4().hex}:"
    if request.param == "redis":
        client = aioredis.from_url(request.getfixturevalue("redis_url"))

    def make(node: str = "") -> LocationService:
        loc: LocationService
        if client is None:
            loc = MemoryLocation(clock=clock, node=node)
        else:
            loc = RedisLocation(client, prefix=prefix, clock=clock, node=node)
        made.append(loc)
        return loc

    yield make
    for loc in made:
        await loc.close()
    if client is not None:
        async for key in client.scan_iter(match=prefix + "*", count=500):
            await client.delete(key)
        await client.aclose()


def record(loc: LocationService) -> list[BindingEvent]:
    events: list[BindingEvent] = []
    loc.subscribe(events.append)
    return events


async def test_register_refresh_unregister(make_loc, clock: FakeClock) -> None:
    loc = make_loc()
    events = record(loc)
    first = bind("sip:alice@192.0.2.5:5062", clock.now + 60, received="udp~192.0.2.5~5062~", call_id="c1", cseq=1)
    await loc.save(AOR, [first])
    (ev,) = events
    assert isinstance(ev, Registered)
    assert (ev.aor, ev.contact, ev.transport, ev.source, ev.node, ev.at, ev.remaining) == (
        AOR, "sip:alice@192.0.2.5:5062", "udp", ("192.0.2.5", 5062), "", clock.now, 1)
    assert ev.binding == first

    clock.advance(30)
    second = bind("sip:alice@198.51.100.9", clock.now + 60, received="tcp~198.51.100.9~41000~3")
    refreshed = bind(first.contact, clock.now + 60, received=first.received, call_id="c1", cseq=2)
    await loc.save(AOR, [refreshed, second])
    assert [type(e) for e in events[1:]] == [Refreshed, Registered]
    assert events[1].binding.expires_at == clock.now + 60 and events[1].at == clock.now
    assert events[2].transport == "tcp" and events[2].remaining == 2

    await loc.save(AOR, [refreshed, second])  # the same set again: nothing changed, nothing published
    assert len(events) == 3

    await loc.save(AOR, [second])
    assert isinstance(events[3], Unregistered) and events[3].binding == refreshed and events[3].remaining == 1
    await loc.save(AOR, [])
    assert isinstance(events[4], Unregistered) and events[4].binding == second and events[4].remaining == 0
    assert await loc.lookup(AOR) == []


async def test_expired_is_published_by_the_purge(make_loc, clock: FakeClock) -> None:
    loc = make_loc()
    events = record(loc)
    await loc.save(AOR, [bind("sip:a@192.0.2.1", clock.now + 30), bind("sip:a@192.0.2.2", clock.now + 90)])
    events.clear()
    clock.advance(29.9)
    assert await loc.purge_expired() == 0 and events == []
    clock.advance(0.1)                       # the first binding's expiry instant
    assert [b.contact for b in await loc.lookup(AOR)] == ["sip:a@192.0.2.2"]
    assert events == []                      # a lookup hides it but publishes nothing ...
    assert await loc.purge_expired() == 1    # ... the purge does, once
    (ev,) = events
    assert isinstance(ev, Expired) and ev.contact == "sip:a@192.0.2.1" and ev.remaining == 1
    assert ev.at == clock.now
    assert await loc.purge_expired() == 0 and len(events) == 1
    clock.advance(60)
    assert await loc.purge_expired() == 1
    assert isinstance(events[1], Expired) and events[1].remaining == 0
    assert await loc.count() == 0


async def test_save_over_an_expired_unpurged_binding(make_loc, clock: FakeClock) -> None:
    """A REGISTER arriving after expiry but before the purge: the old one Expired, the new one Registered."""
    loc = make_loc()
    events = record(loc)
    await loc.save(AOR, [bind("sip:a@192.0.2.1", clock.now + 30)])
    clock.advance(40)
    await loc.save(AOR, [bind("sip:a@192.0.2.1", clock.now + 30)])
    assert [type(e) for e in events] == [Registered, Expired, Registered]
    assert await loc.purge_expired() == 0


async def test_flow_lost_removes_flow_only_bindings_at_once(make_loc, clock: FakeClock) -> None:
    loc = make_loc()
    events = record(loc)
    ws = bind("sip:k3j2@df7jal23ls0d.invalid;transport=ws", clock.now + 600, received=WS_FLOW)
    phone = bind("sip:alice@192.0.2.8:5060;transport=tcp", clock.now + 600, received=TCP_FLOW)
    udp = bind("sip:alice@192.0.2.9:5060", clock.now + 600, received="udp~192.0.2.9~5060~")
    bob = "sip:bob@example.com"
    bob_ws = bind("sip:x@y.invalid;transport=ws", clock.now + 600, aor=bob, received=WS_FLOW)
    await loc.save(AOR, [ws, phone, udp])
    await loc.save(bob, [bob_ws])
    events.clear()

    assert await loc.flow_lost(WS_FLOW) == 2
    assert sorted((type(e).__name__, e.aor, e.removed, e.remaining) for e in events) == [  # type: ignore[attr-defined]
        ("FlowLost", AOR, True, 2), ("FlowLost", bob, True, 0)]
    assert all(e.transport == "ws" and e.source == ("192.0.2.7", 50123) for e in events)
    assert sorted(b.contact for b in await loc.lookup(AOR)) == [phone.contact, udp.contact]
    assert await loc.lookup(bob) == []

    events.clear()
    assert await loc.flow_lost(TCP_FLOW) == 0  # a TCP phone with its own address stays, without the flow
    (ev,) = events
    assert isinstance(ev, FlowLost) and not ev.removed and ev.transport == "tcp"
    kept = {b.contact: b for b in await loc.lookup(AOR)}[phone.contact]
    assert kept.received is None and kept.expires_at == phone.expires_at
    assert await loc.flow_lost(TCP_FLOW) == 0 and len(events) == 1  # once only
    assert await loc.flow_lost("ws~203.0.113.1~1~99") == 0          # a connection that carried nothing


async def test_flow_lost_for_outbound_registrations(make_loc, clock: FakeClock) -> None:
    """RFC 5626: an instance-id + reg-id binding is reached only over its flow, even over TCP."""
    loc = make_loc()
    events = record(loc)
    await loc.save(AOR, [bind("sip:alice@192.0.2.8:5060;transport=tcp", clock.now + 600, received=TCP_FLOW,
                              instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>", reg_id=1)])
    assert await loc.flow_lost(TCP_FLOW) == 1
    assert isinstance(events[-1], FlowLost) and events[-1].removed and events[-1].remaining == 0
    assert await loc.lookup(AOR) == []


async def test_reregistration_over_a_new_connection_survives_the_old_ones_close(make_loc, clock: FakeClock) -> None:
    loc = make_loc()
    contact = "sip:k3j2@df7jal23ls0d.invalid;transport=ws"
    await loc.save(AOR, [bind(contact, clock.now + 600, received=WS_FLOW)])
    await loc.save(AOR, [bind(contact, clock.now + 600, received="ws~192.0.2.7~50999~8")])
    events = record(loc)
    assert await loc.flow_lost(WS_FLOW) == 0
    assert events == [] and [b.contact for b in await loc.lookup(AOR)] == [contact]


async def test_flow_lost_only_touches_this_nodes_connections(make_loc, clock: FakeClock) -> None:
    """Connection ids are per process: node b's connection 7 is not node a's connection 7."""
    a, b = make_loc("a"), make_loc("b")
    if isinstance(a, MemoryLocation):
        pytest.skip("two nodes share a store only in Redis")
    events_a, events_b = record(a), record(b)
    carol = "sip:carol@example.com"
    await a.save(AOR, [bind("sip:x@a.invalid;transport=ws", clock.now + 600, received=WS_FLOW, node="a")])
    await b.save(carol, [bind("sip:y@b.invalid;transport=ws", clock.now + 600, aor=carol, received=WS_FLOW,
                              node="b")])
    assert await a.flow_lost(WS_FLOW) == 1
    assert [e.aor for e in events_a[1:]] == [AOR] and isinstance(events_a[-1], FlowLost)
    assert len(await b.lookup(carol)) == 1 and len(events_b) == 1
    assert await b.flow_lost(WS_FLOW) == 1
    assert await a.lookup(carol) == []


async def test_two_nodes_purging_publish_each_expiry_once(make_loc, clock: FakeClock) -> None:
    a, b = make_loc("a"), make_loc("b")
    if isinstance(a, MemoryLocation):
        pytest.skip("two nodes share a store only in Redis")
    seen: list[BindingEvent] = []
    a.subscribe(seen.append)
    b.subscribe(seen.append)
    for i in range(20):
        aor = f"sip:u{i}@example.com"
        await a.save(aor, [bind(f"sip:u{i}@192.0.2.{i}", clock.now + 10, aor=aor)])
    seen.clear()
    clock.advance(10)
    counts = await asyncio.gather(a.purge_expired(), b.purge_expired())
    assert sum(counts) == 20
    assert sorted(e.aor for e in seen) == sorted(f"sip:u{i}@example.com" for i in range(20))
    assert all(isinstance(e, Expired) for e in seen)


async def test_a_raising_subscriber_is_logged_and_never_breaks_registration(
        make_loc, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    loc = make_loc()

    def broken(event: BindingEvent) -> None:
        raise RuntimeError("subscriber bug")

    loc.subscribe(broken)
    events = record(loc)
    with caplog.at_level(logging.ERROR, logger="callpath.sip.regevents"):
        await loc.save(AOR, [bind("sip:a@192.0.2.1", clock.now + 60)])
    assert [b.contact for b in await loc.lookup(AOR)] == ["sip:a@192.0.2.1"]
    assert [type(e) for e in events] == [Registered]
    assert "subscriber bug" in caplog.text and "Registered" in caplog.text


async def test_unsubscribe_and_async_subscribers(make_loc, clock: FakeClock) -> None:
    loc = make_loc()
    got: list[BindingEvent] = []

    async def handler(event: BindingEvent) -> None:
        await asyncio.sleep(0)
        got.append(event)

    unsubscribe = loc.subscribe(handler)
    await loc.save(AOR, [bind("sip:a@192.0.2.1", clock.now + 60)])
    for _ in range(3):
        await asyncio.sleep(0)
    assert [type(e) for e in got] == [Registered]
    unsubscribe()
    unsubscribe()  # twice is harmless
    await loc.save(AOR, [])
    await asyncio.sleep(0)
    assert len(got) == 1


def test_hub_outside_a_loop_logs_an_async_subscriber(caplog: pytest.LogCaptureFixture) -> None:
    hub = RegistrationEvents()

    async def handler(event: BindingEvent) -> None:  # pragma: no cover - never awaited
        pass

    hub.subscribe(handler)
    ev = Registered(aor=AOR, binding=bind("sip:a@h", 1.0), transport="", source=None, node="", at=0.0,
                    remaining=1)
    with caplog.at_level(logging.ERROR, logger="callpath.sip.regevents"):
        hub.publish(ev)
    assert "outside an event loop" in caplog.text


def test_events_are_frozen_values() -> None:
    ev = FlowLost(aor=AOR, binding=bind("sip:a@h", 1.0), transport="ws", source=("192.0.2.7", 1), node="n",
                  at=5.0, remaining=0, removed=True)
    with pytest.raises(AttributeError):
        ev.aor = "x"  # type: ignore[misc]
    assert ev.contact == "sip:a@h"


def test_binding_flow_only_rules() -> None:
    assert bind("sip:a@x.invalid;transport=ws", 1, received=WS_FLOW).flow_only
    assert bind("sip:a@192.0.2.1;transport=ws", 1, received="wss~192.0.2.1~1~2").flow_only
    assert bind("sip:a@[2001:db8::1].invalid", 1, received=TCP_FLOW).flow_only is False  # not a .invalid host
    assert bind("sip:a@host.invalid:5060;transport=tcp", 1, received=TCP_FLOW).flow_only
    assert not bind("sip:a@192.0.2.1;transport=tcp", 1, received=TCP_FLOW).flow_only
    assert not bind("sip:a@x.invalid", 1, received="udp~192.0.2.1~5060~").flow_only  # UDP: no connection
    assert not bind("sip:a@x.invalid", 1).flow_only
    b = bind("sip:a@x", 1, node="n1", node_uri="sip:192.0.2.1:5060;transport=tcp")
    assert Binding.from_json(b.to_json()) == b


async def test_the_stack_reports_closed_connections_and_their_bindings_go(clock: FakeClock) -> None:
    """SipStack.on_connection_closed -> LocationService.flow_lost: what the server wires together."""
    from sipcore.stack import ConnectionSender, SipStack

    class Sender(ConnectionSender):
        def send(self, data: bytes) -> None:
            pass

        def close(self) -> None:
            self.closed = True

    stack = SipStack("127.0.0.1")
    stack._loop = asyncio.get_running_loop()
    loc = MemoryLocation(clock=clock)
    events = record(loc)
    tasks: list[asyncio.Task[int]] = []
    remove = stack.on_connection_closed(lambda flow: tasks.append(asyncio.ensure_future(loc.flow_lost(flow))))
    sender = Sender()
    cid = stack.register_connection("ws", ("192.0.2.7", 50123), sender)
    token = f"ws~192.0.2.7~50123~{cid}"
    await loc.save(AOR, [bind("sip:k@x.invalid;transport=ws", clock.now + 600, received=token)])
    stack.unregister_connection(sender)
    assert [await t for t in tasks] == [1]
    assert isinstance(events[-1], FlowLost) and events[-1].removed and await loc.lookup(AOR) == []
    remove()
    remove()
    other = Sender()
    stack.register_connection("ws", ("192.0.2.7", 50124), other)
    stack.unregister_connection(other)
    assert len(tasks) == 1


async def test_a_restarted_node_drops_its_earlier_connections_bindings(make_loc, clock: FakeClock) -> None:
    before = make_loc("a")
    ws = bind("sip:k@x.invalid;transport=ws", clock.now + 600, received=WS_FLOW, node="a")
    phone = bind("sip:alice@192.0.2.8;transport=tcp", clock.now + 600, received=TCP_FLOW, node="a")
    elsewhere = bind("sip:z@y.invalid;transport=ws", clock.now + 600, received="ws~192.0.2.1~1~5", node="b")
    await before.save(AOR, [ws, phone, elsewhere])
    after = make_loc("a") if isinstance(before, RedisLocation) else before  # memory: the same store
    events = record(after)
    assert await after.drop_stale_flows() == 1
    assert sorted((e.contact, e.removed) for e in events) == [  # type: ignore[attr-defined]
        (phone.contact, False), (ws.contact, True)]
    left = {b.contact: b for b in await after.lookup(AOR)}
    assert set(left) == {phone.contact, elsewhere.contact} and left[phone.contact].received is None
    assert await after.drop_stale_flows() == 0
