"""The proxy forwards to next hops that are host names, located by RFC 3263 (a DNS server on 127.0.0.1)."""
from __future__ import annotations

import asyncio

import sipcore.transaction as transaction
from dns_server import DnsTestServer
from sipcore.locator import ServerLocator
from sipcore.message import make_response, parse_message
from sipcore.transaction import Flow
from test_proxy_core import Harness, _branches, status

D = "example.test"


def foreign_invite(uri: str) -> str:
    n = next(_branches)
    return (f"INVITE {uri} SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKdns{n}\n"
            f"From: <sip:bob@127.0.0.1>;tag=b\nTo: <{uri}>\nCall-ID: dns-{n}\n"
            f"CSeq: 1 INVITE\nMax-Forwards: 70\nContact: <sip:bob@127.0.0.1:5080>\nContent-Length: 0\n\n")


async def settle(h: Harness, pred, timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred() and loop.time() < end:
        await asyncio.sleep(0.01)


async def test_request_to_a_foreign_domain_goes_where_naptr_srv_a_say():
    dns = DnsTestServer({
        (D, "NAPTR"): [f'10 10 "s" "SIP+D2U" "" _sip._udp.{D}.'],
        (f"_sip._udp.{D}", "SRV"): [f"10 10 5099 edge.{D}."],
        (f"edge.{D}", "A"): ["127.0.0.7"],
    })
    await dns.start()
    try:
        h = Harness(auth=False)
        h.proxy.locator = ServerLocator([dns.nameserver], hosts_file=None, families=("A",))
        h.stack.receive(foreign_invite(f"sip:carol@{D}").replace("\n", "\r\n").encode(),
                        Flow("udp", ("127.0.0.1", 5080)))
        await settle(h, lambda: any(d.startswith(b"INVITE") for d, _ in h.wire.sent))
        sent = [(d, a) for d, a in h.wire.sent if d.startswith(b"INVITE")]
        assert sent and sent[0][1] == ("127.0.0.7", 5099)
        assert str(parse_message(sent[0][0]).uri) == f"sip:carol@{D}"
        assert dns.queries == [(D, "NAPTR"), (f"_sip._udp.{D}", "SRV"), (f"edge.{D}", "A")]
    finally:
        dns.close()


async def test_unresolvable_next_hop_gets_502():
    dns = DnsTestServer({})
    await dns.start()
    try:
        h = Harness(auth=False)
        h.proxy.locator = ServerLocator([dns.nameserver], hosts_file=None, families=("A",))
        h.stack.receive(foreign_invite("sip:carol@nowhere.test:5060").replace("\n", "\r\n").encode(),
                        Flow("udp", ("127.0.0.1", 5080)))
        await settle(h, lambda: any(d.startswith(b"SIP/2.0 5") for d, _ in h.wire.sent))
        finals = [d for d, _ in h.wire.sent if d.startswith(b"SIP/2.0 5")]
        assert finals and status(finals[0]) == 502
    finally:
        dns.close()


def two_targets() -> DnsTestServer:
    return DnsTestServer({
        (f"_sip._udp.{D}", "SRV"): [f"10 0 5099 one.{D}.", f"20 0 5098 two.{D}."],
        (f"one.{D}", "A"): ["127.0.0.7"], (f"two.{D}", "A"): ["127.0.0.8"],
    })


def invites(h: Harness) -> list[tuple[bytes, tuple]]:
    return [(d, a) for d, a in h.wire.sent if d.startswith(b"INVITE")]


async def test_a_branch_fails_over_to_the_next_target_on_503():
    dns = two_targets()
    await dns.start()
    try:
        h = Harness(auth=False)
        h.proxy.locator = ServerLocator([dns.nameserver], hosts_file=None, families=("A",))
        h.stack.receive(foreign_invite(f"sip:carol@{D};transport=udp").replace("\n", "\r\n").encode(),
                        Flow("udp", ("127.0.0.1", 5080)))
        await settle(h, lambda: len(invites(h)) == 1)
        first, addr = invites(h)[0]
        assert addr == ("127.0.0.7", 5099)
        h.stack.receive(make_response(parse_message(first), 503, to_tag="x").to_bytes(), Flow("udp", addr))
        await settle(h, lambda: len(invites(h)) == 2)
        second, addr2 = invites(h)[1]
        assert addr2 == ("127.0.0.8", 5098)
        assert parse_message(first).top_via.branch != parse_message(second).top_via.branch
        assert not any(d.startswith(b"SIP/2.0 5") for d, _ in h.wire.sent)  # the 503 was not relayed
        # the second target answers: its final response is the one relayed
        h.stack.receive(make_response(parse_message(second), 486, to_tag="y").to_bytes(), Flow("udp", addr2))
        await settle(h, lambda: any(d.startswith(b"SIP/2.0 486") for d, _ in h.wire.sent))
        assert any(d.startswith(b"SIP/2.0 486") for d, _ in h.wire.sent)
    finally:
        dns.close()


async def test_no_failover_once_a_target_responded():
    dns = two_targets()
    await dns.start()
    try:
        h = Harness(auth=False)
        h.proxy.locator = ServerLocator([dns.nameserver], hosts_file=None, families=("A",))
        h.stack.receive(foreign_invite(f"sip:carol@{D};transport=udp").replace("\n", "\r\n").encode(),
                        Flow("udp", ("127.0.0.1", 5080)))
        await settle(h, lambda: len(invites(h)) == 1)
        first, addr = invites(h)[0]
        h.stack.receive(make_response(parse_message(first), 100).to_bytes(), Flow("udp", addr))
        h.stack.receive(make_response(parse_message(first), 503, to_tag="x").to_bytes(), Flow("udp", addr))
        await settle(h, lambda: any(d.startswith(b"SIP/2.0 5") for d, _ in h.wire.sent))
        assert len(invites(h)) == 1
        assert any(d.startswith(b"SIP/2.0 500") for d, _ in h.wire.sent)  # a 503 is relayed as 500 (§16.7)
    finally:
        dns.close()


async def test_a_branch_fails_over_when_the_target_never_answers(monkeypatch):
    monkeypatch.setattr(transaction, "T1", 0.02)  # Timer B = 1.28 s
    dns = two_targets()
    await dns.start()
    try:
        h = Harness(auth=False)
        h.proxy.locator = ServerLocator([dns.nameserver], hosts_file=None, families=("A",))
        h.stack.receive(foreign_invite(f"sip:carol@{D};transport=udp").replace("\n", "\r\n").encode(),
                        Flow("udp", ("127.0.0.1", 5080)))
        await settle(h, lambda: any(a == ("127.0.0.8", 5098) for _, a in invites(h)), timeout=10)
        assert {a for _, a in invites(h)} == {("127.0.0.7", 5099), ("127.0.0.8", 5098)}  # retransmissions to one
        assert not any(d.startswith(b"SIP/2.0 408") for d, _ in h.wire.sent)
    finally:
        dns.close()
