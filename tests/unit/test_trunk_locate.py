"""A trunk's carrier host located by RFC 3263 (SRV for the trunk's transport, then A) over a loopback DNS server:
its OPTIONS probes reach the port the SRV record names."""
from __future__ import annotations

import asyncio
import random
import socket

from dns_server import DnsTestServer
from sipcore.locator import ServerLocator
from sipcore.stack import SipStack
from sipcore.transaction import Flow
from sipcore.trunk import Trunk, TrunkConfig
from sipcore.trunk_link import TrunkLink

D = "carrier.test"


class Carrier(asyncio.DatagramProtocol):
    """Answers every OPTIONS with 200 and records where it was sent."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.received.append(data)
        head, _, _ = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        keep = [l for l in lines[1:] if l.split(b":", 1)[0].lower() in (b"via", b"from", b"to", b"call-id", b"cseq")]
        self.transport.sendto(b"\r\n".join([b"SIP/2.0 200 OK", *keep, b"Content-Length: 0", b"", b""]), addr)


async def test_trunk_host_without_port_is_located_by_srv():
    loop = asyncio.get_running_loop()
    carrier = Carrier()
    ctransport, _ = await loop.create_datagram_endpoint(lambda: carrier, local_addr=("127.0.0.1", 0))
    port = ctransport.get_extra_info("sockname")[1]
    dns = DnsTestServer({(f"_sip._udp.{D}", "SRV"): [f"10 0 {port} edge.{D}."], (f"edge.{D}", "A"): ["127.0.0.1"]})
    await dns.start()
    stack = SipStack("127.0.0.1")
    await stack.listen_udp("127.0.0.1", 0)
    try:
        trunk = Trunk(TrunkConfig(name="carrier", host=D, qualify_interval=30))
        link = TrunkLink(stack, trunk, locator=ServerLocator([dns.nameserver], hosts_file=None, families=("A",),
                                                            rng=random.Random(1)))
        await link.start()
        assert trunk.next_hop == Flow("udp", ("127.0.0.1", port)) and trunk.addresses == ("127.0.0.1",)
        assert trunk.accepts_source("127.0.0.1")
        for _ in range(300):
            if trunk.qualify is not None and trunk.qualify.state == "up":
                break
            await asyncio.sleep(0.01)
        assert carrier.received and carrier.received[0].startswith(b"OPTIONS sip:")
        assert trunk.qualify.state == "up" and trunk.up
        assert dns.queries == [(f"_sip._udp.{D}", "SRV"), (f"edge.{D}", "A")]
        # the trunk's INVITEs keep the carrier's domain in the Request-URI and go to the located target
        route = trunk.route("+15550001")
        assert route.request_uri == f"sip:+15550001@{D}" and route.flow == Flow("udp", ("127.0.0.1", port))
        await link.stop()
    finally:
        ctransport.close()
        dns.close()
        await stack.close()


async def test_trunk_host_with_port_uses_a_only_and_reports_what_failed():
    dns = DnsTestServer({(f"other.{D}", "A"): ["127.0.0.1"]})
    await dns.start()
    stack = SipStack("127.0.0.1")
    await stack.listen_udp("127.0.0.1", 0)
    try:
        trunk = Trunk(TrunkConfig(name="carrier", host=f"gone.{D}:5080"))
        link = TrunkLink(stack, trunk, locator=ServerLocator([dns.nameserver], hosts_file=None, families=("A",)))
        await link.start()
        assert trunk.next_hop is None and not trunk.usable
        assert trunk.resolve_error.startswith(f"cannot locate gone.{D}") and "NXDOMAIN" in trunk.resolve_error
        assert dns.queries == [(f"gone.{D}", "A")]
        await link.stop()
    finally:
        dns.close()
        await stack.close()
