"""The proxy forwards to next hops that are host names, located by RFC 3263 (a DNS server on 127.0.0.1)."""
from __future__ import annotations

import asyncio

from dns_server import DnsTestServer
from sipcore.locator import ServerLocator
from sipcore.message import parse_message
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
