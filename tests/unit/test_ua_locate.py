"""UserAgent calls to host names: RFC 3263 location on the loop (NAPTR, SRV, A) and failover to the next target.

Real UDP/TCP sockets on 127.0.0.1 and a DNS server on 127.0.0.1 (tests/dns_server.py).
"""
from __future__ import annotations

import asyncio
import random
import socket

import pytest

import sipcore.transaction as transaction
from dns_server import DnsTestServer
from sipcore.locator import ServerLocator
from sipcore.stack import SipStack
from sipcore.ua import Answered, CallState, Confirmed, Ended, Failed, Ringing, UserAgent, resolve_uri
from sipcore.uri import SipUri
from test_ua import ANSWER, OFFER, Endpoint, expect, make_endpoint

D = "example.test"
T = 3.0


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def start_dns(zone: dict) -> DnsTestServer:
    server = DnsTestServer(zone, ttl=60)
    await server.start()
    return server


def caller_locator(dns: DnsTestServer, **kw) -> ServerLocator:
    return ServerLocator([dns.nameserver], hosts_file=None, families=("A",), rng=random.Random(5), **kw)


async def answer_next(ep: Endpoint, status: int = 200):
    inc = await asyncio.wait_for(ep.ua.incoming.get(), T)
    if status == 200:
        inc.answer(ANSWER)
    else:
        inc.reject(status)
    return inc


@pytest.fixture
async def endpoints():
    made: list[Endpoint] = []

    async def make(**kw) -> Endpoint:
        ep = await make_endpoint(**kw)
        made.append(ep)
        return ep

    yield make
    for ep in made:
        ep.ua.close()
        await ep.stack.close()


def test_resolve_uri_never_looks_a_name_up():
    assert resolve_uri(SipUri.parse("sip:bob@example.test")) is None
    flow = resolve_uri(SipUri.parse("sips:bob@[2001:db8::1]"))
    assert (flow.transport, flow.remote) == ("tls", ("2001:db8::1", 5061))


async def test_call_to_a_domain_follows_naptr_srv_a(endpoints):
    b = await endpoints()
    dns = await start_dns({
        (D, "NAPTR"): [f'10 10 "s" "SIP+D2U" "" _sip._udp.{D}.'],
        (f"_sip._udp.{D}", "SRV"): [f"10 10 {b.port} pbx.{D}."],
        (f"pbx.{D}", "A"): ["127.0.0.1"],
    })
    try:
        a = await endpoints(locator=caller_locator(dns))
        call = a.ua.invite(f"sip:bob@{D}", "sip:alice@127.0.0.1", OFFER)
        assert call.state is CallState.CALLING and a.count("INVITE ") == 0  # nothing sent before the lookup
        inc = await answer_next(b)
        assert str(inc.request.uri) == f"sip:bob@{D}"
        assert inc.request.get("contact").startswith(f"<sip:alice@127.0.0.1:{a.port}")
        await expect(call, Answered)
        assert call.peer_flow.remote == ("127.0.0.1", b.port)
        assert dns.queries == [(D, "NAPTR"), (f"_sip._udp.{D}", "SRV"), (f"pbx.{D}", "A")]
        call.hangup()
        await expect(call, Ended)
        # a second call to the domain is located from the cache
        call2 = a.ua.invite(f"sip:carol@{D}", "sip:alice@127.0.0.1", OFFER)
        await answer_next(b, 486)
        assert (await expect(call2, Failed)).status == 486
        assert len(dns.queries) == 3
    finally:
        dns.close()


async def test_failover_on_503_to_the_next_srv_target(endpoints):
    busy, good = await endpoints(), await endpoints()
    dns = await start_dns({
        (f"_sip._udp.{D}", "SRV"): [f"10 0 {busy.port} one.{D}.", f"20 0 {good.port} two.{D}."],
        (f"one.{D}", "A"): ["127.0.0.1"], (f"two.{D}", "A"): ["127.0.0.1"],
    })
    try:
        a = await endpoints(locator=caller_locator(dns))
        call = a.ua.invite(f"sip:bob@{D};transport=udp", "sip:alice@127.0.0.1", OFFER)
        first = await answer_next(busy, 503)
        second = await answer_next(good)
        await expect(call, Answered)
        # same request, new transaction: same Call-ID, From tag and CSeq, another branch
        r1, r2 = first.request, second.request
        assert (r1.call_id, r1.from_.tag, r1.cseq.seq) == (r2.call_id, r2.from_.tag, r2.cseq.seq)
        assert r1.top_via.branch != r2.top_via.branch
        assert call.peer_flow.remote == ("127.0.0.1", good.port)
    finally:
        dns.close()


async def test_failover_when_the_first_target_does_not_answer(endpoints, monkeypatch):
    monkeypatch.setattr(transaction, "T1", 0.02)  # Timer B = 64*T1 = 1.28 s
    good = await endpoints()
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # takes datagrams, never answers
    silent.bind(("127.0.0.1", 0))
    dns = await start_dns({
        (f"_sip._udp.{D}", "SRV"): [f"10 0 {silent.getsockname()[1]} one.{D}.", f"20 0 {good.port} two.{D}."],
        (f"one.{D}", "A"): ["127.0.0.1"], (f"two.{D}", "A"): ["127.0.0.1"],
    })
    try:
        a = await endpoints(locator=caller_locator(dns))
        call = a.ua.invite(f"sip:bob@{D};transport=udp", "sip:alice@127.0.0.1", OFFER)
        await answer_next(good)
        await expect(call, Answered, timeout=10)
    finally:
        silent.close()
        dns.close()


async def test_failover_on_a_refused_tcp_connection(endpoints):
    stack = SipStack("127.0.0.1")
    port = await stack.listen_stream("tcp", "127.0.0.1", 0)
    callee = Endpoint(stack, UserAgent(stack), port)
    stack.tu = callee.ua
    dns = await start_dns({
        (f"_sip._tcp.{D}", "SRV"): [f"10 0 {free_port(socket.SOCK_STREAM)} dead.{D}.", f"20 0 {port} live.{D}."],
        (f"dead.{D}", "A"): ["127.0.0.1"], (f"live.{D}", "A"): ["127.0.0.1"],
    })
    try:
        a = await endpoints(locator=caller_locator(dns))
        call = a.ua.invite(f"sip:bob@{D};transport=tcp", "sip:alice@127.0.0.1", OFFER)
        inc = await answer_next(callee)
        assert inc.request.get("contact").endswith(";transport=tcp>")
        await expect(call, Answered)
        assert call.peer_flow.transport == "tcp" and call.peer_flow.remote[1] == port
    finally:
        dns.close()
        callee.ua.close()
        await stack.close()


async def test_no_failover_once_the_server_responded(endpoints):
    busy, good = await endpoints(), await endpoints()
    dns = await start_dns({
        (f"_sip._udp.{D}", "SRV"): [f"10 0 {busy.port} one.{D}.", f"20 0 {good.port} two.{D}."],
        (f"one.{D}", "A"): ["127.0.0.1"], (f"two.{D}", "A"): ["127.0.0.1"],
    })
    try:
        a = await endpoints(locator=caller_locator(dns))
        call = a.ua.invite(f"sip:bob@{D};transport=udp", "sip:alice@127.0.0.1", OFFER)
        inc = await asyncio.wait_for(busy.ua.incoming.get(), T)
        inc.ring(180)
        await expect(call, Ringing)
        inc.reject(503)
        assert (await expect(call, Failed)).status == 503
        assert good.ua.incoming.empty() and good.count("SIP/2.0") == 0
    finally:
        dns.close()


async def test_unresolvable_name_fails_the_call_with_a_reason(endpoints):
    dns = await start_dns({(f"other.{D}", "A"): ["127.0.0.1"]})
    try:
        a = await endpoints(locator=caller_locator(dns))
        call = a.ua.invite(f"sip:bob@nowhere.{D}:5060", "sip:alice@127.0.0.1", OFFER)
        failed = await expect(call, Failed)
        assert failed.status == 503 and f"nowhere.{D}" in failed.reason and "NXDOMAIN" in failed.reason
        assert call.state is CallState.FAILED and a.count("INVITE ") == 0
    finally:
        dns.close()


async def test_cancel_while_locating_sends_nothing(endpoints):
    b = await endpoints()
    dns = await start_dns({(f"slow.{D}", "A"): ["127.0.0.1"]})
    dns.delay[f"slow.{D}"] = 0.5
    try:
        a = await endpoints(locator=caller_locator(dns))
        call = a.ua.invite(f"sip:bob@slow.{D}:{b.port}", "sip:alice@127.0.0.1", OFFER)
        await asyncio.sleep(0.05)
        call.cancel()
        failed = await expect(call, Failed)
        assert failed.status == 487
        await asyncio.sleep(0.6)
        assert a.count("INVITE ") == 0 and a.count("CANCEL ") == 0
    finally:
        dns.close()


async def test_a_slow_lookup_does_not_stall_other_calls(endpoints):
    """While a name takes 1 s at the DNS server, a call to an IP literal is set up and torn down."""
    b = await endpoints()
    dns = await start_dns({(f"slow.{D}", "A"): ["127.0.0.1"]})
    dns.delay[f"slow.{D}"] = 1.0
    try:
        a = await endpoints(locator=caller_locator(dns))
        loop = asyncio.get_running_loop()
        start = loop.time()
        slow = a.ua.invite(f"sip:bob@slow.{D}:{b.port}", "sip:alice@127.0.0.1", OFFER)
        fast = a.ua.invite(f"sip:carol@127.0.0.1:{b.port}", "sip:alice@127.0.0.1", OFFER)
        inc = await answer_next(b)
        assert inc.request.uri.user == "carol"
        await expect(fast, Answered)
        fast.hangup()
        await expect(fast, Ended)
        assert slow.state is CallState.CALLING and loop.time() - start < 0.9
        inc = await answer_next(b)
        assert inc.request.uri.user == "bob"
        await expect(slow, Answered)
    finally:
        dns.close()


async def test_in_dialog_requests_to_a_name_use_the_cache(endpoints):
    """The callee's Contact is a host name: the ACK and BYE go where DNS says (127.0.0.2, not the 127.0.0.1 the
    INVITE went to), looked up in the background as soon as the early dialog began."""
    stack = SipStack("127.0.0.1")
    port = await stack.listen_udp("0.0.0.0", 0)
    b = Endpoint(stack, UserAgent(stack), port)
    stack.tu = b.ua
    b.ua.contact_for = lambda transport, user: f"<sip:{user}@callee.{D}:{port}>"  # type: ignore[method-assign]
    dns = await start_dns({(f"callee.{D}", "A"): ["127.0.0.2"]})
    try:
        a = await endpoints(locator=caller_locator(dns))
        sent_to: list[tuple[bytes, object]] = []
        send_raw = a.stack.send_raw

        def record(data, flow):
            sent_to.append((data.split(b" ", 1)[0], flow.remote))
            send_raw(data, flow)

        a.stack.send_raw = record
        call = a.ua.invite(f"sip:bob@127.0.0.1:{port}", "sip:alice@127.0.0.1", OFFER)
        inc = await asyncio.wait_for(b.ua.incoming.get(), T)
        inc.ring(180)
        await expect(call, Ringing)  # the early dialog starts the lookup of callee.example.test
        await asyncio.sleep(0.2)
        assert dns.count(f"callee.{D}", "A") == 1
        inc.answer(ANSWER)
        await expect(call, Answered)
        await expect(inc, Confirmed)
        call.hangup()
        await expect(call, Ended)
        assert (await expect(inc, Ended)).reason == "BYE"
        assert (b"ACK", ("127.0.0.2", port)) in sent_to and (b"BYE", ("127.0.0.2", port)) in sent_to
        assert (b"INVITE", ("127.0.0.1", port)) in sent_to
    finally:
        dns.close()
        b.ua.close()
        await stack.close()
