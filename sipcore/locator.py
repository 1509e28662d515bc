"""The asyncio adapter of the RFC 3263 core (`sipcore.dns`): DNS queries with dnspython's asyncio resolver.

`ServerLocator.locate(uri)` runs a `ServerLocation` to the end: it asks the queries the core wants (those of
one step in parallel), through the `DnsCache` and then the name servers, and returns the finished location
(`targets`, or `reason` when there are none). Nothing here blocks the event loop: dnspython sends the UDP
(and, on truncation, TCP) queries on the loop; the hosts file and resolv.conf are read once.

Name servers: `nameservers=["192.0.2.53", "127.0.0.1:5353"]` (`[sip] dns_servers`), or, when empty, those
of /etc/resolv.conf (dnspython reads it, with its search list and ndots; without one, lookups fail and say
so). Names in /etc/hosts (and
`localhost`) are answered from it without DNS.

Failure table (every outcome is an `Answer`, never an exception to the caller):

| what happened                        | Answer                              | cached for                          |
|--------------------------------------|-------------------------------------|-------------------------------------|
| records                              | NOERROR + records                   | their TTL (the CNAME chain's least) |
| NOERROR without records (NODATA)     | NOERROR, no records                 | the SOA's negative TTL (RFC 2308)   |
| NXDOMAIN                             | NXDOMAIN                            | the SOA's negative TTL              |
| timeout (no answer within `lifetime`)| FAILURE "timeout ..."               | `cache.failure_ttl` (5 s)           |
| SERVFAIL/REFUSED from every server   | FAILURE "no name server answered"   | `cache.failure_ttl`                 |
| a name dnspython rejects, other bugs | FAILURE with the error text         | `cache.failure_ttl`                 |

Concurrent lookups of one query share one DNS request. A/AAAA records in the additional section of an SRV
answer are cached too (most authoritative servers send them), saving a round trip per SRV target.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from .dns import (
    SUPPORTED_TRANSPORTS, Answer, AnswerStatus, DnsCache, Naptr, Query, ServerLocation, Srv, Target, parse_nameserver,
)
from .transaction import Flow
from .uri import SipUri

__all__ = ["ServerLocator", "as_flow", "read_hosts_file"]

log = logging.getLogger("callpath.sip.dns")


def as_flow(target: Target) -> Flow:
    """The stack's Flow for a located target."""
    return Flow(target.transport, (target.host, target.port))


def read_hosts_file(path: str = "/etc/hosts") -> dict[str, list[str]]:
    """name (lower case) -> addresses, in file order; `localhost` always maps to the loopback addresses."""
    table: dict[str, list[str]] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError:
        lines = []
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        address = fields[0].split("%", 1)[0]
        for name in fields[1:]:
            entry = table.setdefault(name.rstrip(".").lower(), [])
            if address not in entry:
                entry.append(address)
    table.setdefault("localhost", ["127.0.0.1", "::1"])
    return table


class ServerLocator:
    """RFC 3263 server location over dnspython's asyncio resolver, with a TTL cache.

    `nameservers`: "ip[:port]" strings (empty: the system's resolv.conf); `timeout`: seconds per query
    to one server; `lifetime`: seconds a whole query may take over all servers and retries;
    `transports`: what NAPTR/SRV discovery may choose; `families`: ("A", "AAAA") in order of preference;
    `clock`: monotonic seconds for the cache; `rng`: SRV weight selection; `hosts_file`: None to ignore it.
    """

    def __init__(self, nameservers: Iterable[str | tuple[str, int]] = (), *, timeout: float = 2.0,
                 lifetime: float = 4.0, transports: Collection[str] = SUPPORTED_TRANSPORTS,
                 families: Sequence[str] = ("A", "AAAA"), cache: DnsCache | None = None,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None,
                 hosts_file: str | None = "/etc/hosts") -> None:
        self.nameservers = [parse_nameserver(n) if isinstance(n, str) else (n[0], int(n[1])) for n in nameservers]
        self.timeout = timeout
        self.lifetime = lifetime
        self.transports = tuple(transports)
        self.families = tuple(families)
        self.cache = cache if cache is not None else DnsCache()
        self.clock = clock
        self.rng = rng or random.Random()
        self.hosts = read_hosts_file(hosts_file) if hosts_file else {}
        self.stats = {"lookups": 0, "queries": 0, "cache_hits": 0, "failures": 0, "no_targets": 0}
        self._local = self._local_hosts()
        self._resolver: Any = None
        self._inflight: dict[Query, asyncio.Future[Answer]] = {}
        self._tasks: set[asyncio.Task] = set()

    # -- RFC 3263 ------------------------------------------------------------------------------------
    def location(self, uri: SipUri, transports: Collection[str] | None = None) -> ServerLocation:
        """A fresh sans-IO lookup for `uri` with this locator's options."""
        return ServerLocation(uri, transports=self.transports if transports is None else transports,
                              families=self.families, rng=self.rng, local_hosts=self._local)

    async def locate(self, uri: SipUri, transports: Collection[str] | None = None) -> ServerLocation:
        """Run the lookup for `uri` to the end; `.targets` in the order to try them (empty: `.reason`)."""
        self.stats["lookups"] += 1
        loc = self.location(uri, transports)
        while not loc.done:
            queries = loc.queries()
            if not queries:  # cannot happen (every step asks something or ends); never spin on it
                break
            answers = await asyncio.gather(*(self.lookup(q) for q in queries))
            for q, a in zip(queries, answers):
                loc.receive(q, a)
        self._log_result(uri, loc)
        return loc

    def locate_cached(self, uri: SipUri, transports: Collection[str] | None = None) -> ServerLocation | None:
        """The lookup run from the cache alone (no waiting); None when an answer it needs is not cached."""
        loc = self.location(uri, transports)
        now = self.clock()
        while not loc.done:
            queries = loc.queries()
            if not queries:
                return None
            for q in queries:
                a = self.cache.get(q, now)
                if a is None:
                    return None
                loc.receive(q, a)
        return loc

    def prefetch(self, uri: SipUri, transports: Collection[str] | None = None) -> None:
        """Start looking `uri` up in the background (so that a later `locate_cached` finds it)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(self.locate(uri, transports))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- queries -------------------------------------------------------------------------------------
    async def lookup(self, query: Query) -> Answer:
        """One query's answer: from the cache, from a query already in flight, or from the name servers."""
        cached = self.cache.get(query, self.clock())
        if cached is not None:
            self.stats["cache_hits"] += 1
            return cached
        fut = self._inflight.get(query)
        if fut is None:
            fut = asyncio.ensure_future(self._ask(query))
            self._inflight[query] = fut
            fut.add_done_callback(lambda _f, q=query: self._inflight.pop(q, None))
        return await asyncio.shield(fut)

    async def _ask(self, query: Query) -> Answer:
        self.stats["queries"] += 1
        try:
            answer = await self._query(query)
        except Exception as exc:  # noqa: BLE001 - never let a resolver bug become the caller's exception
            log.warning("DNS %s %s failed: %r", query.rdtype, query.name, exc)
            answer = Answer.failure(f"error: {exc}")
        if answer.status is AnswerStatus.FAILURE:
            self.stats["failures"] += 1
            log.info("DNS %s %s: %s", query.rdtype, query.name, answer.reason)
        self.cache.put(query, answer, self.clock())
        return answer

    def _local_hosts(self) -> dict[str, list[str]]:
        """The hosts table filtered to the address families wanted, in their order."""
        want4, want6 = "A" in self.families, "AAAA" in self.families
        out: dict[str, list[str]] = {}
        for name, addresses in self.hosts.items():
            v4 = [a for a in addresses if ":" not in a] if want4 else []
            v6 = [a for a in addresses if ":" in a] if want6 else []
            ordered = v4 + v6 if self.families.index("A" if want4 else "AAAA") == 0 else v6 + v4
            if ordered:
                out[name] = ordered
        return out

    def _get_resolver(self) -> Any:
        if self._resolver is None:
            import dns.asyncresolver
            import dns.name
            import dns.nameserver
            import dns.resolver

            if self.nameservers:
                r = dns.asyncresolver.Resolver(configure=False)
                r.nameservers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in self.nameservers]
                r.search, r.domain = [], dns.name.root  # names as given (not the host name's domain)
            else:
                try:
                    r = dns.asyncresolver.Resolver()
                except dns.resolver.NoResolverConfiguration:
                    log.warning("no name server in /etc/resolv.conf and none in [sip] dns_servers: "
                                "host names cannot be resolved")
                    r = dns.asyncresolver.Resolver(configure=False)
                    r.nameservers = []
            r.timeout = self.timeout
            r.lifetime = self.lifetime
            r.cache = None  # ours has negative and failure caching and the injected clock
            self._resolver = r
        return self._resolver

    async def _query(self, query: Query) -> Answer:
        import dns.exception
        import dns.name
        import dns.rdatatype
        import dns.resolver

        resolver = self._get_resolver()
        if not resolver.nameservers:
            return Answer.failure("no name server configured")
        try:
            # a relative name: resolv.conf's search list and ndots apply, as for the system resolver
            # (short names of a cluster or a LAN); with explicit dns_servers there is no search list
            ans = await resolver.resolve(dns.name.from_text(query.name, origin=None), query.rdtype,
                                         raise_on_no_answer=False, search=True)
        except dns.resolver.NXDOMAIN as exc:
            responses = list(exc.responses().values())
            return Answer.nxdomain(_negative_ttl(responses[0] if responses else None))
        except dns.resolver.NoNameservers:
            return Answer.failure("no name server answered (SERVFAIL/REFUSED)")
        except dns.exception.Timeout:
            return Answer.failure(f"timeout after {self.lifetime:g} s")
        except dns.exception.DNSException as exc:
            return Answer.failure(f"{type(exc).__name__}: {exc}")
        if ans.rrset is None:
            return Answer.nodata(_negative_ttl(ans.response))
        chaining = getattr(ans, "chaining_result", None)
        ttl = float(getattr(chaining, "minimum_ttl", ans.rrset.ttl))
        records = [_record(rd) for rd in ans.rrset]
        if query.rdtype == "SRV":
            self._cache_additional(ans.response)
        return Answer.ok([r for r in records if r is not None], ttl)

    def _cache_additional(self, response: Any) -> None:
        """A/AAAA of the SRV targets that came in the additional section."""
        import dns.rdatatype

        now = self.clock()
        for rrset in getattr(response, "additional", ()):
            if rrset.rdtype not in (dns.rdatatype.A, dns.rdatatype.AAAA):
                continue
            rdtype = dns.rdatatype.to_text(rrset.rdtype)
            q = Query.of(rrset.name.to_text(), rdtype)
            if self.cache.get(q, now) is None:
                self.cache.put(q, Answer.ok([rd.address for rd in rrset], float(rrset.ttl)), now)

    def _log_result(self, uri: SipUri, loc: ServerLocation) -> None:
        if loc.targets:
            log.debug("located %s: %s", uri, ", ".join(str(t) for t in loc.targets))
        else:
            self.stats["no_targets"] += 1
            log.info("cannot locate %s: %s", uri, loc.reason)

    def status(self) -> dict[str, Any]:
        """Counters and configuration for /api/v1/status."""
        servers = [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.nameservers] or "resolv.conf"
        return {"nameservers": servers, "cache_entries": len(self.cache), **self.stats}

    async def close(self) -> None:
        """Stop background lookups (shutdown)."""
        for t in list(self._tasks):
            t.cancel()
        self._tasks.clear()


def _negative_ttl(response: Any) -> float:
    """RFC 2308 §5: the lesser of the SOA record's TTL and its MINIMUM field; 60 s when there is none."""
    import dns.rdatatype

    for rrset in getattr(response, "authority", ()) if response is not None else ():
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return float(min(rrset.ttl, rrset[0].minimum))
    return 60.0


def _record(rd: Any) -> Naptr | Srv | str | None:
    """dnspython rdata -> the core's record types."""
    import dns.rdatatype

    t = rd.rdtype
    if t == dns.rdatatype.NAPTR:
        return Naptr(rd.order, rd.preference, rd.flags.decode("ascii", "replace"),
                     rd.service.decode("ascii", "replace"), rd.regexp.decode("ascii", "replace"),
                     _name(rd.replacement))
    if t == dns.rdatatype.SRV:
        return Srv(rd.priority, rd.weight, rd.port, _name(rd.target))
    if t in (dns.rdatatype.A, dns.rdatatype.AAAA):
        return str(rd.address)
    return None


def _name(name: Any) -> str:
    """A dnspython Name as text without the final dot; the root is "."."""
    text = name.to_text(omit_final_dot=True)
    return "." if text in ("", ".", "@") else text
