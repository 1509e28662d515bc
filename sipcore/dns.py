"""Locating SIP servers (RFC 3263) as a sans-IO core: from a SIP(S) URI and DNS answers to ordered targets.

A `ServerLocation` is one lookup in progress, shaped like the other cores (h11/aioquic): it says which DNS
queries it needs (`queries()`), is fed their answers (`receive(query, answer)`), and once `done` holds the
ordered list of `Target`s (transport, IP address, port) to try, first to last (RFC 3263 §4.3: a request
whose transaction times out, hits a transport failure or gets a 503 goes to the next one). No socket, no
clock, no event loop here: `sipcore.locator.ServerLocator` is the asyncio adapter that asks dnspython, and
`locate()` runs a lookup against a fixed table of answers (what the tests use).

The procedure (RFC 3263 §4.1, §4.2):

| the URI has                       | queries                                        | transport / port         |
|-----------------------------------|------------------------------------------------|--------------------------|
| an IP literal host (or maddr)     | none                                           | ;transport or udp (sips: tls); port or 5060/5061 |
| a port                            | A/AAAA of the host                             | ;transport or udp/tls    |
| ;transport (no port)              | SRV `_sip._udp` / `_sip._tcp` / `_sips._tcp`, then A/AAAA of the SRV targets; no SRV record: A/AAAA of the host on 5060/5061 | that transport |
| ;transport=ws/wss (no port)       | A/AAAA of the host (RFC 7118 defines no SRV)   | ws on 80, wss on 443     |
| nothing of the above              | NAPTR of the host: `SIP+D2U`, `SIP+D2T`, `SIPS+D2T` records with the `s` flag for transports we support, in order/preference, each an SRV name; no usable NAPTR: SRV `_sip._udp`/`_sip._tcp` (sips: `_sips._tcp`) of the host; no SRV either: A/AAAA of the host | from the NAPTR/SRV, else udp on 5060 (sips: tls on 5061) |

SRV records are ordered by priority, and within a priority by RFC 2782's weighted random selection (the
random source is injected). Every NAPTR record we can use contributes its SRV targets, in NAPTR order, so
a server that stops answering over its preferred transport is still tried over the next one. An SRV set
whose only target is "." says the service is decidedly not available: no targets, no A/AAAA fallback.
Names found in the local hosts table (/etc/hosts, `localhost`) skip NAPTR/SRV and take their addresses
from the table, as a system resolver would.

Failure table (what ends up in `targets` / `reason`):

| answers                                                  | result                                          |
|----------------------------------------------------------|-------------------------------------------------|
| NXDOMAIN / no data / a failure for NAPTR                 | SRV fallback for the supported transports       |
| NXDOMAIN / no data / a failure for every SRV             | A/AAAA of the host on the default port          |
| NXDOMAIN / no data / a failure for every A/AAAA          | no targets; `reason` says which name failed how |
| sips URI with ;transport=udp, unknown transport          | no targets, no query; `reason` says why         |

The cache (`DnsCache`) is sans-IO too: answers keyed by query, kept for their TTL on an injected clock,
negative answers (NXDOMAIN, no data) for the SOA's negative TTL, failures briefly, bounded in size.
"""
from __future__ import annotations

import enum
import ipaddress
import random
from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .uri import SipUri, is_ip_literal

__all__ = [
    "NAPTR_SERVICES", "SUPPORTED_TRANSPORTS", "Answer", "AnswerStatus", "DnsCache", "Naptr", "Query", "ServerLocation",
    "Srv", "Target", "default_port", "literal_target", "locate", "order_srv", "parse_nameserver",
]

#: transports the locator can hand out (ws/wss only when a URI names them explicitly)
SUPPORTED_TRANSPORTS = ("udp", "tcp", "tls")
#: NAPTR service field -> transport (RFC 3263 §4.1; SCTP is not spoken)
NAPTR_SERVICES = {"SIP+D2U": "udp", "SIP+D2T": "tcp", "SIPS+D2T": "tls"}
#: transport -> the SRV service/protocol labels (RFC 3263 §4.1)
SRV_PREFIX = {"udp": "_sip._udp.", "tcp": "_sip._tcp.", "tls": "_sips._tcp."}
#: at most this many distinct host names get A/AAAA queries in one lookup (a huge SRV set stays bounded)
MAX_HOSTS = 8


def default_port(transport: str) -> int:
    """The port a transport uses when neither the URI nor SRV gives one (RFC 3261 §19.1.2, RFC 7118)."""
    return {"tls": 5061, "ws": 80, "wss": 443}.get(transport, 5060)


def parse_nameserver(text: str) -> tuple[str, int]:
    """`"ip"`, `"ip:port"`, `"[v6]:port"` or a bare IPv6 address -> (ip, port); ValueError if malformed."""
    text = text.strip()
    host, port = text, 53
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unbalanced bracket in name server {text!r}")
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"bad port in name server {text!r}")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        if not p.isascii() or not p.isdigit():
            raise ValueError(f"bad port in name server {text!r}")
        port = int(p)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"name server {text!r} is not an IP address (optionally with :port)") from None
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in name server {text!r}")
    return host, port


# -- DNS data ------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Query:
    """One DNS question: a name (lower case, no trailing dot) and a record type."""

    name: str
    rdtype: str  # "NAPTR" | "SRV" | "A" | "AAAA"

    @classmethod
    def of(cls, name: str, rdtype: str) -> Query:
        return cls(name.rstrip(".").lower(), rdtype.upper())


@dataclass(frozen=True, slots=True)
class Naptr:
    """A NAPTR record (RFC 3403) as RFC 3263 uses it: the replacement is an SRV name."""

    order: int
    preference: int
    flags: str
    service: str
    regexp: str
    replacement: str


@dataclass(frozen=True, slots=True)
class Srv:
    """An SRV record (RFC 2782)."""

    priority: int
    weight: int
    port: int
    target: str


class AnswerStatus(enum.StrEnum):
    """How a query ended. NOERROR without records is NODATA."""

    NOERROR = "noerror"
    NXDOMAIN = "nxdomain"
    FAILURE = "failure"  # timeout, SERVFAIL, REFUSED, no usable name server


Record = Naptr | Srv | str  # str: an address (A/AAAA)


@dataclass(frozen=True, slots=True)
class Answer:
    """The answer to one `Query`: records (Naptr, Srv, or address strings) and how long it may be cached."""

    status: AnswerStatus
    records: tuple[Record, ...] = ()
    ttl: float = 0.0
    reason: str = ""

    @classmethod
    def ok(cls, records: Iterable[Record], ttl: float = 300.0) -> Answer:
        return cls(AnswerStatus.NOERROR, tuple(records), ttl)

    @classmethod
    def nxdomain(cls, ttl: float = 300.0) -> Answer:
        return cls(AnswerStatus.NXDOMAIN, (), ttl, "NXDOMAIN")

    @classmethod
    def nodata(cls, ttl: float = 300.0) -> Answer:
        return cls(AnswerStatus.NOERROR, (), ttl, "no records")

    @classmethod
    def failure(cls, reason: str, ttl: float = 0.0) -> Answer:
        return cls(AnswerStatus.FAILURE, (), ttl, reason)

    def describe(self) -> str:
        """Short text for logs and failure reasons."""
        if self.status is AnswerStatus.NOERROR:
            return f"{len(self.records)} records" if self.records else "no records"
        return self.reason or self.status.value


@dataclass(frozen=True, slots=True)
class Target:
    """Where to send: a transport, an IP address and a port; `name` is the host name it was found under
    (the server identity TLS checks against, RFC 5922), empty for a literal."""

    transport: str
    host: str
    port: int
    name: str = ""

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


def order_srv(records: Iterable[Srv], rng: random.Random | None = None) -> list[Srv]:
    """RFC 2782 order: by priority; within one priority, repeatedly pick at random with probability
    proportional to the weight (weight-0 records first in the running sum, so they are rarely picked
    before the weighted ones but still picked)."""
    rng = rng or random.Random()
    by_prio: dict[int, list[Srv]] = {}
    for r in records:
        by_prio.setdefault(r.priority, []).append(r)
    out: list[Srv] = []
    for prio in sorted(by_prio):
        pool = sorted(by_prio[prio], key=lambda r: r.weight != 0)  # zero weights at the beginning
        while pool:
            total = sum(r.weight for r in pool)
            pick = rng.randint(0, total)
            running = 0
            for i, r in enumerate(pool):
                running += r.weight
                if running >= pick:
                    out.append(pool.pop(i))
                    break
    return out


def _transport_param(uri: SipUri) -> tuple[str | None, str]:
    """The transport a URI names with ;transport= (sips + tcp is TLS, sips + ws is WSS), and an error text."""
    t = (uri.params.get("transport") or "").lower()
    if not t:
        return None, ""
    secure = uri.scheme == "sips"
    if secure and t in ("tcp", "ws"):
        t = "tls" if t == "tcp" else "wss"
    if t not in ("udp", "tcp", "tls", "ws", "wss"):
        return None, f"transport {t!r} is not spoken"
    if secure and t == "udp":
        return None, "a sips URI cannot use UDP"
    return t, ""


def literal_target(uri: SipUri) -> Target | None:
    """The one target of a URI whose host (or maddr) is an IP literal, or None (a name, or a bad transport):
    the fast path that needs no lookup at all."""
    host = uri.params.get("maddr") or uri.host
    if not host or not is_ip_literal(host):
        return None
    transport, error = _transport_param(uri)
    if error:
        return None
    transport = transport or ("tls" if uri.scheme == "sips" else "udp")
    return Target(transport, host.strip("[]"), uri.port or default_port(transport))


def _literal(host: str) -> str | None:
    """The address when `host` is an IPv4/IPv6 literal (brackets allowed), else None."""
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


# -- one lookup ----------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Hop:
    """A host name (or literal) with the port and transport it is to be reached on."""

    host: str
    port: int
    transport: str


class ServerLocation:
    """One RFC 3263 lookup for a URI: `queries()` -> `receive()` ... until `done`; then `targets`.

    `transports`: the transports this side can send over (NAPTR/SRV for others are skipped);
    `families`: the address records wanted, in order of preference (("A",) on an IPv4-only stack);
    `rng`: the random source of the SRV weight selection; `local_hosts`: name -> addresses known
    without DNS (the hosts file).
    """

    def __init__(self, uri: SipUri, *, transports: Collection[str] = SUPPORTED_TRANSPORTS,
                 families: Sequence[str] = ("A", "AAAA"), rng: random.Random | None = None,
                 local_hosts: Mapping[str, Sequence[str]] | None = None, max_hosts: int = MAX_HOSTS) -> None:
        self.uri = uri
        self.transports = tuple(transports)
        self.families = tuple(f.upper() for f in families)
        self.rng = rng or random.Random()
        self.max_hosts = max_hosts
        self.targets: list[Target] = []
        self.reason = ""
        self.done = False
        self.answers: dict[Query, Answer] = {}
        self._pending: list[Query] = []
        self._phase = ""
        self._srv: list[tuple[Query, str]] = []       # SRV queries with their transport, in order
        self._fallback: list[_Hop] = []               # what A/AAAA to use when SRV yields nothing
        self._hops: list[_Hop] = []
        self._start(local_hosts or {})

    @property
    def phase(self) -> str:
        """"naptr", "srv", "address" or "done" (for logs and tests)."""
        return self._phase

    def queries(self) -> list[Query]:
        """The queries whose answers this lookup waits for now (empty once done)."""
        return [q for q in self._pending if q not in self.answers]

    def receive(self, query: Query, answer: Answer) -> None:
        """Feed the answer to one of `queries()`; advances to the next step once all are in."""
        if self.done or query not in self._pending:
            return
        self.answers[query] = answer
        if self.queries():
            return
        if self._phase == "naptr":
            self._after_naptr(answer)
        elif self._phase == "srv":
            self._after_srv()
        elif self._phase == "address":
            self._after_address()

    # -- steps -----------------------------------------------------------------------------------------
    def _start(self, local_hosts: Mapping[str, Sequence[str]]) -> None:
        uri = self.uri
        secure = uri.scheme == "sips"
        host = (uri.params.get("maddr") or uri.host or "").strip()
        explicit = self._explicit_transport(secure)
        if self.done:
            return
        if not host:
            self._finish(f"no host in {uri}")
            return
        literal = _literal(host)
        name = host.rstrip(".").lower()
        transport = explicit or self._default_transport(secure)
        if transport is None:
            self._finish(f"no supported transport for {uri}")
            return
        if literal is not None or name in local_hosts:
            addresses = [literal] if literal is not None else list(local_hosts[name])
            port = uri.port or default_port(transport)
            self.targets = [Target(transport, a, port, "" if literal else name) for a in addresses]
            self._finish("" if self.targets else f"{name}: no address in the hosts table")
            return
        if uri.port:
            self._resolve_hosts([_Hop(name, uri.port, transport)])
        elif explicit in ("ws", "wss"):
            self._resolve_hosts([_Hop(name, default_port(explicit), explicit)])
        elif explicit:
            self._fallback = [_Hop(name, default_port(explicit), explicit)]
            self._ask_srv([(Query.of(SRV_PREFIX[explicit] + name, "SRV"), explicit)])
        else:
            self._phase = "naptr"
            self._pending = [Query.of(name, "NAPTR")]
            self._fallback = [_Hop(name, default_port(transport), transport)]

    def _explicit_transport(self, secure: bool) -> str | None:
        # named by the URI: used even when not in `transports` (those filter discovery only)
        t, error = _transport_param(self.uri)
        if error:
            self._finish(error)
        return t

    def _default_transport(self, secure: bool) -> str | None:
        """UDP for sip, TLS for sips (RFC 3263 §4.1); the next best we support when that one is not."""
        prefs = ("tls",) if secure else ("udp", "tcp", "tls")
        return next((t for t in prefs if t in self.transports), None)

    def _after_naptr(self, answer: Answer) -> None:
        secure = self.uri.scheme == "sips"
        usable: list[Naptr] = []
        for r in answer.records:
            if not isinstance(r, Naptr) or r.flags.lower() != "s":
                continue
            transport = NAPTR_SERVICES.get(r.service.upper())
            if transport is None or transport not in self.transports or (secure and transport != "tls"):
                continue
            if not r.replacement or r.replacement == ".":
                continue
            usable.append(r)
        usable.sort(key=lambda r: (r.order, r.preference))
        srv: list[tuple[Query, str]] = []
        for r in usable:
            q = Query.of(r.replacement, "SRV")
            if all(q != s for s, _ in srv):
                srv.append((q, NAPTR_SERVICES[r.service.upper()]))
        if not srv:  # §4.1: no NAPTR: SRV for each transport we support (_sips for sips URIs)
            name = self._fallback[0].host
            wanted = ("tls",) if secure else ("udp", "tcp")
            srv = [(Query.of(SRV_PREFIX[t] + name, "SRV"), t) for t in wanted if t in self.transports]
        if not srv:
            self._resolve_hosts(self._fallback)
            return
        self._ask_srv(srv)

    def _ask_srv(self, srv: list[tuple[Query, str]]) -> None:
        self._phase = "srv"
        self._srv = srv
        self._pending = [q for q, _ in srv]

    def _after_srv(self) -> None:
        hops: list[_Hop] = []
        unavailable = False
        for q, transport in self._srv:
            records = [r for r in self.answers[q].records if isinstance(r, Srv)]
            if len(records) == 1 and records[0].target.rstrip(".") == "":
                unavailable = True  # RFC 2782: "." = the service is decidedly not available here
                continue
            for r in order_srv(records, self.rng):
                target = r.target.rstrip(".").lower()
                if target:
                    hops.append(_Hop(target, r.port, transport))
        if hops:
            self._resolve_hosts(hops)
        elif unavailable:
            self._finish(f"{self._fallback[0].host}: SRV says the service is not available (target \".\")")
        else:
            self._resolve_hosts(self._fallback)

    def _resolve_hosts(self, hops: list[_Hop]) -> None:
        self._phase = "address"
        names: list[str] = []
        kept: list[_Hop] = []
        for hop in hops:
            if _literal(hop.host) is None and hop.host not in names:
                if len(names) >= self.max_hosts:
                    continue
                names.append(hop.host)
            kept.append(hop)
        self._hops = kept
        self._pending = [Query.of(n, f) for n in names for f in self.families]
        if not self._pending:
            self._after_address()

    def _after_address(self) -> None:
        seen: set[tuple[str, str, int]] = set()
        for hop in self._hops:
            literal = _literal(hop.host)
            if literal is not None:
                addresses = [literal]
            else:
                addresses = [r for f in self.families
                             for r in self.answers.get(Query.of(hop.host, f), Answer.nodata()).records
                             if isinstance(r, str)]
            for a in addresses:
                key = (hop.transport, a, hop.port)
                if key not in seen:
                    seen.add(key)
                    self.targets.append(Target(hop.transport, a, hop.port, "" if literal else hop.host))
        reason = ""
        if not self.targets:
            failed = [f"{q.rdtype} {q.name}: {a.describe()}" for q, a in self.answers.items()
                      if q.rdtype in ("A", "AAAA")]
            reason = "no address: " + "; ".join(failed) if failed else "no address"
        self._finish(reason)

    def _finish(self, reason: str) -> None:
        self.done = True
        self._phase = "done"
        self._pending = []
        self.reason = reason


def locate(uri: SipUri, answers: Mapping[Query, Answer], **options) -> ServerLocation:
    """Run a lookup to the end against a table of answers (a query missing from it fails): the pure
    function from DNS answers to targets. `options` are `ServerLocation`'s."""
    loc = ServerLocation(uri, **options)
    while not loc.done:
        queries = loc.queries()
        if not queries:  # cannot happen (every step asks something or ends); never spin on it
            break
        for q in queries:
            loc.receive(q, answers.get(q) or Answer.failure("no answer in the table"))
    return loc


# -- the cache -----------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Entry:
    answer: Answer
    expires: float


@dataclass
class DnsCache:
    """Answers by query until their TTL runs out (time from the caller: `now` on every call).

    Positive answers live `min(ttl, max_ttl)`; NXDOMAIN and no-data answers their TTL (the adapter takes it
    from the SOA, RFC 2308) capped at `max_negative_ttl`; failures (timeouts, SERVFAIL) `failure_ttl`, so a
    dead name server is not asked again for every call. At most `max_entries` entries: the least recently
    used one goes first.
    """

    max_entries: int = 4096
    max_ttl: float = 86400.0
    max_negative_ttl: float = 300.0
    failure_ttl: float = 5.0
    _entries: OrderedDict[Query, _Entry] = field(default_factory=OrderedDict, repr=False)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, query: Query, now: float) -> Answer | None:
        """The cached answer, or None when absent or expired."""
        entry = self._entries.get(query)
        if entry is None:
            return None
        if entry.expires <= now:
            del self._entries[query]
            return None
        self._entries.move_to_end(query)
        return entry.answer

    def put(self, query: Query, answer: Answer, now: float) -> None:
        """Remember an answer for as long as its kind allows (not at all for a TTL of 0)."""
        if answer.status is AnswerStatus.FAILURE:
            ttl = self.failure_ttl
        elif answer.records:
            ttl = min(answer.ttl, self.max_ttl)
        else:
            ttl = min(answer.ttl, self.max_negative_ttl)
        if ttl <= 0 or self.max_entries <= 0:
            self._entries.pop(query, None)
            return
        self._entries[query] = _Entry(answer, now + ttl)
        self._entries.move_to_end(query)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
