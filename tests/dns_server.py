"""A tiny authoritative DNS server over UDP on 127.0.0.1, for tests (dnspython's message and rdata APIs).

    server = DnsTestServer({
        ("example.test", "NAPTR"): ['10 50 "s" "SIP+D2U" "" _sip._udp.example.test.'],
        ("_sip._udp.example.test", "SRV"): ["10 60 5070 sip1.example.test."],
        ("sip1.example.test", "A"): ["127.0.0.1"],
    })
    host, port = await server.start()
    ...
    server.close()

Names in the table answer their records (authoritative, with `ttl`); a known name asked for another type
gets NOERROR without records (NODATA), a CNAME is followed one step,, an unknown name NXDOMAIN, both with the zone's SOA in the authority
section (negative TTL `negative_ttl`). `delay[name]` answers late, `drop` never answers (a timeout),
`servfail` answers SERVFAIL. SRV answers carry the A records of their targets in the additional section
when `additional` is set. Every question is logged in `queries` as (name, type).
"""
from __future__ import annotations

import asyncio
from collections.abc import Mapping

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


class DnsTestServer(asyncio.DatagramProtocol):
    def __init__(self, zone: Mapping[tuple[str, str], list[str]], *, ttl: int = 300, negative_ttl: int = 60,
                 apex: str = "test", additional: bool = False) -> None:
        self.zone = {(n.rstrip(".").lower(), t.upper()): list(v) for (n, t), v in zone.items()}
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.apex = apex
        self.additional = additional
        self.delay: dict[str, float] = {}
        self.drop: set[str] = set()
        self.servfail: set[str] = set()
        self.queries: list[tuple[str, str]] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.address: tuple[str, int] = ("127.0.0.1", 0)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        self.address = self.transport.get_extra_info("sockname")[:2]
        return self.address

    @property
    def nameserver(self) -> str:
        """The "ip:port" form of [sip] dns_servers."""
        return f"{self.address[0]}:{self.address[1]}"

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def count(self, name: str, rdtype: str) -> int:
        return self.queries.count((name.rstrip(".").lower(), rdtype.upper()))

    def _known(self, name: str) -> bool:
        return any(n == name for n, _ in self.zone)

    def _soa(self) -> dns.rrset.RRset:
        return dns.rrset.from_text(f"{self.apex}.", self.negative_ttl, "IN", "SOA",
                                   f"ns.{self.apex}. hostmaster.{self.apex}. 1 3600 600 86400 {self.negative_ttl}")

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        try:
            query = dns.message.from_wire(data)
        except Exception:  # noqa: BLE001 - not a DNS message: ignored
            return
        if not query.question:
            return
        q = query.question[0]
        name = q.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(q.rdtype)
        self.queries.append((name, rdtype))
        if name in self.drop:
            return
        resp = dns.message.make_response(query)
        resp.flags |= dns.flags.AA
        if name in self.servfail:
            resp.set_rcode(dns.rcode.SERVFAIL)
        elif rdtype != "CNAME" and (name, "CNAME") in self.zone:  # the alias and what it points to
            target = self.zone[(name, "CNAME")][0]
            resp.answer.append(dns.rrset.from_text_list(q.name, self.ttl, "IN", "CNAME", [target]))
            key = (target.rstrip(".").lower(), rdtype)
            if key in self.zone:
                resp.answer.append(dns.rrset.from_text_list(target, self.ttl, "IN", rdtype, self.zone[key]))
        elif (name, rdtype) in self.zone:
            resp.answer.append(dns.rrset.from_text_list(q.name, self.ttl, "IN", rdtype, self.zone[(name, rdtype)]))
            if rdtype == "SRV" and self.additional:
                for rd in resp.answer[0]:
                    target = rd.target.to_text(omit_final_dot=True).lower()
                    if (target, "A") in self.zone:
                        resp.additional.append(dns.rrset.from_text_list(
                            rd.target, self.ttl, "IN", "A", self.zone[(target, "A")]))
        else:
            if not self._known(name):
                resp.set_rcode(dns.rcode.NXDOMAIN)
            resp.authority.append(self._soa())
        wire = resp.to_wire()
        delay = self.delay.get(name, 0.0)
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._send, wire, addr)
        else:
            self._send(wire, addr)

    def _send(self, wire: bytes, addr: tuple) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(wire, addr)


class ThreadedDnsServer:
    """A DnsTestServer on its own event loop in a thread, for tests whose SIP side is another process.

        with ThreadedDnsServer(zone) as dns:
            start_callpath(..., sip={"dns_servers": [dns.nameserver]})
    """

    def __init__(self, zone: Mapping[tuple[str, str], list[str]], **kwargs) -> None:
        import threading

        self.server = DnsTestServer(zone, **kwargs)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dns-test-server", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self.server.start())
        self._ready.set()
        self._loop.run_forever()
        self.server.close()
        self._loop.run_until_complete(asyncio.sleep(0))
        self._loop.close()

    @property
    def nameserver(self) -> str:
        return self.server.nameserver

    def __enter__(self) -> ThreadedDnsServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the DNS test server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
