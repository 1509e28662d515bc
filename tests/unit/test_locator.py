"""ServerLocator (sipcore.locator): RFC 3263 over dnspython's asyncio resolver, against a DNS server on 127.0.0.1."""
from __future__ import annotations

import asyncio
import random

import pytest

from dns_server import DnsTestServer
from sipcore.dns import AnswerStatus, DnsCache, Query
from sipcore.locator import ServerLocator, read_hosts_file
from sipcore.uri import SipUri

D = "example.test"
ZONE = {
    (D, "NAPTR"): [f'10 50 "s" "SIP+D2U" "" _sip._udp.{D}.', f'20 50 "s" "SIP+D2T" "" _sip._tcp.{D}.'],
    (f"_sip._udp.{D}", "SRV"): [f"10 60 5070 sip1.{D}.", f"20 0 5071 sip2.{D}."],
    (f"_sip._tcp.{D}", "SRV"): [f"10 0 5080 sip1.{D}."],
    (f"sip1.{D}", "A"): ["127.0.0.1"],
    (f"sip2.{D}", "A"): ["127.0.0.2"],
    (f"alias.{D}", "CNAME"): [f"sip1.{D}."],
    (f"slow.{D}", "A"): ["127.0.0.3"],
}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def dns_server():
    server = DnsTestServer(ZONE, ttl=60, negative_ttl=30)
    await server.start()
    yield server
    server.close()


def make_locator(server: DnsTestServer, **kw) -> ServerLocator:
    kw.setdefault("rng", random.Random(3))
    kw.setdefault("families", ("A",))
    return ServerLocator([server.nameserver], hosts_file=None, **kw)


def uri(text: str) -> SipUri:
    return SipUri.parse(text)


async def test_naptr_srv_a_over_the_wire(dns_server):
    loc = await make_locator(dns_server).locate(uri(f"sip:bob@{D}"))
    assert [str(t) for t in loc.targets] == ["udp:127.0.0.1:5070", "udp:127.0.0.2:5071", "tcp:127.0.0.1:5080"]
    assert dns_server.queries[0] == (D, "NAPTR")


async def test_cache_by_ttl_with_an_injected_clock(dns_server):
    clock = Clock()
    locator = make_locator(dns_server, clock=clock)
    await locator.locate(uri(f"sip:bob@{D}"))
    asked = len(dns_server.queries)
    await locator.locate(uri(f"sip:carol@{D}"))
    assert len(dns_server.queries) == asked  # all from the cache
    cached = locator.locate_cached(uri(f"sip:bob@{D}"))
    assert cached is not None and cached.targets[0].port == 5070
    clock.now += 61  # past the 60 s TTL
    assert locator.locate_cached(uri(f"sip:bob@{D}")) is None
    await locator.locate(uri(f"sip:bob@{D}"))
    assert dns_server.count(D, "NAPTR") == 2


async def test_nxdomain_is_cached_for_the_soa_negative_ttl(dns_server):
    clock = Clock()
    locator = make_locator(dns_server, clock=clock)
    loc = await locator.locate(uri("sip:bob@nowhere.test:5060"))
    assert loc.targets == [] and "NXDOMAIN" in loc.reason
    await locator.locate(uri("sip:bob@nowhere.test:5060"))
    assert dns_server.count("nowhere.test", "A") == 1
    clock.now += 31
    await locator.locate(uri("sip:bob@nowhere.test:5060"))
    assert dns_server.count("nowhere.test", "A") == 2
    # NODATA (a known name, another type) is negative too
    answer = await locator.lookup(Query.of(f"sip1.{D}", "AAAA"))
    assert answer.status is AnswerStatus.NOERROR and answer.records == () and answer.ttl == 30


async def test_a_timeout_is_a_failure_cached_briefly(dns_server):
    clock = Clock()
    dns_server.drop.add(f"sip1.{D}")
    locator = make_locator(dns_server, clock=clock, timeout=0.2, lifetime=0.5, cache=DnsCache(failure_ttl=5))
    loc = await locator.locate(uri(f"sip:bob@sip1.{D}:5070"))
    assert loc.targets == [] and "timeout" in loc.reason
    asked = dns_server.count(f"sip1.{D}", "A")
    await locator.locate(uri(f"sip:bob@sip1.{D}:5070"))
    assert dns_server.count(f"sip1.{D}", "A") == asked  # failure cached
    dns_server.drop.clear()
    clock.now += 6
    loc = await locator.locate(uri(f"sip:bob@sip1.{D}:5070"))
    assert [str(t) for t in loc.targets] == ["udp:127.0.0.1:5070"]
    assert locator.stats["failures"] == 1


async def test_servfail_is_a_failure(dns_server):
    dns_server.servfail.add("broken.test")
    loc = await make_locator(dns_server).locate(uri("sip:bob@broken.test:5060"))
    assert loc.targets == [] and "SERVFAIL" in loc.reason


async def test_cname_is_followed(dns_server):
    loc = await make_locator(dns_server).locate(uri(f"sip:bob@alias.{D}:5090"))
    assert [str(t) for t in loc.targets] == ["udp:127.0.0.1:5090"]


async def test_concurrent_lookups_share_one_query(dns_server):
    dns_server.delay[f"slow.{D}"] = 0.2
    locator = make_locator(dns_server)
    locs = await asyncio.gather(*(locator.locate(uri(f"sip:u{i}@slow.{D}:5060")) for i in range(5)))
    assert all(str(x.targets[0]) == "udp:127.0.0.3:5060" for x in locs)
    assert dns_server.count(f"slow.{D}", "A") == 1


async def test_additional_section_addresses_are_cached():
    server = DnsTestServer(ZONE, additional=True)
    await server.start()
    try:
        loc = await make_locator(server).locate(uri(f"sip:bob@{D};transport=udp"))
        assert [t.port for t in loc.targets] == [5070, 5071]
        assert server.count(f"sip1.{D}", "A") == 0 and server.count(f"sip2.{D}", "A") == 0
    finally:
        server.close()


async def test_a_slow_answer_does_not_stall_the_loop(dns_server):
    """The answer takes 1 s at the server; a 20 ms timer keeps firing on time meanwhile."""
    dns_server.delay[f"slow.{D}"] = 1.0
    locator = make_locator(dns_server, lifetime=5.0, timeout=3.0)
    loop = asyncio.get_running_loop()
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(loop.time())
            await asyncio.sleep(0.02)

    task = loop.create_task(ticker())
    start = loop.time()
    loc = await locator.locate(uri(f"sip:bob@slow.{D}:5060"))
    elapsed = loop.time() - start
    task.cancel()
    assert str(loc.targets[0]) == "udp:127.0.0.3:5060"
    assert elapsed >= 0.9
    # the loop kept running: many ticks during the second, and no gap anywhere near the lookup's length
    assert len(ticks) > 10
    assert max(b - a for a, b in zip(ticks, ticks[1:])) < 0.5


async def test_hosts_file_names_skip_dns(tmp_path, dns_server):
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.9 pbx.local pbx # comment\n::1 localhost6\n")
    assert read_hosts_file(str(hosts))["pbx"] == ["127.0.0.9"]
    assert read_hosts_file(str(hosts))["localhost"] == ["127.0.0.1", "::1"]
    locator = ServerLocator([dns_server.nameserver], hosts_file=str(hosts), families=("A",))
    loc = await locator.locate(uri("sip:bob@pbx.local"))
    assert [str(t) for t in loc.targets] == ["udp:127.0.0.9:5060"]
    loc = await locator.locate(uri("sip:bob@localhost:5099;transport=tcp"))
    assert [str(t) for t in loc.targets] == ["tcp:127.0.0.1:5099"]
    assert dns_server.queries == []


async def test_no_name_server_is_a_failure_not_an_exception():
    locator = ServerLocator([], hosts_file=None)
    locator._get_resolver().nameservers = []
    loc = await locator.locate(uri("sip:bob@example.invalid:5060"))
    assert loc.targets == [] and "no name server" in loc.reason


async def test_search_list_of_the_system_configuration_applies_to_short_names(dns_server):
    """resolv.conf's search list and ndots (here set on the resolver as resolv.conf would): "sip1" is found as
    sip1.example.test, as the system resolver would find it."""
    import dns.name

    locator = make_locator(dns_server)
    resolver = locator._get_resolver()
    resolver.search, resolver.ndots = [dns.name.from_text(f"{D}.")], 1
    loc = await locator.locate(uri("sip:bob@sip1:5060"))
    assert [str(t) for t in loc.targets] == ["udp:127.0.0.1:5060"]
    assert (f"sip1.{D}", "A") in dns_server.queries
