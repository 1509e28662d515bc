"""Calls to a SIP domain located through DNS (RFC 3263) and answered by SIPp, over real sockets.

A small authoritative DNS server on 127.0.0.1 (tests/dns_server.py) serves NAPTR, SRV and A records for
`example.test`; the SRV records name the port a SIPp UAS listens on. The caller is callpath's UserAgent in
this process, and callpath itself (a server process whose back-to-back number targets the domain).
"""
from __future__ import annotations

import asyncio
import json
import random
import urllib.request

import pytest

import sipcore.transaction as transaction
from dns_server import DnsTestServer, ThreadedDnsServer
from sipcore.locator import ServerLocator
from media.sdp import create_offer
from sipcore.stack import SipStack
from sipcore.ua import Answered, Ended, Ringing, UserAgent
from sipp_harness import free_udp_port, run_sipp, start_callpath, start_sipp

pytestmark = pytest.mark.integration

D = "example.test"
OFFER = create_offer("127.0.0.1", 40000, [("PCMU", 8000), ("telephone-event", 8000)], username="alice",
                     session_id="1").to_bytes()


def zone(*srv: tuple[int, int]) -> dict:
    """NAPTR -> SRV (priority, port)... -> A 127.0.0.1 for example.test."""
    records = {
        (D, "NAPTR"): [f'10 10 "s" "SIP+D2U" "" _sip._udp.{D}.'],
        (f"_sip._udp.{D}", "SRV"): [f"{prio} 0 {port} sip{i}.{D}." for i, (prio, port) in enumerate(srv)],
    }
    for i in range(len(srv)):
        records[(f"sip{i}.{D}", "A")] = ["127.0.0.1"]
    return records


async def answered(call, timeout: float = 15) -> Answered:
    """The call's Answered event, past its provisional ones."""
    while True:
        ev = await call.next_event(timeout)
        if not isinstance(ev, Ringing):
            assert isinstance(ev, Answered), ev
            return ev


async def caller(dns: DnsTestServer) -> tuple[SipStack, UserAgent]:
    stack = SipStack("127.0.0.1")
    await stack.listen_udp("127.0.0.1", 0)
    ua = UserAgent(stack, locator=ServerLocator([dns.nameserver], hosts_file=None, families=("A",),
                                                rng=random.Random(1)))
    stack.tu = ua
    return stack, ua


async def test_call_to_a_domain_reaches_the_sipp_uas_named_by_srv():
    """NAPTR -> SRV -> A, each answered 1 s late by the DNS server: the call gets through, and a 20 ms timer
    kept firing on time during the 3 s of lookups (the loop was never blocked)."""
    uas_port = free_udp_port()
    dns = DnsTestServer(zone((10, uas_port)))
    await dns.start()
    for name in (D, f"_sip._udp.{D}", f"sip0.{D}"):
        dns.delay[name] = 1.0
    stack, ua = await caller(dns)
    loop = asyncio.get_running_loop()
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(loop.time())
            await asyncio.sleep(0.02)

    try:
        with start_sipp("uas.xml", local_port=uas_port, calls=1, timeout=30) as uas:
            task = loop.create_task(ticker())
            call = ua.invite(f"sip:callee@{D}", "sip:alice@127.0.0.1", OFFER)
            await answered(call)
            task.cancel()
            assert call.peer_flow.remote == ("127.0.0.1", uas_port)
            call.hangup()
            assert isinstance(await call.next_event(5), Ended)
            result = await asyncio.to_thread(uas.wait, 15)
        result.check(calls=1)
        assert f"INVITE sip:callee@{D} SIP/2.0" in result.log
        assert dns.queries == [(D, "NAPTR"), (f"_sip._udp.{D}", "SRV"), (f"sip0.{D}", "A")]
        assert len(ticks) > 50 and max(b - a for a, b in zip(ticks, ticks[1:])) < 0.5
    finally:
        ua.close()
        await stack.close()
        dns.close()


async def test_failover_to_the_second_srv_target_when_the_first_does_not_answer(monkeypatch):
    """SRV priority 10 names a port where nobody listens; the INVITE times out there (Timer B, shortened)
    and goes to priority 20, SIPp, as a new transaction (RFC 3263 §4.3)."""
    monkeypatch.setattr(transaction, "T1", 0.02)  # Timer B = 64*T1 = 1.28 s
    uas_port, dead_port = free_udp_port(), free_udp_port()
    dns = DnsTestServer(zone((10, dead_port), (20, uas_port)))
    await dns.start()
    stack, ua = await caller(dns)
    try:
        with start_sipp("uas.xml", local_port=uas_port, calls=1, timeout=30) as uas:
            call = ua.invite(f"sip:callee@{D}", "sip:alice@127.0.0.1", OFFER)
            await answered(call)
            assert call.peer_flow.remote == ("127.0.0.1", uas_port)
            call.hangup()
            assert isinstance(await call.next_event(5), Ended)
            result = await asyncio.to_thread(uas.wait, 15)
        result.check(calls=1)
    finally:
        ua.close()
        await stack.close()
        dns.close()


def test_callpath_back_to_back_target_on_a_domain(tmp_path):
    """callpath with [sip] dns_servers: a SIPp caller dials the back-to-back number, whose target
    sip:callee@example.test is located through the DNS server and reached at the SIPp UAS."""
    uas_port = free_udp_port()
    alice = ("alice", "secret", "1001")
    with ThreadedDnsServer(zone((10, uas_port))) as dns:
        server = start_callpath(tmp_path, users=[alice], sip={
            "dns_servers": [dns.nameserver], "b2bua": [{"number": "9000", "target": f"sip:callee@{D}"}]})
        try:
            with start_sipp("uas.xml", local_port=uas_port, calls=1, timeout=30) as uas:
                run_sipp("uac.xml", server.target, local_port=free_udp_port(), users_csv=[alice[:2]],
                         service="9000", duration_ms=200, keys=server.sipp_keys()).check(calls=1)
                uas.wait(timeout=15).check(calls=1)
            with urllib.request.urlopen(server.web_url + "/api/v1/status", timeout=5) as r:
                dns_status = json.loads(r.read())["dns"]
            assert dns_status["nameservers"] == [dns.nameserver] and dns_status["lookups"] >= 1
            assert dns_status["queries"] == 3 and dns_status["failures"] == 0
        finally:
            server.stop()
        assert (D, "NAPTR") in dns.server.queries and (f"sip0.{D}", "A") in dns.server.queries
