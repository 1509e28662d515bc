"""SIP trunks: carriers callpath registers to, qualifies, receives DID calls from and places calls through.

The model is sans-IO: a `Trunk` holds its configuration (`TrunkConfig`), its addresses, its channel
count and, once `sipcore.trunk_link.TrunkLink` started it, the cores of its outbound registration
(`sipcore.outbound_registration`) and OPTIONS qualify (`sipcore.qualify`). `TrunkGroup` is what the
rest of callpath asks:

* inbound: ``group.match_inbound(request, source)`` -> ``InboundMatch(trunk, did)`` or None. A request
  belongs to a trunk when its source address is in the trunk's ``inbound_hosts`` (IPs/CIDRs; default: the
  trunk host's addresses), or when its Request-URI carries the ``line`` token of the trunk's registration
  Contact (the carrier sent the call to the binding we registered). The DID is the Request-URI user or
  the To user (``did_source``). ``group.is_trunk_source(ip)`` tells the proxy not to challenge (carriers
  do not answer a 407).
* outbound: ``group.candidates(number, preferred=None)`` -> the `TrunkRoute` of every usable trunk, in
  failover order (``preferred`` first, then ``priority``, then configuration order). A route says
  everything the INVITE needs (Request-URI, From, credentials for a 401/407, codecs, DTMF mode, next
  hop). ``route.acquire()`` takes a channel (False when the trunk filled up meanwhile: try the next),
  ``route.release()`` gives it back when the call ends. After a failed attempt,
  ``TrunkGroup.is_failover_status(status)`` says whether to try the next route.

A trunk is *usable* when its host name resolved, its qualify does not say DOWN, its registration (when it
registers) is not FAILED, and it has a free channel (``max_channels`` 0: unlimited). Inbound calls count too
when the call control takes a channel for them (``match.trunk.acquire()``; False: answer 503).
"""
from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .errors import SipParseError
from .limiter import Network, parse_networks
from .message import Request
from .outbound_registration import OutboundRegistration, RegistrationState
from .qualify import Qualify, QualifyState
from .transaction import Flow
from .uri import format_host, is_ip_literal, split_hostport

__all__ = [
    "TrunkConfig", "Trunk", "TrunkGroup", "TrunkRoute", "InboundMatch", "is_failover_status",
    "TRUNK_CODECS", "TRUNK_DTMF_MODES", "TRUNK_TRANSPORTS", "DID_SOURCES", "parse_caller_id",
]

TRUNK_TRANSPORTS = ("udp", "tcp", "tls")
TRUNK_CODECS = ("PCMA", "PCMU", "opus")
TRUNK_DTMF_MODES = ("rfc4733", "inband", "info")
DID_SOURCES = ("ruri", "to")


@dataclass(frozen=True, slots=True)
class TrunkConfig:
    """One trunk as configured (``[[trunks]]`` in the settings; docs/interfaces.md names every key).

    Empty strings mean "derived": ``auth_username`` -> ``username``; ``from_user`` -> ``username``;
    ``from_domain`` -> the host; ``inbound_hosts`` empty -> the host's addresses.
    """

    name: str
    host: str                                   # host[:port] of the carrier's SIP server
    transport: str = "udp"
    username: str = ""
    password: str = field(default="", repr=False)
    auth_username: str = ""
    realm: str = ""                             # answer only challenges of this realm ("" -> any)
    register: bool = False
    register_expires: int = 3600
    from_user: str = ""
    caller_id: str = ""                         # 'Name <number>', 'number' or 'Name' for the From header
    from_domain: str = ""
    inbound_hosts: tuple[str, ...] = ()
    did_source: str = "ruri"
    max_channels: int = 0
    codecs: tuple[str, ...] = ("PCMA", "PCMU")
    dtmf: str = "rfc4733"
    qualify_interval: int = 0
    priority: int = 0
    response_timeout: float = 5.0               # seconds an INVITE may get no response at all before failover

    def __post_init__(self) -> None:
        problem = validate_trunk_config(self)
        if problem:
            raise ValueError(problem)


def validate_trunk_config(c: Any) -> str | None:
    """The first problem of a trunk configuration in words (naming the key), or None.

    ``c`` is a TrunkConfig or anything with its attributes (web.settings.TrunkSettings, lists for tuples)."""
    if not c.name:
        return "name must not be empty"
    if not c.host:
        return "host must not be empty (host or host:port of the carrier)"
    try:
        _, port = split_hostport(c.host)
    except SipParseError as exc:
        return f"host {c.host!r} is not host or host:port ({exc.reason})"
    if port == 0:
        return f"host {c.host!r}: port 0 is not a port"
    if c.transport not in TRUNK_TRANSPORTS:
        return f"transport must be one of {', '.join(TRUNK_TRANSPORTS)}, got {c.transport!r}"
    if c.register and not c.username:
        return "register = true needs a username"
    if c.password and not (c.username or c.auth_username):
        return "a password needs a username (or auth_username)"
    if not 10 <= c.register_expires <= 86400:
        return f"register_expires must be between 10 and 86400 seconds, got {c.register_expires}"
    try:
        parse_networks(c.inbound_hosts)
    except ValueError as exc:
        return f"inbound_hosts: {exc}"
    if c.did_source not in DID_SOURCES:
        return f"did_source must be one of {', '.join(DID_SOURCES)}, got {c.did_source!r}"
    if c.max_channels < 0:
        return f"max_channels must be 0 (unlimited) or positive, got {c.max_channels}"
    if not c.codecs:
        return f"codecs must name at least one of {', '.join(TRUNK_CODECS)}"
    for codec in c.codecs:
        if codec not in TRUNK_CODECS:
            return f"codecs: unknown codec {codec!r} (supported: {', '.join(TRUNK_CODECS)})"
    if len(set(c.codecs)) != len(c.codecs):
        return f"codecs lists a codec twice: {list(c.codecs)}"
    if c.dtmf not in TRUNK_DTMF_MODES:
        return f"dtmf must be one of {', '.join(TRUNK_DTMF_MODES)}, got {c.dtmf!r}"
    if c.qualify_interval < 0:
        return f"qualify_interval must be 0 (off) or positive seconds, got {c.qualify_interval}"
    if not 0 < c.response_timeout <= 32:
        return f"response_timeout must be above 0 and at most 32 seconds, got {c.response_timeout}"
    for key in ("username", "auth_username", "from_user"):
        value = getattr(c, key)
        if any(ch in value for ch in ' <>@";\r\n'):
            return f"{key} {value!r} must be a plain SIP user (no spaces, <, >, @, \", ;)"
    try:
        parse_caller_id(c.caller_id)
    except ValueError as exc:
        return f"caller_id: {exc}"
    if c.from_domain:
        try:
            split_hostport(c.from_domain)
        except SipParseError:
            return f"from_domain {c.from_domain!r} is not a host name or address"
    return None


def parse_caller_id(text: str) -> tuple[str, str]:
    """``'ACME Sales <+15551230000>'`` -> (display, number); ``'+1555'`` -> ('', '+1555'); ``'ACME'`` ->
    ('ACME', ''); '' -> ('', ''). ValueError for a malformed value."""
    text = text.strip()
    if not text:
        return "", ""
    if "<" in text or ">" in text:
        name, sep, rest = text.partition("<")
        number, close, tail = rest.partition(">")
        if not sep or not close or tail.strip():
            raise ValueError(f"{text!r} must be 'Name <number>', 'number' or 'Name'")
        number = number.strip()
        if not number or any(ch in number for ch in ' @;"'):
            raise ValueError(f"{text!r}: the number in <> must be a plain SIP user")
        return name.strip().strip('"').strip(), number
    if '"' in text:
        raise ValueError(f"{text!r}: write 'Name <number>' without quotes")
    if all(ch.isdigit() or ch in "+*#" for ch in text):
        return "", text
    return text, ""


class InboundMatch(NamedTuple):
    """A request recognised as coming from ``trunk``; ``did`` is the number dialled (may be '')."""

    trunk: "Trunk"
    did: str


@dataclass(frozen=True, slots=True)
class TrunkRoute:
    """How to send one outbound call through one trunk (see ``TrunkGroup.candidates``).

    Hand it to the UA as ``ua.invite(route.request_uri, route.from_uri, sdp, flow=route.flow,
    credentials=route.credentials, headers=route.headers)``; offer ``route.codecs`` in that order and
    signal DTMF as ``route.dtmf`` says.
    """

    trunk: "Trunk"
    number: str
    request_uri: str                    # sip:number@host[:port][;transport=tcp|tls]
    from_uri: str                       # "Display" <sip:from_user@from_domain>
    credentials: tuple[str, str] | None  # (auth username, password) for one 401/407, None without password
    realm: str | None                   # the realm those credentials are meant for (None: any)
    codecs: tuple[str, ...]
    dtmf: str
    transport: str
    flow: Flow | None                   # the resolved next hop (None: resolve request_uri's host)
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        return self.trunk.name

    def acquire(self) -> bool:
        """Take one of the trunk's channels; False when it is full (try the next route)."""
        return self.trunk.acquire()

    def release(self) -> None:
        """Give the channel back (the call through this route ended or failed)."""
        self.trunk.release()

    @property
    def to_uri(self) -> str:
        """The To of the INVITE: the Request-URI without its transport parameter."""
        return self.request_uri.split(";", 1)[0]

    def contact(self) -> Any:
        """This route as a `sipcore.routing.Contact` (plain RTP media, the trunk's From and credentials)."""
        from .routing import RTP, Contact
        from .uri import SipUri

        return Contact(SipUri.parse(self.request_uri), self.to_uri, self.flow, (), RTP, self.credentials,
                       codecs=tuple(self.codecs), dtmf=self.dtmf, from_uri=self.from_uri,
                       response_timeout=self.trunk.config.response_timeout)

    def target(self, timeout: float | None = None) -> Any:
        """This route as a one-contact `sipcore.routing.Target` for ``Call.ring`` (label ``trunk:NAME``)."""
        from .routing import Target

        return Target.contacts([self.contact()], timeout, label=f"trunk:{self.name}")


def is_failover_status(status: int) -> bool:
    """Whether a failed outbound attempt should move on to the next trunk.

    408 (also what a client transaction's timeout becomes), any 5xx (503 is also a transport failure)
    -> next trunk. Other 4xx (busy, not found, forbidden...) and 6xx are the callee's or the number's
    answer, which another carrier would give too -> stop and report it. 2xx/1xx are not failures."""
    return status == 408 or 500 <= status <= 599


class Trunk:
    """One trunk: configuration, addresses, channels, and (when started) registration and qualify cores."""

    def __init__(self, config: TrunkConfig, *, line: str | None = None) -> None:
        self.config = config
        host, port = split_hostport(config.host)
        self.host = host.strip("[]")
        self.port = port or (5061 if config.transport == "tls" else 5060)
        self.line = line or secrets.token_hex(6)     # the ;line= token of our registration Contact
        self.channels = 0
        self.calls_total = 0
        self.calls_refused_full = 0
        self.addresses: tuple[str, ...] = (self.host,) if is_ip_literal(self.host) else ()
        self.targets: tuple[Flow, ...] = ()          # located by RFC 3263 (SRV ports), first preferred
        self._explicit_networks: tuple[Network, ...] = parse_networks(config.inbound_hosts)
        self.networks: tuple[Network, ...] = ()
        self._update_networks()
        self.registration: OutboundRegistration | None = None
        self.qualify: Qualify | None = None
        self.resolve_error: str = ""

    # -- identity -----------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.config.name

    @property
    def auth_username(self) -> str:
        return self.config.auth_username or self.config.username

    @property
    def from_user(self) -> str:
        number = parse_caller_id(self.config.caller_id)[1]
        return self.config.from_user or number or self.config.username or "anonymous"

    @property
    def domain(self) -> str:
        """The SIP domain of our identity at the carrier (From/To of REGISTER, From of INVITEs)."""
        return self.config.from_domain or format_host(self.host)

    @property
    def hostport(self) -> str:
        """host[:port] as put in a Request-URI (the port only when it is not the transport's default)."""
        default = 5061 if self.config.transport == "tls" else 5060
        return format_host(self.host) + ("" if self.port == default else f":{self.port}")

    @property
    def next_hop(self) -> Flow | None:
        """Where requests to the carrier go (None until the host name is resolved)."""
        if self.targets:
            return self.targets[0]
        if not self.addresses:
            return None
        return Flow(self.config.transport, (self.addresses[0], self.port))

    def set_targets(self, flows: Iterable[Flow]) -> None:
        """The carrier located by RFC 3263 (an SRV record may name other ports than ``port``): the first is
        the next hop; their addresses become the addresses (and default inbound hosts)."""
        self.targets = tuple(flows)
        self.set_addresses(f.remote[0] for f in self.targets)

    def set_addresses(self, addresses: Iterable[str]) -> None:
        """The carrier host's resolved addresses (they also become the default inbound_hosts)."""
        self.addresses = tuple(dict.fromkeys(a.strip("[]") for a in addresses))
        self._update_networks()

    def _update_networks(self) -> None:
        if self._explicit_networks:
            self.networks = self._explicit_networks
        else:
            self.networks = tuple(ipaddress.ip_network(a) for a in self.addresses)

    def accepts_source(self, ip: str) -> bool:
        """Whether ``ip`` is one of the trunk's inbound hosts."""
        try:
            addr = ipaddress.ip_address(ip.strip("[]"))
        except ValueError:
            return False
        return any(addr in net for net in self.networks)

    # -- state --------------------------------------------------------------------------------------
    @property
    def up(self) -> bool:
        """Reachable as far as we know: its host resolved, qualify not DOWN, registration (if any) not FAILED."""
        if self.resolve_error:
            return False
        if self.qualify is not None and self.qualify.state is QualifyState.DOWN:
            return False
        if self.config.register and self.registration is not None and \
                self.registration.state is RegistrationState.FAILED:
            return False
        return True

    @property
    def full(self) -> bool:
        return bool(self.config.max_channels) and self.channels >= self.config.max_channels

    @property
    def usable(self) -> bool:
        return self.up and not self.full

    def acquire(self) -> bool:
        """Take a channel (inbound or outbound call); False at ``max_channels``."""
        if self.full:
            self.calls_refused_full += 1
            return False
        self.channels += 1
        self.calls_total += 1
        return True

    def release(self) -> None:
        """Give a channel back (never below zero)."""
        if self.channels > 0:
            self.channels -= 1

    # -- outbound -----------------------------------------------------------------------------------
    def route(self, number: str) -> TrunkRoute:
        """The INVITE description for calling ``number`` through this trunk."""
        c = self.config
        params = "" if c.transport == "udp" else f";transport={c.transport}"
        request_uri = f"sip:{number}@{self.hostport}{params}"
        display = parse_caller_id(c.caller_id)[0]
        from_addr = f"<sip:{self.from_user}@{self.domain}>"
        from_uri = f"{_quote_display(display)} {from_addr}" if display else from_addr
        credentials = (self.auth_username, c.password) if c.password else None
        return TrunkRoute(self, number, request_uri, from_uri, credentials, c.realm or None, c.codecs, c.dtmf,
                          c.transport, self.next_hop)

    def did_of(self, request: Request) -> str:
        """The dialled number of an inbound request, as ``did_source`` says (URI parameters stripped)."""
        try:
            user = request.uri.user if self.config.did_source == "ruri" else request.to.uri.user
        except SipParseError:
            return ""
        return (user or "").split(";", 1)[0]

    def status(self, now: float) -> dict[str, Any]:
        """A JSON-able snapshot for /api/v1/status."""
        c = self.config
        out: dict[str, Any] = {
            "name": c.name, "host": c.host, "transport": c.transport, "priority": c.priority,
            "addresses": list(self.addresses), "up": self.up,
            "channels": {"in_use": self.channels, "max": c.max_channels, "total": self.calls_total,
                         "refused_full": self.calls_refused_full},
            "registration": self.registration.status(now) if self.registration is not None
            else {"state": "off" if not c.register else str(RegistrationState.UNREGISTERED)},
            "qualify": self.qualify.status() if self.qualify is not None else {"state": "off"},
        }
        if self.resolve_error:
            out["resolve_error"] = self.resolve_error
        return out


def _quote_display(display: str) -> str:
    return '"' + display.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class TrunkGroup:
    """Every configured trunk, in failover order (priority, then configuration order)."""

    trunks: list[Trunk] = field(default_factory=list)

    @classmethod
    def from_configs(cls, configs: Iterable[TrunkConfig],
                     line_token: Callable[[TrunkConfig], str] | None = None) -> "TrunkGroup":
        configs = list(configs)
        names = [c.name for c in configs]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"trunk name {name!r} is used twice")
        order = sorted(range(len(configs)), key=lambda i: (configs[i].priority, i))
        return cls([Trunk(configs[i], line=line_token(configs[i]) if line_token else None) for i in order])

    def __iter__(self):
        return iter(self.trunks)

    def __len__(self) -> int:
        return len(self.trunks)

    def get(self, name: str) -> Trunk | None:
        for trunk in self.trunks:
            if trunk.name == name:
                return trunk
        return None

    # -- inbound ------------------------------------------------------------------------------------
    def is_trunk_source(self, ip: str) -> bool:
        """Whether ``ip`` is an inbound host of any trunk (the proxy does not challenge those)."""
        return any(t.accepts_source(ip) for t in self.trunks)

    def match_inbound(self, request: Request, source: tuple[str, int] | str | Flow) -> InboundMatch | None:
        """The trunk an inbound request came through, and its DID; None when it is no trunk's.

        Checked in order: the Request-URI's ``line`` parameter equals a trunk's registration token (the
        carrier called the Contact we registered); then the source address is in a trunk's inbound_hosts
        (the first such trunk in failover order)."""
        if isinstance(source, Flow):
            ip = source.remote[0]
        elif isinstance(source, tuple):
            ip = source[0]
        else:
            ip = source
        try:
            line = request.uri.params.get("line")
        except SipParseError:
            line = None
        if line:
            for trunk in self.trunks:
                if trunk.config.register and secrets.compare_digest(trunk.line, line):
                    return InboundMatch(trunk, trunk.did_of(request))
        for trunk in self.trunks:
            if trunk.accepts_source(ip):
                return InboundMatch(trunk, trunk.did_of(request))
        return None

    # -- outbound -----------------------------------------------------------------------------------
    def candidates(self, number: str, preferred: str | None = None) -> list[TrunkRoute]:
        """Routes for calling ``number``: every usable trunk, ``preferred`` (a trunk name) first, then in
        priority order. Empty when no trunk is usable (answer the caller 503)."""
        trunks = [t for t in self.trunks if t.usable]
        if preferred is not None:
            trunks.sort(key=lambda t: t.name != preferred)
        return [t.route(number) for t in trunks]

    is_failover_status = staticmethod(is_failover_status)

    def status(self, now: float) -> list[dict[str, Any]]:
        return [t.status(now) for t in self.trunks]
